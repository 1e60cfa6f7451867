"""The small etcd client over the HTTP/JSON gateway, against a real etcd: failover, the key root,
transactions, leases, and errors of the project's tree."""

from __future__ import annotations

import pytest

from fleetop.config import settings_from
from fleetop.errors import EtcdUnavailable, NotFound
from fleetop.etcd.gateway import Gateway
from fleetop.local.etcdserver import EtcdServer, free_port


def test_keys_under_the_root_transactions_and_leases(etcd_server: EtcdServer, etcd_prefix: str) -> None:
    with Gateway(settings_from({"endpoints": etcd_server.endpoint, "prefix": etcd_prefix}, {})) as gw:
        lease = gw.grant(10)
        gw.put("/services/web/1", "10.0.0.1:80", lease=lease)
        gw.put("/services/web/2", b"10.0.0.2:80")
        found = gw.range("/services/web/", prefix=True)
        assert [(kv.key, kv.value) for kv in found] == [
            ("/services/web/1", b"10.0.0.1:80"),
            ("/services/web/2", b"10.0.0.2:80"),
        ]
        assert found[0].lease == lease and found[1].lease == 0
        assert gw.keepalive(lease) == 10
        assert not gw.delete_if_value("/services/web/1", "10.0.0.9:80")  # not ours: kept
        assert gw.delete_if_value("/services/web/1", "10.0.0.1:80")
        assert gw.get("/services/web/1") is None
        gw.revoke(lease)
        assert gw.keepalive(lease) == 0  # etcd forgot it
        with pytest.raises(NotFound):
            gw.put("/services/web/3", "x", lease=lease)
        gw.revoke(lease)  # twice is fine
    with Gateway(settings_from({"endpoints": etcd_server.endpoint}, {})) as unrooted:
        assert unrooted.get(f"{etcd_prefix}/services/web/2") is not None  # the root was really there


def test_fails_over_to_the_endpoint_that_answers(etcd_server: EtcdServer, etcd_prefix: str) -> None:
    dead = f"127.0.0.1:{free_port()}"
    flags = {"endpoints": f"{dead},{etcd_server.endpoint}", "prefix": etcd_prefix}
    with Gateway(settings_from(flags, {})) as gw:
        gw.put("/k", "v")
        assert gw.get("/k") is not None
    with Gateway(settings_from({"endpoints": dead}, {})) as gw, pytest.raises(EtcdUnavailable, match=dead):
        gw.get("/k")
