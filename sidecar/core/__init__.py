"""The core: the health state machine and its answers. No I/O; the clock is passed in; imports
nothing else of the package."""
