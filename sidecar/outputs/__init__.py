"""What reads the core: the probe port, metrics, the state file and the log lines."""
