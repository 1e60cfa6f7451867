"""One log record, one line: the text log format every fleetop process shares.

Names in messages come from etcd keys and fleet units that anyone with write access may choose, so a
name holding a newline or a terminal escape could forge a second log line or rewrite the screen.
:class:`OneLineFormatter` escapes every control character in a record's line (``\\n``, ``\\x1b``);
a traceback still follows on its own lines. JSON logs need nothing: ``json.dumps`` escapes them.
"""

from __future__ import annotations

import logging
import sys

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
"""The line every process writes: time, level, logger, message."""

_ESCAPES = {code: f"\\x{code:02x}" for code in (*range(0x20), 0x7F)} | {
    ord("\n"): "\\n",
    ord("\r"): "\\r",
    ord("\t"): "\\t",
}


def one_line(text: str) -> str:
    """``text`` with every control character written as its escape: never more than one line."""
    return text.translate(_ESCAPES)


class OneLineFormatter(logging.Formatter):
    """A text formatter whose line (time, level, logger, message) cannot span lines."""

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 (logging's name)
        return one_line(super().formatMessage(record))


def basic_config(level: str | int, fmt: str = TEXT_FORMAT) -> None:
    """``logging.basicConfig`` on stderr with :class:`OneLineFormatter`; as basicConfig, nothing
    changes when the root logger already has a handler (a test's, an embedding program's)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(OneLineFormatter(fmt))
    logging.basicConfig(level=level, handlers=[handler])
