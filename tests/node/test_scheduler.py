"""fleet's scheduling rules (fleet-observed §10, unit-files-and-scheduling.md) against the pure scheduler."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleetop.fleet.units import UnitOption
from fleetop.node.scheduler import (
    SchedMachine,
    SchedUnit,
    expand_specifiers,
    glob_match,
    is_plain,
    parse_multivalue,
    place_plain,
    requirements,
    schedule,
    validate_requirements,
)

M1, M2, M3 = "1" * 32, "2" * 32, "3" * 32
THREE = [SchedMachine(M1), SchedMachine(M2), SchedMachine(M3)]
META = [
    SchedMachine(M1, {"role": "web", "zone": "a"}),
    SchedMachine(M2, {"role": "db", "zone": "b"}),
    SchedMachine(M3, {"role": "web", "zone": "b"}),
]


def unit(name: str, *xfleet: str, state: str = "launched") -> SchedUnit:
    options = [UnitOption("Service", "ExecStart", "/bin/sleep 1000")]
    for line in xfleet:
        key, _, value = line.partition("=")
        options.append(UnitOption("X-Fleet", key, value))
    return SchedUnit(name, tuple(options), state)


def place(units, machines=THREE, current=None):
    return schedule(units, machines, current or {})


# -- X-Fleet values ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "values"),
    [
        ("role=db", ["role=db"]),
        ('"role=web" "zone=b"', ["role=web", "zone=b"]),
        ('"a=b c"', ["a=b c"]),
        ('"a=b"', ["a=b"]),
        ('"a=b" c=d', ['"a=b" c=d']),
        ("", [""]),
    ],
)
def test_parse_multivalue(line, values):
    assert parse_multivalue(line) == values


@pytest.mark.parametrize(
    ("value", "name", "expected"),
    [
        ("%n", "web@8001.service", "web@8001.service"),
        ("%N", "web@8001.service", "web@8001"),
        ("%p", "web@8001.service", "web"),
        ("%i", "web@8001.service", "8001"),
        ("%p@*.service", "web@8001.service", "web@*.service"),
        ("%p.socket", "foo.service", "foo.socket"),
        ("%i", "foo.service", ""),
        ("plain", "foo.service", "plain"),
    ],
)
def test_specifiers(value, name, expected):
    assert expand_specifiers(value, name) == expected


@pytest.mark.parametrize(
    ("pattern", "name", "matched"),
    [
        ("web@*", "web@8001.service", True),
        ("web@*.service", "web@8001.service", True),
        ("web@*.service", "web@8001.socket", False),
        ("web*", "webb.service", True),
        ("*", "anything.service", True),
        ("*", "a/b", False),
        ("?eb.service", "web.service", True),
        ("[a-c]x", "bx", True),
        ("[^a-c]x", "dx", True),
        ("[^a-c]x", "ax", False),
        ("[", "[", False),
        ("[]a]", "a", False),
        ("a\\*", "a*", True),
        ("a\\*", "ab", False),
        ("exact.service", "exact.service", True),
        ("exact.service", "exact.servicex", False),
    ],
)
def test_glob_is_go_path_match(pattern, name, matched):
    assert glob_match(pattern, name) is matched


def test_requirements_read_deprecated_names_and_quoted_pairs():
    options = [
        UnitOption("X-Fleet", "X-ConditionMachineMetadata", '"role=web" "zone=b"'),
        UnitOption("X-Fleet", "MachineMetadata", "role=db"),
        UnitOption("X-Fleet", "X-Conflicts", "%p@*.service"),
        UnitOption("X-Fleet", "X-ConditionMachineOf", "%p-db.service"),
        UnitOption("X-Fleet", "Global", "false"),
        UnitOption("Service", "MachineID", "ignored-outside-x-fleet"),
    ]
    req = requirements("web@1.service", options)
    assert req.metadata == {"role": frozenset({"web", "db"}), "zone": frozenset({"b"})}
    assert req.conflicts == ("web@*.service",)
    assert req.peers == ("web-db.service",)
    assert req.machine_id is None
    assert not req.is_global


@pytest.mark.parametrize(
    ("values", "is_global"), [(["true"], True), (["TRUE"], True), (["true", "no"], False)]
)
def test_global_last_value_wins(values, is_global):
    options = [UnitOption("X-Fleet", "Global", v) for v in values]
    assert requirements("g.service", options).is_global is is_global


# -- validation -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("xfleet", "message"),
    [
        (["MachineID=abc", "Conflicts=x*"], "MachineID cannot be used with Conflicts"),
        (["MachineID=abc", "MachineOf=x.service"], "MachineID cannot be used with Peers"),
        (["MachineID=abc", "Global=true"], "MachineID cannot be used with Global"),
        (["MachineID=abc", "Replaces=x.service"], "MachineID cannot be used with Replaces"),
        (["Global=true", "MachineOf=x.service"], "Global cannot be used with Peers"),
        (["Global=true", "Replaces=x.service"], "Global cannot be used with Replaces"),
        (["Conflicts=a*", "Replaces=x.service"], "Conflicts cannot be used with Replaces"),
        (
            ["MachineOf=x.service", "Conflicts=x.service"],
            'unresolvable requirements: peer "x.service" matches conflict "x.service"',
        ),
        (
            ["MachineOf=x.service", "Conflicts=x*"],
            'unresolvable requirements: peer "x.service" matches conflict "x*"',
        ),
        (
            ["MachineOf=x.service", "Replaces=x.service"],
            'unresolvable requirements: peer "x.service" matches replace "x.service"',
        ),
    ],
)
def test_impossible_combinations_are_rejected_with_fleets_messages(xfleet, message):
    with pytest.raises(ValueError, match="^" + message.replace("*", r"\*") + "$"):
        validate_requirements("u.service", unit("u.service", *xfleet).options)


@pytest.mark.parametrize(
    "xfleet",
    [
        [],
        ["MachineID=abc"],
        ["Global=true", "MachineMetadata=role=web", "Conflicts=x*"],
        ["MachineOf=x.service", "Conflicts=y*"],
        ["Replaces=a.service", "MachineOf=b.service"],
        ["Global=false", "MachineOf=x.service"],
    ],
)
def test_valid_combinations(xfleet):
    validate_requirements("u.service", unit("u.service", *xfleet).options)


# -- placement --------------------------------------------------------------------------------------


def test_least_loaded_with_ties_by_machine_id():
    result = place([unit(f"u{i}.service") for i in range(6)])
    assert [result.placements[f"u{i}.service"] for i in range(6)] == [M1, M2, M3, M1, M2, M3]


def test_conflicts_spread_one_per_machine_and_leave_the_fourth_unscheduled():
    units = [unit(f"web@{p}.service", "Conflicts=web@*.service") for p in (8001, 8002, 8003, 8004)]
    result = place(units)
    assert result.placements == {"web@8001.service": M1, "web@8002.service": M2, "web@8003.service": M3}
    assert result.unscheduled == ("web@8004.service",)


def test_conflicts_as_observed_on_fleet_with_hello_on_m1():
    units = [unit("hello.service")] + [
        unit(f"web@{p}.service", "Conflicts=web@*.service") for p in (8001, 8002, 8003, 8004)
    ]
    result = place(units, current={"hello.service": M1})
    assert result.placements["web@8001.service"] == M2
    assert result.placements["web@8002.service"] == M3
    assert result.placements["web@8003.service"] == M1
    assert "web@8004.service" not in result.placements


def test_conflicts_of_other_units_apply_too():
    units = [unit("a.service", "Conflicts=b.service"), unit("b.service")]
    result = place(units, machines=[SchedMachine(M1)])
    assert result.placements == {"a.service": M1}
    assert result.unscheduled == ("b.service",)


def test_conflicts_with_specifier():
    units = [unit(f"db@{i}.service", "Conflicts=%p@*.service") for i in range(1, 5)]
    assert len(set(place(units).placements.values())) == 3


@pytest.mark.parametrize(
    ("xfleet", "expected"),
    [
        (["MachineMetadata=role=db"], M2),
        (["MachineMetadata=role=web", "MachineMetadata=zone=b"], M3),
        (['MachineMetadata="role=web" "zone=b"'], M3),
        (["MachineMetadata=role=gpu"], None),
        (["MachineMetadata=zone=b", "MachineMetadata=zone=c"], M2),
        (['MachineMetadata="role=db" "zone=a"'], None),
        (['MachineMetadata="role=db" "zone=a"', "MachineMetadata=zone=b"], M2),
        (["MachineMetadata=nonsense"], M1),
        (["MachineID=" + M3], M3),
        (["MachineID=" + "f" * 32], None),
        (["MachineID=%i"], None),
    ],
)
def test_single_unit_requirements(xfleet, expected):
    result = place([unit("x.service", *xfleet)], machines=META)
    assert result.placements.get("x.service") == expected


def test_metadata_or_within_key_and_across_lines():
    units = [
        unit(f"u{i}.service", 'MachineMetadata="role=db" "zone=a"', "MachineMetadata=role=web")
        for i in range(3)
    ]
    result = place(units, machines=META)
    # zone=a AND role in {db, web}: only m1 qualifies.
    assert set(result.placements.values()) == {M1}


def test_machine_of_colocates_and_follows():
    units = [
        unit("a-side.service", "MachineOf=web@8002.service"),
        unit("web@8002.service", "MachineID=" + M3),
    ]
    result = place(units)
    assert result.placements == {"web@8002.service": M3, "a-side.service": M3}


@pytest.mark.parametrize("target_state", ["inactive", None])
def test_machine_of_unscheduled_or_missing_target_stays_unscheduled(target_state):
    units = [unit("side.service", "MachineOf=main.service")]
    if target_state:
        units.append(unit("main.service", state=target_state))
    result = place(units)
    assert "side.service" in result.unscheduled
    assert "side.service" not in result.placements


def test_machine_of_follows_a_moved_target():
    units = [unit("main.service"), unit("side.service", "MachineOf=main.service")]
    current = {"main.service": M3, "side.service": M3}
    result = place(units, machines=[SchedMachine(M1), SchedMachine(M2)], current=current)
    assert result.placements["main.service"] == result.placements["side.service"]


def test_global_units_run_on_every_eligible_machine():
    units = [
        unit("all.service", "Global=true"),
        unit("webs.service", "Global=true", "MachineMetadata=role=web"),
        unit("plain.service"),
    ]
    result = place(units, machines=META)
    assert result.global_placements == {"all.service": (M1, M2, M3), "webs.service": (M1, M3)}
    assert result.placements == {"plain.service": M1}


def test_global_respects_conflicts_both_ways():
    units = [unit("busy.service"), unit("g.service", "Global=true", "Conflicts=busy.service")]
    result = place(units, current={"busy.service": M2})
    assert result.global_placements["g.service"] == (M1, M3)
    # A new conflicting unit cannot land where the global unit runs.
    units.append(unit("busy2.service", "Conflicts=g.service"))
    result = place(units, current={"busy.service": M2})
    assert result.placements.get("busy2.service") == M2


def test_replaces_avoids_the_replaced_units_machine():
    units = [
        unit("hello.service"),
        unit("sleeper2.service"),
        unit("new.service", "Replaces=sleeper2.service"),
    ]
    result = place(units, current={"hello.service": M1, "sleeper2.service": M2})
    assert result.placements == {"hello.service": M1, "sleeper2.service": M2, "new.service": M3}


def test_replaces_evicts_when_nowhere_else_fits():
    units = [unit("old.service"), unit("new.service", "Replaces=old.service")]
    result = place(units, machines=[SchedMachine(M1)], current={"old.service": M1})
    assert result.placements == {"new.service": M1}
    assert result.unscheduled == ("old.service",)


def test_machine_loss_reschedules_what_it_can():
    units = [
        unit("nobin.service"),
        unit("pinned.service", "MachineID=" + M3),
        unit("webb.service", "MachineMetadata=zone=b", "MachineMetadata=role=web"),
        unit("side.service", "MachineOf=pinned.service"),
    ]
    current = {"nobin.service": M3, "pinned.service": M3, "webb.service": M3, "side.service": M3}
    result = place(units, machines=META[:2], current=current)
    assert result.placements == {"nobin.service": M1}
    assert set(result.unscheduled) == {"pinned.service", "webb.service", "side.service"}
    # m3 comes back: the units that can only run there return.
    back = place(units, machines=META, current=result.placements)
    assert back.placements == {
        "nobin.service": M1,
        "pinned.service": M3,
        "webb.service": M3,
        "side.service": M3,
    }


def test_existing_placements_are_kept():
    units = [unit(f"u{i}.service") for i in range(3)]
    current = {f"u{i}.service": M3 for i in range(3)}
    assert place(units, current=current).placements == current


def test_inactive_and_templates_are_never_scheduled():
    units = [unit("off.service", state="inactive"), unit("web@.service"), unit("on.service", state="loaded")]
    result = place(units, current={"off.service": M1})
    assert result.placements == {"on.service": M1}
    assert result.unscheduled == ()


def test_invalid_requirements_stay_unscheduled():
    result = place([unit("bad.service", "MachineID=" + M1, "Conflicts=x*")])
    assert result.placements == {}


def test_no_machines_means_nothing_scheduled():
    result = place([unit("a.service"), unit("g.service", "Global=true")], machines=[])
    assert result.placements == {}
    assert set(result.unscheduled) == {"a.service", "g.service"}


# -- properties -------------------------------------------------------------------------------------

_names = st.sampled_from([f"{p}@{i}.service" for p in ("web", "db", "cache") for i in range(1, 5)])
_xfleet = st.lists(
    st.sampled_from(
        [
            "Conflicts=web@*",
            "Conflicts=%p@*.service",
            "MachineMetadata=role=web",
            "MachineMetadata=zone=b",
            "MachineOf=web@1.service",
            "MachineOf=db@2.service",
            "Global=true",
        ]
    ),
    max_size=3,
)


@settings(max_examples=150, deadline=None)
@given(st.dictionaries(_names, _xfleet, max_size=10), st.permutations(META))
def test_placements_always_satisfy_requirements(spec, machines):
    units = [unit(name, *xfleet) for name, xfleet in spec.items()]
    first = schedule(units, machines, {})
    again = schedule(list(reversed(units)), list(reversed(machines)), {})
    assert first == again
    stable = schedule(units, machines, first.placements)
    assert stable.placements == first.placements
    meta = {m.id: m.metadata for m in machines}
    running = {}
    for name, machine in first.placements.items():
        running.setdefault(machine, set()).add(name)
    for name, machine_ids in first.global_placements.items():
        for machine in machine_ids:
            running.setdefault(machine, set()).add(name)
    for machine, names in running.items():
        for name in names:
            req = requirements(name, next(u for u in units if u.name == name).options)
            assert all(meta[machine].get(k) in v for k, v in req.metadata.items())
            for other in names - {name}:
                assert not any(glob_match(p, other) for p in req.conflicts)
            if not req.is_global:
                assert all(first.placements.get(p) == machine for p in req.peers)


# -- a pass over the changed units only ----------------------------------------------------------------

_PLAIN_OPTIONS = (UnitOption("Service", "ExecStart", "/bin/true"),)
_CHANGE = st.tuples(
    st.sampled_from([f"u{i:02d}.service" for i in range(30)] + ["t@.service"]),
    st.sampled_from(["launched", "loaded", "inactive", None]),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(_CHANGE, max_size=8), min_size=1, max_size=8), st.integers(1, 4))
def test_placing_the_changed_plain_units_is_a_full_pass(
    batches: list[list[tuple[str, str | None]]], count: int
) -> None:
    """For plain units on unchanged machines, place_plain decides exactly what schedule would."""
    machines = [SchedMachine(f"m{i}") for i in range(count)]
    units: dict[str, SchedUnit] = {}
    placements: dict[str, str] = {}
    for batch in batches:
        changed: dict[str, SchedUnit | None] = {}
        for name, state in batch:
            if state is None:
                units.pop(name, None)
            else:
                units[name] = SchedUnit(name, _PLAIN_OPTIONS, state)
            changed[name] = units.get(name)
        quick = place_plain(placements, changed, machines)
        full = schedule(units.values(), machines, placements)
        assert quick == full.placements
        placements = dict(full.placements)


def test_a_unit_with_requirements_needs_a_full_pass() -> None:
    pinned = SchedUnit("a.service", (UnitOption("X-Fleet", "MachineID", "m1"),), "launched")
    plain = SchedUnit("b.service", (UnitOption("Service", "ExecStart", "/bin/true"),), "launched")
    assert not is_plain(pinned) and is_plain(plain)
    assert is_plain(SchedUnit("c.service", pinned.options, "inactive"))  # wants no machine
    assert place_plain({}, {"a.service": pinned}, [SchedMachine("m1")]) is None
    assert place_plain({}, {"b.service": plain}, [SchedMachine("m1")]) == {"b.service": "m1"}
