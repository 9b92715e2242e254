"""Carry one TCP port from the host's loopback into the cluster's network namespace.

    python tests/cluster/forward.py 127.0.0.1:16443 /run/netns/dhs-cluster 10.244.0.1:6443

The listening socket is made first, in the host's namespace; then the process enters the
cluster's, so every connection it opens to the target is inside it. This is the only way into the
cluster's namespace, and it leads only to the API server. Each connection is two copies; a client
that stops reading stalls only its own connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import socket
import sys

CLONE_NEWNET = 0x40000000
CHUNK = 65536


def enter(netns: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(netns, os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns {netns}")
    finally:
        os.close(fd)


async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(CHUNK):
            writer.write(data)
            await writer.drain()
    except OSError:
        pass
    finally:
        with contextlib.suppress(OSError):
            writer.close()


async def serve(listener: socket.socket, host: str, port: int) -> None:
    async def carry(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            target_r, target_w = await asyncio.wait_for(asyncio.open_connection(host, port), 5)
        except (OSError, TimeoutError):
            client_w.close()
            return
        await asyncio.gather(pipe(client_r, target_w), pipe(target_r, client_w))

    server = await asyncio.start_server(carry, sock=listener)
    async with server:
        await server.serve_forever()


def main(argv: list[str]) -> int:
    listen, netns, target = argv
    listen_host, listen_port = listen.rsplit(":", 1)
    target_host, target_port = target.rsplit(":", 1)
    listener = socket.create_server((listen_host, int(listen_port)), reuse_port=False)
    enter(netns)
    print(f"forwarding {listen} to {target} in {netns}", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(listener, target_host, int(target_port)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
