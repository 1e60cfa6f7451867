"""Unit-file semantics of ``fleetop node``: pure parsing, checked against what systemd does."""

from __future__ import annotations

import signal

import pytest

from fleetop.fleet.units import UnitOption
from fleetop.node.systemd import (
    DEFAULT_TIMEOUT,
    ExecCommand,
    KillMode,
    RestartPolicy,
    ServiceType,
    SettingError,
    SpecifierContext,
    expand_env_argv,
    expand_specifiers,
    load_service,
    parse_bool,
    parse_environment,
    parse_environment_file,
    parse_exec,
    parse_signal,
    parse_timeout,
    parse_timespan,
    specifier_table,
    split_words,
    unescape_name,
)

MID = "0123456789abcdef0123456789abcdef"


def svc(*pairs: tuple[str, str], section: str = "Service") -> list[UnitOption]:
    return [UnitOption(section, name, value) for name, value in pairs]


def load(unit: str, *pairs: tuple[str, str]) -> object:
    return load_service(unit, svc(*pairs), SpecifierContext(unit, MID, "m1"))


# ---- time spans ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90", 90.0),
        ("0", 0.0),
        ("5s", 5.0),
        ("5 s", 5.0),
        ("1min 30s", 90.0),
        ("1min30s", 90.0),
        ("2m", 120.0),
        ("1h", 3600.0),
        ("1h 1m 1s", 3661.0),
        ("250ms", 0.25),
        ("1.5s", 1.5),
        (".5", 0.5),
        ("100us", 0.0001),
        ("2 minutes", 120.0),
        ("1d", 86400.0),
        ("1w", 604800.0),
        (" 10 sec ", 10.0),
        ("infinity", None),
    ],
)
def test_timespan(text: str, seconds: float | None) -> None:
    assert (
        parse_timespan(text) == pytest.approx(seconds)
        if seconds is not None
        else parse_timespan(text) is None
    )


@pytest.mark.parametrize("text", ["", "abc", "5 parsecs", "-1", "1min x", "s", "1..2s"])
def test_timespan_invalid(text: str) -> None:
    with pytest.raises(SettingError):
        parse_timespan(text)


@pytest.mark.parametrize(("text", "seconds"), [("0", None), ("infinity", None), ("5s", 5.0), ("1min", 60.0)])
def test_timeout_zero_means_none(text: str, seconds: float | None) -> None:
    assert parse_timeout(text) == seconds


# ---- booleans and signals ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("yes", True),
        ("on", True),
        ("1", True),
        ("True", True),
        ("no", False),
        ("off", False),
        ("0", False),
        ("false", False),
    ],
)
def test_bool(text: str, value: bool) -> None:
    assert parse_bool(text) is value


def test_bool_invalid() -> None:
    with pytest.raises(SettingError):
        parse_bool("maybe")


@pytest.mark.parametrize(
    ("text", "sig"),
    [
        ("SIGTERM", signal.SIGTERM),
        ("TERM", signal.SIGTERM),
        ("sigint", signal.SIGINT),
        ("9", signal.SIGKILL),
        ("SIGHUP", signal.SIGHUP),
        ("QUIT", signal.SIGQUIT),
    ],
)
def test_signal(text: str, sig: int) -> None:
    assert parse_signal(text) == sig


@pytest.mark.parametrize("text", ["SIGNOPE", "0", "999", ""])
def test_signal_invalid(text: str) -> None:
    with pytest.raises(SettingError):
        parse_signal(text)


# ---- word splitting ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "words"),
    [
        ("/bin/echo a b", ["/bin/echo", "a", "b"]),
        ("  /bin/echo   a\tb  ", ["/bin/echo", "a", "b"]),
        ('/bin/sh -c "echo hello world"', ["/bin/sh", "-c", "echo hello world"]),
        ("/bin/sh -c 'echo \"x\"'", ["/bin/sh", "-c", 'echo "x"']),
        ('a"b c"d', ["ab cd"]),
        ('""', [""]),
        ("'a b' \"c d\"", ["a b", "c d"]),
        (r"a\tb", ["a\tb"]),
        (r'"a\nb"', ["a\nb"]),
        (r"a\x41b", ["aAb"]),
        (r"a\101b", ["aAb"]),
        (r"a\sb", ["a b"]),
        (r'"say \"hi\""', ['say "hi"']),
        (r"'a\\b'", ["a\\b"]),
        (r"x\;", ["x\\;"]),
        (r"\d+", ["\\d+"]),
        ("", []),
        ("   ", []),
    ],
)
def test_split_words(line: str, words: list[str]) -> None:
    assert split_words(line) == words


@pytest.mark.parametrize("line", ['"unterminated', "'also", "trailing\\", r"bad\xZZ"])
def test_split_words_invalid(line: str) -> None:
    with pytest.raises(SettingError):
        split_words(line)


def test_split_words_relaxed_accepts_unbalanced() -> None:
    assert split_words('a "b c', relax=True) == ["a", "b c"]


# ---- specifiers ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("unit", "text", "out"),
    [
        ("web@8001.service", "%n", "web@8001.service"),
        ("web@8001.service", "%N", "web@8001"),
        ("web@8001.service", "%p", "web"),
        ("web@8001.service", "%i", "8001"),
        ("web@8001.service", "%I", "8001"),
        ("web@8001.service", "port=%i name=%p", "port=8001 name=web"),
        ("web@8001.service", "%m", MID),
        ("web@8001.service", "%H", "m1"),
        ("web@8001.service", "100%%", "100%"),
        ("web@8001.service", "%f", "/8001"),
        ("hello.service", "%n %N %p %i.", "hello.service hello hello ."),
        ("hello.service", "%f", "/hello"),
        ("a-b@x-y.service", "%p %P %i %I", "a-b a/b x-y x/y"),
        ("a-b-c.service", "%j %J", "c c"),
        ("x.service", "%T %V", "/tmp /var/tmp"),
        ("x.service", "no specifiers", "no specifiers"),
    ],
)
def test_specifiers(unit: str, text: str, out: str) -> None:
    assert expand_specifiers(text, specifier_table(SpecifierContext(unit, MID, "m1"))) == out


@pytest.mark.parametrize("text", ["%q", "%", "trailing %"])
def test_specifiers_unknown(text: str) -> None:
    with pytest.raises(SettingError):
        expand_specifiers(text, specifier_table(SpecifierContext("x.service", MID, "m1")))


@pytest.mark.parametrize(
    ("raw", "out"), [("a-b", "a/b"), ("a\\x2db", "a-b"), ("plain", "plain"), ("\\xZZ", "\\xZZ")]
)
def test_unescape_name(raw: str, out: str) -> None:
    assert unescape_name(raw) == out


# ---- environment expansion in Exec lines ---------------------------------------------------------

ENV = {"IP": "127.0.1.2", "OPTS": "-a -b  'c d'", "EMPTY": "", "PORT": "8001"}


@pytest.mark.parametrize(
    ("argv", "out"),
    [
        (["--bind", "${IP}"], ["--bind", "127.0.1.2"]),
        (["${IP}:${PORT}"], ["127.0.1.2:8001"]),
        (["$OPTS"], ["-a", "-b", "c d"]),
        (["${OPTS}"], ["-a -b  'c d'"]),
        (["x$IP"], ["x$IP"]),
        (["$UNSET", "z"], ["z"]),
        (["$EMPTY"], []),
        (["${UNSET}"], [""]),
        (["$$IP"], ["$IP"]),
        (["${UNSET:-dflt}", "${IP:-dflt}"], ["dflt", "127.0.1.2"]),
        (["${IP:+set}", "${UNSET:+set}"], ["set", ""]),
        (["a", "b"], ["a", "b"]),
    ],
)
def test_expand_env_argv(argv: list[str], out: list[str]) -> None:
    assert expand_env_argv(argv, ENV) == out


def test_render_keeps_argv0_and_honours_colon_prefix() -> None:
    (cmd,) = parse_exec("/bin/echo $IP ${PORT}")
    assert cmd.render(ENV) == ["/bin/echo", "127.0.1.2", "8001"]
    (raw,) = parse_exec(":/bin/echo $IP ${PORT}")
    assert raw.render(ENV) == ["/bin/echo", "$IP", "${PORT}"]


# ---- Exec lines ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("/bin/true", [ExecCommand("/bin/true", ("/bin/true",))]),
        ("-/bin/false", [ExecCommand("/bin/false", ("/bin/false",), ignore_failure=True)]),
        ("python3 -m http.server", [ExecCommand("python3", ("python3", "-m", "http.server"))]),
        ("@/bin/sh mysh -c x", [ExecCommand("/bin/sh", ("mysh", "-c", "x"))]),
        ("-@/bin/sh mysh", [ExecCommand("/bin/sh", ("mysh",), ignore_failure=True)]),
        ("+/bin/true", [ExecCommand("/bin/true", ("/bin/true",))]),
        ("!!/bin/true", [ExecCommand("/bin/true", ("/bin/true",))]),
        ("!-/bin/true", [ExecCommand("/bin/true", ("/bin/true",), ignore_failure=True)]),
        (":/bin/echo $X", [ExecCommand("/bin/echo", ("/bin/echo", "$X"), expand_env=False)]),
        ("/bin/a ; /bin/b x", [ExecCommand("/bin/a", ("/bin/a",)), ExecCommand("/bin/b", ("/bin/b", "x"))]),
        ("/bin/echo \\;", [ExecCommand("/bin/echo", ("/bin/echo", ";"))]),
        ('"/opt/my app/run" --x', [ExecCommand("/opt/my app/run", ("/opt/my app/run", "--x"))]),
    ],
)
def test_parse_exec(line: str, expected: list[ExecCommand]) -> None:
    assert parse_exec(line) == expected


@pytest.mark.parametrize(
    "line", ["", "./relative", "bin/x", "--/bin/true", "@/bin/sh", "/bin/a ;", "'unbalanced"]
)
def test_parse_exec_invalid(line: str) -> None:
    with pytest.raises(SettingError):
        parse_exec(line)


def test_parse_exec_specifiers_do_not_split_words() -> None:
    table = specifier_table(SpecifierContext("web@1.service", MID, "my host"))
    (cmd,) = parse_exec("/bin/echo %H", table)
    assert cmd.argv == ("/bin/echo", "my host")


# ---- Environment= and EnvironmentFile= -----------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "pairs"),
    [
        ("A=b", [("A", "b")]),
        ('"A=b c" D=e', [("A", "b c"), ("D", "e")]),
        ("A= B=x=y", [("A", ""), ("B", "x=y")]),
        ("'Q=it''s'", [("Q", "its")]),
        (r'"NL=a\nb"', [("NL", "a\nb")]),
    ],
)
def test_environment(value: str, pairs: list[tuple[str, str]]) -> None:
    assert parse_environment(value) == pairs


@pytest.mark.parametrize("value", ["novalue", "1A=x", "=x", '"A=b'])
def test_environment_invalid(value: str) -> None:
    with pytest.raises(SettingError):
        parse_environment(value)


@pytest.mark.parametrize(
    ("text", "pairs"),
    [
        ("COREOS_PRIVATE_IPV4=127.0.1.2\n", [("COREOS_PRIVATE_IPV4", "127.0.1.2")]),
        ("A=1\nB=2", [("A", "1"), ("B", "2")]),
        ("# comment\n; other\n\nA=1\n", [("A", "1")]),
        ("A = spaced value  \n", [("A", "spaced value")]),
        ("A='single $x \\n'\n", [("A", "single $x \\n")]),
        ('A="double \\"q\\" \\\\ end"\n', [("A", 'double "q" \\ end')]),
        ('A="multi\nline"\nB=2', [("A", "multi\nline"), ("B", "2")]),
        ("A=one\\\ntwo\n", [("A", "onetwo")]),
        ("export A=1\n", [("A", "1")]),
        ("not an assignment\nA=1\n", [("A", "1")]),
        ("1BAD=x\nGOOD=y\n", [("GOOD", "y")]),
        ("A=1\r\nB=2\r\n", [("A", "1"), ("B", "2")]),
        ("A=x=y\n", [("A", "x=y")]),
        ("A=\n", [("A", "")]),
        ("A=1\nA=2\n", [("A", "1"), ("A", "2")]),
    ],
)
def test_environment_file(text: str, pairs: list[tuple[str, str]]) -> None:
    assert parse_environment_file(text) == pairs


# ---- whole units ---------------------------------------------------------------------------------

WEB = ("ExecStart", "python3 -m http.server --bind ${COREOS_PRIVATE_IPV4} %i")


def test_web_unit_loads() -> None:
    result = load("web@8001.service", WEB, ("EnvironmentFile", "/etc/environment"))
    assert result.load_state == "loaded" and result.config is not None  # type: ignore[attr-defined]
    config = result.config  # type: ignore[attr-defined]
    (cmd,) = config.exec_start
    assert cmd.argv == ("python3", "-m", "http.server", "--bind", "${COREOS_PRIVATE_IPV4}", "8001")
    assert cmd.render({"COREOS_PRIVATE_IPV4": "127.0.1.2"})[-2:] == ["127.0.1.2", "8001"]
    assert config.environment_files[0].path == "/etc/environment"
    assert not config.environment_files[0].optional


@pytest.mark.parametrize(
    ("pairs", "field", "value"),
    [
        ((), "type", ServiceType.SIMPLE),
        ((("Type", "oneshot"),), "type", ServiceType.ONESHOT),
        ((("Type", "forking"),), "type", ServiceType.SIMPLE),
        ((("Type", "notify"),), "type", ServiceType.SIMPLE),
        ((), "restart", RestartPolicy.NO),
        ((("Restart", "on-failure"),), "restart", RestartPolicy.ON_FAILURE),
        ((("Restart", "always"),), "restart", RestartPolicy.ALWAYS),
        ((("Restart", "on-abnormal"),), "restart", RestartPolicy.ON_ABNORMAL),
        ((), "restart_sec", 0.1),
        ((("RestartSec", "2"),), "restart_sec", 2.0),
        ((("RestartSec", "500ms"),), "restart_sec", 0.5),
        ((), "start_limit_interval", 10.0),
        ((), "start_limit_burst", 5),
        ((("StartLimitIntervalSec", "1min"),), "start_limit_interval", 60.0),
        ((("StartLimitInterval", "30"),), "start_limit_interval", 30.0),
        ((("StartLimitBurst", "3"),), "start_limit_burst", 3),
        ((), "timeout_start", DEFAULT_TIMEOUT),
        ((), "timeout_stop", DEFAULT_TIMEOUT),
        ((("TimeoutStartSec", "5s"),), "timeout_start", 5.0),
        ((("TimeoutStopSec", "1"),), "timeout_stop", 1.0),
        ((("TimeoutSec", "7"),), "timeout_start", 7.0),
        ((("TimeoutSec", "7"),), "timeout_stop", 7.0),
        ((("TimeoutSec", "7"), ("TimeoutStopSec", "3")), "timeout_stop", 3.0),
        ((("TimeoutStopSec", "3"), ("TimeoutSec", "7")), "timeout_stop", 7.0),
        ((("TimeoutStopSec", "0"),), "timeout_stop", None),
        ((("TimeoutStartSec", "infinity"),), "timeout_start", None),
        ((("Type", "oneshot"),), "timeout_start", None),
        ((("Type", "oneshot"), ("TimeoutStartSec", "4")), "timeout_start", 4.0),
        ((), "kill_mode", KillMode.CONTROL_GROUP),
        ((("KillMode", "process"),), "kill_mode", KillMode.PROCESS),
        ((("KillMode", "mixed"),), "kill_mode", KillMode.MIXED),
        ((("KillMode", "none"),), "kill_mode", KillMode.NONE),
        ((("KillSignal", "SIGINT"),), "kill_signal", signal.SIGINT),
        ((("KillSignal", "HUP"),), "kill_signal", signal.SIGHUP),
        ((("SendSIGKILL", "no"),), "send_sigkill", False),
        ((("RemainAfterExit", "yes"),), "remain_after_exit", True),
        ((("WorkingDirectory", "/srv/%p"),), "working_directory", "/srv/u"),
        ((("WorkingDirectory", "-/missing"),), "working_directory_optional", True),
        ((("WorkingDirectory", "~"),), "working_directory", "~"),
        ((("User", "root"),), "user", "root"),
        ((("Environment", "A=1"), ("Environment", "B=%i")), "environment", (("A", "1"), ("B", ""))),
        ((("Environment", "A=1"), ("Environment", "")), "environment", ()),
        ((("SuccessExitStatus", "3 SIGUSR1"),), "success_exit_status", frozenset({3})),
        ((("SuccessExitStatus", "3 SIGUSR1"),), "success_signals", frozenset({signal.SIGUSR1})),
    ],
)
def test_service_settings(pairs: tuple[tuple[str, str], ...], field: str, value: object) -> None:
    result = load_service("u.service", svc(("ExecStart", "/bin/true"), *pairs), SpecifierContext("u.service"))
    assert result.load_state == "loaded", result.error
    assert getattr(result.config, field) == value


def test_exec_lists_accumulate_and_reset() -> None:
    result = load(
        "u.service",
        ("ExecStartPre", "/bin/a"),
        ("ExecStartPre", "-/bin/b"),
        ("ExecStart", "/bin/main"),
        ("ExecStop", "/bin/x"),
        ("ExecStop", ""),
        ("ExecStop", "/bin/y"),
        ("ExecStartPost", "/bin/p1 ; /bin/p2"),
        ("ExecStopPost", "/bin/post"),
    )
    config = result.config  # type: ignore[attr-defined]
    assert [c.path for c in config.exec_start_pre] == ["/bin/a", "/bin/b"]
    assert [c.ignore_failure for c in config.exec_start_pre] == [False, True]
    assert [c.path for c in config.exec_stop] == ["/bin/y"]
    assert [c.path for c in config.exec_start_post] == ["/bin/p1", "/bin/p2"]
    assert [c.path for c in config.exec_stop_post] == ["/bin/post"]


def test_unit_section_and_others() -> None:
    options = [
        UnitOption("Unit", "Description", "web on %H"),
        UnitOption("Unit", "StartLimitBurst", "2"),
        UnitOption("Service", "ExecStart", "/bin/true"),
        UnitOption("X-Fleet", "Conflicts", "web@*.service"),
        UnitOption("X-Fleetop", "Service", "web"),
        UnitOption("Install", "WantedBy", "multi-user.target"),
    ]
    result = load_service("web@1.service", options, SpecifierContext("web@1.service", MID, "m1"))
    assert result.load_state == "loaded"
    assert result.config is not None
    assert result.config.description == "web on m1"
    assert result.config.start_limit_burst == 2
    assert result.warnings == ()


def test_unknown_service_key_is_a_warning() -> None:
    result = load("u.service", ("ExecStart", "/bin/true"), ("LimitNOFILE", "4096"))
    assert result.load_state == "loaded"  # type: ignore[attr-defined]
    assert "LimitNOFILE" in result.warnings[0]  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("unit", "pairs", "message"),
    [
        ("u.service", (), "no ExecStart="),
        ("u.service", (("Description", "x"),), "no ExecStart="),
        ("u.service", (("ExecStop", "/bin/true"),), "only allowed for Type=oneshot"),
        ("u.service", (("Type", "oneshot"), ("ExecStop", "/bin/true")), "RemainAfterExit=yes"),
        ("u.service", (("ExecStart", "/bin/a"), ("ExecStart", "/bin/b")), "more than one ExecStart="),
        ("u.service", (("ExecStart", "/bin/a"), ("ExecStart", ""), ("ExecStart", "")), "no ExecStart="),
        (
            "u.service",
            (("Type", "oneshot"), ("ExecStart", "/bin/a"), ("Restart", "always")),
            "Restart=always",
        ),
        ("u.service", (("ExecStart", "./relative"),), "absolute path"),
        ("u.service", (("ExecStart", "/bin/echo %z"),), "unknown specifier"),
        ("u.service", (("ExecStart", "/bin/echo 'x"),), "unbalanced"),
        ("u.service", (("ExecStart", "/bin/true"), ("Type", "bogus")), "Type=bogus"),
        ("u.service", (("ExecStart", "/bin/true"), ("Restart", "sometimes")), "Restart=sometimes"),
        ("u.service", (("ExecStart", "/bin/true"), ("RestartSec", "soon")), "RestartSec=soon"),
        ("u.service", (("ExecStart", "/bin/true"), ("TimeoutStopSec", "x")), "TimeoutStopSec=x"),
        ("u.service", (("ExecStart", "/bin/true"), ("KillMode", "all")), "KillMode=all"),
        ("u.service", (("ExecStart", "/bin/true"), ("KillSignal", "SIGFOO")), "KillSignal=SIGFOO"),
        ("u.service", (("ExecStart", "/bin/true"), ("RemainAfterExit", "maybe")), "RemainAfterExit"),
        ("u.service", (("ExecStart", "/bin/true"), ("Environment", "novalue")), "environment"),
        ("u.service", (("ExecStart", "/bin/true"), ("EnvironmentFile", "relative/env")), "not absolute"),
        ("u.service", (("ExecStart", "/bin/true"), ("WorkingDirectory", "relative")), "not absolute"),
        ("u.service", (("ExecStart", "/bin/true"), ("StartLimitBurst", "-1")), "StartLimitBurst"),
        ("u.socket", (("ExecStart", "/bin/true"),), ".socket unit"),
        ("web@.service", (("ExecStart", "/bin/true"),), "template"),
        ("nodot", (("ExecStart", "/bin/true"),), "must contain"),
    ],
)
def test_bad_setting(unit: str, pairs: tuple[tuple[str, str], ...], message: str) -> None:
    result = load_service(
        unit, svc(*pairs), SpecifierContext(unit if "." in unit else "x.service", MID, "m1")
    )
    assert result.load_state == "bad-setting"
    assert result.config is None
    assert message in result.error


def test_oneshot_without_exec_start_but_remain_after_exit_loads() -> None:
    result = load("u.service", ("Type", "oneshot"), ("RemainAfterExit", "yes"), ("ExecStop", "/bin/true"))
    assert result.load_state == "loaded"  # type: ignore[attr-defined]


def test_oneshot_may_have_several_exec_start() -> None:
    result = load("u.service", ("Type", "oneshot"), ("ExecStart", "/bin/a"), ("ExecStart", "/bin/b"))
    assert [c.path for c in result.config.exec_start] == ["/bin/a", "/bin/b"]  # type: ignore[attr-defined]


def test_load_never_raises_on_garbage() -> None:
    garbage = [
        UnitOption("Service", name, value)
        for name in ("ExecStart", "Environment", "TimeoutSec", "Type")
        for value in ("", "%", "\\", "'", '"', "=", "$", "${", "@", "-", ";")
    ]
    for option in garbage:
        result = load_service("g.service", [option], SpecifierContext("g.service"))
        assert result.load_state in ("loaded", "bad-setting")
