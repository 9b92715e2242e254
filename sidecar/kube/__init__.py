"""Kubernetes reporting (`DYN_SIDECAR_KUBE`): discovery at startup, the API adapter, pure
reports and correlation, and the reporter that sends them beside the event loop."""
