"""What makes an instance record valid, wherever one comes from.

The worker's socket checks each `POST /v1/instances` against these rules, and the frontend
mirror checks each entry of a Dynamo frontend's `instances` list against the same ones, so an
instance the sidecar copies is one the worker could have registered itself (docs/protocol.md
sections 4.2 and 8.1).
"""

from __future__ import annotations

# How deeply arrays and objects may nest in a record (the record itself is level 1).
MAX_DEPTH = 32
# Dynamo's instance ids are unsigned 64-bit integers.
MAX_INSTANCE_ID = 2**64 - 1
INSTANCE_ID_RULE = f"expected an integer from 0 to {MAX_INSTANCE_ID}"
# The fields every record has; any other field is kept as given.
INSTANCE_FIELDS = ("namespace", "component", "endpoint", "instance_id", "transport")
