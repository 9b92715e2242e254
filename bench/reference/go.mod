module dynamo-health-sidecar/bench/reference

go 1.21
