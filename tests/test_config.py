"""EtcdSettings from flags, etcdctl's variables and an /etc/etcd.environment-style file."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from fleetop.config import EtcdSettings, parse_env_file, settings_from
from fleetop.errors import ConfigError

NO_FILE = {"FLEETOP_ETCD_ENV_FILE": "/nonexistent/etcd.environment"}


def test_defaults_without_anything(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("fleetop.config.DEFAULT_ENV_FILE", Path("/nonexistent/etcd.environment"))
    settings = settings_from({}, {})
    assert settings.endpoints == ("127.0.0.1:2379",)
    assert not settings.tls
    assert settings.user is None and settings.password is None
    assert settings.prefix == ""
    assert settings.dial_timeout == 5.0 and settings.command_timeout == 5.0


def test_etcdctl_endpoints_several_with_schemes_stripped() -> None:
    settings = settings_from(
        {}, {"ETCDCTL_ENDPOINTS": "http://10.0.0.1:2379, http://etcd-b.example:4001/,10.0.0.3:2379"}
    )
    assert settings.endpoints == ("10.0.0.1:2379", "etcd-b.example:4001", "10.0.0.3:2379")
    assert not settings.tls


def test_https_endpoints_turn_tls_on() -> None:
    settings = settings_from({}, {"ETCDCTL_ENDPOINTS": "https://localhost:2379,https://[::1]:2379"})
    assert settings.endpoints == ("localhost:2379", "[::1]:2379")
    assert settings.tls and settings.cacert is None


def test_bare_host_gets_default_port() -> None:
    assert settings_from({"endpoints": "etcd.local"}, {}).endpoints == ("etcd.local:2379",)


def test_etcd_endpoint_variable_when_etcdctl_endpoints_unset() -> None:
    settings = settings_from({}, {"ETCD_ENDPOINT": "172.17.42.1:4001"})
    assert settings.endpoints == ("172.17.42.1:4001",)
    both = settings_from({}, {"ETCD_ENDPOINT": "172.17.42.1:4001", "ETCDCTL_ENDPOINTS": "10.1.1.1:2379"})
    assert both.endpoints == ("10.1.1.1:2379",)


def test_endpoint_from_environment_file(tmp_path: Path) -> None:
    env_file = tmp_path / "etcd.environment"
    env_file.write_text("# written by etcd.service\n\nETCD_ENDPOINT=10.1.42.1:4001\n")
    settings = settings_from({}, {"FLEETOP_ETCD_ENV_FILE": str(env_file)})
    assert settings.endpoints == ("10.1.42.1:4001",)
    # The environment itself wins over the file.
    settings = settings_from({}, {"FLEETOP_ETCD_ENV_FILE": str(env_file), "ETCD_ENDPOINT": "10.9.9.9:2379"})
    assert settings.endpoints == ("10.9.9.9:2379",)


def test_environment_file_prefers_etcdctl_endpoints_and_parses_like_systemd(tmp_path: Path) -> None:
    env_file = tmp_path / "etcd.environment"
    env_file.write_text(
        "; comment\n"
        "ETCD_ENDPOINT=10.0.0.1:4001\n"
        'ETCDCTL_ENDPOINTS="http://10.0.0.2:2379,\\\n'
        'http://10.0.0.3:2379"\n'
        "  OTHER = 'quoted value'  \n"
        "not a pair\n"
    )
    values = parse_env_file(env_file)
    assert values["OTHER"] == "quoted value"
    assert values["ETCDCTL_ENDPOINTS"] == "http://10.0.0.2:2379,http://10.0.0.3:2379"
    settings = settings_from({"env_file": str(env_file)}, {})
    assert settings.endpoints == ("10.0.0.2:2379", "10.0.0.3:2379")


def test_default_environment_file_is_used_when_present(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env_file = tmp_path / "etcd.environment"
    env_file.write_text("ETCD_ENDPOINT=192.168.5.5:2379\n")
    monkeypatch.setattr("fleetop.config.DEFAULT_ENV_FILE", env_file)
    assert settings_from({}, {}).endpoints == ("192.168.5.5:2379",)


def test_missing_explicit_environment_file_is_an_error() -> None:
    with pytest.raises(ConfigError, match="FLEETOP_ETCD_ENV_FILE"):
        settings_from({}, NO_FILE)


def test_flags_override_environment(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    environ = {
        "ETCDCTL_ENDPOINTS": "10.0.0.1:2379",
        "ETCDCTL_USER": "alice:from-env",
        "ETCDCTL_COMMAND_TIMEOUT": "3s",
        "FLEETOP_PREFIX": "/env",
    }
    flags = {
        "endpoints": ["127.0.0.1:2379", "127.0.0.1:22379"],
        "user": "bob:from-flag",
        "command_timeout": "1500ms",
        "prefix": "/team-a/",
        "cacert": str(ca),
        "dial_timeout": None,
    }
    settings = settings_from(flags, environ)
    assert settings.endpoints == ("127.0.0.1:2379", "127.0.0.1:22379")
    assert settings.user == "bob"
    assert settings.password is not None and settings.password.get_secret_value() == "from-flag"
    assert settings.command_timeout == 1.5
    assert settings.dial_timeout == 5.0
    assert settings.prefix == "/team-a"
    assert settings.key_of("/desired/services/web") == "/team-a/desired/services/web"
    assert settings.tls and settings.cacert == ca


def test_user_with_separate_password() -> None:
    settings = settings_from({}, {"ETCDCTL_USER": "carol", "ETCDCTL_PASSWORD": "p:with:colons"})
    assert settings.user == "carol"
    assert settings.password is not None and settings.password.get_secret_value() == "p:with:colons"


def test_password_never_shown(caplog: pytest.LogCaptureFixture) -> None:
    settings = settings_from({}, {"ETCDCTL_USER": "dave:s3cr3t-Pa55"})
    logging.getLogger("test").warning("settings: %s / %r", settings, settings)
    for text in (
        repr(settings),
        str(settings),
        settings.describe(),
        caplog.text,
        str(settings._asdict()),
    ):
        assert "s3cr3t-Pa55" not in text
    assert "dave" in str(settings)


@pytest.mark.parametrize(
    ("flags", "environ", "named"),
    [
        ({}, {"ETCDCTL_ENDPOINTS": "unix:///var/run/etcd.sock"}, "ETCDCTL_ENDPOINTS"),
        ({}, {"ETCDCTL_ENDPOINTS": "10.0.0.1:99999"}, "ETCDCTL_ENDPOINTS"),
        ({}, {"ETCDCTL_ENDPOINTS": "http://a:1,https://b:2"}, "ETCDCTL_ENDPOINTS"),
        ({}, {"ETCDCTL_ENDPOINTS": "bad host!:2379"}, "ETCDCTL_ENDPOINTS"),
        ({}, {"ETCD_ENDPOINT": ","}, "ETCD_ENDPOINT"),
        ({"endpoints": "10.0.0.1:x"}, {}, "--endpoints"),
        ({}, {"ETCDCTL_DIAL_TIMEOUT": "soon"}, "ETCDCTL_DIAL_TIMEOUT"),
        ({}, {"ETCDCTL_COMMAND_TIMEOUT": "-1"}, "ETCDCTL_COMMAND_TIMEOUT"),
        ({}, {"ETCDCTL_CACERT": "/nonexistent/ca.pem"}, "ETCDCTL_CACERT"),
        ({"cert": __file__}, {}, "ETCDCTL_KEY"),
        ({}, {"ETCDCTL_USER": "erin"}, "ETCDCTL_USER"),
        ({}, {"ETCDCTL_USER": ":pw"}, "ETCDCTL_USER"),
        ({}, {"FLEETOP_PREFIX": "relative"}, "FLEETOP_PREFIX"),
    ],
)
def test_bad_values_name_the_variable(flags: dict[str, str], environ: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        settings_from(flags, {**environ})


def test_bad_endpoint_in_file_names_file(tmp_path: Path) -> None:
    env_file = tmp_path / "etcd.environment"
    env_file.write_text("ETCD_ENDPOINT=ftp://x:1\n")
    with pytest.raises(ConfigError, match=r"ETCD_ENDPOINT in .*etcd\.environment"):
        settings_from({}, {"FLEETOP_ETCD_ENV_FILE": str(env_file)})


@pytest.mark.parametrize(
    ("text", "seconds"), [("5", 5.0), ("2.5", 2.5), ("500ms", 0.5), ("1m30s", 90.0), ("2s", 2.0)]
)
def test_timeouts_read_go_durations(text: str, seconds: float) -> None:
    assert settings_from({"command_timeout": text}, {}).command_timeout == pytest.approx(seconds)
    assert settings_from({}, {"ETCDCTL_DIAL_TIMEOUT": text}).dial_timeout == pytest.approx(seconds)


@pytest.mark.parametrize(
    ("text", "message"),
    [("soon", "is not a duration"), ("0", "between 0 and 1h"), ("2h", "between 0 and 1h")],
)
def test_a_bad_timeout_names_its_source(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=f"ETCDCTL_COMMAND_TIMEOUT.*{message}"):
        settings_from({}, {"ETCDCTL_COMMAND_TIMEOUT": text})


def test_settings_can_be_built_directly() -> None:
    settings = EtcdSettings(endpoints=("127.0.0.1:2379",), prefix="/x")
    assert settings.key_of("/a") == "/x/a"
