"""Logs, secrets and private directories get their documented modes whatever the umask, and files or
directories that already exist with wider modes are tightened."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from fleetop.filemodes import make_dir, open_log, touch
from fleetop.local.up import Child


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture(autouse=True)
def _open_umask() -> Iterator[None]:
    old = os.umask(0o000)
    try:
        yield
    finally:
        os.umask(old)


def test_directories_created_with_their_mode_and_existing_ones_left_or_tightened(tmp_path: Path) -> None:
    os.chmod(tmp_path, 0o755)
    made = make_dir(tmp_path / "a" / "b", 0o750)
    assert _mode(made) == 0o750 and _mode(tmp_path / "a") == 0o750
    assert _mode(tmp_path) == 0o755  # not created here: not ours to change
    (tmp_path / "wide").mkdir(mode=0o777)
    assert _mode(make_dir(tmp_path / "wide")) == 0o700


def test_logs_are_created_private_and_tightened(tmp_path: Path) -> None:
    with open_log(tmp_path / "new.log") as log:
        log.write(b"line\n")
    assert _mode(tmp_path / "new.log") == 0o600
    wide = tmp_path / "old.log"
    wide.write_text("old\n")
    wide.chmod(0o644)
    with open_log(wide) as log:
        log.write(b"more\n")
    assert _mode(wide) == 0o600 and wide.read_text() == "old\nmore\n"
    touch(tmp_path / "error.log", 0o640)
    assert _mode(tmp_path / "error.log") == 0o640


def test_fleetop_up_logs_of_its_parts_are_private(tmp_path: Path) -> None:
    child = Child("echo", ["/bin/echo", "hello"], tmp_path / "echo.log")
    child.spawn()
    assert child.process is not None and child.process.wait(10) == 0
    assert _mode(tmp_path / "echo.log") == 0o600 and "hello" in (tmp_path / "echo.log").read_text()
