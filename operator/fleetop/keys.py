"""The etcd key layout (DESIGN.md §2).

Every key fleetop reads or writes is built here, so the layout is written down once. Keys are logical
(``/desired/services/web``): the etcd client puts the installation root (``--prefix``) in front.

Names come from keys anyone may write (``etcdctl put /desired/services/UPPER``, ``.../../x``, a name
with a newline or 300 characters). A spec with such a name is refused (``Invalid``), and that report
must itself land somewhere safe: every key built from a name (status, events, published configs)
goes through :func:`segment`, which keeps a valid name as it is and turns anything else into one
printable key segment that cannot climb out of its prefix or collide with a valid name.
"""

from __future__ import annotations

import re
from typing import Literal
from urllib.parse import unquote

Kind = Literal["services", "proxies"]
KIND_NAMES: dict[Kind, str] = {"services": "Service", "proxies": "Proxy"}
"""How a kind is named in documents and output (``kind: Service``)."""
_VALID_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_KEY_PATH = re.compile(r"(/[A-Za-z0-9._-]+)+")
_KEPT = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-")
SEGMENT_CHARS = 200


def is_name(name: str) -> bool:
    """A valid name of a service or proxy (the rule of ``fleetop.models.base.check_name``)."""
    return bool(_VALID_NAME.match(name))


def segment(name: str) -> str:
    """``name`` as one key segment: a valid name (``[a-z0-9-]``, ≤ 63) unchanged; otherwise every
    byte outside ``[A-Za-z0-9_.-]`` percent-encoded (``/`` and ``%`` included, and the dots of ``.``
    and ``..``), so the result is printable, has no ``/``, and differs from every valid name; past
    SEGMENT_CHARS it is cut and ends with ``~`` and a hash of the whole name."""
    if not name or _VALID_NAME.match(name):
        return name
    raw = name.encode("utf-8", "surrogateescape")
    out = "".join(chr(b) if chr(b) in _KEPT else f"%{b:02X}" for b in raw)
    if set(out) <= {"."}:
        out = out.replace(".", "%2E")
    if len(out) > SEGMENT_CHARS:
        import hashlib  # here: OpenSSL's start-up is a few ms of every CLI call, and names this long are rare

        out = f"{out[: SEGMENT_CHARS - 17]}~{hashlib.sha256(raw).hexdigest()[:16]}"
    return out


def unsegment(text: str) -> str:
    """The name a :func:`segment` came from (a cut one, ending in a hash, stays as it is)."""
    if "%" not in text or "~" in text:
        return text
    return unquote(text, errors="surrogateescape")


def is_key_path(text: str) -> bool:
    """An etcd key path a registration prefix may be (``/services/web``, a trailing ``/`` allowed):
    ``/``-separated segments of letters, digits, ``.``, ``_`` and ``-``, none of them ``..``."""
    return bool(_KEY_PATH.fullmatch(text.rstrip("/"))) and ".." not in text.split("/")


def child(key: str, prefix: str) -> str | None:
    """The one segment of ``key`` right under ``prefix`` (which ends in ``/``): ``8001`` of
    ``/services/web/8001`` under ``/services/web/``; None for a key elsewhere, the prefix itself, or
    a key deeper down."""
    if not key.startswith(prefix):
        return None
    rest = key[len(prefix) :]
    return rest if rest and "/" not in rest else None


class Keys:
    """Key builder: the logical keys of one installation (the root is the etcd client's)."""

    __slots__ = ()

    def desired(self, kind: Kind, name: str = "") -> str:
        return f"/desired/{kind}/{name}"

    def status(self, kind: Kind, name: str = "") -> str:
        return f"/status/{kind}/{segment(name)}"

    def agent_status(self, proxy: str, machine: str = "") -> str:
        """An agent's report, ``/status/agents/<proxy>/<machine>``: outside ``/status/proxies/`` so an
        agent's role never covers the operator's proxy status, and one key per machine so a role can
        be limited to one machine's keys (``scripts/etcd-roles --agent-machine``)."""
        return f"/status/agents/{segment(proxy)}/{machine}"

    def agent_statuses(self) -> str:
        return "/status/agents/"

    def registrations(self, spec_prefix: str) -> str:
        """A discovery prefix from a spec (``/services/web``) as a key prefix ending in ``/``."""
        return f"{spec_prefix.rstrip('/')}/"

    def default_registrations(self, service: str) -> str:
        return self.registrations(f"/services/{service}")

    def leader(self) -> str:
        return "/fleetop/leader"

    def observed(self) -> str:
        """The leader's account of how fresh its view is (``fleetop status`` reads it)."""
        return "/fleetop/observed"

    def events(self, kind: Kind | None = None, name: str = "") -> str:
        """``/fleetop/events/<kind>/<name>/`` (a trailing ``/``: a prefix of ``<ts>-<id>`` keys); without
        a name, every event of that kind; without a kind, every event. A service and a proxy of one
        name (one of them refused) keep their events apart."""
        if kind is None:
            return "/fleetop/events/"
        return f"/fleetop/events/{kind}/{segment(name)}/" if name else f"/fleetop/events/{kind}/"

    def proxy_config(self, proxy: str) -> str:
        return f"/fleetop/proxies/{segment(proxy)}/config"

    def proxy_configs(self) -> str:
        return "/fleetop/proxies/"

    def name_of(self, key: str, kind: Kind, where: Literal["desired", "status"] = "desired") -> str | None:
        """The object name in ``/desired/services/<name>`` or ``/status/services/<segment>``; None for
        keys elsewhere, and for keys below a status. Under ``/desired`` nothing is written below a name,
        so a deeper key (``/desired/services/../x``) is a name with a ``/`` in it: refused like any
        invalid name, never ignored."""
        if where == "desired":
            base = self.desired(kind)
            return (key[len(base) :] or None) if key.startswith(base) else None
        segment = child(key, self.status(kind))
        return unsegment(segment) if segment else None
