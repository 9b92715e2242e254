"""A minimal real Dynamo 1.6.1 worker, run with the Dynamo venv's python by `dynamo_real.py`.

    python dynamo_worker.py NAMESPACE COMPONENT ENDPOINT [ENDPOINT ...] [--model NAME]

It serves each named endpoint (`generate`, `clear_kv_blocks`, ...) with a handler that yields one
trivial item, on the file discovery backend (`DYN_FILE_KV`) and the TCP request plane, exactly as
a backend engine registers itself; with `--model` it also registers a model card on the first
endpoint (no assets: nothing is downloaded), so the frontend lists the model in `/v1/models`.

When every endpoint is visible in discovery (read back through a client, not assumed), it prints
`READY <instance_id>` on stdout and stays until killed. SIGTERM takes Dynamo's own graceful path
(`install_signal_handlers`: unregister from discovery, grace period, runtime shutdown), so a test
can compare a graceful exit with a SIGKILL. The grace period is Dynamo's
`DYN_GRACEFUL_SHUTDOWN_GRACE_PERIOD_SECS` (default 5 s).
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import AsyncIterator
from typing import Any

import uvloop
from dynamo.common.utils.graceful_shutdown import install_signal_handlers
from dynamo.llm import ModelInput, ModelType, WorkerType, register_model
from dynamo.runtime import DistributedRuntime, Endpoint

READY_TIMEOUT_S = 30.0


async def answer(request: Any, context: Any = None) -> AsyncIterator[dict[str, Any]]:
    """The handler of every endpoint: the probes under study never call it, so it is trivial."""
    yield {"ok": True}


async def wait_visible(endpoint: Endpoint, instance_id: int) -> None:
    """Return once discovery lists this process for `endpoint`, as the frontend will see it."""
    client = await endpoint.client()
    while instance_id not in client.instance_ids():
        await asyncio.sleep(0.05)


async def serve(namespace: str, component: str, names: list[str], model: str | None) -> None:
    runtime = DistributedRuntime(asyncio.get_running_loop(), "file", "tcp")
    endpoints = [runtime.endpoint(f"{namespace}.{component}.{name}") for name in names]
    install_signal_handlers(asyncio.get_running_loop(), runtime, endpoints)
    if model is not None:
        await register_model(
            ModelInput.Text,
            ModelType.Chat,
            endpoints[0],
            model,
            model,
            worker_type=WorkerType.Aggregated,
            skip_model_assets=True,
        )
    # serve_endpoint returns a future that ends only at shutdown; gather keeps them all.
    served = asyncio.gather(*(endpoint.serve_endpoint(answer) for endpoint in endpoints))
    instance_id = endpoints[0].connection_id()
    await asyncio.wait_for(
        asyncio.gather(*(wait_visible(endpoint, instance_id) for endpoint in endpoints)),
        READY_TIMEOUT_S,
    )
    print(f"READY {instance_id}", flush=True)
    await served
    print("STOPPED", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("namespace")
    parser.add_argument("component")
    parser.add_argument("endpoints", nargs="+")
    parser.add_argument("--model", help="also register a model card of this name")
    args = parser.parse_args()
    uvloop.run(serve(args.namespace, args.component, args.endpoints, args.model))


if __name__ == "__main__":
    main()
