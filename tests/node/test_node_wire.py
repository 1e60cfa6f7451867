"""The node's pure pieces: page tokens and Go-style decoding (fleet-observed §6, §7, §11), --metadata
parsing, stable machine ids, and the registry's atomic, private persistence."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fleetop.errors import ConfigError
from fleetop.fleet.units import UnitOption
from fleetop.node.registry import Registry, StoredUnit
from fleetop.node.server import NodeConfig, machine_id, node_identity, open_listener, parse_metadata
from fleetop.node.wire import (
    WireError,
    decode_metadata_ops,
    decode_unit_body,
    encode_token,
    go_decode,
    go_json,
    page_body,
    page_from_query,
    paginate,
)


@pytest.mark.parametrize(("page", "token"), [(1, "ZAABAA=="), (2, "ZAACAA=="), (3, "ZAADAA==")])
def test_tokens(page: int, token: str) -> None:
    assert encode_token(page) == token
    assert page_from_query([token]) == page


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (["garbage"], "illegal base64 data at input byte 4"),
        (["ZAACAA==", "ZAACAA=="], "too many values for page token"),
        (["CgACAA=="], "token limit must be 100"),
        (["ZAAAAA=="], "token page must be greater than zero"),
        ([""], "EOF"),
        (["ZAAC"], "unexpected EOF"),
        (["Z"], "illegal base64 data at input byte 0"),
        (["ZAACAA="], "illegal base64 data at input byte 7"),
        (["ZA!CAA=="], "illegal base64 data at input byte 2"),
    ],
)
def test_token_errors(values: list[str], message: str) -> None:
    with pytest.raises(WireError, match=f"^{message}$"):
        page_from_query(values)


@pytest.mark.parametrize(
    ("total", "page", "count", "token"),
    [
        (151, 1, 100, "ZAACAA=="),
        (151, 2, 51, None),
        (100, 1, 100, "ZAACAA=="),
        (100, 2, 0, None),
        (0, 1, 0, None),
    ],
)
def test_paginate(total: int, page: int, count: int, token: str | None) -> None:
    items, next_token = paginate(list(range(total)), page)
    assert (len(items), next_token) == (count, token)


def test_page_body_and_go_json() -> None:
    assert page_body("units", [], None) == {}
    assert go_json(page_body("units", [{"a": "<&>"}], "ZAACAA==")) == (
        b'{"units":[{"a":"\\u003c\\u0026\\u003e"}],"nextPageToken":"ZAACAA=="}'
    )


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"", "EOF"),
        (b"   \n", "EOF"),
        (b'{"options": [', "unexpected EOF"),
        (b'{"name": "x', "unexpected EOF"),
        (b"{bad}", "invalid character 'b' looking for beginning of object key string"),
        (b"]", "invalid character ']' looking for beginning of value"),
    ],
)
def test_go_decode_errors(body: bytes, message: str) -> None:
    with pytest.raises(WireError, match=f"^{message}$"):
        go_decode(body)


def test_go_decode_ignores_trailing_data_and_decodes_case_insensitively() -> None:
    body = go_decode(b'{"NAME":"a.service","Options":[{"SECTION":"S","name":"N","VALUE":"v"},null]} junk')
    assert decode_unit_body(body) == decode_unit_body(
        {"name": "a.service", "options": [{"section": "S", "name": "N", "value": "v"}]}
    )
    assert decode_unit_body(body).options == (UnitOption("S", "N", "v"),)
    assert decode_unit_body(None).name == ""


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ([], "json: cannot unmarshal array into Go value of type schema.Unit"),
        ({"name": True}, "json: cannot unmarshal bool into Go struct field Unit.name of type string"),
        (
            {"machineID": 5},
            "json: cannot unmarshal number into Go struct field Unit.machineID of type string",
        ),
        (
            {"options": ["x"]},
            "json: cannot unmarshal string into Go struct field Unit.options of type schema.UnitOption",
        ),
        (
            {"options": [{"value": []}]},
            "json: cannot unmarshal array into Go struct field Unit.options.value of type string",
        ),
    ],
)
def test_unit_body_type_errors(value: object, message: str) -> None:
    with pytest.raises(WireError) as info:
        decode_unit_body(value)
    assert str(info.value) == message


def test_metadata_ops() -> None:
    ops = decode_metadata_ops(
        [
            {"OP": "add", "path": "/m/metadata/k", "Value": {"VALUE": "v"}},
            {"op": "remove", "Path": "/m/metadata/k"},
        ]
    )
    assert [(o.op, o.path, o.value) for o in ops] == [
        ("add", "/m/metadata/k", "v"),
        ("remove", "/m/metadata/k", ""),
    ]
    assert decode_metadata_ops(None) == []
    with pytest.raises(WireError, match=r"Go value of type api\.machineMetadataOp"):
        decode_metadata_ops(["x"])


@pytest.mark.parametrize(
    ("specs", "machines", "expected"),
    [
        ((), 2, [{}, {}]),
        (("region=sfo1,disk=ssd",), 2, [{"region": "sfo1", "disk": "ssd"}, {}]),
        (("role=web", "role=db"), 2, [{"role": "web"}, {"role": "db"}]),
        (("1:region=a,2:region=b",), 2, [{"region": "a"}, {"region": "b"}]),
        (("2:region=b,disk=ssd",), 2, [{}, {"region": "b", "disk": "ssd"}]),
        (("a=b=c",), 1, [{"a": "b=c"}]),
    ],
)
def test_parse_metadata(specs: tuple[str, ...], machines: int, expected: list[dict[str, str]]) -> None:
    assert parse_metadata(specs, machines) == expected


@pytest.mark.parametrize(
    ("specs", "machines"), [(("novalue",), 1), (("3:a=b",), 2), (("k=",), 1), (("a=b", "c=d"), 1)]
)
def test_parse_metadata_errors(specs: tuple[str, ...], machines: int) -> None:
    with pytest.raises(ConfigError):
        parse_metadata(specs, machines)


def test_machine_ids_are_stable(tmp_path: Path) -> None:
    identity = node_identity(tmp_path)
    assert node_identity(tmp_path) == identity
    ids = [machine_id(identity, i) for i in (1, 2, 3)]
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in ids) and len(set(ids)) == 3
    assert node_identity(tmp_path / "other") != identity


@pytest.mark.parametrize(
    "listen", ["http://0.0.0.0:1", "http://10.0.0.1:1", "tcp://127.0.0.1:1", "http://example.com:1"]
)
def test_listen_refuses_non_loopback(listen: str) -> None:
    with pytest.raises(ConfigError):
        open_listener(listen)


def test_default_listen_is_the_state_dirs_socket(tmp_path: Path) -> None:
    assert NodeConfig(state_dir=tmp_path).listen_url == f"unix://{tmp_path / 'fleet.sock'}"


def test_registry_round_trip_and_modes(tmp_path: Path) -> None:
    state = tmp_path / "state"
    registry = Registry(state)
    registry.load()
    unit = StoredUnit("a.service", (UnitOption("Service", "ExecStart", "/bin/true"),), "launched")
    registry.put_unit(unit)
    registry.set_placements({"a.service": "m1"})
    registry.apply_metadata_ops([("m1", "role", "db"), ("m1", "zone", None)])
    registry.set_machine_stopped("m2", True)
    assert state.stat().st_mode & 0o777 == 0o700
    assert registry.path.stat().st_mode & 0o777 == 0o600
    assert not [p for p in state.iterdir() if p.name.endswith(".tmp")]
    again = Registry(state)
    again.load()
    assert again.units == {"a.service": unit}
    assert again.placements == {"a.service": "m1"}
    assert again.effective_metadata("m1", {"zone": "a", "x": "y"}) == {"role": "db", "x": "y"}
    assert again.stopped_machines == {"m2"}
    assert again.delete_unit("a.service") and not again.delete_unit("a.service")
    assert again.placements == {}


def test_registry_refuses_a_corrupt_file(tmp_path: Path) -> None:
    (tmp_path / "registry.json").write_text("{not json")
    with pytest.raises(ConfigError, match="unreadable node registry"):
        Registry(tmp_path).load()


def test_registry_keeps_one_private_file_per_unit(tmp_path: Path) -> None:
    registry = Registry(tmp_path)
    registry.load()
    unit = StoredUnit("web@8001.service", (UnitOption("Service", "ExecStart", "/bin/true"),), "launched")
    registry.put_unit(unit)
    registry.set_placements({"web@8001.service": "m1"})
    record = tmp_path / "units" / "web@8001.service.json"
    assert record.stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "units").stat().st_mode & 0o777 == 0o700
    again = Registry(tmp_path)
    again.load()
    assert again.units == {unit.name: unit} and again.placements == {unit.name: "m1"}
    assert again.delete_unit(unit.name) and not record.exists()


def test_a_scheduling_pass_saves_every_placement_it_changed(tmp_path: Path) -> None:
    """One pass placing many units writes their files side by side and fsyncs the directory once."""
    registry = Registry(tmp_path)
    registry.load()
    names = [f"web@{n}.service" for n in range(40)]
    for name in names:
        registry.put_unit(StoredUnit(name, (UnitOption("Service", "ExecStart", "/bin/true"),), "launched"))
    placements = {name: f"m{n % 3 + 1}" for n, name in enumerate(names)}
    registry.set_placements(placements)
    registry.set_placements({**placements, names[0]: "m9"})  # a pass moving one unit saves that one
    assert not [p for p in (tmp_path / "units").iterdir() if p.name.endswith(".tmp")]
    again = Registry(tmp_path)
    again.load()
    assert again.placements == {**placements, names[0]: "m9"}
    assert set(again.units) == set(names)


def test_registry_converts_the_single_file_format(tmp_path: Path) -> None:
    old = {
        "version": 1,
        "units": [
            {
                "name": "a.service",
                "desiredState": "launched",
                "options": [["Service", "ExecStart", "/bin/true"]],
            }
        ],
        "placements": {"a.service": "m2"},
        "metadataOverrides": {"m1": {"role": "db"}},
        "stoppedMachines": ["m3"],
    }
    (tmp_path / "registry.json").write_text(json.dumps(old))
    registry = Registry(tmp_path)
    registry.load()
    assert registry.placements == {"a.service": "m2"} and registry.stopped_machines == {"m3"}
    again = Registry(tmp_path)
    again.load()
    assert list(again.units) == ["a.service"] and again.placements == {"a.service": "m2"}
    assert json.loads((tmp_path / "registry.json").read_text())["version"] == 2
