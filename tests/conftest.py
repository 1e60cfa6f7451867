"""Shared fixtures: a real etcd per test session on a free loopback port with a temporary data dir."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
import pytest_asyncio
from pytest_asyncio.plugin import is_async_test

from fleetop.config import settings_from
from fleetop.etcd.client import Etcd
from fleetop.local.etcdserver import EtcdServer, find_etcd_binary


@pytest.fixture(scope="session")
def etcd_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdServer]:
    """One plain etcd for the whole run. Tests isolate themselves with a key prefix (``etcd_prefix``)."""
    base = tmp_path_factory.mktemp("etcd")
    server = EtcdServer(base / "data")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def own_etcd(tmp_path: Path) -> Iterator[EtcdServer]:
    """An etcd of this test alone (own data dir), to stop, kill and start again on the same ports."""
    server = EtcdServer(tmp_path / "data")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def etcd_prefix(request: pytest.FixtureRequest) -> str:
    """A key root unique to the test, so tests sharing one etcd never see each other's keys."""
    name = request.node.name.replace("[", "-").replace("]", "").replace("/", "-")
    return f"/t/{name}-{os.getpid()}-{id(request)}"


@pytest.fixture
async def etcd(etcd_server: EtcdServer, etcd_prefix: str) -> AsyncIterator[Etcd]:
    """A client of the session's etcd under the test's own ``etcd_prefix`` (a module may define its own)."""
    settings = settings_from({"endpoints": etcd_server.endpoint, "prefix": etcd_prefix}, {})
    async with await Etcd.connect(settings) as client:
        yield client


@pytest.fixture(scope="session")
def etcdctl_bin() -> str:
    return find_etcd_binary("etcdctl")


TASK_GRACE = 2.0
"""Seconds a task found running at the end of a test has to end by itself before it counts as left."""


def _tasks_of_this_test(what: str) -> Callable[[], AsyncIterator[None]]:
    """An async fixture body: note the tasks alive when the test starts and, when the test and every
    fixture it set up after this one have ended, fail if a task started since is still not done."""

    async def check() -> AsyncIterator[None]:
        before = set(asyncio.all_tasks())
        yield
        here = asyncio.current_task()  # the teardown's own task (not the setup's)
        left = [t for t in asyncio.all_tasks() if t is not here and t not in before and not t.done()]
        if left:  # a task still ending (a cancelled call's clean-up inside grpc) is not left behind
            await asyncio.wait(left, timeout=TASK_GRACE)
            left = [t for t in left if not t.done()]
        for task in left:
            task.cancel()
        if left:
            await asyncio.gather(*left, return_exceptions=True)
            named = "\n".join(f"  {task.get_name()}: {task.get_coro()!r}" for task in left)
            pytest.fail(f"tasks left running at the end of the {what}:\n{named}", pytrace=False)

    return check


_tasks_left_in_function_loop = pytest_asyncio.fixture(
    loop_scope="function", name="_tasks_left_in_function_loop"
)(_tasks_of_this_test("test"))
_tasks_left_in_module_loop = pytest_asyncio.fixture(
    scope="module", loop_scope="module", name="_tasks_left_in_module_loop"
)(_tasks_of_this_test("module"))


def _loop_scope(node: pytest.Item | pytest.Collector) -> str:
    marker = node.get_closest_marker("asyncio")
    return (marker.kwargs.get("loop_scope") if marker is not None else None) or "function"


@pytest.fixture(autouse=True)
def _no_pending_tasks(request: pytest.FixtureRequest) -> None:
    """Fail an asyncio test that leaves a task running at its end.

    pytest-asyncio runs each async test and its async fixtures in a loop of the test's loop scope
    and, when that loop closes, cancels whatever is left without a word. So the check is an async
    fixture in the test's own loop, set up before every other fixture of the test and therefore torn
    down after all of them: a task that a fixture cancels in its teardown is fine, one that nobody
    ends is reported (and then cancelled).
    """
    if is_async_test(request.node) and _loop_scope(request.node) == "function":
        request.getfixturevalue("_tasks_left_in_function_loop")


@pytest.fixture(scope="module", autouse=True)
def _no_pending_tasks_in_module(request: pytest.FixtureRequest) -> None:
    """The same check for a module whose tests share one loop (``loop_scope="module"``): there a task
    started during one test may rightly belong to a module fixture (a node's journal keeper), so the
    check is made once, after the module's last fixture has been torn down."""
    if _loop_scope(request.node) == "module":
        request.getfixturevalue("_tasks_left_in_module_loop")


def pytest_configure(config: pytest.Config) -> None:
    os.environ.setdefault("FLEETOP_TEST", "1")
    # Nodes in tests notice changes after 0.1 s, not fleet's 1 s: the order of fleet's states is kept
    # and the operator's tests stay quick. tests/node/test_fleetctl_waits.py runs fleet's own pace.
    os.environ.setdefault("FLEETOP_NODE_PACE", "0.1")
    Path(config.rootpath, ".pytest_cache").mkdir(exist_ok=True)
