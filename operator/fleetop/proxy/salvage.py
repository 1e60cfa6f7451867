"""A config that fails its check because of one backend is applied without that backend.

confd's failure mode is one bad key blocking every later change: a config that fails its check is
never installed, so while one backend's line breaks it (an upstream name that no longer resolves on
this machine, an address the proxy refuses), no route follows its services any more. The operator
resolves names before publishing, so this should not happen with its configs; this is the agent's
second line, for what only the proxy machine can see (its own DNS, a config published by an older
operator, a ``checkCmd`` of the spec's).

The checker says which line it refused: nginx ``[emerg] <message> in <file>:<line>`` (the first error
only), HAProxy ``[<file>:<line>] : <message>`` (every error). When the blamed line is in the staged
file and is a backend's ``server`` line, it is taken out and the check runs again, up to
:data:`MAX_DROPS` lines; anything else (a broken template, a path, a listen address) fails as before,
with the checker's message. nginx needs at least one server in an upstream, so a dropped line becomes
``server 127.0.0.1:1 down;`` (never used: an upstream left with only that answers 502); HAProxy's
line is commented out (a backend without servers answers 503). The agent applies the result under
the published hash and reports the dropped lines in its status, which the operator shows as Degraded.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from pathlib import Path

from fleetop.models.status import PublishedConfig
from fleetop.proxy.apply import (
    STAGED_PREFIX,
    ApplyError,
    ApplyResult,
    Command,
    Kind,
    SignalReload,
    apply_config,
)

MAX_DROPS = 16
_NGINX_BLAME = re.compile(r"\[emerg\] (?:\d+#\d+: )?(?P<msg>.*) in (?P<path>\S+):(?P<line>\d+)\s*$")
_HAPROXY_BLAME = re.compile(r"\[(?P<path>[^\]\s]+):(?P<line>\d+)\]\s*:\s*(?P<msg>.*)$")
_SERVER_LINE = {
    "nginx": re.compile(r"^\s*server\s+[^{};#]+;\s*$"),
    "haproxy": re.compile(r"^\s*server\s+\S+\s+\S+"),
}
NGINX_PLACEHOLDER = "server 127.0.0.1:1 down;  # dropped by the proxy agent: its check failed"
HAPROXY_COMMENT = "# dropped by the proxy agent (its check failed): "


@dataclass(frozen=True, slots=True)
class Dropped:
    """One backend line taken out: its text and the checker's reason."""

    line: int
    server: str
    reason: str

    def describe(self) -> str:
        return f"{self.server} (line {self.line}: {self.reason})"


def blamed_lines(kind: Kind, output: str) -> dict[int, str]:
    """Line numbers of the staged file that the checker's ``output`` blames, with its messages."""
    pattern = _NGINX_BLAME if kind == "nginx" else _HAPROXY_BLAME
    found: dict[int, str] = {}
    for text in output.splitlines():
        match = pattern.search(text)
        if match and Path(match.group("path")).name.startswith(STAGED_PREFIX):
            found.setdefault(int(match.group("line")), match.group("msg").strip()[:300])
    return found


def drop_blamed(kind: Kind, body: str, output: str) -> tuple[str, list[Dropped]] | None:
    """``body`` without the server lines the check ``output`` blames; None when it blames something
    else (or nothing this can find): then the config is really broken."""
    blamed = blamed_lines(kind, output)
    lines = body.split("\n")
    if not blamed or any(not 1 <= n <= len(lines) for n in blamed):
        return None
    dropped: list[Dropped] = []
    for number, reason in sorted(blamed.items()):
        text = lines[number - 1]
        if not _SERVER_LINE[kind].match(text):
            return None
        indent = text[: len(text) - len(text.lstrip())]
        server = text.strip()
        lines[number - 1] = indent + (NGINX_PLACEHOLDER if kind == "nginx" else HAPROXY_COMMENT + server)
        dropped.append(Dropped(number, server.rstrip(";"), reason))
    return "\n".join(lines), dropped


async def apply_dropping_backends(
    cfg: PublishedConfig,
    target: Path,
    *,
    check: Command | None,
    reload: Command | SignalReload | None,
    timeout: float,
    superseded: Callable[[], bool] | None = None,
    runtime: Callable[[], Awaitable[object]] | None = None,
    max_drops: int = MAX_DROPS,
) -> tuple[ApplyResult, list[Dropped]]:
    """:func:`~fleetop.proxy.apply.apply_config`, and when the check fails on backend lines, again
    without them. Returns the result and the lines dropped; raises the last :class:`ApplyError` when
    the failure is not a backend's (or more than ``max_drops`` lines would go). ``runtime`` (HAProxy's
    runtime step) is tried with the config as published only: a salvaged body is reloaded."""
    current, dropped = cfg, list[Dropped]()
    undone = False  # a failed check after the runtime step reloaded the proxy to undo it
    while True:
        try:
            result = await apply_config(
                current,
                target,
                check=check,
                reload=reload,
                timeout=timeout,
                superseded=superseded,
                runtime=runtime if current is cfg else None,
            )
        except ApplyError as exc:
            exc.reloaded = exc.reloaded or undone
            if exc.stage != "check":
                raise
            salvaged = drop_blamed(cfg.kind, current.body, exc.output)
            if salvaged is None or len(dropped) + len(salvaged[1]) > max_drops:
                raise
            undone = exc.reloaded
            body, more = salvaged
            dropped.extend(more)
            current = current.model_copy(update={"body": body})
            continue
        return (replace(result, reloaded=True) if undone else result), dropped
