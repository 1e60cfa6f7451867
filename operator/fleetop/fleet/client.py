"""An asyncio client for fleet's API v1 that works the same against real fleet and ``fleetop node``.

It guards against every quirk in ``fleet-observed.md`` §13 instead of trusting the documentation:
empty collections are ``{}``, a full page still carries a token whose next page is ``{}`` (so paging
stops on a missing token *or* an empty page), an invalid desiredState is refused here because fleet
would store it and poison the unit, ``GET /state/<name>`` is never called (it drops the connection),
a global unit's missing ``currentState`` reads as None, a missing ``machineID`` means unscheduled.

Errors: a 4xx error entity raises FleetAPIError (permanent); 5xx, timeouts, refused or dropped
connections raise FleetUnavailable (temporary) after a few retries with jittered exponential backoff.

Several endpoints (``unix:///var/run/fleet.sock,http://10.0.0.2:49153``, one per fleet machine) give
failover: a request that cannot reach its endpoint (refused, dropped, timed out) goes at once to the
next one, and the client sticks to the endpoint that answered. An answer, even 4xx or 5xx, is fleet
speaking: every fleetd serves the same etcd-backed registry, so another machine would say the same,
and the answer is returned (or retried) as it is, not failed over. When no endpoint answers, the
error names each endpoint tried and why. A write that timed out may still land later at the endpoint
that did not answer (a frozen machine that resumes; HTTP cannot take a request back): every write is
idempotent, and the operator, level-triggered, undoes on its next pass whatever it does not want.

fleet cannot fence a write on leadership, so a leader passes ``write_guard`` (it raises NotLeader
when the leader's lease may have lapsed): it runs before *every attempt* of a write, on every endpoint, so a
retry or failover sent after a pause past the lease is refused like the first try.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, TypeVar
from urllib.parse import quote

from tenacity import (
    AsyncRetrying,
    retry_if_exception_type,
    stop_after_attempt,
    stop_after_delay,
    wait_exponential_jitter,
)

from fleetop.config import DEFAULT_FLEET_ENDPOINT, parse_fleet_endpoints
from fleetop.errors import FleetAPIError, FleetUnavailable, InputError
from fleetop.fleet.model import Machine, MetadataOp, Unit, UnitState, is_desired_state
from fleetop.fleet.units import UnitOption, check_option_values, parse_unit_name
from fleetop.http import HttpResponse, HttpSession, PlainSession, Session, Timeouts, json_body

if TYPE_CHECKING:
    from fleetop.http import Transport

DEFAULT_ENDPOINT = DEFAULT_FLEET_ENDPOINT
API_PREFIX = "/fleet/v1"
MAX_PAGES = 10_000
MAX_MEMO_PAGES = 1_000
"""Pages remembered for re-reading unchanged bodies (100 items each; cleared when full)."""
T = TypeVar("T")
_PageKey = tuple[str, tuple[tuple[str, str], ...]]
WriteResult = Literal["created", "updated", "unchanged"]
log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How temporary failures are retried: ``attempts`` tries in all, waits growing from ``initial``
    to ``maximum`` seconds with up to ``jitter`` seconds of randomness, never past ``total`` seconds."""

    attempts: int = 4
    initial: float = 0.2
    maximum: float = 2.0
    jitter: float = 0.2
    total: float = 15.0

    @classmethod
    def none(cls) -> RetryPolicy:
        return cls(attempts=1)


@dataclass
class ClientStats:
    """Counters the operator exports as metrics: calls by operation, errors by kind, retries."""

    calls: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    retries: int = 0
    failovers: int = 0

    def snapshot(self) -> dict[str, Any]:
        return {
            "calls": dict(self.calls),
            "errors": dict(self.errors),
            "retries": self.retries,
            "failovers": self.failovers,
        }


def _error_message(resp: HttpResponse) -> str:
    """The message of fleet's error entity ``{"error": {"code", "message"}}``, or the raw body."""
    try:
        data = json.loads(resp.body)
    except ValueError:
        return resp.text.strip()
    if isinstance(data, dict) and isinstance(data.get("error"), dict):
        message = data["error"].get("message", "")
        return message if isinstance(message, str) else str(message)
    return resp.text.strip()


def _check_desired_state(state: str) -> None:
    if not is_desired_state(state):
        raise InputError(
            f"invalid desiredState {state!r}: must be one of inactive, loaded, launched", where="fleet"
        )


def _check_name(name: str) -> str:
    try:
        parse_unit_name(name)
    except ValueError as exc:
        raise InputError(str(exc), where=f"unit {name!r}") from exc
    return quote(name, safe="")


class FleetClient:
    """fleet API v1 over a unix socket or HTTP. Use ``async with FleetClient(...)`` or ``aclose()``.

    ``endpoint`` is one endpoint, a comma-separated list, or a sequence (default: ``FLEETCTL_ENDPOINT``,
    else ``unix:///var/run/fleet.sock``); a bad one raises ConfigError naming it. ``session_factory``
    makes the session of one endpoint; ``transport`` (tests: ``httpx.MockTransport``) replaces the
    network under the default session of every endpoint; ``plain`` makes
    :class:`~fleetop.http.PlainSession` ones (standard library: a third of httpx's CPU per request and
    nothing heavy to import; the operator and the CLI use them) instead of httpx's.
    """

    def __init__(
        self,
        endpoint: str | Sequence[str] | None = None,
        *,
        timeouts: Timeouts | None = None,
        retry: RetryPolicy | None = None,
        session_factory: Callable[[str], Session] | None = None,
        stats: ClientStats | None = None,
        write_guard: Callable[[], None] | None = None,
        transport: Transport | None = None,
        plain: bool = False,
    ) -> None:
        given = endpoint or os.environ.get("FLEETCTL_ENDPOINT") or DEFAULT_ENDPOINT
        text = given if isinstance(given, str) else ",".join(given)
        self.endpoints = parse_fleet_endpoints(text, "fleet endpoint")
        self.retry = retry or RetryPolicy()
        self.stats = stats or ClientStats()
        self.write_guard = write_guard
        timeouts = timeouts or Timeouts(connect=3.0, read=15.0, write=15.0, pool=3.0)
        kind = PlainSession if plain else HttpSession
        self._factory = session_factory or (
            lambda where: (
                HttpSession(where, timeouts=timeouts, headers={"User-Agent": "fleetop"}, transport=transport)
                if transport is not None
                else kind(where, timeouts=timeouts, headers={"User-Agent": "fleetop"})
            )
        )
        self._sessions: dict[int, Session] = {}
        self._current = 0
        self.unreachable: dict[str, str] = {}
        """Endpoint -> why it could not be reached, from the latest request that found none answering
        (empty once one answers)."""
        self._page_memo: dict[_PageKey, tuple[bytes, list[Any], str | None]] = {}
        """Request -> (digest of the body, its parsed items, its next page token)."""

    @property
    def endpoint(self) -> str:
        """The endpoint requests go to first: the one that answered last."""
        return self.endpoints[self._current]

    def _session(self, index: int) -> Session:
        session = self._sessions.get(index)
        if session is None:
            session = self._sessions[index] = self._factory(self.endpoints[index])
        return session

    async def aclose(self) -> None:
        sessions, self._sessions = list(self._sessions.values()), {}
        for session in sessions:
            await session.aclose()

    async def __aenter__(self) -> FleetClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # -- transport ---------------------------------------------------------------------------------

    async def _retrying(self, call: Callable[[], Awaitable[T]]) -> T:
        policy = self.retry
        attempt_no = 0
        async for attempt in AsyncRetrying(
            stop=stop_after_attempt(max(1, policy.attempts)) | stop_after_delay(policy.total),
            wait=wait_exponential_jitter(multiplier=policy.initial, max=policy.maximum, jitter=policy.jitter),
            retry=retry_if_exception_type(FleetUnavailable),
            reraise=True,
        ):
            with attempt:
                attempt_no += 1
                if attempt_no > 1:
                    self.stats.retries += 1
                return await call()
        raise AssertionError("unreachable")  # pragma: no cover

    async def _request(
        self,
        operation: str,
        method: str,
        path: str,
        *,
        params: Sequence[tuple[str, str]] = (),
        body: Any = None,
        accept: Iterable[int] = (),
    ) -> HttpResponse:
        """One API call with retries. Returns 2xx responses and any status in ``accept``."""
        accepted = set(accept)

        async def once() -> HttpResponse:
            self.stats.calls[operation] += 1
            headers: dict[str, str] = {}
            content = None
            if body is not None:
                headers["Content-Type"] = "application/json"
                content = json_body(body)
            resp = await self._send(method, API_PREFIX + path, [("alt", "json"), *params], content, headers)
            if 200 <= resp.status < 300 or resp.status in accepted:
                return resp
            message = _error_message(resp)
            if resp.status >= 500:
                self.stats.errors["server"] += 1
                raise FleetUnavailable(f"{method} {path}: fleet answered {resp.status}: {message}")
            self.stats.errors["client"] += 1
            raise FleetAPIError(resp.status, message, method=method, path=API_PREFIX + path)

        return await self._retrying(once)

    async def _send(
        self,
        method: str,
        path: str,
        params: list[tuple[str, str]],
        content: bytes | None,
        headers: dict[str, str],
    ) -> HttpResponse:
        """Send to the current endpoint; on a transport failure, to each next one in turn. The first
        that answers becomes current. FleetUnavailable naming every endpoint when none answers."""
        failures: dict[str, str] = {}
        last: FleetUnavailable | None = None
        count = len(self.endpoints)
        for step in range(count):
            index = (self._current + step) % count
            where = self.endpoints[index]
            if method != "GET" and self.write_guard is not None:
                self.write_guard()  # before every attempt and every failover: a timeout may outlast the lease
            try:
                resp = await self._session(index).request(
                    method, path, params=params, content=content, headers=headers
                )
            except FleetUnavailable as exc:
                self.stats.errors["unavailable"] += 1
                failures[where], last = str(exc), exc
                continue
            if index != self._current:
                self.stats.failovers += 1
                log.warning("fleet: %s unreachable, using %s", self.endpoint, where)
                self._current = index
            self.unreachable = {}
            return resp
        self.unreachable = failures
        assert last is not None
        if count == 1:
            raise last
        tried = "; ".join(f"{where}: {why}" for where, why in failures.items())
        raise FleetUnavailable(f"no fleet endpoint answered ({tried})") from last

    async def _pages(
        self,
        operation: str,
        path: str,
        key: str,
        parse: Callable[[Any], T],
        params: Sequence[tuple[str, str]] = (),
    ) -> list[T]:
        """Every item of a paginated collection, parsed. Stops on a missing token or an empty page.

        A page whose body is byte for byte the one this client read last time under the same request
        is not decoded again: its parsed (immutable) items are reused, the very objects, so a caller can
        tell an unchanged listing by identity. Polling a large, quiet cluster then costs the requests
        and little else. The body itself is not kept, only its digest (BLAKE2b, 128 bits)."""
        items: list[T] = []
        token: str | None = None
        for _ in range(MAX_PAGES):
            page_params = [*params, ("nextPageToken", token)] if token else list(params)
            resp = await self._request(operation, "GET", path, params=page_params)
            memo_key = (path, tuple(page_params))
            seen = self._page_memo.get(memo_key)
            digest = hashlib.blake2b(resp.body, digest_size=16).digest()
            if seen is not None and seen[0] == digest:
                batch, token = seen[1], seen[2]
            else:
                batch, token = self._parse_page(resp, path, key, parse)
                if len(self._page_memo) >= MAX_MEMO_PAGES:
                    self._page_memo.clear()
                self._page_memo[memo_key] = (digest, batch, token)
            items.extend(batch)
            if not token or not batch:
                return items
        raise FleetUnavailable(f"GET {path}: more than {MAX_PAGES} pages")

    def _parse_page(
        self, resp: HttpResponse, path: str, key: str, parse: Callable[[Any], T]
    ) -> tuple[list[T], str | None]:
        page = self._decode(resp, path)
        if not isinstance(page, dict):
            raise FleetUnavailable(f"GET {path}: expected a JSON object page")
        raw = page.get(key) or []
        if not isinstance(raw, list):
            raise FleetUnavailable(f"GET {path}: {key!r} is not a list")
        return [parse(item) for item in raw], page.get("nextPageToken") or None

    @staticmethod
    def _decode(resp: HttpResponse, path: str) -> Any:
        try:
            return json.loads(resp.body)
        except ValueError as exc:
            raise FleetUnavailable(f"GET {path}: response is not JSON: {exc}") from exc

    # -- units -------------------------------------------------------------------------------------

    async def list_units(self) -> list[Unit]:
        """Every unit, sorted by name as fleet serves them."""
        return await self._pages("list_units", "/units", "units", Unit.from_json)

    async def get_unit(self, name: str) -> Unit | None:
        """One unit, or None if fleet does not know it."""
        path = f"/units/{_check_name(name)}"
        resp = await self._request("get_unit", "GET", path, accept=(404,))
        if resp.status == 404:
            return None
        return Unit.from_json(self._decode(resp, path))

    async def create_unit(
        self, name: str, options: Sequence[UnitOption], desired_state: str | None = None
    ) -> WriteResult:
        """PUT a unit with its options (and optionally its desired state).

        ``created``: fleet stored new content (a new unit, or different content replacing an old one);
        ``updated``: same content, desired state applied; ``unchanged``: same content, no state given.
        """
        if desired_state is not None:
            _check_desired_state(desired_state)
        if not options:
            raise InputError("a unit needs at least one option", where=f"unit {name!r}")
        try:
            check_option_values(options)
        except ValueError as exc:
            raise InputError(str(exc), where=f"unit {name!r}") from exc
        body: dict[str, Any] = {"name": name, "options": [o.to_json() for o in options]}
        if desired_state is not None:
            body["desiredState"] = desired_state
        path = f"/units/{_check_name(name)}"
        resp = await self._request("create_unit", "PUT", path, body=body, accept=(409,))
        if resp.status == 409:
            if desired_state is None and "must provide DesiredState" in _error_message(resp):
                return "unchanged"
            raise FleetAPIError(409, _error_message(resp), method="PUT", path=API_PREFIX + path)
        return "created" if resp.status == 201 else "updated"

    async def set_desired_state(self, name: str, state: str) -> None:
        """Change an existing unit's desired state (FleetAPIError 409 if the unit does not exist)."""
        _check_desired_state(state)
        path = f"/units/{_check_name(name)}"
        await self._request("set_desired_state", "PUT", path, body={"desiredState": state, "name": name})

    async def destroy_unit(self, name: str) -> bool:
        """Delete a unit. False if fleet did not know it (404)."""
        path = f"/units/{_check_name(name)}"
        resp = await self._request("destroy_unit", "DELETE", path, accept=(404,))
        return resp.status != 404

    # -- state, machines, discovery ---------------------------------------------------------------

    async def list_states(
        self, machine_id: str | None = None, unit_name: str | None = None
    ) -> list[UnitState]:
        """UnitStates, optionally filtered (exact match, combined with AND). Never ``/state/<name>``."""
        params: list[tuple[str, str]] = []
        if machine_id:
            params.append(("machineID", machine_id))
        if unit_name:
            params.append(("unitName", unit_name))
        return await self._pages("list_states", "/state", "states", UnitState.from_json, params)

    async def list_machines(self) -> list[Machine]:
        """Live machines, sorted by id."""
        return await self._pages("list_machines", "/machines", "machines", Machine.from_json)

    async def patch_machine_metadata(self, ops: Sequence[MetadataOp]) -> None:
        """Add, replace or remove machine metadata keys, in the wire form fleet really accepts."""
        for op in ops:
            if op.op not in ("add", "replace", "remove"):
                raise InputError(f"invalid op {op.op!r}: expect add, remove, or replace", where="fleet")
            if op.op != "remove" and not op.value:
                raise InputError("invalid value: add and replace require a value", where="fleet")
        await self._request("patch_machines", "PATCH", "/machines", body=[op.to_json() for op in ops])

    async def discovery(self) -> dict[str, Any]:
        """The API's discovery document."""
        resp = await self._request("discovery", "GET", "/discovery")
        data = self._decode(resp, "/discovery")
        if not isinstance(data, dict):
            raise FleetUnavailable("GET /discovery: expected a JSON object")
        return data
