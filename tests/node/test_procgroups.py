"""Process groups read from /proc: membership after the leader is gone, and only our own groups."""

from __future__ import annotations

import os
import signal
import subprocess
import time

from fleetop.node.procgroups import boot_ticks, has_members


def wait_for(predicate: object, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.02)
    return False


def test_a_group_outlives_its_leader_until_its_last_member_ends() -> None:
    since = boot_ticks()
    # the leader starts a background member and exits; the member keeps the group alive
    leader = subprocess.Popen(
        ["/bin/sh", "-c", "sleep 30 & echo $!"], stdout=subprocess.PIPE, start_new_session=True
    )
    assert leader.stdout is not None
    member = int(leader.stdout.readline())
    leader.wait(10)
    pgid = leader.pid
    try:
        assert has_members(pgid)
        assert has_members(pgid, since)
        assert not has_members(pgid, since + 10**9)  # nothing in it started that late
    finally:
        os.kill(member, signal.SIGKILL)
    assert wait_for(lambda: not has_members(pgid))


def test_a_group_that_never_existed_has_no_members() -> None:
    probe = subprocess.Popen(["/bin/true"])
    probe.wait(10)
    assert not has_members(probe.pid)  # its PID was never a group leader, and it is gone
