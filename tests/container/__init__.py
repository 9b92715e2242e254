"""The image and the chart's pod run for real with Podman (a package, so that its conftest module
does not shadow tests/conftest.py)."""
