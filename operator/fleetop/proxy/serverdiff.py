"""Whether a new nginx config is one nginx already accepted with only upstream server addresses changed. Pure.

Applying a registration change is dominated by ``nginx -t``: a process start-up of about 5 ms of CPU,
15-40 ms of wall time on a busy machine, before the rename and the reload. confd pays it too, and a
second process for the reload. But a config that differs from one nginx accepted (it passed the check
or was proven here, and the agent installed it) only in ``server <IPv4|[IPv6]>:<port>;`` lines inside
``upstream`` blocks, each upstream keeping at least one server, cannot fail the check: every other
line is the same, an address literal needs no DNS, and the address and port are in range. The agent
then installs it without starting the checker. It is still proven before the rename, and nginx's
master parses it again on reload and keeps the old workers if it refused it, so it is never served
unchecked.

Anything else goes through the check: a changed directive, a host name (nginx resolves it at load), an
emptied upstream (nginx refuses ``upstream`` without servers), a server line with parameters, any
``include`` (the included file may have changed), or a spec's own ``checkCmd``.
"""

from __future__ import annotations

import ipaddress
import re

_UPSTREAM_OPEN = re.compile(r"\s*upstream\s+[A-Za-z0-9_]+\s*\{\s*")
_BLOCK_CLOSE = re.compile(r"\s*\}\s*")
_SERVER = re.compile(r"\s*server\s+(\S+);\s*")
_INCLUDE = re.compile(r"\s*include\s")


def _address_literal(text: str) -> bool:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or port.startswith("0") or not 1 <= int(port) <= 65535:
        return False
    if "%" in host:  # an IPv6 zone: Python's parser takes it, nginx's does not
        return False
    try:
        if host.startswith("[") and host.endswith("]"):
            ipaddress.IPv6Address(host[1:-1])
        else:
            ipaddress.IPv4Address(host)
    except ValueError:
        return False
    return True


def _skeleton(text: str, *, literals_only: bool) -> list[str] | None:
    """The lines of ``text`` without the server lines of its upstream blocks; None when the text
    cannot be proven (an empty upstream, an include, or with ``literals_only`` a server that is not an
    address literal)."""
    kept: list[str] = []
    servers: int | None = None  # inside an upstream block: how many servers so far
    for line in text.split("\n"):
        if servers is not None:
            server = _SERVER.fullmatch(line)
            if server is not None:
                if literals_only and not _address_literal(server.group(1)):
                    return None
                servers += 1
                continue
            if _BLOCK_CLOSE.fullmatch(line):
                if servers == 0:
                    return None
                servers = None
        elif _UPSTREAM_OPEN.fullmatch(line):
            servers = 0
        elif _INCLUDE.match(line):
            return None
        kept.append(line)
    return kept if servers is None else None


def servers_only_change(accepted: str, new: str) -> bool:
    """True when ``new`` is ``accepted`` (a config nginx accepted) with only upstream server address
    literals added, removed or changed, and every upstream still has one."""
    if accepted == new:
        return True
    old_lines = _skeleton(accepted, literals_only=False)
    return old_lines is not None and _skeleton(new, literals_only=True) == old_lines
