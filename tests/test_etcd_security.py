"""fleetop.etcd.client against an etcd with TLS, client certificates and user authentication."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import pytest

from etcd_tls import LIMITED_PREFIX, SecureEtcd, secure_etcd_fixture  # noqa: F401
from fleetop.config import settings_from
from fleetop.errors import EtcdDenied, EtcdUnavailable, FleetopError
from fleetop.etcd.client import Etcd


async def test_ca_client_cert_and_password(secure_etcd: SecureEtcd) -> None:
    async with await Etcd.connect(secure_etcd.settings()) as etcd:
        revision = await etcd.put("/secure/key", "value")
        kv = await etcd.get("/secure/key")
        assert kv is not None and kv.value == b"value" and kv.mod_revision == revision
        assert (await etcd.status())["has_leader"]


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1"])
async def test_server_name_is_verified_for_names_and_addresses(secure_etcd: SecureEtcd, host: str) -> None:
    endpoint = f"https://{host}:{secure_etcd.server.client_port}"
    async with await Etcd.connect(secure_etcd.settings(endpoints=endpoint)) as etcd:
        await etcd.put("/secure/by-name", host)


async def test_wrong_name_in_certificate_is_refused(secure_etcd: SecureEtcd) -> None:
    settings = secure_etcd.settings(tls_server_name="etcd.example.com")
    with pytest.raises(EtcdDenied, match="TLS"):
        await Etcd.connect(settings)


async def test_wrong_password_is_denied_clearly(
    secure_etcd: SecureEtcd, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    with pytest.raises(EtcdDenied) as caught:
        await Etcd.connect(secure_etcd.settings("root", "not-the-password"))
    message = str(caught.value)
    assert "user name or password" in message and "'root'" in message and "ETCDCTL_USER" in message
    assert "not-the-password" not in message and "not-the-password" not in caplog.text


async def test_without_the_ca_the_error_says_what_to_check(secure_etcd: SecureEtcd) -> None:
    environ = secure_etcd.environ()
    del environ["ETCDCTL_CACERT"]  # https:// with the system roots, which do not know this CA
    with pytest.raises(EtcdDenied) as caught:
        await Etcd.connect(settings_from({}, environ))
    assert "ETCDCTL_CACERT" in str(caught.value) and "CERTIFICATE_VERIFY_FAILED" in str(caught.value)


async def test_another_ca_or_no_client_certificate_is_refused(secure_etcd: SecureEtcd) -> None:
    other = secure_etcd.environ() | {"ETCDCTL_CACERT": str(secure_etcd.files.other_ca)}
    no_client_cert = secure_etcd.environ()
    del no_client_cert["ETCDCTL_CERT"], no_client_cert["ETCDCTL_KEY"]
    for environ in (other, no_client_cert):
        with pytest.raises(EtcdDenied, match="TLS handshake"):
            await Etcd.connect(settings_from({}, environ))


async def test_plaintext_to_a_tls_server_hints_at_https(secure_etcd: SecureEtcd) -> None:
    settings = settings_from({"endpoints": secure_etcd.server.endpoint, "dial_timeout": "1s"}, {})
    with pytest.raises(EtcdUnavailable, match="https://"):
        await Etcd.connect(settings)


async def test_limited_user_is_confined_to_its_prefix(secure_etcd: SecureEtcd) -> None:
    async with await Etcd.connect(secure_etcd.settings("limited")) as etcd:
        await etcd.put(f"{LIMITED_PREFIX}mine", "ok")
        items, _ = await etcd.list(LIMITED_PREFIX)
        assert [kv.key for kv in items] == [f"{LIMITED_PREFIX}mine"]
        denied = [
            etcd.put("/elsewhere", "no"),
            etcd.get("/elsewhere"),
            etcd.list("/"),
            etcd.delete("/secure/key"),
        ]
        for call in denied:
            with pytest.raises(EtcdDenied, match="permission denied"):
                await call
        stream = etcd.watch("/secure/", 1)
        with pytest.raises(EtcdDenied):
            async with contextlib.aclosing(stream):
                await asyncio.wait_for(anext(stream), 10)
        assert await etcd.ping() > 0  # health works without read access to the root


async def test_token_is_renewed_after_etcd_restart(secure_etcd: SecureEtcd) -> None:
    """etcd forgets its simple tokens when it restarts; calls and watches re-authenticate."""
    async with await Etcd.connect(secure_etcd.settings("limited")) as etcd:
        start = await etcd.put(f"{LIMITED_PREFIX}before", "1")
        stream = etcd.watch(LIMITED_PREFIX, start)
        async with contextlib.aclosing(stream):
            first = await asyncio.wait_for(anext(stream), 10)
            assert [e.key for e in first] == [f"{LIMITED_PREFIX}before"]
            secure_etcd.server.stop()
            await asyncio.to_thread(secure_etcd.server.start)
            for _ in range(100):
                with contextlib.suppress(EtcdUnavailable):
                    await etcd.put(f"{LIMITED_PREFIX}after", "2")
                    break
                await asyncio.sleep(0.1)
            else:
                raise AssertionError("etcd did not come back")
            kv = await etcd.get(f"{LIMITED_PREFIX}after")
            assert kv is not None and kv.value == b"2"
            second = await asyncio.wait_for(anext(stream), 20)
            assert [e.key for e in second] == [f"{LIMITED_PREFIX}after"]


async def test_password_never_in_repr_or_logs(
    secure_etcd: SecureEtcd, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    settings = secure_etcd.settings()
    password = secure_etcd.root_password
    async with await Etcd.connect(settings) as etcd:
        await etcd.put("/secure/logged", "x")
        logging.getLogger("test").info("using %s / %r", settings, settings)
    with contextlib.suppress(FleetopError):
        await Etcd.connect(secure_etcd.settings("limited", "wrong-" + password))
    assert "root" in caplog.text
    for text in (repr(settings), str(settings), caplog.text):
        assert password not in text
