"""The offline GPU bundle's decisions (benchmarks/gpu_bundle.py), without network, pip or the real wheels.

The full build + install + quick run is a manual check (benchmarks/README.md): it downloads ~100 MB.
"""

from __future__ import annotations

import base64
import hashlib
import shutil
import subprocess
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
        pytest.param("aiohttp-3.10.0-cp312-cp312-manylinux2014_x86_64.whl", False, id="machine-aiohttp"),
        pytest.param("python_dateutil-2.9-py2.py3-none-any.whl", False, id="normalized-name"),
        pytest.param("protobuf-4.25.9-cp37-abi3-manylinux2014_x86_64.whl", True, id="pinned-below-machine"),
        pytest.param("numpy-1.26.4-cp312-cp312-manylinux2014_x86_64.whl", True, id="numpy-1-over-machine-2"),
        pytest.param("cryptography-50.0.2-cp311-abi3-manylinux2014_x86_64.whl", True, id="moto-s3-needs-it"),
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
        pytest.param("numpy", "numpy/core/tests/test_multiarray.py", False, id="numpy-tests"),
        pytest.param("numpy", "numpy/random/tests/data/mt19937-testset-1.csv", False, id="numpy-test-data"),
        pytest.param("numpy", "numpy/f2py/crackfortran.py", False, id="f2py"),
        pytest.param("numpy", "numpy/__init__.pyi", False, id="type-stub"),
        pytest.param("numpy", "numpy/core/_simd.cpython-312-x86_64-linux-gnu.so", False, id="simd-test-module"),
        pytest.param("numpy", "numpy/core/_multiarray_umath.cpython-312-x86_64-linux-gnu.so", True, id="core"),
        pytest.param("numpy", "numpy/testing/__init__.py", True, id="numpy-testing"),
        pytest.param("numpy", "numpy.libs/libopenblas64_p-r0-0cf96a72.3.23.dev.so", True, id="openblas"),
    ],
)
def test_trims(trim: str, name: str, kept: bool) -> None:
    assert gb.TRIMS[trim].keeps(name) is kept


def _digest(data: bytes) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def test_repack_wheel_drops_prepares_stores_and_rewrites_record(tmp_path: Path) -> None:
    whl = tmp_path / "pkg-1.0-py3-none-any.whl"
    with zipfile.ZipFile(whl, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("pkg/keep.py", "x = 1\n")
        z.writestr("pkg/lib.so", b"\x7fELF" + b"s" * 1000)
        z.writestr("pkg/big.bin", b"\0" * 100_000)
        z.writestr(
            "pkg-1.0.dist-info/RECORD", "pkg/keep.py,,\npkg/lib.so,,\npkg/big.bin,,\npkg-1.0.dist-info/RECORD,,\n"
        )
    saved = gb.repack_wheel(whl, gb.Trim(drop=("pkg/big.bin",)), prepare=lambda d: d[:4] if d[:4] == b"\x7fELF" else d)
    with zipfile.ZipFile(whl) as z:
        assert sorted(z.namelist()) == ["pkg-1.0.dist-info/RECORD", "pkg/keep.py", "pkg/lib.so"]
        assert {i.compress_type for i in z.infolist()} == {zipfile.ZIP_STORED}
        assert z.read("pkg/lib.so") == b"\x7fELF"
        keep, lib = _digest(b"x = 1\n"), _digest(b"\x7fELF")
        assert z.read("pkg-1.0.dist-info/RECORD").decode().splitlines() == [
            f"pkg/keep.py,sha256={keep},6",
            f"pkg/lib.so,sha256={lib},4",
            "pkg-1.0.dist-info/RECORD,,",
        ]
    assert saved == 100_000 + 1000


def test_record_line_matches_pip_format() -> None:
    assert gb.record_line("a.py", b"") == "a.py,sha256=47DEQpj8HBSa-_TImW-5JCeuQeRkm5NMpJWZG3hSuFU,0"


def test_strip_elf_leaves_non_elf_and_unstrippable_files_alone() -> None:
    assert gb.strip_elf(b"print('hi')\n") == b"print('hi')\n"
    assert gb.strip_elf(b"\x7fELF not really") == b"\x7fELF not really"


@pytest.mark.skipif(shutil.which("cc") is None or shutil.which("strip") is None, reason="needs cc and binutils")
def test_strip_elf_shrinks_a_shared_object_that_still_exports_its_symbols(tmp_path: Path) -> None:
    source = tmp_path / "f.c"
    source.write_text("int exported(int x) { return x + 1; }\nstatic int hidden(void) { return 2; }\n")
    lib = tmp_path / "libf.so"
    subprocess.run(["cc", "-shared", "-fPIC", "-g", "-o", str(lib), str(source)], check=True)
    stripped = gb.strip_elf(lib.read_bytes())
    assert len(stripped) < lib.stat().st_size
    lib.write_bytes(stripped)
    assert "exported" in subprocess.run(["nm", "-D", str(lib)], capture_output=True, text=True, check=True).stdout


def test_icu_stub_source_defines_the_named_symbol_with_the_common_data_header() -> None:
    source = gb.icu_stub_source("icudt70_dat")
    assert "const Header icudt70_dat = {" in source
    assert "32, 0xda, 0x27" in source
    assert "0x54, 0x6f, 0x43, 0x50" in source  # "ToCP": a common-data table of contents


@pytest.mark.skipif(shutil.which("cc") is None or shutil.which("readelf") is None, reason="needs cc and binutils")
def test_icu_stub_keeps_the_file_name_soname_and_symbol(tmp_path: Path) -> None:
    real_src = tmp_path / "real.c"
    real_src.write_text("const char icudt70_dat[4096] = {1};\n")
    real = tmp_path / "libicudata-abc.so.70.1"
    subprocess.run(["cc", "-shared", "-fPIC", "-o", str(real), str(real_src)], check=True)
    workdir = tmp_path / "work"
    workdir.mkdir()
    stub = gb.build_icu_stub(real, workdir)
    assert stub is not None and stub.name == real.name
    dynamic = subprocess.run(["readelf", "-d", str(stub)], capture_output=True, text=True, check=True).stdout
    assert "Library soname: [libicudata-abc.so.70.1]" in dynamic
    assert "NEEDED" not in dynamic
    assert gb.icu_data_symbol(stub) == "icudt70_dat"


def test_replace_icu_data_swaps_only_libicudata(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    stub = tmp_path / "stub.so"
    monkeypatch.setattr(gb, "build_icu_stub", lambda real, workdir: stub)
    members = [
        (Path("/l/libicuuc.so.70"), "libs/libicuuc.so.70"),
        (Path("/l/libicudata.so.70"), "libs/libicudata.so.70"),
    ]
    assert gb.replace_icu_data(members, tmp_path) == [members[0], (stub, "libs/libicudata.so.70")]


def test_wheels_archive_holds_every_wheel_under_wheels(tmp_path: Path) -> None:
    for name in ("b-1-py3-none-any.whl", "a-1-py3-none-any.whl"):
        (tmp_path / name).write_bytes(b"PK")
    dest = tmp_path / "w.tar.xz"
    gb.write_wheels_archive(tmp_path.glob("*.whl"), dest)
    with tarfile.open(dest) as tar:
        assert tar.getnames() == ["wheels/a-1-py3-none-any.whl", "wheels/b-1-py3-none-any.whl"]


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
        [(src, "pytriton/tritonserver/bin/tritonserver")],
        [(src, "lib/libpython3.12.so.1.0")],
        dest,
        prepare=lambda data: data + b"!",
    )
    with tarfile.open(dest) as tar:
        names = set(tar.getnames())
        init = tar.extractfile("site/pytriton/__init__.py")
        assert init is not None and b"Trimmed" in init.read()
        server = tar.extractfile("site/pytriton/tritonserver/bin/tritonserver")
        assert server is not None and server.read() == b"\x7fELF!"
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
        pytest.param(gb.BUNDLE_BUDGET // gb.MIB + 1, 2, False, id="over-bundle-budget"),
        pytest.param(gb.BUNDLE_BUDGET // gb.MIB, 64 - gb.BUNDLE_BUDGET // gb.MIB + 1, False, id="over-carry-limit"),
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
