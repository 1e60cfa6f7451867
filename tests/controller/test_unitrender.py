"""The units fleetop writes: every line that a spec field produces, quoting, ownership, template hashes."""

from __future__ import annotations

import re
from typing import Any

import pytest

from fleetop.controller.services.unitrender import (
    main_template,
    main_unit_name,
    register_command,
    render_main,
    render_sidekick,
    sidekick_template,
    sidekick_unit_name,
)
from fleetop.controller.unitfile import (
    DEFAULT_FLEETOP,
    UnitSettings,
    environment_assignment,
    systemd_quote,
    template_hash,
)
from fleetop.errors import RenderError
from fleetop.fleet.ownership import OWNER_SECTION, Owner, owned_by
from fleetop.fleet.units import (
    UnitOption,
    check_option_values,
    parse_unit_file,
    regroup,
    serialize,
    unit_hash,
)
from fleetop.models import ServiceSpec
from fleetop.node.unitparse import split_words

BASE: dict[str, Any] = {"replicas": 2, "unit": {"execStart": "/usr/bin/app --port %i"}}


def spec_of(**fields: Any) -> ServiceSpec:
    document = {**BASE, **fields}
    if "unit" in fields:
        document["unit"] = {**BASE["unit"], **fields["unit"]}
    return ServiceSpec.model_validate(document)


def lines(options: list[UnitOption], section: str | None = None) -> list[str]:
    return [f"{o.name}={o.value}" for o in options if section is None or o.section == section]


# -- names ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("service", "instance", "main", "sidekick"),
    [
        ("web", 8001, "web@8001.service", "web-discovery@8001.service"),
        ("web", "1", "web@1.service", "web-discovery@1.service"),
        ("api-v2", 9000, "api-v2@9000.service", "api-v2-discovery@9000.service"),
        ("a", "%i", "a@%i.service", "a-discovery@%i.service"),
    ],
)
def test_unit_names(service: str, instance: int | str, main: str, sidekick: str) -> None:
    assert main_unit_name(service, instance) == main
    assert sidekick_unit_name(service, instance) == sidekick


# -- the main unit ----------------------------------------------------------------------------------------


MAIN_CASES: list[tuple[str, dict[str, Any], list[tuple[str, str]], list[tuple[str, str]]]] = [
    (
        "defaults",
        {},
        [
            ("Unit", "Description=web instance %i (fleetop)"),
            ("Service", "ExecStart=/usr/bin/app --port %i"),
            ("Service", "EnvironmentFile=-/etc/environment"),
            ("Service", "Restart=on-failure"),
            ("Service", "RestartSec=1s"),
        ],
        [("Service", "User="), ("X-Fleet", "Global=true"), ("X-Fleet", "Conflicts=web@*.service")],
    ),
    ("description", {"unit": {"description": "Apache on %i"}}, [("Unit", "Description=Apache on %i")], []),
    (
        "exec lines in order",
        {
            "unit": {
                "execStartPre": ["-/usr/bin/docker kill apache.%i", "-/usr/bin/docker rm apache.%i"],
                "execStartPost": ["/bin/true"],
                "execStop": ["/usr/bin/docker stop apache.%i"],
                "execStopPost": ["/bin/rm -f /run/x"],
            }
        },
        [
            ("Service", "ExecStartPre=-/usr/bin/docker kill apache.%i"),
            ("Service", "ExecStartPre=-/usr/bin/docker rm apache.%i"),
            ("Service", "ExecStartPost=/bin/true"),
            ("Service", "ExecStop=/usr/bin/docker stop apache.%i"),
            ("Service", "ExecStopPost=/bin/rm -f /run/x"),
        ],
        [],
    ),
    (
        "environment",
        {"unit": {"environment": {"MODE": "prod", "GREETING": 'say "hi"', "PATHS": "a b\\c"}}},
        [
            ("Service", "Environment=MODE=prod"),
            ("Service", 'Environment="GREETING=say \\"hi\\""'),
            ("Service", 'Environment="PATHS=a b\\\\c"'),
        ],
        [],
    ),
    (
        "environment files",
        {"unit": {"environmentFile": ["/etc/environment", "-/etc/app.env"]}},
        [("Service", "EnvironmentFile=/etc/environment"), ("Service", "EnvironmentFile=-/etc/app.env")],
        [("Service", "EnvironmentFile=-/etc/environment")],
    ),
    (
        "no environment files",
        {"unit": {"environmentFile": []}},
        [],
        [("Service", "EnvironmentFile=-/etc/environment")],
    ),
    (
        "restart and user",
        {"unit": {"restart": "always", "restartSec": "500ms", "user": "core"}},
        [("Service", "Restart=always"), ("Service", "RestartSec=500ms"), ("Service", "User=core")],
        [],
    ),
    ("restartSec fractional", {"unit": {"restartSec": 2.5}}, [("Service", "RestartSec=2.5s")], []),
    (
        "extra options pass through",
        {
            "unit": {
                "options": [
                    {"section": "Service", "name": "TimeoutStartSec", "value": "0"},
                    {"section": "Service", "name": "KillMode", "value": "none"},
                    {"section": "Unit", "name": "Requires", "value": "docker.service"},
                    {"section": "Install", "name": "WantedBy", "value": "multi-user.target"},
                ]
            }
        },
        [
            ("Service", "TimeoutStartSec=0"),
            ("Service", "KillMode=none"),
            ("Unit", "Requires=docker.service"),
            ("Install", "WantedBy=multi-user.target"),
        ],
        [],
    ),
    ("spread", {"placement": {"spread": True}}, [("X-Fleet", "Conflicts=web@*.service")], []),
    (
        "metadata, one line per value",
        {"placement": {"machineMetadata": {"role": ["web", "api"], "zone": ["b"]}}},
        [
            ("X-Fleet", "MachineMetadata=role=web"),
            ("X-Fleet", "MachineMetadata=role=api"),
            ("X-Fleet", "MachineMetadata=zone=b"),
        ],
        [],
    ),
    ("machineOf", {"placement": {"machineOf": "db.service"}}, [("X-Fleet", "MachineOf=db.service")], []),
    (
        "machineId",
        {"placement": {"machineId": "1235931b5998466f9925524a1446b260"}},
        [("X-Fleet", "MachineID=1235931b5998466f9925524a1446b260")],
        [],
    ),
    ("global", {"placement": {"global": True}}, [("X-Fleet", "Global=true")], [("X-Fleet", "MachineOf=")]),
    (
        "global with metadata",
        {"placement": {"global": True, "machineMetadata": {"role": ["edge"]}}},
        [("X-Fleet", "Global=true"), ("X-Fleet", "MachineMetadata=role=edge")],
        [],
    ),
]


@pytest.mark.parametrize(
    ("fields", "present", "absent"), [c[1:] for c in MAIN_CASES], ids=[c[0] for c in MAIN_CASES]
)
def test_main_unit_lines(
    fields: dict[str, Any], present: list[tuple[str, str]], absent: list[tuple[str, str]]
) -> None:
    options = render_main(spec_of(**fields), "web", 8001)
    for section, line in present:
        assert line in lines(options, section), (section, line, serialize(options))
    for section, prefix in absent:
        assert not any(line.startswith(prefix) for line in lines(options, section)), (section, prefix)
    check_option_values(options)


@pytest.mark.parametrize("fields", [c[1] for c in MAIN_CASES], ids=[c[0] for c in MAIN_CASES])
def test_main_unit_is_owned_regrouped_and_parses_back(fields: dict[str, Any]) -> None:
    spec = spec_of(**fields)
    options = render_main(spec, "web", 8001)
    assert options == regroup(options), "options come in the order fleet stores them"
    assert parse_unit_file(serialize(options)) == options
    owner = owned_by(options)
    assert owner == Owner("web", "main", main_template(spec, "web"))
    assert re.fullmatch(r"[0-9a-f]{12}", owner.template)
    assert options[-3:] == [
        UnitOption(OWNER_SECTION, "Service", "web"),
        UnitOption(OWNER_SECTION, "Role", "main"),
        UnitOption(OWNER_SECTION, "Template", owner.template),
    ]


def test_main_unit_order_of_exec_lines() -> None:
    spec = spec_of(
        unit={"execStartPre": ["/a"], "execStartPost": ["/c"], "execStop": ["/d"], "execStopPost": ["/e"]}
    )
    names = [o.name for o in render_main(spec, "web", 1) if o.name.startswith("Exec")]
    assert names == ["ExecStartPre", "ExecStart", "ExecStartPost", "ExecStop", "ExecStopPost"]


# -- quoting ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "quoted"),
    [
        ("plain", "plain"),
        ("/usr/bin/x", "/usr/bin/x"),
        ("a=b,c:d@e%i", "a=b,c:d@e%i"),
        ("", '""'),
        ("two words", '"two words"'),
        ('say "hi"', '"say \\"hi\\""'),
        ("back\\slash", '"back\\\\slash"'),
        ("it's", '"it\'s"'),
        ("${COREOS_PRIVATE_IPV4}:%i", '"${COREOS_PRIVATE_IPV4}:%i"'),
        ("a;b", '"a;b"'),
        ("tab\there", '"tab\there"'),
    ],
)
def test_systemd_quote(value: str, quoted: str) -> None:
    assert systemd_quote(value) == quoted


@pytest.mark.parametrize(
    ("key", "value", "rendered"),
    [
        ("A", "1", "A=1"),
        ("A", "", "A="),
        ("A", "x y", '"A=x y"'),
        ("A", '"q"', '"A=\\"q\\""'),
        ("A", "c:\\dir", '"A=c:\\\\dir"'),
        ("URL", "http://h:80/p?q=1&r=2", '"URL=http://h:80/p?q=1&r=2"'),
        ("PORT", "%i", "PORT=%i"),
    ],
)
def test_environment_assignment(key: str, value: str, rendered: str) -> None:
    assert environment_assignment(key, value) == rendered


@pytest.mark.parametrize(
    "command",
    [
        "pg_isready",
        "curl -f http://127.0.0.1:%i/",
        'sh -c "test -e /run/ok"',
        "check --name 'a b' --path c:\\x",
        'echo "nested \'quotes\' and \\"escapes\\""',
    ],
)
def test_exec_check_is_one_argument(command: str) -> None:
    spec = spec_of(ports={"base": 8001}, discovery={"sidekick": True, "check": {"exec": command}})
    words = split_words(register_command(spec, "web", 8001))  # as systemd reads ExecStart
    assert words[words.index("--exec") + 1] == command


# -- the sidekick ----------------------------------------------------------------------------------------


SIDEKICK_CASES: list[tuple[str, dict[str, Any], list[str], list[str]]] = [
    (
        "no check, ports",
        {"ports": {"base": 8001}, "discovery": {"sidekick": True}},
        ["--address ${COREOS_PRIVATE_IPV4}:8001", "--interval 10s", "--timeout 2s", "--ttl 30s"],
        ["--http", "--tcp", "--exec", "--prefix"],
    ),
    (
        "http check",
        {"ports": {"base": 8001}, "discovery": {"sidekick": True, "check": {"http": "/healthz"}}},
        ["--http /healthz"],
        ["--tcp", "--exec"],
    ),
    (
        "tcp check with timings",
        {
            "ports": {"base": 8001},
            "discovery": {
                "sidekick": True,
                "ttl": "1m",
                "check": {"tcp": True, "interval": "5s", "timeout": "500ms"},
            },
        },
        ["--tcp", "--interval 5s", "--timeout 0.5s", "--ttl 60s"],
        ["--http", "--exec"],
    ),
    (
        "exec check",
        {"ports": {"base": 8001}, "discovery": {"sidekick": True, "check": {"exec": "pg_isready -p %i"}}},
        ['--exec "pg_isready -p %i"'],
        ["--http", "--tcp"],
    ),
    (
        "prefix",
        {"ports": {"base": 8001}, "discovery": {"sidekick": True, "prefix": "/services/apache"}},
        ["--prefix /services/apache"],
        [],
    ),
]


@pytest.mark.parametrize(
    ("fields", "present", "absent"), [c[1:] for c in SIDEKICK_CASES], ids=[c[0] for c in SIDEKICK_CASES]
)
def test_sidekick_exec_start(fields: dict[str, Any], present: list[str], absent: list[str]) -> None:
    options = render_sidekick(spec_of(**fields), "web", 8001)
    (exec_start,) = [o.value for o in options if o.name == "ExecStart"]
    assert exec_start.startswith(f"{DEFAULT_FLEETOP} register --service web --instance %i --address ")
    for fragment in present:
        assert fragment in exec_start + " ", (fragment, exec_start)
    for fragment in absent:
        assert fragment not in exec_start, (fragment, exec_start)


@pytest.mark.parametrize("instance", [8001, 8002, 9000])
def test_sidekick_unit(instance: int) -> None:
    spec = spec_of(ports={"base": 8001}, replicas=1000, discovery={"sidekick": True})
    options = render_sidekick(spec, "web", instance)
    main = f"web@{instance}.service"
    assert lines(options, "Unit")[1:] == [f"BindsTo={main}", f"After={main}"]
    assert lines(options, "Service")[:2] == [
        "EnvironmentFile=-/etc/environment",
        "EnvironmentFile=-/etc/etcd.environment",
    ]
    assert lines(options, "Service")[-2:] == ["Restart=always", "RestartSec=1"]
    assert lines(options, "X-Fleet") == [f"MachineOf={main}"]
    assert owned_by(options) == Owner("web", "discovery", sidekick_template(spec, "web"))
    assert options == regroup(options)
    check_option_values(options)


def test_sidekick_of_a_global_service_is_global() -> None:
    spec = spec_of(
        ports={"base": 8001},
        placement={"global": True, "machineMetadata": {"role": ["edge"]}},
        discovery={"sidekick": True},
    )
    options = render_sidekick(spec, "web", 8001)
    assert lines(options, "X-Fleet") == ["Global=true", "MachineMetadata=role=edge"]
    assert "BindsTo=web@8001.service" in lines(options, "Unit")


# -- template hashes --------------------------------------------------------------------------------------


def test_instances_share_templates_and_main_files() -> None:
    spec = spec_of(ports={"base": 8001}, discovery={"sidekick": True})
    mains = [render_main(spec, "web", i) for i in (8001, 8002, 8003)]
    assert len({unit_hash(m) for m in mains}) == 1, "one fleet hash for all instances of a main unit"
    sidekicks = [render_sidekick(spec, "web", i) for i in (8001, 8002, 8003)]
    assert len({owned_by(s) for s in sidekicks}) == 1
    assert len({unit_hash(s) for s in sidekicks}) == 3, "sidekicks name their own instance"


CHANGES: list[tuple[str, dict[str, Any], bool, bool]] = [
    # (name, change, main template changes, sidekick template changes)
    ("command", {"unit": {"execStart": "/usr/bin/app2"}}, True, False),
    ("environment", {"unit": {"environment": {"A": "1"}}}, True, False),
    ("description", {"unit": {"description": "x"}}, True, False),
    ("restart", {"unit": {"restart": "always"}}, True, False),
    ("spread", {"placement": {"spread": True}}, True, False),
    ("metadata", {"placement": {"machineMetadata": {"role": ["web"]}}}, True, False),
    ("check", {"discovery": {"sidekick": True, "check": {"tcp": True}}}, False, True),
    ("ttl", {"discovery": {"sidekick": True, "ttl": 60}}, False, True),
    ("prefix", {"discovery": {"sidekick": True, "prefix": "/x/web"}}, False, True),
    ("replicas", {"replicas": 7}, False, False),
    ("rollout", {"rollout": {"maxSurge": 3}}, False, False),
    ("paused", {"paused": True}, False, False),
]


@pytest.mark.parametrize(
    ("change", "main_changes", "side_changes"), [c[1:] for c in CHANGES], ids=[c[0] for c in CHANGES]
)
def test_template_changes(change: dict[str, Any], main_changes: bool, side_changes: bool) -> None:
    before = spec_of(ports={"base": 8001}, discovery={"sidekick": True})
    merged: dict[str, Any] = {"ports": {"base": 8001}, "discovery": {"sidekick": True}, **change}
    after = spec_of(**merged)
    assert (main_template(before, "web") != main_template(after, "web")) == main_changes
    assert (sidekick_template(before, "web") != sidekick_template(after, "web")) == side_changes


def test_template_hash_ignores_the_ownership_section() -> None:
    body = [UnitOption("Service", "ExecStart", "/bin/x")]
    owned = [*body, UnitOption(OWNER_SECTION, "Template", "whatever")]
    assert template_hash(body) == template_hash(owned)
    assert template_hash(body) != template_hash([UnitOption("Service", "ExecStart", "/bin/y")])


def test_service_name_is_part_of_the_template() -> None:
    spec = spec_of(placement={"spread": True})
    assert main_template(spec, "web") != main_template(spec, "api")


# -- ownership ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "owner"),
    [
        ([], None),
        ([UnitOption("Service", "ExecStart", "/bin/x")], None),
        ([UnitOption(OWNER_SECTION, "Role", "main")], None),
        ([UnitOption(OWNER_SECTION, "Service", "")], None),
        ([UnitOption("Service", "Service", "web")], None),
        ([UnitOption(OWNER_SECTION, "Service", "web")], Owner("web", "", "")),
        (
            [
                UnitOption(OWNER_SECTION, "Service", "web"),
                UnitOption(OWNER_SECTION, "Role", "discovery"),
                UnitOption(OWNER_SECTION, "Template", "abc"),
            ],
            Owner("web", "discovery", "abc"),
        ),
        (
            [UnitOption(OWNER_SECTION, "Service", "web"), UnitOption(OWNER_SECTION, "Service", "evil")],
            Owner("web", "", ""),
        ),
    ],
)
def test_owned_by(options: list[UnitOption], owner: Owner | None) -> None:
    assert owned_by(options) == owner


# -- refusals -------------------------------------------------------------------------------------------


def test_a_line_too_long_for_fleet_is_refused() -> None:
    spec = spec_of(unit={"execStart": "/bin/echo " + "x" * 2100})
    with pytest.raises(RenderError, match="line too long"):
        render_main(spec, "web", 1)


def test_an_exec_check_too_long_is_refused() -> None:
    spec = spec_of(ports={"base": 8001}, discovery={"sidekick": True, "check": {"exec": "x" * 2100}})
    with pytest.raises(RenderError):
        render_sidekick(spec, "web", 8001)


def test_a_sidekick_needs_ports() -> None:
    plain = spec_of()
    # The model refuses this combination; the renderer refuses it again for specs that bypassed it.
    spec = plain.model_copy(update={"discovery": plain.discovery.model_copy(update={"sidekick": True})})
    with pytest.raises(RenderError, match=r"ports\.base"):
        render_sidekick(spec, "web", 1)
    render_main(spec, "web", 1)


def test_an_installation_root_reaches_the_sidekick() -> None:
    spec = spec_of(ports={"base": 8001}, discovery={"sidekick": True, "check": {"http": "/"}})
    plain = render_sidekick(spec, "web", 8001)
    rooted = render_sidekick(spec, "web", 8001, UnitSettings(key_root="/team-a"))
    [command] = [o.value for o in rooted if o.name == "ExecStart"]
    assert command.endswith("--root /team-a")
    assert not any("--root" in o.value for o in plain)
    assert owned_by(rooted) != owned_by(plain)


# -- fleetop's path ----------------------------------------------------------------------------------------


SIDEKICK_SPEC: dict[str, Any] = {"ports": {"base": 8001}, "discovery": {"sidekick": True}}


def test_the_sidekick_names_fleetop_by_its_absolute_path() -> None:
    settings = UnitSettings("/srv/tools/fleetop-1.2/bin/fleetop")
    options = render_sidekick(spec_of(**SIDEKICK_SPEC), "web", 8001, settings)
    [command] = [o.value for o in options if o.name == "ExecStart"]
    assert command.split()[:2] == ["/srv/tools/fleetop-1.2/bin/fleetop", "register"]
    assert parse_unit_file(serialize(options)) == options


def test_a_new_fleetop_path_is_a_new_sidekick_template() -> None:
    spec = spec_of(**SIDEKICK_SPEC)
    before, after = UnitSettings("/opt/fleetop/bin/fleetop"), UnitSettings("/opt/fleetop2/bin/fleetop")
    assert sidekick_template(spec, "web", before) != sidekick_template(spec, "web", after)
    assert owned_by(render_sidekick(spec, "web", 8001, before)) != owned_by(
        render_sidekick(spec, "web", 8001, after)
    )
    same = UnitSettings(before.fleetop)
    assert sidekick_template(spec, "web", before) == sidekick_template(spec, "web", same)


@pytest.mark.parametrize(
    ("path", "problem"),
    [
        ("fleetop", "absolute path"),
        ("bin/fleetop", "absolute path"),
        ("", "absolute path"),
        ("/opt/my fleetop/bin/fleetop", "' '"),
        ("/opt/fleetop/bin/fleetop\nExecStartPre=/bin/evil", r"'\n'"),
        ("/opt/fleetop/bin/fleetop\\x", r"'\\'"),
        ("/opt/%i/fleetop", "'%'"),
        ("/opt/${HOME}/fleetop", "'$'"),
        ('/opt/"x"/fleetop', "'\"'"),
        ("/opt/fleetop/bin/", "name a file"),
        ("/opt/fleetop/../bin/fleetop", "'..'"),
        ("/" + "x" * 5000, "longer than"),
    ],
)
def test_a_fleetop_path_that_cannot_be_written_into_a_unit_is_refused(path: str, problem: str) -> None:
    with pytest.raises(RenderError, match=re.escape(problem)):
        UnitSettings(path)
