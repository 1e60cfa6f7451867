"""Registrations follow the operator's own knowledge, end to end: real etcd, ``fleetop node``,
``fleetop run`` and sidekicks (``fleetop register``) in front of ``python3 -m http.server``.

A registration left behind by an instance the operator destroyed (a sidekick's delete that never
reached etcd, a lease that etcd restored) is written here by hand after a scale-down, with one for an
instance that was never launched. Neither ever reaches the published config; the real ones do, and
the proxy's status and events say what was skipped. A service without a sidekick keeps every
registration, as registrator's are trusted.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import sys
from collections.abc import Iterator

import pytest
from ophelpers import Node, Operator, http_service, owned_mains, running

from fleetop.etcd.client import Etcd
from fleetop.fleet.client import FleetClient
from fleetop.keys import Keys
from fleetop.local.etcdserver import EtcdServer
from fleetop.models import ProxyStatus, PublishedConfig, ServiceStatus
from waiting import eventually

PREFIX = f"/t/regfollow-{os.getpid()}"
KEYS = Keys()
SERVER_RE = re.compile(r"^\s*server\s+(?:\S+\s+)?(\d+\.\d+\.\d+\.\d+:\d+)", re.MULTILINE)
BASE = random.randrange(30000, 39000, 10)


def edge(*services: str) -> bytes:
    body = {
        "kind": "nginx",
        "listen": f"127.0.0.1:{BASE + 9}",
        "managed": False,
        "routes": [{"service": s, "path": f"/{s}/"} for s in services],
        "wait": {"min": "0s", "max": "0s"},
    }
    return json.dumps(body).encode()


@pytest.fixture(scope="module")
def node_etcd(etcd_server: EtcdServer) -> str:
    """The node's units find the session's etcd (the sidekicks register there)."""
    return etcd_server.endpoint


@pytest.fixture(scope="module")
def operator(
    node: Node, etcd_server: EtcdServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Operator]:
    base = tmp_path_factory.mktemp("operator")
    with running(Operator(base, "regs", etcd_server.endpoint, PREFIX, node.endpoint)) as proc:
        yield proc


async def published(etcd: Etcd, proxy: str) -> set[str]:
    kv = await etcd.get(KEYS.proxy_config(proxy))
    if kv is None:
        return set()
    return set(SERVER_RE.findall(PublishedConfig.model_validate_json(kv.value).body))


async def proxy_status(etcd: Etcd, proxy: str) -> ProxyStatus | None:
    kv = await etcd.get(KEYS.status("proxies", proxy))
    return None if kv is None else ProxyStatus.model_validate_json(kv.value)


async def registered(etcd: Etcd, service: str) -> dict[str, str]:
    kvs, _ = await etcd.list(f"/services/{service}/")
    return {kv.key.rsplit("/", 1)[1]: kv.value.decode() for kv in kvs}


async def test_a_destroyed_instance_s_registration_never_reaches_the_config(
    etcd: Etcd, fleet: FleetClient, operator: Operator, etcd_server: EtcdServer
) -> None:
    service, proxy = "regs", "regs-edge"
    etcd_endpoint = etcd_server.endpoint
    try:
        await etcd.put(KEYS.desired("services", service), http_service(3, BASE))
        await etcd.put(KEYS.desired("proxies", proxy), edge(service))

        async def three() -> dict[str, str] | None:
            found = await registered(etcd, service)
            ok = len(found) == 3 and await published(etcd, proxy) == set(found.values())
            return found if ok else None

        first = await eventually(three, 90, "3 registered instances in the published config")

        await etcd.put(KEYS.desired("services", service), http_service(1, BASE))

        async def one() -> bool:
            mains = owned_mains(await fleet.list_units(), service)
            return [u.name for u in mains] == [f"{service}@{BASE}.service"] and len(
                await published(etcd, proxy)
            ) == 1

        await eventually(one, 60, "the scale-down to 1 in fleet and in the config")
        kept = first[str(BASE)]
        assert await published(etcd, proxy) == {kept}

        async def deregistered() -> bool:  # the stopped sidekicks' own deletes are done
            return await registered(etcd, service) == {str(BASE): kept}

        await eventually(deregistered, 60, "the stopped sidekicks to deregister")

        # what a lost delete or a restored lease leaves behind, and a key for an instance never run
        stale = {str(BASE + 2): first[str(BASE + 2)], str(BASE + 7): f"127.0.1.1:{BASE + 7}"}
        for instance, address in stale.items():
            await etcd.put(f"/services/{service}/{instance}", address.encode())

        async def reported() -> ProxyStatus | None:
            status = await proxy_status(etcd, proxy)
            return status if status is not None and status.skipped_registrations == 2 else None

        status = await eventually(reported, 30, "the proxy to report 2 skipped registrations")
        assert status.backends == {service: 1}

        async def service_backends() -> list[str] | None:
            raw = await etcd.get(KEYS.status("services", service))
            found = ServiceStatus.model_validate_json(raw.value) if raw is not None else None
            addresses = [b.address for b in found.backends] if found is not None else []
            return addresses if addresses == [kept] else None

        # the service's own status lists the same backends: the stale keys are no instance it runs
        await eventually(service_backends, 30, f"the service's status to list only {kept}")
        assert await published(etcd, proxy) == {kept}, "a registration of an instance not run was published"
        events, _ = await etcd.list(KEYS.events("proxies", proxy))
        bodies = [json.loads(kv.value) for kv in events]
        skipped = [e for e in bodies if e["reason"] == "UnlaunchedRegistrations"]
        assert skipped and f"/services/{service}/{BASE + 7}" in skipped[-1]["message"], bodies
        env = {**os.environ, "ETCDCTL_ENDPOINTS": etcd_endpoint, "FLEETOP_PREFIX": PREFIX}
        cli = [sys.executable, "-m", "fleetop.cli.main", "describe", "proxy", proxy]
        described = await asyncio.create_subprocess_exec(*cli, stdout=asyncio.subprocess.PIPE, env=env)
        out, _ = await described.communicate()
        assert described.returncode == 0 and b"Skipped:              2 registration(s)" in out, out.decode()

        # scaled up again: the config follows the instances the operator runs now, and only those
        await etcd.put(KEYS.desired("services", service), http_service(3, BASE))

        async def back() -> set[str] | None:
            mains = {
                u.name.rpartition("@")[2].removesuffix(".service")
                for u in owned_mains(await fleet.list_units(), service)
            }
            found = await registered(etcd, service)
            expected = {found[i] for i in mains if i in found}
            config = await published(etcd, proxy)
            return config if len(mains) == len(expected) == 3 and config == expected else None

        config = await eventually(back, 90, "the config to list the 3 instances run now")
        assert not any(a.endswith(f":{BASE + 7}") for a in config), config
    finally:
        await etcd.delete(KEYS.desired("proxies", proxy))
        await etcd.delete(KEYS.desired("services", service))
        await etcd.delete_prefix(f"/services/{service}/")


async def test_registrations_of_a_service_without_a_sidekick_are_trusted(etcd: Etcd) -> None:
    proxy = "trusting-edge"
    try:
        await etcd.put(
            KEYS.desired("services", "byhand"),
            json.dumps({"replicas": 0, "unit": {"execStart": "/bin/true"}}).encode(),
        )
        await etcd.put("/services/byhand/h1:web:80", b"127.0.1.2:8080")
        await etcd.put("/services/registrator/h1:web:80", b"127.0.1.3:8080")
        await etcd.put(KEYS.desired("proxies", proxy), edge("byhand", "registrator"))

        async def both() -> bool:
            return await published(etcd, proxy) == {"127.0.1.2:8080", "127.0.1.3:8080"}

        await eventually(both, 30, "both hand-written registrations in the config")
        status = await proxy_status(etcd, proxy)
        assert status is not None and status.skipped_registrations == 0
    finally:
        await etcd.delete(KEYS.desired("proxies", proxy))
        await etcd.delete(KEYS.desired("services", "byhand"))
        await etcd.delete_prefix("/services/byhand/")
        await etcd.delete_prefix("/services/registrator/")
