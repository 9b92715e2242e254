"""dynamo-health-sidecar: Dynamo's health protocol for any LLM inference worker."""

__version__ = "0.1.0"
