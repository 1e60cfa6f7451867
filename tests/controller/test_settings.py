"""``fleetop run``'s settings: every group built from flags over the environment, and every error naming
the flag or the variable the bad value came from (never the flag for a variable's value)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from fleetop.controller.runtime.leader import LeaderTimings
from fleetop.controller.runtime.settings import (
    FleetSettings,
    InstallSettings,
    LogSettings,
    MetricsSettings,
    OperatorSettings,
    WorkerSettings,
)
from fleetop.errors import ConfigError

BASE = {"FLEETOP_PATH": "/bin/sh"}

# (flag, variable, bad value, what the message says after the source)
BAD = [
    ("lease_duration", "FLEETOP_LEASE_DURATION", "long", "'long' is not a number of seconds"),
    ("renew_deadline", "FLEETOP_RENEW_DEADLINE", "0", "'0' must be between 0 and 1 day"),
    ("retry_period", "FLEETOP_RETRY_PERIOD", "2d", "'2d' is not a number of seconds"),
    ("workers", "FLEETOP_WORKERS", "four", "'four' is not a whole number"),
    ("workers", "FLEETOP_WORKERS", "257", "257 must be 1-256"),
    ("resync_period", "FLEETOP_RESYNC_PERIOD", "-1", "'-1' must be between 0 and 1 day"),
    ("restart_backoff", "FLEETOP_RESTART_BACKOFF", "soon", "'soon' is not a number of seconds"),
    ("batch_size", "FLEETOP_BATCH_SIZE", "0", "0 must be 1-10000"),
    ("max_instances_per_service", "FLEETOP_MAX_INSTANCES_PER_SERVICE", "many", "is not a whole number"),
    ("max_instances", "FLEETOP_MAX_INSTANCES", "1e9", "'1e9' is not a whole number"),
    ("render_timeout", "FLEETOP_RENDER_TIMEOUT", "100000", "'100000' must be between 0 and 1 day"),
    ("render_max_bytes", "FLEETOP_RENDER_MAX_BYTES", "10", "10 must be 1024-"),
    ("proxy_root", "FLEETOP_PROXY_ROOT", "relative/dir", ""),
    ("fleetop_path", "FLEETOP_PATH", "fleetop", "fleetop path 'fleetop': "),
    ("sidekick_credentials", "FLEETOP_SIDEKICK_CREDENTIALS", "side.env", "sidekick credentials file"),
    ("agent_credentials", "FLEETOP_AGENT_CREDENTIALS", "/etc/a b.env", "agent credentials file"),
    ("proxy_credentials", "FLEETOP_PROXY_CREDENTIALS", "proxy.env", "proxy credentials file"),
    ("metrics_address", "FLEETOP_METRICS_ADDRESS", "localhost", "must be host:port"),
    ("log_format", "FLEETOP_LOG_FORMAT", "xml", "'xml' must be human or json"),
    ("fleet_endpoint", "FLEETCTL_ENDPOINT", "ftp://fleet", "is not a fleet endpoint"),
    ("endpoints", "ETCDCTL_ENDPOINTS", "gopher://etcd:2379", "unsupported scheme"),
]


def flag_of(name: str) -> str:
    return "--" + name.replace("_", "-")


@pytest.mark.parametrize(("flag", "variable", "value", "says"), BAD)
def test_a_bad_flag_is_named(flag: str, variable: str, value: str, says: str) -> None:
    with pytest.raises(ConfigError) as caught:
        OperatorSettings.from_flags({flag: value}, BASE)
    assert str(caught.value).startswith(f"{flag_of(flag)}: "), str(caught.value)
    assert says in str(caught.value)


@pytest.mark.parametrize(("flag", "variable", "value", "says"), BAD)
def test_a_bad_variable_is_named_not_its_flag(flag: str, variable: str, value: str, says: str) -> None:
    with pytest.raises(ConfigError) as caught:
        OperatorSettings.from_flags({}, {**BASE, variable: value})
    assert str(caught.value).startswith(f"{variable}: "), str(caught.value)
    assert says in str(caught.value)


@pytest.mark.parametrize(("flag", "variable", "value", "says"), BAD)
def test_a_good_flag_hides_a_bad_variable(flag: str, variable: str, value: str, says: str) -> None:
    good = OperatorSettings.from_flags({}, BASE)
    given = {
        "endpoints": "127.0.0.1:2379",
        "fleet_endpoint": good.fleet.endpoint,
        "fleetop_path": "/bin/sh",
        "proxy_root": good.proxies.root,
        "metrics_address": "off",
        "log_format": "json",
        "sidekick_credentials": "/etc/fleetop/side.env",
        "agent_credentials": "/etc/fleetop/agent.env",
        "proxy_credentials": "/etc/fleetop/proxy.env",
        "lease_duration": "30",
        "render_max_bytes": "4096",
    }.get(flag, "3")
    OperatorSettings.from_flags({flag: given}, {**BASE, variable: value})


def test_a_bad_value_in_the_etcd_environment_file_names_the_file_and_key(tmp_path: Path) -> None:
    env_file = tmp_path / "etcd.environment"
    env_file.write_text("ETCD_ENDPOINT=gopher://10.0.0.1:2379\n")
    with pytest.raises(ConfigError, match=re.escape(f"ETCD_ENDPOINT in {env_file}: unsupported scheme")):
        OperatorSettings.from_flags({}, {**BASE, "FLEETOP_ETCD_ENV_FILE": str(env_file)})


def test_leader_timings_out_of_order_are_refused() -> None:
    with pytest.raises(ConfigError, match="retry period < renew deadline < lease TTL") as refused:
        OperatorSettings.from_flags({"renew_deadline": 20}, BASE)
    assert str(refused.value).startswith("--retry-period, --renew-deadline, --lease-duration:")
    with pytest.raises(ConfigError, match="2s < 13s < 13s"):  # past the lease TTL, 15 - 2 s
        OperatorSettings.from_flags({"renew_deadline": 13}, BASE)


def test_defaults_and_groups() -> None:
    settings = OperatorSettings.from_flags({}, BASE)
    assert settings.leader == LeaderTimings(15.0, 10.0, 2.0)
    assert settings.fleet == FleetSettings()
    assert settings.workers == WorkerSettings()
    assert settings.install == InstallSettings(fleetop_path="/bin/sh")
    assert settings.metrics == MetricsSettings("127.0.0.1:9464")
    assert settings.logging == LogSettings()
    assert settings.identity  # hostname-pid-random


def test_flags_win_over_variables_and_fill_each_group() -> None:
    environ = {
        **BASE,
        "FLEETOP_WORKERS": "8",
        "FLEETOP_RESYNC_PERIOD": "60",
        "FLEETOP_METRICS_ADDRESS": "off",
        "FLEETOP_LOG_FORMAT": "json",
        "FLEETOP_LOG_LEVEL": "debug",
        "FLEETOP_IDENTITY": "from-env",
        "FLEETCTL_ENDPOINT": "http://127.0.0.1:49153",
    }
    flags = {"workers": 2, "lease_duration": 30, "renew_deadline": "20s", "identity": "from-flag"}
    settings = OperatorSettings.from_flags(flags, environ)
    assert settings.workers == WorkerSettings(count=2, resync_period=60.0)
    assert settings.leader == LeaderTimings(30.0, 20.0, 2.0)
    assert settings.metrics.address is None
    assert settings.logging == LogSettings("json", "DEBUG")
    assert settings.identity == "from-flag"
    assert settings.fleet.endpoint == "http://127.0.0.1:49153"
