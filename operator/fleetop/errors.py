"""The one error tree of fleetop.

Every failure that crosses a module boundary is one of these. Third-party exceptions (etcd3aio, grpc,
httpx, pydantic, yaml) are translated where they are caught (``raise ... from exc``) so callers never
see them.

::

    FleetopError
    ├── InputError            bad input from a user: file, document, key, JSON path; never retried
    │   └── SpecInvalid       a spec that does not validate (carries the JSON path)
    ├── ConfigError           bad flags, environment, certificates
    ├── NotFound              a key, unit or resource that does not exist
    ├── Conflict              a compare-and-swap lost (someone else wrote first)
    ├── NotLeader             a fenced write attempted by a process that lost leadership
    ├── TemporaryError        worth retrying with backoff (``delay`` hints how long to wait)
    │   ├── EtcdUnavailable   etcd unreachable, timed out, or no leader
    │   └── FleetUnavailable  fleet API unreachable, timed out, or answered 5xx
    └── PermanentError        retrying the same request will not help
        ├── EtcdDenied        authentication or permission failure
        ├── Compacted         a watch asked for a revision etcd already compacted
        ├── FleetAPIError     fleet answered a 4xx error entity (``code``, ``message``)
        ├── ProxyError        a proxy config failed its check or its reload
        └── RenderError       a spec or config that cannot be written out: a unit file, a proxy config
"""

from __future__ import annotations


class FleetopError(Exception):
    """The base of every error fleetop raises on purpose."""


class InputError(FleetopError):
    """Input from a user that fleetop will not accept.

    ``where`` names the place: a file and document number, an etcd key, a line.
    ``path`` is the JSON path inside the document (``$.unit.execStart``) when there is one.
    """

    def __init__(self, message: str, *, where: str = "", path: str = "") -> None:
        self.message = message
        self.where = where
        self.path = path
        super().__init__(self.describe())

    def describe(self) -> str:
        parts = [p for p in (self.where, self.path) if p]
        prefix = ": ".join(parts)
        return f"{prefix}: {self.message}" if prefix else self.message


class SpecInvalid(InputError):
    """A spec that fails validation. ``errors`` lists (json_path, message) pairs, first one in ``path``."""

    def __init__(self, errors: list[tuple[str, str]], *, where: str = "") -> None:
        self.errors = errors or [("$", "invalid")]
        first_path, first_message = self.errors[0]
        more = f" (and {len(self.errors) - 1} more)" if len(self.errors) > 1 else ""
        super().__init__(first_message + more, where=where, path=first_path)

    def all_messages(self) -> list[str]:
        return [f"{path}: {message}" for path, message in self.errors]


class ConfigError(FleetopError):
    """Flags, environment or files that configure fleetop are wrong."""


class NotFound(FleetopError):
    """The thing asked for does not exist."""


class Conflict(FleetopError):
    """A compare-and-swap lost: the key changed since it was read."""


class NotLeader(FleetopError):
    """A write fenced on leadership was refused because this process is not the leader."""


class TemporaryError(FleetopError):
    """A failure worth retrying. ``delay`` is a hint in seconds (None: use the caller's backoff)."""

    def __init__(self, message: str, *, delay: float | None = None) -> None:
        self.delay = delay
        super().__init__(message)


class EtcdUnavailable(TemporaryError):
    """etcd could not be reached, timed out, or has no leader."""


class FleetUnavailable(TemporaryError):
    """The fleet API could not be reached, timed out, or answered with a server error."""


class PermanentError(FleetopError):
    """A failure that the same request will hit again."""


class EtcdDenied(PermanentError):
    """etcd refused the credentials or the permission."""


class Compacted(PermanentError):
    """A watch asked for a revision that etcd has compacted away; relist from ``compact_revision``."""

    def __init__(self, compact_revision: int) -> None:
        self.compact_revision = compact_revision
        super().__init__(f"revision compacted (compact revision {compact_revision})")


class FleetAPIError(PermanentError):
    """fleet answered an error entity ``{"error": {"code", "message"}}`` with a 4xx status."""

    def __init__(self, code: int, message: str, *, method: str = "", path: str = "") -> None:
        self.code = code
        self.message = message
        self.method = method
        self.path = path
        where = f"{method} {path}: ".strip() if method or path else ""
        super().__init__(f"{where}{' ' if where else ''}fleet answered {code}: {message or '(no message)'}")


class ProxyError(PermanentError):
    """A proxy config failed its check, its install, or its reload."""


class RenderError(PermanentError):
    """What a spec or the installation asks for cannot be written out: a unit file (a line too long,
    a character a unit cannot carry) or a proxy config (template syntax, an undefined name, an unsafe
    value, a size or time limit). The message says which and is shown as it is (status, CLI)."""
