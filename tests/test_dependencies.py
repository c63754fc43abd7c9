"""Each layer's imports are installed by its dependency group in pyproject.toml, and by nothing wider.

The nexus image installs only the `sync` and `proxy` groups, so a third-party import added to the sync side
or the proxy without its group entry would break the image, not the developer's full venv: caught here.
A distribution counts when the group names it or one of the group's requirements pulls it in.
"""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from functools import cache
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
# Imports a layer may make without a distribution: the Triton Python backend's own module.
PROVIDED = {"triton_python_backend_utils"}


def _name(requirement: str) -> str:
    return re.sub(r"[-_.]+", "-", Requirement(requirement).name).lower()


def group_requirements(groups: tuple[str, ...]) -> list[Requirement]:
    """The base dependencies plus `groups`, the project's own groups expanded."""
    found = [Requirement(r) for r in PROJECT["dependencies"]]
    pending = list(groups)
    while pending:
        for text in PROJECT["optional-dependencies"][pending.pop()]:
            requirement = Requirement(text)
            if _name(text) == _name(PROJECT["name"]):
                pending.extend(requirement.extras)
            else:
                found.append(requirement)
    return found


@cache
def closure(name: str, extras: frozenset[str] = frozenset()) -> frozenset[str]:
    """`name` and every distribution its installed metadata requires (with `extras`), transitively."""
    seen = {name}
    try:
        requires = metadata.requires(name) or []
    except metadata.PackageNotFoundError:
        return frozenset(seen)
    for text in requires:
        requirement = Requirement(text)
        marker = requirement.marker
        if marker is not None and not any(marker.evaluate({"extra": extra}) for extra in (*extras, "")):
            continue
        seen |= closure(_name(text), frozenset(requirement.extras))
    return frozenset(seen)


def installed_by(groups: tuple[str, ...]) -> set[str]:
    names: set[str] = set()
    for requirement in group_requirements(groups):
        names |= closure(_name(str(requirement)), frozenset(requirement.extras))
    return names


def third_party_imports(folder: Path) -> set[str]:
    """Top-level modules imported anywhere under `folder` that are neither ours nor the standard library."""
    found: set[str] = set()
    for path in folder.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                found.add(node.module.split(".")[0])
    ours = {"nexusml", "proxy", "__future__"}
    return {name for name in found if name not in ours and name not in sys.stdlib_module_names}


@pytest.mark.parametrize(
    ("folder", "groups"),
    [
        pytest.param("nexusml/core", (), id="core-base-only"),
        pytest.param("nexusml/sync", ("sync",), id="sync"),
        pytest.param("nexusml/triton", ("sync",), id="triton-launcher"),
        pytest.param("nexusml/updates", ("sync",), id="updates"),
        pytest.param("proxy", ("proxy",), id="proxy"),
        pytest.param("nexusml/backend", ("triton",), id="backend-model"),
        pytest.param("nexusml/testing", ("dev",), id="harness-dev"),
    ],
)
def test_layer_imports_are_in_its_group(folder: str, groups: tuple[str, ...]) -> None:
    distributions = metadata.packages_distributions()
    available = installed_by(groups)
    missing = {
        module: distributions.get(module, ["?"])
        for module in third_party_imports(ROOT / folder) - PROVIDED
        if not {_name(d) for d in distributions.get(module, [])} & available
    }
    assert missing == {}, f"{folder} imports these outside the groups {groups or '(base)'}"


def test_the_runtime_groups_leave_out_the_heavy_ones() -> None:
    """The nexus image (`sync` + `proxy`) gets neither PyTorch, nor the server wheel, nor the local S3."""
    assert not installed_by(("sync", "proxy")) & {"torch", "nvidia-pytriton", "moto"}
