"""The docs cannot drift: every table in README.md and docs/ that mirrors code is checked against that code.

Generated tables (docs/settings.md) have their own check (tests/nexusml/command/test_settings_docs.py); the tables
here are written by hand, so each is compared with its source: the tree, the OpenAPI document, the
dependency groups, compose, the Makefile, tritonserver's command line. Links between the docs must resolve.
"""

from __future__ import annotations

import argparse
import importlib
import json
import re
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement

from nexusml.command.cli import parser
from nexusml.core.settings import variables
from nexusml.testing.repository import repository_files
from nexusml.triton.server import TritonDistribution, command
from nexusml.triton.settings import TritonSettings
from tests.conftest import settings_classes

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
README = ROOT / "README.md"
PAGES = [README, *sorted(DOCS.glob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
CODE = re.compile(r"`([^`]+)`")


def read(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def table(path: Path, marker: str) -> list[list[str]]:
    """The rows (cells stripped, header and rule left out) of the table between `<!-- marker... -->` and
    `<!-- /marker -->` in `path`."""
    text = read(path)
    match = re.search(rf"<!-- {marker}\b[^>]*-->(.*?)<!-- /{marker} -->", text, re.S)
    assert match, f"{path.name} has no <!-- {marker} --> ... <!-- /{marker} --> block"
    lines = [line.strip() for line in match.group(1).splitlines() if line.strip().startswith("|")]
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]
    assert len(rows) > 2, f"{path.name}'s {marker} table is empty"
    return rows[2:]


def slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", read(path), flags=re.S)
    return {slug(line.lstrip("#")) for line in text.splitlines() if re.match(r"#{1,6} ", line)}


def test_readme_is_a_guide_not_a_reference() -> None:
    lines = read(README).splitlines()
    assert len(lines) <= 200, f"README.md has {len(lines)} lines: move reference material to docs/"
    for command_line in ("make run", "make test", "make test-fast", "curl -X POST http://localhost:8080/predict"):
        assert command_line in read(README), command_line


@pytest.mark.parametrize("page", PAGES, ids=[p.relative_to(ROOT).as_posix() for p in PAGES])
def test_links_resolve(page: Path) -> None:
    for target in LINK.findall(re.sub(r"```.*?```", "", read(page), flags=re.S)):
        if re.match(r"[a-z]+:", target):
            continue  # a URL
        file, _, anchor = target.partition("#")
        dest = (page.parent / file).resolve() if file else page
        assert dest.exists(), f"{page.name} links to {target}, which does not exist"
        if anchor and dest.suffix == ".md":
            assert anchor in anchors(dest), f"{page.name} links to {target}: no such heading in {dest.name}"


@pytest.mark.parametrize("page", PAGES, ids=[p.relative_to(ROOT).as_posix() for p in PAGES])
def test_no_history_in_the_docs(page: Path) -> None:
    """The tracker is not in the repository and the docs describe the code as it is: no issue numbers, no dates."""
    text = read(page)
    assert not re.findall(r"\bissue \d+", text, re.I), f"{page.name} names an issue"
    assert not re.findall(r"\b20\d\d-\d\d-\d\d\b", text), f"{page.name} holds a dated note: move it to decisions.md"


# A path of the repository as the docs and the code's comments name it.
REPO_PATH = re.compile(
    r"(?<![\w/.-])((?:nexusml|proxy|tests|benchmarks|reliability|scripts|docker|helm|examples)/[\w/.-]*\w"
    r"\.(?:py|yaml|yml|json|md|sh|toml|Dockerfile|pbtxt))"
)
SOURCES = [*PAGES, *sorted(ROOT.glob("nexusml/**/*.py")), *sorted(ROOT.glob("proxy/*.py"))]


@pytest.mark.parametrize("source", SOURCES, ids=[p.relative_to(ROOT).as_posix() for p in SOURCES])
def test_named_files_exist(source: Path) -> None:
    """A file named in the docs or in a docstring still exists (modules move; their mentions must follow)."""
    missing = sorted({path for path in REPO_PATH.findall(read(source)) if not (ROOT / path).exists()})
    assert not missing, f"{source.relative_to(ROOT)} names files that do not exist: {missing}"


DOTTED = re.compile(r"`((?:nexusml|proxy)\.[a-z_]+(?:\.[A-Za-z_]+)*)`")  # camelCase after proxy.: chart values


def _resolves(dotted: str) -> bool:
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            found: object = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError as err:
            if err.name and not err.name.startswith(("nexusml", "proxy")):
                return True  # runs elsewhere (model.py inside Triton): not importable here
            continue
        for attribute in parts[cut:]:
            if not hasattr(found, attribute):
                return False
            found = getattr(found, attribute)
        return True
    return False


@pytest.mark.parametrize("source", SOURCES, ids=[p.relative_to(ROOT).as_posix() for p in SOURCES])
def test_named_objects_exist(source: Path) -> None:
    """A module, class or function named as `nexusml.x.y` or `proxy.x` in the docs or a docstring still exists."""
    missing = sorted({name for name in DOTTED.findall(read(source)) if not _resolves(name)})
    assert not missing, f"{source.relative_to(ROOT)} names what does not exist: {missing}"


# Upper-case names the docs use that are not ours to declare: boto3's profile, Triton's instance kinds.
FOREIGN_NAMES = {"AWS_PROFILE", "AWS_DEFAULT_REGION", "KIND_GPU", "KIND_CPU"}


@pytest.mark.parametrize("page", PAGES, ids=[p.relative_to(ROOT).as_posix() for p in PAGES])
def test_variables_are_declared(page: Path) -> None:
    """An environment variable the docs name is declared: by a settings class (or its former spelling), by
    compose, or as a build argument or Makefile variable. A renamed variable fails here until the docs follow."""
    declared = set(FOREIGN_NAMES)
    for cls in settings_classes():
        for spec, _default in variables(cls):
            declared |= {spec.name, *getattr(spec, "aliases", ())}
    elsewhere = "".join(read(ROOT / p) for p in ("docker-compose.yml", "docker/nexus.Dockerfile", "Makefile"))
    named = set(re.findall(r"`([A-Z][A-Z0-9]*_[A-Z0-9_]+)", read(page)))
    missing = sorted(name for name in named - declared if not re.search(rf"\b{name}\b", elsewhere))
    assert not missing, f"{page.name} names variables nothing declares: {missing}"


TEXT_SUFFIXES = {".py", ".md", ".yaml", ".yml", ".toml", ".json", ".sh", ".lua", ".tpl", ".txt", ".pbtxt", ""}


def test_nothing_in_the_repository_names_an_issue() -> None:
    """Code, docs, charts and the committed reports alike: an issue number points nowhere outside the tracker."""
    named = [
        str(path.relative_to(ROOT))
        for path in repository_files(ROOT)
        if path.is_file()
        and path.suffix in TEXT_SUFFIXES
        and re.search(r"\bissues? #?\d+", path.read_text(errors="replace"), re.I)
    ]
    assert named == []


def _modules() -> set[str]:
    """Every package (as `folder/`) and module of nexusml/ and proxy/."""
    found: set[str] = set()
    for top in ("nexusml", "proxy"):
        for path in (ROOT / top).rglob("*.py"):
            rel = path.relative_to(ROOT)
            if path.name == "__init__.py":
                found.add(f"{rel.parent.as_posix()}/")
            elif path.name != "__main__.py":
                found.add(rel.as_posix())
    return found


def test_layout_names_every_module() -> None:
    documented = [CODE.findall(row[0])[0] for row in table(DOCS / "layout.md", "modules")]
    assert len(documented) == len(set(documented)), "a module is listed twice"
    actual = _modules()
    assert not actual - set(documented), f"add a line to docs/layout.md for: {sorted(actual - set(documented))}"
    assert not set(documented) - actual, f"docs/layout.md lists what is gone: {sorted(set(documented) - actual)}"


def test_metadata_fields_are_the_schemas() -> None:
    schema = json.loads(read(ROOT / "nexusml" / "core" / "schemas" / "nexus_meta.schema.json"))
    expected = set(schema["properties"]) - {"artifact"}
    expected |= {f"artifact.{name}" for name in schema["properties"]["artifact"]["properties"]}
    documented = {name for row in table(DOCS / "models.md", "meta-fields") for name in CODE.findall(row[0])}
    assert documented == expected


def test_deployment_images_are_composes() -> None:
    compose = read(ROOT / "docker-compose.yml")
    rows = table(DOCS / "deployment.md", "images")
    images = [image for row in rows for image in CODE.findall(row[1]) if ":" in image]
    assert images
    for image in images:
        assert image in compose, image


@pytest.mark.parametrize("page", PAGES, ids=[p.relative_to(ROOT).as_posix() for p in PAGES])
def test_commands_exist(page: Path) -> None:
    """Every `nexus <command>` and `nexus --option` the docs name is one the command line has."""
    root = parser()
    (commands,) = [a for a in root._actions if isinstance(a, argparse._SubParsersAction)]
    known = set(commands.choices) | {s for a in root._actions for s in a.option_strings}
    named = set(re.findall(r"`nexus ([a-z-]+)", read(page)))
    assert named <= known, f"{page.name} names what `nexus` does not have: {sorted(named - known)}"


def test_routes_are_the_openapi_paths() -> None:
    spec = yaml.safe_load(read(ROOT / "proxy" / "openapi.yaml"))
    expected = {(method.upper(), path) for path, item in spec["paths"].items() for method in item}
    documented = {(row[0], CODE.findall(row[1])[0]) for row in table(DOCS / "api.md", "routes")}
    assert documented == expected


def _name(requirement: str) -> str:
    return re.sub(r"[-_.]+", "-", Requirement(requirement).name).lower()


def test_dependency_groups_are_pyproject() -> None:
    project = tomllib.loads(read(ROOT / "pyproject.toml"))["project"]
    groups = {"(none)": project["dependencies"], **{f"`{k}`": v for k, v in project["optional-dependencies"].items()}}
    rows = {row[0]: row[2] for row in table(DOCS / "development.md", "dependency-groups")}
    assert list(rows) == list(groups)
    for group, requirements in groups.items():
        adds = rows[group].lower()
        for requirement in requirements:
            name = _name(requirement)
            if name == _name(project["name"]):  # another group of ours: named by its own backticked name
                for extra in Requirement(requirement).extras:
                    assert f"`{extra}`" in adds or "all of the above" in adds, (group, extra)
            else:
                assert f"`{name}" in adds, f"docs/development.md: group {group} does not name {name}"


def test_test_folders_are_the_tree() -> None:
    documented = {path for row in table(DOCS / "development.md", "test-folders") for path in CODE.findall(row[0])}
    tests = ROOT / "tests"
    packages = [p for p in [*tests.glob("*/"), *(tests / "nexusml").glob("*/")] if (p / "__init__.py").exists()]
    actual = {f"{p.relative_to(ROOT).as_posix()}/" for p in packages} - {"tests/nexusml/"}
    actual |= {p.relative_to(ROOT).as_posix() for p in tests.glob("test_*.py")}
    assert documented == actual


def test_make_targets_are_the_makefiles() -> None:
    phony = re.search(r"^\.PHONY:(.*)$", read(ROOT / "Makefile"), re.M)
    assert phony
    steps = {"sysdeps", "deploy-sysdeps", "venv"}  # what the targets run first, not commands of their own
    documented = {t for row in table(DOCS / "development.md", "make-targets") for t in CODE.findall(row[0])}
    assert {t.removeprefix("make ") for t in documented} == set(phony.group(1).split()) - steps


def test_compose_variables_are_compose_defaults() -> None:
    compose = read(ROOT / "docker-compose.yml")
    defaults = dict(re.findall(r"\$\{([A-Z0-9_]+):?-([^}]+)\}", compose))
    documented: dict[str, str] = {}
    for row in table(DOCS / "deployment.md", "compose-variables"):
        names = CODE.findall(row[0])
        values = CODE.findall(row[1])[: len(names)]
        assert len(values) == len(names), row
        documented |= dict(zip(names, values, strict=True))
    assert documented == defaults


def test_deployment_names_tritons_flags() -> None:
    text = read(DOCS / "deployment.md")
    match = re.search(r"Triton runs with the flags of `nexus triton`.*?:(.*?)\(", text, re.S)
    assert match
    documented = " ".join(CODE.findall(match.group(1))).split()
    dist = TritonDistribution(*(Path(f"/triton/{name}") for name in ("bin", "lib", "python", "stub")))
    flags = command(TritonSettings(), dist, Path("/backends"))
    assert documented, "no flags found"
    for flag in documented:
        assert flag in flags, flag


def test_deployment_names_the_deploy_packages() -> None:
    makefile = read(ROOT / "Makefile")
    packages = re.search(r"^DEPLOY_PACKAGES :=(.*)$", makefile, re.M)
    assert packages
    text = read(DOCS / "deployment.md")
    for package in packages.group(1).split():
        assert f"`{package}`" in text, package


def test_the_readme_answer_is_the_demo_models() -> None:
    """The curl's answer in README.md and docs/api.md is the demo model's (float32, as the proxy sends it)."""
    torch = pytest.importorskip("torch")
    from nexusml.command.demo import DemoSpec, build

    with torch.inference_mode():
        (expected,) = build(DemoSpec())(torch.tensor([[1.0, 2.0, 3.0, 4.0, 5.0]]))
    for page in (README, DOCS / "api.md"):
        match = re.search(r'\{"output":\[([-0-9.e,]+)\]\}', read(page))
        assert match, page.name
        shown = [float(x) for x in match.group(1).split(",")]
        assert shown == pytest.approx(expected[0].tolist(), abs=1e-6), page.name
