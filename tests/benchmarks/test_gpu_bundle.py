"""The offline GPU bundle's decisions (benchmarks/gpu_bundle.py), without network, pip or the real wheels.

The full build + install + quick run is a manual check (benchmarks/README.md): it downloads ~100 MB.
"""

from __future__ import annotations

import tarfile
import tomllib
import zipfile
from pathlib import Path

import pytest

from benchmarks import gpu_bundle as gb

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def reqs() -> list[str]:
    with (ROOT / "pyproject.toml").open("rb") as f:
        return gb.requirements(tomllib.load(f))


def test_requirements_expand_the_bench_group_without_torch_or_pytriton(reqs: list[str]) -> None:
    names = {gb.requirement_name(r) for r in reqs}
    assert {"boto3", "tritonclient", "aiohttp", "locust", "matplotlib", "psutil", "jsonschema", "moto"} <= names
    assert not names & {"torch", "nvidia-pytriton", "nexusml-dataplane"}
    assert "moto[s3]>=5.0,<6" in reqs
    assert not any(r.startswith("moto[server]") for r in reqs)


def test_requirements_follow_self_references() -> None:
    project = {
        "project": {
            "name": "nexusml_dataplane",
            "dependencies": ["a"],
            "optional-dependencies": {"x": ["b>=1", "torch>=2"], "y": ["nexusml-dataplane[x]", "c"]},
        }
    }
    assert sorted(gb.requirements(project, ["y"])) == ["a", "b>=1", "c"]


@pytest.mark.parametrize(
    ("filename", "kept"),
    [
        pytest.param("numpy-1.26.4-cp312-cp312-manylinux2014_x86_64.whl", False, id="machine-numpy"),
        pytest.param("python_dateutil-2.9-py2.py3-none-any.whl", False, id="normalized-name"),
        pytest.param("protobuf-4.25.9-cp37-abi3-manylinux2014_x86_64.whl", True, id="pinned-below-machine"),
        pytest.param("tritonclient-2.51.0-py3-none-manylinux1_x86_64.whl", True, id="missing-there"),
        pytest.param("Flask_BasicAuth-0.2.0-py3-none-any.whl", True, id="built-here"),
    ],
)
def test_keep_wheel(filename: str, kept: bool) -> None:
    assert gb.keep_wheel(filename) is kept


@pytest.mark.parametrize(
    ("trim", "name", "kept"),
    [
        pytest.param("tritonclient", "tritonclient-2.51.0.data/data/bin/perf_client", False, id="perf_client"),
        pytest.param("tritonclient", "tritonclient-2.51.0.data/data/bin/perf_analyzer", True, id="perf_analyzer"),
        pytest.param("botocore", "botocore/data/ec2/2016-11-15/service-2.json.gz", False, id="ec2-model"),
        pytest.param("botocore", "botocore/data/s3/2006-03-01/service-2.json.gz", True, id="s3-model"),
        pytest.param("botocore", "botocore/data/endpoints.json", True, id="top-level-data"),
        pytest.param("botocore", "botocore/client.py", True, id="code"),
    ],
)
def test_trims(trim: str, name: str, kept: bool) -> None:
    assert gb.TRIMS[trim].keeps(name) is kept


def test_trim_wheel_drops_files_and_their_record_lines(tmp_path: Path) -> None:
    whl = tmp_path / "pkg-1.0-py3-none-any.whl"
    with zipfile.ZipFile(whl, "w") as z:
        z.writestr("pkg/keep.py", "x = 1\n")
        z.writestr("pkg/big.bin", b"\0" * 100_000)
        z.writestr("pkg-1.0.dist-info/RECORD", "pkg/keep.py,,\npkg/big.bin,,\npkg-1.0.dist-info/RECORD,,\n")
    saved = gb.trim_wheel(whl, gb.Trim(drop=("pkg/big.bin",)))
    with zipfile.ZipFile(whl) as z:
        assert sorted(z.namelist()) == ["pkg-1.0.dist-info/RECORD", "pkg/keep.py"]
        assert z.read("pkg-1.0.dist-info/RECORD").decode().splitlines() == [
            "pkg/keep.py,,",
            "pkg-1.0.dist-info/RECORD,,",
        ]
    assert saved > 0


def test_library_closure_follows_needed_entries_inside_the_libs_folder(tmp_path: Path) -> None:
    for name in ("liba.so", "libb.so", "libunused.so", "libpython3-13.so"):
        (tmp_path / name).touch()
    graph = {"server": ["liba.so", "libc.so.6"], "liba.so": ["libb.so", "libstdc++.so.6"], "libb.so": ["liba.so"]}
    found = gb.library_closure([Path("server")], tmp_path, needed=lambda p: graph.get(p.name, []))
    assert [p.name for p in found] == ["liba.so", "libb.so"]


def test_triton_archive_keeps_the_wheel_layout_and_adds_the_package_stub(tmp_path: Path) -> None:
    src = tmp_path / "bin-tritonserver"
    src.write_bytes(b"\x7fELF")
    dest = tmp_path / "t.tar.xz"
    gb.write_triton_archive(
        [(src, "pytriton/tritonserver/bin/tritonserver")], [(src, "lib/libpython3.12.so.1.0")], dest
    )
    with tarfile.open(dest) as tar:
        names = set(tar.getnames())
        init = tar.extractfile("site/pytriton/__init__.py")
        assert init is not None and b"Trimmed" in init.read()
    assert names == {
        "site/pytriton/tritonserver/bin/tritonserver",
        "site/pytriton/__init__.py",
        "extra/lib/libpython3.12.so.1.0",
    }


def test_triton_files_are_the_python_backend_and_the_312_stub() -> None:
    assert "pytriton/tritonserver/python_backend_stubs/3.12/triton_python_backend_stub" in gb.TRITON_FILES
    assert not any("/3.11/" in f or "/3.13/" in f for f in gb.TRITON_FILES)


@pytest.mark.parametrize(
    ("bundle_mib", "tree_mib", "fits"),
    [
        pytest.param(40, 2, True, id="small"),
        pytest.param(61, 2, False, id="over-bundle-budget"),
        pytest.param(59, 6, False, id="over-carry-limit"),
    ],
)
def test_budget_report(bundle_mib: int, tree_mib: int, fits: bool) -> None:
    report = gb.budget_report({"wheels/a.whl": bundle_mib * gb.MIB}, tree_mib * gb.MIB)
    assert report["fits"] is fits
    assert report["carry_bytes"] == (bundle_mib + tree_mib) * gb.MIB


def test_download_command_asks_for_cp312_x86_64_binaries_only(tmp_path: Path) -> None:
    cmd = gb.download_command("py", ["boto3>=1.34"], tmp_path / "d", tmp_path / "built")
    assert cmd[:4] == ["py", "-m", "pip", "download"]
    assert "--only-binary=:all:" in cmd
    assert cmd[cmd.index("--python-version") + 1] == "3.12"
    assert {cmd[i + 1] for i, a in enumerate(cmd) if a == "--platform"} == set(gb.PLATFORMS)
    assert cmd[cmd.index("--find-links") + 1] == str(tmp_path / "built")
    assert cmd[-1] == "boto3>=1.34"


def test_build_command_builds_only_the_sdist_pins(tmp_path: Path) -> None:
    cmd = gb.build_command("/py312", tmp_path)
    assert cmd[:4] == ["/py312", "-m", "pip", "wheel"]
    assert cmd[-len(gb.BUILD_FROM_SOURCE) :] == list(gb.BUILD_FROM_SOURCE)


def test_bundle_folder_is_ignored_by_git() -> None:
    assert "/.gpu-bundle/" in (ROOT / ".gitignore").read_text().splitlines()
