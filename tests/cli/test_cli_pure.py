"""Pure pieces of the CLI: document loading, patches, and formatting, without etcd."""

from __future__ import annotations

from pathlib import Path

import pytest

from fleetop.cli.documents import load_documents, split_documents
from fleetop.cli.output import format_diff, format_get, render_table
from fleetop.cli.patching import apply_patch, merge_patch
from fleetop.errors import InputError, SpecInvalid
from fleetop.models import ServiceStatus
from fleetop.models.parse import encode_spec, parse_service
from fleetop.models.status import Condition, ReplicaCounts
from fleetop.store import Entry, StatusEntry


@pytest.mark.parametrize(
    ("target", "patch", "expected"),
    [
        ({"a": 1, "b": {"c": 2, "d": 3}}, {"b": {"c": None, "e": 4}}, {"a": 1, "b": {"d": 3, "e": 4}}),
        ({"a": [1, 2]}, {"a": [3]}, {"a": [3]}),
        ({"a": 1}, {"a": None}, {}),
        ({}, {"a": {"b": 1}}, {"a": {"b": 1}}),
        ({"a": "x"}, {"a": {"b": None}}, {"a": {}}),
    ],
)
def test_merge_patch_rfc7386(target: dict[str, object], patch: dict[str, object], expected: object) -> None:
    assert merge_patch(target, patch) == expected


def test_json_patch_errors_are_input_errors() -> None:
    assert apply_patch({"a": 1}, '[{"op": "add", "path": "/b", "value": 2}]', "json") == {"a": 1, "b": 2}
    for text in (
        '{"op": "add"}',
        '[{"op": "move", "from": "/x", "path": "/y"}]',
        "[{]",
        '[{"op": "bogus", "path": "/a"}]',
    ):
        with pytest.raises(InputError):
            apply_patch({"a": 1}, text, "json")
    with pytest.raises(InputError):
        apply_patch({"a": 1}, "[1]", "merge")


def test_documents_json_list_and_yaml_stream(tmp_path: Path) -> None:
    docs = split_documents('[{"a": 1}, {"b": 2}]', "x.json")
    assert [w for w, _ in docs] == ["x.json (document 1)", "x.json (document 2)"]
    assert len(split_documents("---\na: 1\n---\n---\nb: 2\n", "x.yaml")) == 2
    with pytest.raises(InputError, match="no documents"):
        split_documents("---\n", "x.yaml")
    with pytest.raises(InputError, match="no such file"):
        load_documents(str(tmp_path / "missing.yaml"))


def test_duplicate_documents_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "dup.yaml"
    doc = "kind: Service\nname: web\nspec: {unit: {execStart: x}}\n"
    path.write_text(doc + "---\n" + doc)
    with pytest.raises(SpecInvalid, match="appears twice"):
        load_documents(str(path))


def _entry(name: str, raw: bytes, revision: int = 7) -> Entry:
    spec = parse_service(raw)
    return Entry("services", name, f"/desired/services/{name}", raw, spec, None, 3, revision)


def test_get_table_formats_status() -> None:
    entry = _entry("web", encode_spec(parse_service({"replicas": 3, "unit": {"execStart": "x"}})))
    status = ServiceStatus(
        observed_generation=7,
        replicas=ReplicaCounts(desired=3, launched=3, running=3, ready=2, updated=3),
        conditions=[Condition(type="Available", status="True", reason="MinimumReplicasAvailable")],
    )
    text = format_get([entry], {"web": StatusEntry("web", status, None, 9)}, "table", single=False)
    header, row = text.splitlines()
    assert header.split() == ["NAME", "DESIRED", "READY", "UP-TO-DATE", "RUNNING", "STATUS"]
    assert row.split() == ["web", "3", "2/3", "3", "3", "Available"]
    stale = format_get(
        [_entry("web", entry.raw, revision=8)],
        {"web": StatusEntry("web", status, None, 9)},
        "table",
        single=False,
    )
    assert stale.splitlines()[1].split()[-1] == "Pending"
    assert format_get([], {}, "table", single=False) == "No resources found.\n"


def test_render_table_and_diff_are_plain_text() -> None:
    assert render_table(["A", "B"], [["1", "2"]]).splitlines() == ["A B", "1 2"] or "A" in render_table(
        ["A"], []
    )
    assert format_diff("/k", "a: 1\n", "a: 1\n") == ""
    assert "-a: 1" in format_diff("/k", "a: 1\n", "a: 2\n")


def _status(generation: int, **conditions: tuple[str, str]) -> ServiceStatus:
    return ServiceStatus(
        observed_generation=generation,
        replicas=ReplicaCounts(desired=3, launched=3, running=3, ready=3, updated=3),
        conditions=[Condition(type=k, status=v[0], reason=v[1]) for k, v in conditions.items()],  # type: ignore[arg-type]
    )


def test_wait_progress_decides_from_status() -> None:
    from fleetop.cli.wait import progress

    assert not progress("services", "web", 7, None).done
    assert not progress("services", "web", 7, _status(6, Available=("True", "x"))).done
    done = progress(
        "services",
        "web",
        7,
        _status(7, Available=("True", "M"), Progressing=("True", "NewReplicaSetAvailable")),
    )
    assert done.done and done.failed is None and "3/3 ready" in done.line
    rolling = progress(
        "services", "web", 7, _status(7, Available=("True", "M"), Progressing=("True", "ReplicaSetUpdated"))
    )
    assert not rolling.done
    stalled = progress("services", "web", 7, _status(7, Progressing=("False", "ProgressDeadlineExceeded")))
    assert stalled.failed and "ProgressDeadlineExceeded" in stalled.failed
    rolled_back = progress("services", "web", 7, _status(7, Progressing=("False", "RolledBack")))
    assert rolled_back.done and rolled_back.failed and "RolledBack" in rolled_back.failed
    invalid = progress("services", "web", 7, _status(7, Invalid=("True", "SpecInvalid")))
    assert invalid.failed and "invalid" in invalid.failed


def test_describe_shows_restart_counts() -> None:
    from fleetop.cli.output import format_describe
    from fleetop.models import UnitStatus, parse_service
    from fleetop.store import Entry, StatusEntry

    raw = b'{"unit": {"execStart": "/nonexistent/bin %i"}}'
    entry = Entry("services", "web", "/desired/services/web", raw, parse_service(raw), None, 5, 5)
    unit = UnitStatus(name="web@1.service", machine="m1", active_state="failed", restarts=3)
    status = ServiceStatus(observed_generation=5, units=[unit])
    text = format_describe(entry, StatusEntry("web", status, None, 5), [])
    header = next(line for line in text.splitlines() if line.startswith("UNIT"))
    row = next(line for line in text.splitlines() if line.startswith("web@1.service"))
    assert header.split()[-1] == "RESTARTS" and row.split()[-1] == "3"


def test_a_coroutine_that_never_suspends_runs_without_an_event_loop() -> None:
    """``get`` runs its coroutine without an event loop (:func:`~fleetop.cli.common.run`,
    ``event_loop=False``): awaits that complete at once are fine; one that waits for a loop fails
    loudly, whatever it awaited; errors of the tree are worded as with a loop."""
    import asyncio

    from fleetop.cli.common import run, run_to_completion

    async def inner() -> int:
        return 2

    async def reads() -> int:
        return await inner() + await inner()

    async def sleeps() -> int:
        await asyncio.sleep(0)
        return 1

    async def refused() -> int:
        raise InputError("bad value", where="RESOURCE")

    assert run_to_completion(reads()) == 4
    assert run(reads, event_loop=False) == 4
    with pytest.raises(RuntimeError, match="waited for one"):
        run_to_completion(sleeps())
    with pytest.raises(RuntimeError, match="no running event loop"):
        run(lambda: asyncio.to_thread(int), event_loop=False)
    with pytest.raises(SystemExit) as exited:
        run(refused, event_loop=False)
    assert exited.value.code == 1
