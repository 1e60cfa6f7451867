"""A unit's output never waits for ``fleetop node``: with the node stopped (SIGSTOP), a unit that logs
far more than a pipe holds keeps answering, and ``fleetop node journal`` shows all of it afterwards."""

from __future__ import annotations

import asyncio
import random
import shutil
import signal
import sys
import tempfile
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_node_integration import WAIT, NodeProcess, cli, running_states, started

from fleetop.fleet.units import UnitOption
from fleetop.local.etcdserver import free_port
from waiting import eventually

LOUD = """
import http.server, sys

class Loud(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        sys.stderr.write(("y" * 1023 + "\\n") * 64)  # 64 KiB per request: a whole pipe buffer
        body = b"ok\\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        print(f"answered {self.path}", flush=True)

sys.stdout.write(("x" * 1023 + "\\n") * 1024)  # 1 MiB before serving
print("serving", flush=True)
http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), Loud).serve_forever()
"""
REQUESTS = 40  # 2.5 MiB of output while the node is stopped


@pytest.fixture
def node() -> Iterator[NodeProcess]:
    base = Path(tempfile.mkdtemp(prefix="fo-"))
    process = NodeProcess(base / "state", f"1000.{random.randrange(10**8):08d}")
    try:
        yield process
    finally:
        process.cleanup()
        shutil.rmtree(base, ignore_errors=True)


def get(port: int, path: str) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
        response.read()
        return int(response.status)


async def test_a_loud_unit_keeps_answering_while_the_node_is_stopped(
    node: NodeProcess, tmp_path: Path
) -> None:
    script = tmp_path / "loud.py"
    script.write_text(LOUD)
    port = free_port()
    argv = f"{sys.executable} {script} {port} {node.marker}"
    async with started(node) as client:
        await client.create_unit("loud.service", [UnitOption("Service", "ExecStart", argv)], "launched")
        await eventually(lambda: running_states(client, {"loud.service"}), WAIT, "loud.service running")

        async def answers() -> bool:
            try:
                return await asyncio.to_thread(get, port, "/ready") == 200
            except OSError:
                return False

        await eventually(answers, WAIT, "loud.service answering")
        node.signal(signal.SIGSTOP)
        try:
            statuses = [await asyncio.to_thread(get, port, f"/{i}") for i in range(REQUESTS)]
        finally:
            node.signal(signal.SIGCONT)
        assert statuses == [200] * REQUESTS

        async def journal_shows_the_last_answer() -> str | None:
            out = await asyncio.to_thread(
                cli, "--state-dir", str(node.state_dir), "journal", "loud.service", "-n", "3"
            )
            return out.output if f"answered /{REQUESTS - 1}" in out.output else None

        await eventually(journal_shows_the_last_answer, WAIT, "the unit's last line in its journal")
        journal = next((node.state_dir / "supervisor" / "journal").glob("*/loud.service.log"))
        text = journal.read_text()
        assert text.count("x" * 1023 + "\n") == 1024 and text.count("y" * 1023 + "\n") >= 64 * REQUESTS
        assert "serving" in text and " fleetop-node[" in text  # the unit's output beside the node's lines
