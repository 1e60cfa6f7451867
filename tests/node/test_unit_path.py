"""Units get systemd's fixed PATH, not the node's: a program outside it, named bare, fails with 203/EXEC.

A node that lent units its own PATH (a virtualenv's ``bin/``) would run ``fleetop register`` where a
real machine cannot, and hide the very fault the operator's absolute paths exist to avoid.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest
from test_supervisor import M1, machine, svc, wait_for

from fleetop.node import journal
from fleetop.node.supervisor import DEFAULT_PATH, Supervisor

VENV_BIN = os.path.dirname(sys.executable)


@pytest.fixture
def node_path(monkeypatch: pytest.MonkeyPatch) -> str:
    """The node runs with the virtualenv's bin first on its PATH, as an activated shell would."""
    if shutil.which("fleetop", path=DEFAULT_PATH) is not None:
        pytest.skip("a fleetop is installed in systemd's own PATH on this machine")
    path = VENV_BIN + os.pathsep + os.environ.get("PATH", "")
    monkeypatch.setenv("PATH", path)
    return path


async def test_units_get_systemds_path(node_path: str, tmp_path: Path) -> None:
    sup = Supervisor(tmp_path / "state")
    try:
        assert sup.base_env["PATH"] == DEFAULT_PATH != node_path
        options = svc(("Type", "oneshot"), ("ExecStart", "/bin/sh -c 'echo path=$$PATH'"))
        await sup.start("env.service", options, machine(tmp_path), "h")
        await wait_for(sup, "env.service", "inactive", "dead")
        assert any(
            line.endswith(f"path={DEFAULT_PATH}")
            for line in journal.tail(sup.journal_path("env.service"), 20)
        )
    finally:
        await sup.shutdown()


async def test_a_bare_fleetop_fails_as_systemd_would(node_path: str, tmp_path: Path) -> None:
    assert shutil.which("fleetop", path=node_path), "the node itself can see fleetop"
    sup = Supervisor(tmp_path / "state")
    try:
        await sup.start("bare.service", svc(("ExecStart", "fleetop --help")), machine(tmp_path), "h")
        state = await wait_for(sup, "bare.service", "failed", "failed")
        assert state.load_state == "loaded"
        text = sup.journal_path("bare.service", M1).read_text()
        assert "Failed to locate executable fleetop" in text
        assert "status=203/EXEC" in text
    finally:
        await sup.shutdown()


async def test_fleetop_by_its_absolute_path_runs(node_path: str, tmp_path: Path) -> None:
    del node_path
    sup = Supervisor(tmp_path / "state")
    try:
        options = svc(("Type", "oneshot"), ("ExecStart", f"{VENV_BIN}/fleetop --help"))
        await sup.start("absolute.service", options, machine(tmp_path), "h")
        await wait_for(sup, "absolute.service", "inactive", "dead")
    finally:
        await sup.shutdown()
