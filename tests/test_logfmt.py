"""Text logs keep one record on one line, whatever names the record carries."""

from __future__ import annotations

import logging
import subprocess
import sys

from fleetop.controller.runtime.run import setup_logging
from fleetop.logfmt import OneLineFormatter, one_line


def _record(msg: str, *args: object, exc: bool = False) -> logging.LogRecord:
    exc_info = None
    if exc:
        try:
            raise ValueError("inside")
        except ValueError:
            exc_info = sys.exc_info()
    return logging.LogRecord("fleetop.test", logging.WARNING, __file__, 1, msg, args, exc_info)


def test_control_characters_in_a_name_are_escaped() -> None:
    forged = "web\n2026-12-03 12:00:00,000 INFO fleetop: leader resigned\r\x1b[2J"
    formatter = OneLineFormatter("%(levelname)s %(name)s: %(message)s")
    line = formatter.format(_record("service %s stopped", forged))
    assert "\n" not in line and "\r" not in line and "\x1b" not in line
    assert line == (
        "WARNING fleetop.test: service web\\n2026-12-03 12:00:00,000 INFO fleetop: leader resigned"
        "\\r\\x1b[2J stopped"
    )


def test_a_traceback_still_follows_on_its_own_lines() -> None:
    text = OneLineFormatter("%(message)s").format(_record("pass over %s failed", "a\nb", exc=True))
    first, *rest = text.split("\n")
    assert first == "pass over a\\nb failed"
    assert rest[0] == "Traceback (most recent call last):" and rest[-1] == "ValueError: inside"


def test_printable_text_is_unchanged() -> None:
    text = "apache@8001.service on 127.0.0.1:8001 — ready"
    assert one_line(text) == text


def test_the_operator_text_log_uses_it() -> None:
    root = logging.getLogger()
    saved, level = root.handlers[:], root.level
    try:
        setup_logging("text")
        assert [type(h.formatter) for h in root.handlers] == [OneLineFormatter]
    finally:
        root.handlers[:] = saved
        root.setLevel(level)


def test_a_process_log_line_cannot_be_forged() -> None:
    """The shared set-up, in a process of its own (as the node, the agent and the sidekick use it)."""
    code = (
        "import logging; from fleetop.logfmt import basic_config; basic_config('INFO');"
        "logging.getLogger('fleetop.x').warning('unit %s failed', 'a.service\\nERROR forged')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stderr.count("\n") == 1
    assert "a.service\\nERROR forged failed" in out.stderr
