"""Start-up cost: importing the CLI's entry point, or the sidekick, pulls in nothing a verb does not need.

``fleetop --version`` and a status check in a prompt must answer at once, and every instance on a
machine runs a sidekick, so heavy modules (the gRPC etcd client, Jinja2, httpx, pydantic, typer, the
operator) are imported by the verb that uses them, when it runs. Each check runs a fresh interpreter
and reads its ``sys.modules``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

HEAVY = (
    *("grpc", "etcd3aio", "jinja2", "httpx", "pydantic", "typer", "rich", "yaml"),
    *(
        "fleetop.controller",
        "fleetop.etcd.client",
        "fleetop.store",
        "fleetop.models",
        "fleetop.proxy",
        "fleetop.node",
    ),
)


def imported_after(code: str) -> set[str]:
    probe = f"{code}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True
    )
    return set(json.loads(done.stdout.splitlines()[-1]))


def heavy_in(modules: set[str], heavy: tuple[str, ...] = HEAVY) -> list[str]:
    return sorted(m for m in modules if any(m == h or m.startswith(h + ".") for h in heavy))


def test_importing_the_entry_point_imports_nothing_heavy() -> None:
    assert heavy_in(imported_after("import fleetop.cli.main")) == []


def test_version_answers_without_the_heavy_modules() -> None:
    code = (
        "import contextlib, io\nfrom fleetop.cli.main import main\n"
        "with contextlib.redirect_stdout(io.StringIO()): main(['--version'])"
    )
    assert heavy_in(imported_after(code)) == []


def test_the_read_verbs_module_imports_nothing_heavy() -> None:
    """``get``, ``describe`` and ``status`` start without typer, click or rich (:mod:`fleetop.cli.reads`);
    what they read with (the store, the models) comes when they run, and asyncio only with the verbs
    that run an event loop (``get`` runs without one)."""
    assert heavy_in(imported_after("import fleetop.cli.reads"), (*HEAVY, "click", "asyncio")) == []


SERVICE_ONLY_ABSENT = ("fleetop.models.proxy", "fleetop.models.status", "fleetop.models.events", "asyncio")
"""What reading service specs through the models does not build: the other models (pydantic builds a
model's validator when its class is created), nor an event loop."""


def test_the_store_builds_only_the_models_it_reads() -> None:
    """The store and :mod:`fleetop.models` import a model's module when it is first asked for: reading
    service specs (``get services`` of specs no operator judged) builds no proxy, status or event model."""
    code = (
        "from fleetop.store import StoreReader\nfrom fleetop.models import ServiceSpec, parse_service\n"
        'parse_service(b\'{"replicas": 1, "unit": {"execStart": "/bin/true"}}\', name=\'web\')'
    )
    modules = imported_after(code)
    assert "fleetop.models.service" in modules
    assert heavy_in(modules, SERVICE_ONLY_ABSENT) == []
    proxies = imported_after("from fleetop.store import StoreReader\nfrom fleetop.models import parse_proxy")
    assert heavy_in(proxies, SERVICE_ONLY_ABSENT) == []  # a function: the proxy models come when it runs


def test_every_public_model_name_is_found_in_its_module() -> None:
    """:mod:`fleetop.models` imports its names lazily from a table (``_MODULES``): each name of
    ``__all__`` is there, resolves to the object its module defines, and ``import *`` gets them all."""
    import importlib

    import fleetop.models as models

    assert sorted(models._MODULE_OF) == sorted(models.__all__)
    for name, module in models._MODULE_OF.items():
        defined = getattr(importlib.import_module(f"fleetop.models.{module}"), name)
        assert getattr(models, name) is defined or name == "SPEC_KINDS", name
    assert {"Service": models.ServiceSpec, "Proxy": models.ProxySpec} == models.SPEC_KINDS
    namespace: dict[str, object] = {}
    exec("from fleetop.models import *", namespace)
    assert set(models.__all__) <= set(namespace)
    assert set(models.__all__) <= set(dir(models))
    with pytest.raises(AttributeError, match="no attribute 'Nothing'"):
        _ = models.Nothing


def test_the_light_read_path_imports_no_models() -> None:
    """``get``, ``status`` and ``describe`` of specs the operator judged lay out their output without
    pydantic: the light readers and the formatting import neither the models nor the store (which do)."""
    code = (
        "import fleetop.cli.light, fleetop.cli.lightdescribe, fleetop.specjson, fleetop.cli.output,"
        " fleetop.cli.statusview, fleetop.cli.reads"
    )
    assert heavy_in(imported_after(code), (*HEAVY, "click")) == []


def test_the_sidekick_is_standard_library_only() -> None:
    modules = imported_after("import fleetop.discovery.sidekick")
    assert heavy_in(modules, (*HEAVY, "asyncio", "ssl", "http", "email")) == []


@pytest.mark.parametrize(
    ("verb", "absent"),
    [
        ("manifests", ("grpc", "etcd3aio", "fleetop.node")),
        ("status", ("grpc", "etcd3aio", "httpx", "fleetop.controller", "fleetop.node", "jinja2")),
        ("get", ("grpc", "etcd3aio", "httpx", "jinja2", "jsonpatch", "fleetop.controller", "fleetop.node")),
    ],
)
def test_a_verb_imports_its_own_group_only(verb: str, absent: tuple[str, ...]) -> None:
    code = f"from fleetop.cli.main import VERBS, build_app\nbuild_app([VERBS[{verb!r}]])"
    assert heavy_in(imported_after(code), absent) == []


def test_the_full_app_has_every_verb_once() -> None:
    from fleetop.cli.main import VERBS, app

    names = [c.name for c in app.registered_commands] + [g.name for g in app.registered_groups]
    assert sorted(names) == sorted(VERBS)


def test_help_lists_every_verb_once() -> None:
    from fleetop.cli.main import VERBS

    done = subprocess.run(
        [sys.executable, "-m", "fleetop.cli.main", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
        env={**os.environ, "COLUMNS": "200", "NO_COLOR": "1", "TERM": "dumb"},
    )
    rows = [line for line in done.stdout.splitlines() if line.startswith("│ ") and line[2:3].isalpha()]
    shown = [row[2:].split()[0] for row in rows if row[2:].split()[0] in VERBS]
    assert sorted(shown) == sorted(v for v in VERBS if v != "proxy-instance")  # hidden: started by units only


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["get", "services"], ({}, "get", ["services"])),
        (["--endpoints", "e:1", "--prefix=/r", "register", "--ttl", "5s"],
         ({"endpoints": "e:1", "prefix": "/r"}, "register", ["--ttl", "5s"])),
        (["--command-timeout", "2s", "status"], ({"command_timeout": "2s"}, "status", [])),
        (["--help"], ({}, None, [])),
        (["--endpoints"], ({}, None, [])),
        ([], ({}, None, [])),
    ],
)  # fmt: skip
def test_split_verb_finds_the_verb_after_the_global_flags(
    argv: list[str], expected: tuple[dict[str, str], str | None, list[str]]
) -> None:
    from fleetop.cli.main import split_verb

    assert split_verb(argv) == expected


PARSE_ONE = (
    "from fleetop.models import parse_service\n"
    'parse_service(b\'{"replicas": 1, "unit": {"execStart": "/bin/true"}}\', name=\'web\')\n'
    "try:\n"
    '    parse_service(b\'{"replicas": -1, "unit": {"execStart": "/bin/true"}}\', name=\'web\')\n'
    "except Exception as exc:\n"
    "    assert 'replicas' in str(exc), exc\n"
    "else:\n"
    "    raise AssertionError('an invalid spec was accepted')\n"
)


@pytest.mark.parametrize(
    ("setting", "stand_in"), [("__all__", True), ("true", True), ("", False), ("other", False)]
)
def test_read_verbs_skip_pydantics_plugin_loader_only_when_every_plugin_is_disabled(
    setting: str, stand_in: bool
) -> None:
    """The read verbs answer pydantic's plugin question themselves when PYDANTIC_DISABLE_PLUGINS
    disables every plugin (their default): ``importlib.metadata`` is then never imported, and the
    models still validate. Any other setting leaves pydantic's loader in charge."""
    code = (
        f"import os\nos.environ.pop('PYDANTIC_DISABLE_PLUGINS', None)\n"
        f"if {setting!r}: os.environ['PYDANTIC_DISABLE_PLUGINS'] = {setting!r}\n"
        "from fleetop.cli.reads import skip_plugin_loader\nskip_plugin_loader()\n" + PARSE_ONE
    )
    modules = imported_after(code)
    assert ("importlib.metadata" not in modules) is stand_in
    assert "fleetop.models.service" in modules


def test_pydantic_takes_only_get_plugins_from_its_plugin_loader(monkeypatch: pytest.MonkeyPatch) -> None:
    """The stand-in for ``pydantic.plugin._loader`` has ``get_plugins`` alone: hold the installed
    pydantic to importing nothing else from that module, and its ``get_plugins`` to answering no
    plugin when all are disabled, as the stand-in does."""
    import re
    from pathlib import Path

    import pydantic
    from pydantic.plugin import _loader

    from fleetop.cli.reads import PLUGIN_LOADER

    assert _loader.__name__ == PLUGIN_LOADER
    taken: set[str] = set()
    for path in Path(pydantic.__file__).parent.rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        for names in re.findall(
            r"from\s+(?:\.|pydantic\.plugin\.)_loader\s+import\s+(\([^)]*\)|[^\n]+)", text
        ):
            taken.update(n.strip() for n in names.strip("()").split(",") if n.strip())
        assert not re.search(r"\b_loader\.\w", text) or path.name == "_loader.py", path
    assert taken == {"get_plugins"}
    monkeypatch.setenv("PYDANTIC_DISABLE_PLUGINS", "__all__")
    assert tuple(_loader.get_plugins()) == ()
