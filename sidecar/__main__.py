"""`python -m sidecar` runs the same command as `dynamo-health-sidecar`."""

import sys

from sidecar.cli import main

sys.exit(main())
