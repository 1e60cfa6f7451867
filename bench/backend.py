"""A tiny, fast HTTP backend: ``python3 backend.py HOST:PORT [HOST:PORT ...]``.

Standard library only, so fleet units can run it by path (``python3 /.../bench/backend.py``). One
asyncio process listens on every address given and answers every request with ``200``, the header
``X-Backend: <address it listens on>`` and that address as the body, then closes the connection. The
benchmarks tell backends apart by that reply, whatever the proxy adds. Loopback addresses only.
"""

from __future__ import annotations

import asyncio
import ipaddress
import signal
import sys


def response(address: str) -> bytes:
    body = address.encode()
    head = (
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
        f"X-Backend: {address}\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + body


def parse(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    if not ipaddress.ip_address(host).is_loopback:
        raise SystemExit(f"backend.py: {address} is not a loopback address")
    return host, int(port)


async def serve(addresses: list[str]) -> None:
    servers = []
    for address in addresses:
        reply = response(address)

        async def handle(
            reader: asyncio.StreamReader, writer: asyncio.StreamWriter, reply: bytes = reply
        ) -> None:
            try:
                await reader.readuntil(b"\r\n\r\n")
                writer.write(reply)
                await writer.drain()
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
                pass
            finally:
                writer.close()

        host, port = parse(address)
        servers.append(await asyncio.start_server(handle, host, port, reuse_address=True, backlog=512))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print("ready", flush=True)
    await stop.wait()
    for server in servers:
        server.close()


def main() -> None:
    addresses = sys.argv[1:]
    if not addresses:
        raise SystemExit("usage: backend.py HOST:PORT [HOST:PORT ...]")
    asyncio.run(serve(addresses))


if __name__ == "__main__":
    main()
