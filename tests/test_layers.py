"""The layers point only down; nothing imports tests.

    core <- sync <- triton <- updates          (nexusml/: the contract, then each side of the data plane)
    core <- proxy                              (the front proxy stands on core alone)
    all of those <- command <- testing <- tools <- tests

Every Python file of the project is parsed (imports inside functions included) and each import of one of
our packages is checked against the layer table below. The same check runs on hand-written cases, so a
rule that stopped catching anything would fail here too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
OURS = ("nexusml", "proxy", "benchmarks", "reliability", "scripts", "tests")

# layer -> the layers it may import (its own included).
ALLOWED = {
    "core": {"core"},
    "sync": {"core", "sync"},
    "triton": {"core", "triton"},
    "updates": {"core", "sync", "triton", "updates"},
    "proxy": {"core", "proxy"},
    "backend": set(),  # runs inside Triton's Python stub: the model file imports nothing of ours
    "command": {"core", "sync", "triton", "updates", "proxy", "command"},
    "testing": {"core", "sync", "triton", "updates", "proxy", "command", "testing"},
    "tools": {"core", "sync", "triton", "updates", "proxy", "command", "testing", "tools"},
    "tests": {"core", "sync", "triton", "updates", "proxy", "command", "testing", "tools", "tests"},
}
# The tests of the tooling itself; every other test is a product test, which imports no tooling.
TOOLING_TESTS = ("benchmarks", "reliability")
# nexusml's subpackages are layers of their own; its root modules (`python -m nexusml`) are the command's.
NEXUSML_LAYERS = ("core", "sync", "triton", "updates", "backend", "command", "testing")


def layer_of(module: str) -> str:
    """The layer of a dotted module name of ours; a nexusml subpackage missing from the table fails loudly."""
    parts = module.split(".")
    if parts[0] == "nexusml":
        if len(parts) == 1 or parts[1] in ("__init__", "__main__"):
            return "command"
        if parts[1] not in NEXUSML_LAYERS:
            raise AssertionError(f"{module}: nexusml.{parts[1]} is not in the layer table of {__name__}")
        return parts[1]
    return {"proxy": "proxy", "tests": "tests"}.get(parts[0], "tools")


def module_of(path: Path) -> str:
    relative = path.relative_to(ROOT).with_suffix("")
    return ".".join(relative.parts)


def imported(tree: ast.AST, module: str) -> list[str]:
    """Every module of ours that `tree` imports; `from pkg import name` counts as `pkg.name`."""
    found: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = module.split(".")[: -node.level]
                base = ".".join([*package, base] if base else package)
            found.extend(f"{base}.{alias.name}" for alias in node.names)
    return [name for name in found if name.split(".")[0] in OURS]


def violations(module: str, source: str) -> list[str]:
    """What `module` (with `source`) imports against the layer table, one line each."""
    own = layer_of(module)
    problems = []
    for target in imported(ast.parse(source), module):
        if layer_of(target) not in ALLOWED[own]:
            problems.append(f"{module} ({own}) imports {target} ({layer_of(target)})")
        elif any(part.startswith("test_") for part in target.split(".")[1:]) and module.split(".")[0] == "tests":
            problems.append(f"{module} imports the test module {target}: share it via a conftest or nexusml.testing")
        elif own == "tests" and layer_of(target) == "tools" and module.split(".")[1] not in TOOLING_TESTS:
            problems.append(f"{module} (a product test) imports the tooling module {target}: use nexusml.testing")
    return problems


def project_files() -> list[Path]:
    skip = {".venv", ".git", "node_modules", "build", "results"}
    return [
        path
        for top in OURS
        for path in sorted((ROOT / top).rglob("*.py"))
        if not skip.intersection(path.relative_to(ROOT).parts)
    ]


def test_every_import_points_down() -> None:
    problems = [line for path in project_files() for line in violations(module_of(path), path.read_text())]
    assert problems == []


@pytest.mark.parametrize(
    ("module", "source", "broken"),
    [
        pytest.param("nexusml.core.errors", "from nexusml.sync import storage", True, id="core-imports-sync"),
        pytest.param("nexusml.core.settings", "import proxy.settings", True, id="core-imports-proxy"),
        pytest.param("proxy.app", "from nexusml.sync.storage import client", True, id="proxy-imports-sync"),
        pytest.param("nexusml.sync.pipeline", "from proxy.errors import NotReady", True, id="sync-imports-proxy"),
        pytest.param("nexusml.sync.pipeline", "from nexusml.command import demo", True, id="sync-imports-command"),
        pytest.param("proxy.server", "from nexusml.command.cli import main", True, id="proxy-imports-command"),
        pytest.param(
            "nexusml.command.stack", "from nexusml.testing import servers", True, id="command-imports-testing"
        ),
        pytest.param("nexusml.sync.pipeline", "from nexusml.triton import server", True, id="sync-imports-triton"),
        pytest.param("nexusml.triton.server", "from nexusml.updates import swap", True, id="triton-imports-updates"),
        pytest.param("proxy.client", "from nexusml.triton import watchdog", True, id="proxy-imports-triton"),
        pytest.param("nexusml.updates.swap", "from nexusml.sync import pipeline", False, id="updates-on-sync"),
        pytest.param("nexusml.testing.servers", "from benchmarks import run", True, id="testing-imports-tools"),
        pytest.param("reliability.bed", "from tests.conftest import DEMO_SPEC", True, id="tools-import-tests"),
        pytest.param("nexusml.testing.models", "import tests", True, id="harness-imports-tests"),
        pytest.param("tests.proxy.test_app", "from tests.proxy.test_server import BODY", True, id="test-imports-test"),
        pytest.param("tests.proxy.test_v2", "from benchmarks import loadgen", True, id="product-test-imports-tools"),
        pytest.param("tests.benchmarks.test_smoke", "from benchmarks import run", False, id="tooling-test-on-tools"),
        pytest.param("nexusml.core.metadata", "from .errors import MetadataError", False, id="relative-in-core"),
        pytest.param("nexusml.core.metadata", "from ..sync import storage", True, id="relative-up-into-sync"),
        pytest.param("proxy.app", "from nexusml.core.errors import NexusError", False, id="proxy-on-core"),
        pytest.param("nexusml.command.cli", "from proxy.server import serve", False, id="command-on-proxy"),
        pytest.param("tests.proxy.test_app", "from tests.proxy.conftest import ROW", False, id="test-on-conftest"),
        pytest.param("nexusml.backend.model", "import numpy\nimport torch", False, id="backend-third-party"),
    ],
)
def test_the_rule_catches(module: str, source: str, broken: bool) -> None:
    assert bool(violations(module, source)) is broken
