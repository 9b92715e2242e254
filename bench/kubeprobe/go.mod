module dynamo-health-sidecar/bench/kubeprobe

go 1.21
