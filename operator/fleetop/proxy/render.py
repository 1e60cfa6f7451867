"""Render an nginx or HAProxy config from a ProxySpec and the registered backends. Pure.

The same inputs always give the same bytes (services, hosts, paths and backends are sorted; equal
addresses collapse into one server), so the operator can compare hashes and publish only real
changes (consul-template's renderer: render pure, compare bytes).

Nothing untrusted reaches the text unchecked. Route hosts and paths are validated by the spec
models, backend addresses by :mod:`fleetop.discovery.addresses`, and runtime paths here. As a last
line of defence every ``{{ expression }}`` passes through :func:`checked_value` (Jinja's
``finalize``; also available as the ``conf`` filter), which refuses any character outside a small
safe set, so a value that slipped past validation fails the render instead of becoming a directive.

Built-in templates are trusted package data; a spec's own ``template`` runs in Jinja's immutable
sandbox because whoever can write ``/desired/proxies`` should not be able to run code in the
operator. Templates are compiled once and cached by their text: rendering is linear in the number of
backends (1,000 services x 10 backends render in a few tens of milliseconds).
"""

from __future__ import annotations

import contextlib
import functools
import gc
import hashlib
import importlib.resources
import re
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import jinja2
import jinja2.sandbox

from fleetop.discovery.addresses import Registration
from fleetop.errors import RenderError
from fleetop.models.proxy import ProxySpec
from fleetop.models.status import PublishedConfig

_SAFE_VALUE_RE = re.compile(r"[A-Za-z0-9._:/\-\[\]*~]*")
_SAFE_PATH_RE = re.compile(r"/[A-Za-z0-9._/\-]*")
DEFAULT_PROXY_ROOT = "/var/lib/fleetop/proxies"
BUILTIN_TEMPLATES = {"nginx": "nginx.conf.j2", "haproxy": "haproxy.cfg.j2"}
NOT_FOUND_BACKEND = "fleetop_not_found"


def checked_value(value: Any) -> str:
    """The last line of defence: a value printed into a config must be one safe token."""
    if type(value) is str and _SAFE_VALUE_RE.fullmatch(value):
        return value  # the fast path: every validated string
    if type(value) is int:
        return str(value)
    if isinstance(value, jinja2.Undefined):
        str(value)  # StrictUndefined raises, naming what was undefined
    if isinstance(value, bool) or value is None:
        raise RenderError(f"refusing to print {value!r} into a config (not a config value)")
    text = str(value)
    if not _SAFE_VALUE_RE.fullmatch(text):
        shown = text[:60].encode("unicode_escape").decode("ascii")
        raise RenderError(
            f"refusing to print {shown!r} into a config: only letters, digits and ._:/-[]*~ are allowed"
        )
    return text


@contextlib.contextmanager
def paused_gc() -> Iterator[None]:
    """No cyclic garbage collection while the block runs (it runs again after, as before).

    Parsing and rendering 100,000 backends allocate about a million small objects (tuples, strings),
    none of them in a cycle; each allocation past the collector's threshold starts a collection, and
    the collections of the older generations walk every object the process holds (the registration
    caches first of all): at 100,000 keys they took a third of a full parse and render. Reference
    counting frees all of it as before; a cycle made meanwhile waits for the next collection."""
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


@dataclass(frozen=True, slots=True)
class RenderPaths:
    """Where the proxy keeps its runtime files: pid, logs, temp dirs, admin socket. One directory."""

    runtime_dir: str

    def __post_init__(self) -> None:
        if not _SAFE_PATH_RE.fullmatch(self.runtime_dir) or ".." in self.runtime_dir.split("/"):
            raise RenderError(
                f"runtime dir {self.runtime_dir!r} must be an absolute path of letters, digits and ._/-"
            )

    def _file(self, name: str) -> str:
        return f"{self.runtime_dir.rstrip('/')}/{name}"

    @property
    def pid_file(self) -> str:
        return self._file("proxy.pid")

    @property
    def error_log(self) -> str:
        return self._file("error.log")

    @property
    def access_log(self) -> str:
        return self._file("access.log")

    @property
    def stats_socket(self) -> str:
        return self._file("admin.sock")

    def temp_dir(self, what: str) -> str:
        """nginx's ``<what>_temp_path`` (client_body, proxy, fastcgi, uwsgi, scgi)."""
        return self._file(f"{what}_temp")


def default_runtime_dir(proxy: str, root: str = DEFAULT_PROXY_ROOT) -> str:
    """The one directory per proxy shared by the operator (renders it) and the agent (default
    config path ``<dir>/<kind>.conf``)."""
    return f"{root.rstrip('/')}/{proxy}"


@dataclass(frozen=True, slots=True)
class Rendered:
    text: str
    hash: str

    def published(self, spec: ProxySpec, generation: int) -> PublishedConfig:
        """The value to publish at ``/fleetop/proxies/<name>/config`` for agents."""
        return PublishedConfig(
            hash=self.hash,
            generation=generation,
            kind=spec.kind,
            body=self.text,
            check_cmd=spec.check_cmd,
            reload_cmd=spec.reload_cmd,
            config_path=spec.config_path,
        )


class BackendView(NamedTuple):
    """One server line: ``id`` is a stable server name (HAProxy), ``address`` is ``host:port``.

    Views are named tuples: the render builds 10,000 of them, and tuples are the cheapest to make.
    """

    id: str
    host: str
    port: int
    address: str


class ServiceView(NamedTuple):
    name: str
    upstream: str
    backends: tuple[BackendView, ...]


class RouteView(NamedTuple):
    service: str
    host: str | None
    path: str
    upstream: str
    has_backends: bool


class ServerView(NamedTuple):
    """An nginx ``server`` block: one per route host, plus the default server (``host`` None)."""

    host: str | None
    routes: tuple[RouteView, ...]
    has_root: bool


@dataclass(frozen=True, slots=True)
class Listen:
    host: str
    port: int
    nginx: str
    haproxy: str


class HostAcl(NamedTuple):
    name: str
    method: str
    value: str


class Rule(NamedTuple):
    """One HAProxy ``use_backend <backend> if <acls...>``, in the order HAProxy evaluates them."""

    backend: str
    acls: tuple[str, ...]


_ROUTED: dict[int, tuple[weakref.ref[ProxySpec], tuple[str, ...]]] = {}


def routed_services(spec: ProxySpec) -> tuple[str, ...]:
    """The services ``spec`` routes to, sorted, once per spec object: a pass at 1,001 routes asks
    for them several times, and a spec object is never changed (a new spec is a new object)."""
    found = _ROUTED.get(id(spec))
    if found is not None and found[0]() is spec:
        return found[1]
    services = tuple(sorted({route.service for route in spec.routes}))
    if len(_ROUTED) >= 256:
        _ROUTED.clear()
    _ROUTED[id(spec)] = (weakref.ref(spec), services)
    return services


def upstream_name(service: str) -> str:
    """``web-api`` → ``svc_web_api``: a safe nginx upstream / HAProxy backend name."""
    return "svc_" + service.replace("-", "_")


def _listen(value: str) -> Listen:
    host, _, port_text = value.rpartition(":")
    port = int(port_text)
    nginx = str(port) if host == "*" else value
    return Listen(host=host, port=port, nginx=nginx, haproxy=value)


def service_view(service: str, registrations: Sequence[Registration]) -> ServiceView:
    """What a template sees of one routed service with these registrations."""
    return ServiceView(service, upstream_name(service), _backends(registrations))


def _backends(registrations: Sequence[Registration]) -> tuple[BackendView, ...]:
    unique = {(r.host, r.port) for r in registrations}
    views = []
    for host, port in sorted(unique):
        if ":" in host:
            views.append(BackendView(f"{host}:{port}", host, port, f"[{host}]:{port}"))
        else:
            address = f"{host}:{port}"
            views.append(BackendView(address, host, port, address))
    return tuple(views)


def _route_order(route: RouteView) -> tuple[int, str]:
    return (-len(route.path), route.path)


def _host_order(host: str) -> tuple[int, int, str]:
    """Exact names first, then wildcards longest first (nginx's server_name precedence)."""
    return (1, -len(host), host) if host.startswith("*.") else (0, 0, host)


def _host_acl(host: str) -> HostAcl:
    if host.startswith("*."):
        return HostAcl(name=f"wildcard_{host[2:]}", method="end", value=host[1:])
    return HostAcl(name=f"host_{host}", method="str", value=host)


def _haproxy_rules(
    by_host: dict[str | None, list[RouteView]], path_acls: Mapping[str, str]
) -> tuple[list[HostAcl], list[Rule], str]:
    """HAProxy's routing mirroring nginx's: host first, then the longest path; unrouted → 404."""
    acls: list[HostAcl] = []
    rules: list[Rule] = []
    for host in sorted((h for h in by_host if h is not None), key=_host_order):
        acl = _host_acl(host)
        acls.append(acl)
        routes = by_host[host]
        for route in routes:
            extra = () if route.path == "/" else (path_acls[route.path],)
            rules.append(Rule(route.upstream, (acl.name, *extra)))
        if all(r.path != "/" for r in routes):
            rules.append(Rule(NOT_FOUND_BACKEND, (acl.name,)))
    default = NOT_FOUND_BACKEND
    for route in by_host.get(None, []):
        if route.path == "/":
            default = route.upstream
        else:
            rules.append(Rule(route.upstream, (path_acls[route.path],)))
    return acls, rules, default


def build_context(
    proxy_name: str,
    spec: ProxySpec,
    backends: Mapping[str, Sequence[Registration]],
    paths: RenderPaths,
) -> dict[str, Any]:
    """Everything a template sees; the same for built-in and custom templates."""
    services = {
        name: ServiceView(name, upstream_name(name), _backends(backends.get(name, ())))
        for name in routed_services(spec)
    }
    return _context_of(proxy_name, spec, services, paths)


def _context_of(
    proxy_name: str, spec: ProxySpec, services: Mapping[str, ServiceView], paths: RenderPaths
) -> dict[str, Any]:
    routes = [
        RouteView(
            r.service, r.host, r.path or "/", services[r.service].upstream, bool(services[r.service].backends)
        )
        for r in spec.routes
    ]
    by_host: dict[str | None, list[RouteView]] = {}
    for route in sorted(routes, key=_route_order):
        by_host.setdefault(route.host, []).append(route)
    servers = [
        ServerView(host, tuple(by_host[host]), any(r.path == "/" for r in by_host[host]))
        for host in sorted((h for h in by_host if h is not None), key=_host_order)
    ]
    default_routes = tuple(by_host.get(None, []))
    servers.append(ServerView(None, default_routes, any(r.path == "/" for r in default_routes)))
    path_acls = {
        path: f"path_{i}" for i, path in enumerate(sorted({r.path for r in routes if r.path != "/"}))
    }
    host_acls, rules, default_backend = _haproxy_rules(by_host, path_acls)
    return {
        **_scalars_of(proxy_name, spec, paths),
        "spec": spec,
        "services": list(services.values()),
        "routes": routes,
        "servers": servers,
        "host_acls": host_acls,
        "path_acls": sorted(path_acls.items(), key=lambda item: item[1]),
        "rules": rules,
        "default_backend": default_backend,
    }


def _scalars_of(proxy_name: str, spec: ProxySpec, paths: RenderPaths) -> dict[str, Any]:
    """The values of the context fixed by the proxy and its spec (``FRAGMENT_NAMES`` among them)."""
    return {
        "proxy": proxy_name,
        "listen": _listen(str(spec.listen)),
        "not_found_backend": NOT_FOUND_BACKEND,
        "handler_header": spec.headers.handler,
        "paths": paths,
    }


@functools.lru_cache(maxsize=64)
def compile_template(text: str, *, sandboxed: bool) -> jinja2.Template:
    """Compile once per distinct template text (built-ins trusted, custom ones sandboxed)."""
    options: dict[str, Any] = {
        "undefined": jinja2.StrictUndefined,
        "autoescape": False,
        "trim_blocks": True,
        "lstrip_blocks": True,
        "keep_trailing_newline": True,
        "finalize": checked_value,
    }
    env = (
        jinja2.sandbox.ImmutableSandboxedEnvironment(**options)
        if sandboxed
        else jinja2.Environment(**options)
    )
    env.filters["conf"] = checked_value
    try:
        return env.from_string(text)
    except jinja2.TemplateSyntaxError as exc:
        raise RenderError(f"template syntax error at line {exc.lineno}: {exc.message}") from None


@functools.cache
def builtin_template_text(kind: str) -> str:
    """The packaged template for ``nginx`` or ``haproxy``."""
    resource = importlib.resources.files("fleetop.proxy") / "templates" / BUILTIN_TEMPLATES[kind]
    return resource.read_text(encoding="utf-8")


def template_of(spec: ProxySpec) -> jinja2.Template:
    """A spec's own template (sandboxed) or its kind's built-in one, compiled (cached)."""
    if spec.template is not None:
        return compile_template(spec.template, sandboxed=True)
    return compile_template(builtin_template_text(spec.kind), sandboxed=False)


def _render_checked(template: jinja2.Template, context: dict[str, Any]) -> str:
    return checked(lambda: template.render(context))


def checked(run: Callable[[], str]) -> str:
    """Run a render, turning whatever a template raises into a RenderError (also the sandbox's worker)."""
    try:
        return run()
    except RenderError:
        raise
    except jinja2.UndefinedError as exc:
        raise RenderError(f"template refers to an undefined value: {exc.message}") from None
    except jinja2.TemplateError as exc:
        raise RenderError(f"template failed: {exc}") from None
    except Exception as exc:  # a custom template can raise anything (1/0, bad method call)
        raise RenderError(f"template failed: {type(exc).__name__}: {exc}") from None


def render(
    proxy_name: str,
    spec: ProxySpec,
    backends: Mapping[str, Sequence[Registration]],
    *,
    paths: RenderPaths,
) -> Rendered:
    """The config text for ``spec`` with ``backends`` (service name → registrations), and its sha256."""
    with paused_gc():
        text = _render_checked(template_of(spec), build_context(proxy_name, spec, backends, paths))
    return Rendered(text=text, hash=hashlib.sha256(text.encode("utf-8")).hexdigest())


# -- fragments: a render whose work is proportional to the change -------------------------------------
#
# A built-in template wraps each service's upstream (nginx) or backend (HAProxy) in a scoped block
# named ``upstream``. The block sees only the service and a few values fixed by the proxy and spec
# (``FRAGMENT_NAMES``), so its text can be cached per service; the rest of the config (the skeleton:
# globals, server blocks, routing) depends on the spec and on which services have backends, and is
# rendered once with a marker where each block goes. At 1,000 services a registration change then
# re-renders one block and joins cached strings, and the result is byte for byte what render() gives.
# nginx's skeleton also depends on which services have backends (an empty one has no upstream and
# its routes answer 503); HAProxy's does not (an empty backend answers 503 itself), so there a
# service's first backend re-renders only its block, as any other registration change.

FRAGMENT_BLOCK = "upstream"
FRAGMENT_NAMES = ("proxy", "listen", "handler_header", "paths", "not_found_backend")
_MARK = "\x00"
_SKELETON_TEXT = "{% extends base %}{% block upstream %}\x00{{ service.name }}\x00{% endblock %}"


@dataclass(frozen=True, slots=True)
class RenderStats:
    """What the last :meth:`FragmentRenderer.render` did (tests and logs)."""

    fragments: tuple[str, ...] = ()
    """Services whose block was rendered (not taken from the cache)."""
    reused: int = 0
    skeleton: bool = False
    full: bool = False
    """True when the whole template was rendered (a custom template, or the first render)."""


@dataclass(slots=True)
class _Fragment:
    view: ServiceView
    scalars: tuple[Any, ...]
    text: str


@functools.cache
def block_names(kind: str) -> tuple[str, ...] | None:
    """The context names (of ``FRAGMENT_NAMES``) the built-in template's block reads, so a cached
    block is reused exactly while those values are the same; None when the template has no such
    block or its block reads anything else (then it is rendered whole, never split wrongly)."""
    env = jinja2.Environment()
    tree = env.parse(builtin_template_text(kind))
    blocks = [b for b in tree.find_all(jinja2.nodes.Block) if b.name == FRAGMENT_BLOCK]
    if len(blocks) != 1:
        return None
    loaded = {n.name for n in blocks[0].find_all(jinja2.nodes.Name) if n.ctx == "load"}
    stored = {n.name for n in blocks[0].find_all(jinja2.nodes.Name) if n.ctx in ("store", "param")}
    free = loaded - stored - {"service"}
    if not free <= set(FRAGMENT_NAMES):
        return None
    return tuple(name for name in FRAGMENT_NAMES if name in free)


@functools.cache
def skeleton_reads_backends(kind: str) -> bool:
    """Whether the built-in template reads a service's backends outside its block (nginx: which
    services get an ``upstream`` and whether a route proxies or answers 503); when it does not
    (HAProxy renders every routed service's backend, empty or not), a service gaining its first
    backend or losing its last one changes only its own block."""
    tree = jinja2.Environment().parse(builtin_template_text(kind))
    inside = {
        id(node)
        for block in tree.find_all(jinja2.nodes.Block)
        if block.name == FRAGMENT_BLOCK
        for node in block.find_all(jinja2.nodes.Getattr)
    }
    return any(
        node.attr in ("backends", "has_backends") and id(node) not in inside
        for node in tree.find_all(jinja2.nodes.Getattr)
    )


class FragmentRenderer:
    """Renders one proxy's config again and again, re-rendering only what changed since the last call.

    The output is always :func:`render`'s. Only the built-in templates are split (they keep the
    block's contract); a spec's own template is rendered whole every time.
    """

    def __init__(self) -> None:
        self._identity: tuple[str, str, RenderPaths] | None = None
        self._regs: dict[str, tuple[Sequence[Registration], tuple[Registration, ...], ServiceView]] = {}
        self._fragments: dict[str, _Fragment] = {}
        self._skeleton: tuple[ProxySpec, frozenset[str], list[str]] | None = None
        self.last = RenderStats()

    def render(
        self,
        proxy_name: str,
        spec: ProxySpec,
        backends: Mapping[str, Sequence[Registration]],
        *,
        paths: RenderPaths,
    ) -> Rendered:
        names = block_names(spec.kind) if spec.template is None else None
        if names is None:
            self.last = RenderStats(full=True)
            return render(proxy_name, spec, backends, paths=paths)
        with paused_gc():
            return self._render(proxy_name, spec, backends, paths, names)

    def _render(
        self,
        proxy_name: str,
        spec: ProxySpec,
        backends: Mapping[str, Sequence[Registration]],
        paths: RenderPaths,
        names: tuple[str, ...],
    ) -> Rendered:
        template = template_of(spec)
        identity = (spec.kind, proxy_name, paths)
        if identity != self._identity:
            self._identity, self._fragments, self._skeleton = identity, {}, None
        services = self._views(spec, backends)
        parts, skeleton = self._skeleton_parts(
            template, spec, services, lambda: _context_of(proxy_name, spec, services, paths)
        )
        fixed = _scalars_of(proxy_name, spec, paths)
        scalars = tuple(fixed[name] for name in names)
        fresh: list[str] = []
        pieces = list(parts)
        for i in range(1, len(parts), 2):
            pieces[i] = self._fragment(template, services[parts[i]], names, scalars, fresh)
        kept = {name: self._fragments[name] for name in parts[1::2]}
        self._fragments = kept
        text = "".join(pieces)
        self.last = RenderStats(tuple(fresh), len(kept) - len(fresh), skeleton)
        return Rendered(text=text, hash=hashlib.sha256(text.encode("utf-8")).hexdigest())

    def _views(
        self, spec: ProxySpec, backends: Mapping[str, Sequence[Registration]]
    ) -> dict[str, ServiceView]:
        """Each routed service's view, rebuilt only when its registrations changed. The collector
        hands out the same tuple for a service whose registrations did not change, so most are
        recognised by identity (a tuple cannot have changed since); an equal copy is recognised too."""
        views: dict[str, ServiceView] = {}
        memo: dict[str, tuple[Sequence[Registration], tuple[Registration, ...], ServiceView]] = {}
        last = self._regs
        for name in routed_services(spec):
            given = backends.get(name, ())
            cached = last.get(name)
            if cached is not None and given is cached[0] and type(given) is tuple:
                memo[name] = cached
                views[name] = cached[2]
                continue
            regs = tuple(given)
            if cached is not None and cached[1] == regs:
                view = cached[2]
            else:
                view = ServiceView(name, upstream_name(name), _backends(regs))
            views[name], memo[name] = view, (given, regs, view)
        self._regs = memo
        return views

    def _skeleton_parts(
        self,
        template: jinja2.Template,
        spec: ProxySpec,
        services: Mapping[str, ServiceView],
        context: Callable[[], dict[str, Any]],
    ) -> tuple[list[str], bool]:
        """The config split at its blocks: ``[text, service, text, service, ..., text]``; the whole
        context (routing for every route: most of a pass at 1,000 services) is built only when the
        skeleton must be rendered again."""
        filled = (
            frozenset(name for name, view in services.items() if view.backends)
            if skeleton_reads_backends(spec.kind)
            else frozenset()
        )
        cached = self._skeleton
        if cached is not None and cached[0] is spec and cached[1] == filled:
            return cached[2], False
        skeleton = compile_template(_SKELETON_TEXT, sandboxed=False)
        parts = _render_checked(skeleton, {**context(), "base": template}).split(_MARK)
        self._skeleton = (spec, filled, parts)
        return parts, True

    def _fragment(
        self,
        template: jinja2.Template,
        view: ServiceView,
        names: tuple[str, ...],
        scalars: tuple[Any, ...],
        fresh: list[str],
    ) -> str:
        cached = self._fragments.get(view.name)
        if cached is not None and cached.view == view and cached.scalars == scalars:
            return cached.text
        text = render_block(template, dict(zip(names, scalars, strict=True)), view)
        self._fragments[view.name] = _Fragment(view, scalars, text)
        fresh.append(view.name)
        return text


def render_block(template: jinja2.Template, values: Mapping[str, Any], view: ServiceView) -> str:
    """The template's block for one service (``values``: the names of ``FRAGMENT_NAMES`` it reads)."""
    block = template.blocks[FRAGMENT_BLOCK]
    return checked(lambda: "".join(block(template.new_context({**values, "service": view}))))


def block_values(proxy_name: str, spec: ProxySpec, paths: RenderPaths) -> dict[str, str | bool | None] | None:
    """The values the built-in template's block reads besides the service, when there is such a block
    and they are all plain values (what an agent needs to render a backend as the operator does);
    None otherwise (a custom template, or a block that reads more)."""
    names = block_names(spec.kind) if spec.template is None else None
    if names is None:
        return None
    fixed = _scalars_of(proxy_name, spec, paths)
    values = {name: fixed[name] for name in names}
    if not all(value is None or type(value) in (str, bool) for value in values.values()):
        return None
    return values


def builtin_block(kind: str, values: Mapping[str, str | bool | None], view: ServiceView) -> str:
    """The built-in template's block for one service: byte for byte the text of that service in a
    config rendered with the same values."""
    return render_block(compile_template(builtin_template_text(kind), sandboxed=False), values, view)
