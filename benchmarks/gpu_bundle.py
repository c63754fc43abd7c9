"""Build the offline bundle that lets a GPU session run `benchmarks/gpu_run.sh` in one call.

The GPU machine has no network, Python 3.12 with a CUDA torch of its own, and takes at most 64 MiB of
files (the working tree plus the `carry` paths). So everything the benchmark needs beyond that machine's
own packages travels in one git-ignored folder, `.gpu-bundle/`, built here where the network works:

- `triton.tar.xz`: Triton 2.51 trimmed out of the nvidia-pytriton wheel, laid out as the wheel lays it out
  (`pytriton/tritonserver/...` beside `nvidia_pytriton.libs/`) because the binaries' RPATHs are relative to
  that layout and `nexusml/sync/triton.py` finds the server through `importlib.util.find_spec("pytriton")`.
  Only the server, the Python backend, the 3.12 stub and the libraries they load (their DT_NEEDED closure)
  are kept; a one-line `pytriton/__init__.py` stands in for the package, so pytriton's own Python code and
  dependencies are not needed. With `--with-libpython`, `libpython3.12.so.1.0` comes along as a fallback for
  the stub, used only when the machine has none (+7 MiB); `wrk` and the libraries a bare machine may lack
  (LuaJIT) come along too.
- `wheels/`: cp312 manylinux wheels of what the benchmark imports, minus what the machine already has
  (`MACHINE_PROVIDES`, from the device notes' package list: torch, numpy, matplotlib, aiohttp, grpcio, ...).
  Two pins have no cp312 wheel on PyPI and are built here with a local 3.12 (`BUILD_FROM_SOURCE`). The two
  largest wheels are trimmed (`TRIMS`): perf_client (a byte-identical copy of perf_analyzer) and botocore's
  API models of services the benchmark never calls.
- `manifest.json`: every file with its size, and the size check against the carry budget.

Usage: `python -m benchmarks.gpu_bundle [--out .gpu-bundle] [--python312 PATH]` (or `make gpu-bundle`).
"""

from __future__ import annotations

import argparse
import fnmatch
import io
import json
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import tomllib
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MIB = 1024 * 1024
# What the device tool carries in all (tree + carried paths), and the share the bundle may take of it: the
# remainder is the working tree with room to grow.
CARRY_LIMIT = 64 * MIB
BUNDLE_BUDGET = 60 * MIB
PY_TAG = "3.12"
PLATFORMS = ("manylinux2014_x86_64", "manylinux_2_17_x86_64", "manylinux_2_28_x86_64", "linux_x86_64")
# pyproject.toml's groups that the benchmark path needs (bench holds run, which holds the rest).
GROUPS = ("bench",)
# Requirements dropped or replaced: the machine's torch is used; nvidia-pytriton travels trimmed in
# triton.tar.xz; moto's `server` extra pulls every service's dependencies (cfn-lint, docker, ...) while the
# benchmark's local S3 needs only S3 and the Flask app.
REPLACE: dict[str, tuple[str, ...]] = {
    "torch": (),
    "nvidia-pytriton": (),
    "moto": ("moto[s3]>=5.0,<6", "flask", "flask-cors"),
    # perf_analyzer's libcudart.so.12: gpu_install.sh links it to the copy nvidia_pytriton.libs already has.
    "nvidia-cuda-runtime-cu12": (),
}
# sdists without a cp312 wheel on PyPI, built here by the local Python 3.12.
BUILD_FROM_SOURCE = ("geventhttpclient==2.0.2", "Flask-BasicAuth==0.2.0")
# Distributions the GPU machine already has (KINDS.md, "Python packages already there"): left out of the
# wheelhouse. protobuf is not here although the machine has one: tritonclient 2.51 needs protobuf<5.
MACHINE_PROVIDES = frozenset(
    """aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs certifi charset-normalizer click contourpy
    cycler filelock fonttools frozenlist fsspec grpcio h11 httpcore httpx idna jinja2 kiwisolver markupsafe
    matplotlib msgpack multidict networkx numpy packaging pillow prometheus-client propcache psutil pyparsing
    python-dateutil pyyaml requests setuptools six sympy tqdm typing-extensions urllib3 uvloop werkzeug wheel
    yarl zipp""".split()  # noqa: SIM905 (one list, read as text)
)


@dataclass(frozen=True)
class Trim:
    """Files dropped from one wheel (fnmatch patterns on the archive path), kept ones win."""

    drop: tuple[str, ...]
    keep: tuple[str, ...] = ()

    def keeps(self, name: str) -> bool:
        if any(fnmatch.fnmatch(name, p) for p in self.keep):
            return True
        return not any(fnmatch.fnmatch(name, p) for p in self.drop)


TRIMS: dict[str, Trim] = {
    # perf_client is the same 20 MB binary as perf_analyzer, under its old name.
    "tritonclient": Trim(drop=("*/bin/perf_client",)),
    # The API models of ~450 AWS services; boto3 loads the ones it is asked for (S3; STS/SSO for credentials).
    "botocore": Trim(
        drop=("botocore/data/*/*",),
        keep=tuple(f"botocore/data/{s}/*" for s in ("s3", "sts", "sso", "sso-oidc")),
    ),
}
# Inside the nvidia-pytriton install: what the server needs, relative to site-packages.
TRITON_FILES = (
    "pytriton/tritonserver/bin/tritonserver",
    "pytriton/tritonserver/backends/python/libtriton_python.so",
    "pytriton/tritonserver/backends/python/triton_python_backend_utils.py",
    f"pytriton/tritonserver/python_backend_stubs/{PY_TAG}/triton_python_backend_stub",
)
LIBS_DIR = "nvidia_pytriton.libs"
PYTRITON_INIT = '"""Trimmed nvidia-pytriton: only the Triton server files (benchmarks/gpu_bundle.py)."""\n'
# Libraries any glibc system has: never bundled with wrk.
# OpenSSL 3 too: every current distribution (the machine's Ubuntu 24.04 image) has libssl3.
SYSTEM_LIBS = re.compile(
    r"^(linux-vdso|ld-linux|libc|libm|libpthread|libdl|librt|libgcc_s|libstdc\+\+|libssl|libcrypto)\b"
)


def normalize(name: str) -> str:
    """PEP 503 name, as wheels' file names and the machine list compare."""
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(requirement: str) -> str:
    return normalize(re.split(r"[\[<>=!~;\s]", requirement, maxsplit=1)[0])


def requirements(pyproject: dict, groups: Iterable[str] = GROUPS) -> list[str]:
    """The groups' requirements, self-references (`nexusml-dataplane[run]`) expanded, `REPLACE` applied."""
    project = pyproject["project"]
    own = normalize(project["name"])
    extras = project["optional-dependencies"]
    out: list[str] = list(project.get("dependencies", []))
    seen: set[str] = set()
    todo = list(groups)
    while todo:
        group = todo.pop(0)
        if group in seen:
            continue
        seen.add(group)
        for req in extras[group]:
            if requirement_name(req) == own:
                todo.extend(x.strip() for x in req.split("[", 1)[1].rstrip("]").split(","))
            else:
                out.append(req)
    result: list[str] = []
    for req in out:
        for item in REPLACE.get(requirement_name(req), (req,)):
            if item not in result:
                result.append(item)
    return result


def wheel_name(filename: str) -> str:
    return normalize(filename.split("-", 1)[0])


def keep_wheel(filename: str, machine: frozenset[str] = MACHINE_PROVIDES) -> bool:
    return wheel_name(filename) not in machine


def download_command(python: str, reqs: list[str], dest: Path, find_links: Path) -> list[str]:
    """`pip download` of cp312 x86-64 wheels only (the sdist-only pins are found built in `find_links`)."""
    platforms = [arg for p in PLATFORMS for arg in ("--platform", p)]
    return [
        python,
        *("-m", "pip", "download", "-q", "--only-binary=:all:", "--python-version", PY_TAG),
        *("--implementation", "cp", *platforms, "--find-links", str(find_links), "-d", str(dest), *reqs),
    ]


def build_command(python312: str, dest: Path) -> list[str]:
    return [python312, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(dest), *BUILD_FROM_SOURCE]


def trim_wheel(path: Path, trim: Trim) -> int:
    """Rewrite the wheel without the dropped files (RECORD too); returns the bytes saved."""
    before = path.stat().st_size
    tmp = path.with_suffix(".tmp")
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as dst:
        kept = {i.filename for i in src.infolist() if trim.keeps(i.filename)}
        for info in src.infolist():
            if info.filename not in kept:
                continue
            data = src.read(info)
            if info.filename.endswith(".dist-info/RECORD"):
                lines = data.decode().splitlines()
                data = "".join(f"{ln}\n" for ln in lines if ln.split(",", 1)[0] in kept).encode()
            dst.writestr(info, data, compress_type=zipfile.ZIP_DEFLATED)
    tmp.replace(path)
    return before - path.stat().st_size


def elf_needed(path: Path) -> list[str]:
    """DT_NEEDED entries, read with binutils' readelf (this runs on the build machine only)."""
    out = subprocess.run(["readelf", "-d", str(path)], capture_output=True, text=True, check=True).stdout
    return re.findall(r"\(NEEDED\)\s+Shared library: \[(.+?)\]", out)


def library_closure(roots: Iterable[Path], libs: Path, needed: Callable[[Path], list[str]] = elf_needed) -> list[Path]:
    """The libraries in `libs` that `roots` load, directly or through each other; system ones are not there."""
    found: dict[str, Path] = {}
    todo = list(roots)
    while todo:
        for name in needed(todo.pop()):
            candidate = libs / name
            if name not in found and candidate.exists():
                found[name] = candidate
                todo.append(candidate)
    return sorted(found.values())


def ldd_libraries(binary: Path) -> list[Path]:
    """The non-glibc shared libraries a system binary loads (wrk: LuaJIT, OpenSSL)."""
    out = subprocess.run(["ldd", str(binary)], capture_output=True, text=True, check=True).stdout
    libs = re.findall(r"^\s*(\S+) => (/\S+)", out, flags=re.M)
    return [Path(p) for name, p in libs if not SYSTEM_LIBS.match(name)]


def triton_members(site: Path) -> list[tuple[Path, str]]:
    """(source, name in the archive) of the trimmed server, keeping the wheel's layout for its RPATHs."""
    files = [site / f for f in TRITON_FILES]
    missing = [str(f) for f in files if not f.exists()]
    if missing:
        raise SystemExit(f"nvidia-pytriton is incomplete (run `make venv`): missing {missing}")
    libs = library_closure([f for f in files if not f.name.endswith(".py")], site / LIBS_DIR)
    return [(f, str(f.relative_to(site))) for f in [*files, *libs]]


def write_triton_archive(members: list[tuple[Path, str]], extras: list[tuple[Path, str]], dest: Path) -> None:
    """One tar.xz: the server (`site/`), the libpython fallback and wrk (`extra/`)."""
    with tarfile.open(dest, "w:xz", preset=6) as tar:
        for source, name in members:
            tar.add(source, arcname=f"site/{name}")
        init = PYTRITON_INIT.encode()
        info = tarfile.TarInfo("site/pytriton/__init__.py")
        info.size = len(init)
        tar.addfile(info, io.BytesIO(init))
        for source, name in extras:
            tar.add(source.resolve(), arcname=f"extra/{name}")


def python312_extras(python312: str) -> list[tuple[Path, str]]:
    """The 3.12 stub's libpython, from the local 3.12 (a shared build): a fallback for the machine."""
    code = "import sysconfig; print(sysconfig.get_config_var('LIBDIR'))"
    libdir = Path(subprocess.run([python312, "-c", code], capture_output=True, text=True, check=True).stdout.strip())
    lib = libdir / "libpython3.12.so.1.0"
    if not lib.exists():
        raise SystemExit(f"{python312} is not a shared build: {lib} is missing")
    return [(lib, "lib/libpython3.12.so.1.0")]


def wrk_extras() -> list[tuple[Path, str]]:
    wrk = shutil.which("wrk")
    if wrk is None:
        print("gpu_bundle: no wrk here (make sysdeps); the HTTP paths will report 'not available' there")
        return []
    return [(Path(wrk), "bin/wrk"), *[(lib, f"lib/wrk/{lib.name}") for lib in ldd_libraries(Path(wrk))]]


def budget_report(files: dict[str, int], tree_bytes: int, budget: int = BUNDLE_BUDGET) -> dict:
    """Sizes and the verdict: the bundle within its budget and, with the tree, within the carry limit."""
    total = sum(files.values())
    return {
        "bundle_bytes": total,
        "tree_bytes": tree_bytes,
        "carry_bytes": total + tree_bytes,
        "budget_bytes": budget,
        "carry_limit_bytes": CARRY_LIMIT,
        "fits": total <= budget and total + tree_bytes <= CARRY_LIMIT,
    }


def tree_bytes() -> int:
    """What the device tool carries of the repository: tracked and untracked-not-ignored files."""
    out = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout
    return sum((ROOT / p).stat().st_size for p in out.decode().split("\0") if p and (ROOT / p).is_file())


def site_packages() -> Path:
    import pytriton  # only here, on the build machine: the installed wheel is the source

    return Path(pytriton.__file__).resolve().parents[1]


def build(out: Path, python312: str, with_libpython: bool = False) -> dict:
    started = time.monotonic()
    shutil.rmtree(out, ignore_errors=True)
    wheels = out / "wheels"
    wheels.mkdir(parents=True)
    with tempfile.TemporaryDirectory() as tmp:
        built = Path(tmp) / "built"
        subprocess.run(build_command(python312, built), check=True)
        with (ROOT / "pyproject.toml").open("rb") as f:
            reqs = requirements(tomllib.load(f))
        subprocess.run(download_command(sys.executable, reqs, Path(tmp) / "all", built), check=True)
        for whl in sorted((Path(tmp) / "all").glob("*.whl")):
            if keep_wheel(whl.name):
                shutil.copy2(whl, wheels / whl.name)
    for whl in wheels.glob("*.whl"):
        if trim := TRIMS.get(wheel_name(whl.name)):
            print(f"trimmed {whl.name}: -{trim_wheel(whl, trim) / MIB:.1f} MiB")
    write_triton_archive(
        triton_members(site_packages()),
        [*(python312_extras(python312) if with_libpython else []), *wrk_extras()],
        out / "triton.tar.xz",
    )
    files = {str(p.relative_to(out)): p.stat().st_size for p in sorted(out.rglob("*")) if p.is_file()}
    manifest = {"files": files, **budget_report(files, tree_bytes()), "build_s": round(time.monotonic() - started, 1)}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=ROOT / ".gpu-bundle", help="bundle folder (default .gpu-bundle)")
    p.add_argument(
        "--python312",
        default="/root/.pyenv/versions/3.12.1/bin/python3.12",
        help="a shared-build Python 3.12 here: builds the sdist-only wheels, gives libpython3.12",
    )
    p.add_argument(
        "--with-libpython",
        action="store_true",
        help="bundle libpython3.12.so.1.0 for a machine without one (+7 MiB; the device image has python3.12)",
    )
    args = p.parse_args(argv)
    manifest = build(args.out, args.python312, args.with_libpython)
    mib = {k: round(v / MIB, 1) for k, v in manifest.items() if k.endswith("_bytes")}
    print(f"gpu_bundle: {args.out} in {manifest['build_s']} s; MiB: {mib}")
    if not manifest["fits"]:
        print("gpu_bundle: over budget: the device tool would refuse the carry")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
