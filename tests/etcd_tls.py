"""Test fixtures for etcd with TLS, client certificates and user authentication.

Certificates are made at test time with the ``cryptography`` package (ECDSA P-256, fast): a CA, a
server certificate for ``127.0.0.1``/``localhost``, a client certificate, and a second, unrelated CA
for "wrong CA" tests. ``secure_etcd`` starts a second etcd (not the session one) that requires TLS and
client certificates, then enables etcd's user auth with a ``root`` user and a ``limited`` user whose
role may only read and write under ``/limited/``. Passwords go to etcdctl in argv here (tests only)
and are never logged.

Use it from a test module with ``from etcd_tls import secure_etcd_fixture  # noqa: F401`` and a
``secure_etcd`` parameter.
"""

from __future__ import annotations

import datetime
import ipaddress
import secrets
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fleetop.config import EtcdSettings, settings_from
from fleetop.local.etcdserver import EtcdServer, EtcdTLS

LIMITED_PREFIX = "/limited/"


@dataclass(frozen=True)
class TLSFiles:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path
    anonymous_cert: Path
    anonymous_key: Path
    """A client certificate without a CommonName: etcd's HTTP/JSON gateway refuses one that has one."""


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)] if common_name else [])


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    path.chmod(0o600)


def _certificate(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[x509.Name, ec.EllipticCurvePrivateKey] | None,
    *,
    ca: bool = False,
    usage: list[x509.ObjectIdentifier] | None = None,
    sans: list[x509.GeneralName] | None = None,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    issuer_name, issuer_key = issuer if issuer else (_name(subject), key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
    if usage:
        builder = builder.add_extension(x509.ExtendedKeyUsage(usage), critical=False)
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def make_certs(directory: Path) -> TLSFiles:
    """A CA, a server certificate for 127.0.0.1/localhost, a client certificate, another CA."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = _certificate("fleetop test CA", ca_key, None, ca=True)
    issuer = (ca_cert.subject, ca_key)
    server_key = ec.generate_private_key(ec.SECP256R1())
    server_cert = _certificate(
        "etcd server",
        server_key,
        issuer,
        usage=[ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
        sans=[x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))],
    )
    client_key = ec.generate_private_key(ec.SECP256R1())
    client_cert = _certificate("fleetop client", client_key, issuer, usage=[ExtendedKeyUsageOID.CLIENT_AUTH])
    anonymous_key = ec.generate_private_key(ec.SECP256R1())
    anonymous_cert = _certificate("", anonymous_key, issuer, usage=[ExtendedKeyUsageOID.CLIENT_AUTH])
    other_key = ec.generate_private_key(ec.SECP256R1())
    other_ca = _certificate("some other CA", other_key, None, ca=True)
    files = TLSFiles(
        ca=directory / "ca.pem",
        server_cert=directory / "server.pem",
        server_key=directory / "server-key.pem",
        client_cert=directory / "client.pem",
        client_key=directory / "client-key.pem",
        other_ca=directory / "other-ca.pem",
        anonymous_cert=directory / "anonymous.pem",
        anonymous_key=directory / "anonymous-key.pem",
    )
    for cert, path in (
        (ca_cert, files.ca),
        (server_cert, files.server_cert),
        (client_cert, files.client_cert),
        (other_ca, files.other_ca),
        (anonymous_cert, files.anonymous_cert),
    ):
        path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_key(server_key, files.server_key)
    _write_key(client_key, files.client_key)
    _write_key(anonymous_key, files.anonymous_key)
    return files


@dataclass
class SecureEtcd:
    """A TLS + client-cert + user-auth etcd and the secrets to use it."""

    server: EtcdServer
    files: TLSFiles
    etcdctl: str
    root_password: str
    limited_password: str

    def environ(self, user: str | None = "root", password: str | None = None) -> dict[str, str]:
        """ETCDCTL_* variables for this server, as an operator would set them."""
        env = {
            "ETCDCTL_ENDPOINTS": f"https://{self.server.endpoint}",
            "ETCDCTL_CACERT": str(self.files.ca),
            "ETCDCTL_CERT": str(self.files.client_cert),
            "ETCDCTL_KEY": str(self.files.client_key),
            "ETCDCTL_DIAL_TIMEOUT": "3s",
            "ETCDCTL_COMMAND_TIMEOUT": "5s",
        }
        if user is not None:
            secret = password if password is not None else self.password_of(user)
            env["ETCDCTL_USER"] = f"{user}:{secret}"
        return env

    def password_of(self, user: str) -> str:
        return self.root_password if user == "root" else self.limited_password

    def settings(self, user: str | None = "root", password: str | None = None, **flags: str) -> EtcdSettings:
        return settings_from(flags, self.environ(user, password))

    def etcdctl_run(self, *args: str, user: str | None = None) -> str:
        command = [
            self.etcdctl,
            "--endpoints",
            self.server.url,
            "--cacert",
            str(self.files.ca),
            "--cert",
            str(self.files.client_cert),
            "--key",
            str(self.files.client_key),
        ]
        if user:
            command += ["--user", f"{user}:{self.password_of(user)}"]
        done = subprocess.run(
            [*command, *args],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
            stdin=subprocess.DEVNULL,
        )
        if done.returncode != 0:
            # Never echo the command line: it carries a password.
            raise AssertionError(f"etcdctl {args[0]} failed: {done.stderr.strip()}")
        return done.stdout


def start_secure_etcd(base: Path, etcdctl: str) -> SecureEtcd:
    files = make_certs(base / "certs")
    tls = EtcdTLS(files.server_cert, files.server_key, files.ca, client_cert_auth=True)
    # bcrypt's cheapest cost: etcd hashes each password it is given and each one a client authenticates
    # with at that cost, and the role tests authenticate hundreds of times (etcd's default 10 costs
    # ~60 ms of CPU each; what is checked is who may do what, not the hash's strength)
    server = EtcdServer(base / "data", tls=tls, name="secure", extra_args=["--bcrypt-cost=4"])
    server.start()
    secure = SecureEtcd(server, files, etcdctl, secrets.token_urlsafe(12), secrets.token_urlsafe(12))
    try:
        secure.etcdctl_run("user", "add", "root", f"--new-user-password={secure.root_password}")
        secure.etcdctl_run("role", "add", "fleet-limited")
        secure.etcdctl_run(
            "role", "grant-permission", "fleet-limited", "readwrite", LIMITED_PREFIX, "--prefix=true"
        )
        secure.etcdctl_run("user", "add", "limited", f"--new-user-password={secure.limited_password}")
        secure.etcdctl_run("user", "grant-role", "limited", "fleet-limited")
        secure.etcdctl_run("auth", "enable")
    except BaseException:
        server.stop()
        raise
    return secure


@pytest.fixture(scope="module", name="secure_etcd")
def secure_etcd_fixture(tmp_path_factory: pytest.TempPathFactory, etcdctl_bin: str) -> Iterator[SecureEtcd]:
    """A second etcd with TLS, client-certificate auth and etcd users (root, limited)."""
    secure = start_secure_etcd(tmp_path_factory.mktemp("secure-etcd"), etcdctl_bin)
    try:
        yield secure
    finally:
        secure.server.stop()
