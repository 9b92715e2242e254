"""Tests of the chart, the plain manifests and the image (a package, so that its conftest
module does not shadow tests/conftest.py)."""
