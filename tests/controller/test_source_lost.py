"""Conditions once fleet is lost (pure): judged ones become Unknown since the loss, and stay stable."""

from __future__ import annotations

from fleetop.controller.conditions import source_lost_message, unknown_conditions
from fleetop.controller.runtime.informers import FleetLoss
from fleetop.controller.runtime.observed import observation
from fleetop.models.status import Condition

SINCE = "2026-11-21T11:58:05Z"
MESSAGE = source_lost_message("fleet", SINCE, "timed out", ["unix:///a.sock", "http://127.0.0.1:49153"])


def _known() -> list[Condition]:
    return [
        Condition(
            type="Available", status="True", reason="MinimumReplicasAvailable", last_transition_time="t0"
        ),
        Condition(
            type="Progressing", status="True", reason="NewReplicaSetAvailable", last_transition_time="t1"
        ),
        Condition(type="Degraded", status="False", reason="AsExpected", last_transition_time="t2"),
        Condition(type="Invalid", status="True", reason="UnitRenderFailed", last_transition_time="t3"),
    ]


def test_judged_conditions_become_unknown_since_the_loss_and_the_rest_stay() -> None:
    marked = unknown_conditions(_known(), reason="FleetUnreachable", message=MESSAGE, since=SINCE)
    assert [(c.type, c.status, c.reason, c.last_transition_time) for c in marked] == [
        ("Available", "Unknown", "FleetUnreachable", SINCE),
        ("Progressing", "Unknown", "FleetUnreachable", SINCE),
        ("Degraded", "Unknown", "FleetUnreachable", SINCE),
        ("Invalid", "True", "UnitRenderFailed", "t3"),
    ]
    assert marked[0].message == (
        "fleet has not answered since 2026-11-21T11:58:05Z (tried unix:///a.sock, http://127.0.0.1:49153):"
        " timed out; last known: True (MinimumReplicasAvailable)"
    )
    again = unknown_conditions(marked, reason="FleetUnreachable", message="other text", since="later")
    assert again == marked  # every pass of one outage writes the same status


def test_missing_conditions_are_added_unknown() -> None:
    marked = unknown_conditions([], reason="FleetUnreachable", message=MESSAGE, since=SINCE)
    assert [(c.type, c.status, c.message) for c in marked] == [
        ("Available", "Unknown", MESSAGE),
        ("Progressing", "Unknown", MESSAGE),
        ("Degraded", "Unknown", MESSAGE),
    ]


def test_another_reason_replaces_an_earlier_unknown() -> None:
    paused = [Condition(type="Progressing", status="Unknown", reason="Paused", last_transition_time="t1")]
    marked = unknown_conditions(
        paused, reason="FleetUnreachable", message=MESSAGE, since=SINCE, judged=["Progressing"]
    )
    assert [(c.reason, c.last_transition_time) for c in marked] == [("FleetUnreachable", SINCE)]
    assert marked[0].message.endswith("last known: Unknown (Paused)")


def test_the_operators_record() -> None:
    seen = observation(
        "op-1", ("unix:///a", "http://b:1"), "http://b:1", 1_700_000_000.0, None, 1_700_000_004.0
    )
    assert (
        seen.fleet.reachable
        and seen.fleet.last_seen == "2023-11-14T22:13:20Z"
        and seen.fleet.lost_since == ""
    )
    loss = FleetLoss(1_700_000_002.0, "timed out", ("unix:///a", "http://b:1"), 1_700_000_000.0)
    lost = observation(
        "op-1", ("unix:///a", "http://b:1"), "http://b:1", 1_700_000_000.0, loss, 1_700_000_009.0
    )
    data = lost.model_dump(mode="json", by_alias=True)
    assert data["fleet"]["reachable"] is False
    assert data["fleet"]["lostSince"] == "2023-11-14T22:13:22Z"
    assert data["fleet"]["tried"] == ["unix:///a", "http://b:1"]
    assert data["time"] == "2023-11-14T22:13:29Z"
