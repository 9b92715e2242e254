"""What tells the core about the worker: the socket API, sd_notify, the process watch, the
deadlines of heartbeats and leases, and the active checks (mirror and canaries)."""
