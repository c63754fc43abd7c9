"""Build the offline bundle that lets a GPU session run `benchmarks/gpu_run.sh` in one call.

The GPU machine has no network, Python 3.12 with a CUDA torch of its own, and takes at most 64 MiB of
files (the working tree plus the `carry` paths). So everything the benchmark needs beyond that machine's
own packages travels in one git-ignored folder, `.gpu-bundle/`, built here where the network works:

- `triton.tar.xz`: Triton 2.51 trimmed out of the nvidia-pytriton wheel, laid out as the wheel lays it out
  (`pytriton/tritonserver/...` beside `nvidia_pytriton.libs/`) because the binaries' RPATHs are relative to
  that layout and `nexusml/triton/server.py` finds the server through `importlib.util.find_spec("pytriton")`.
  Only the server, the Python backend, the 3.12 stub and the libraries they load (their DT_NEEDED closure)
  are kept; a one-line `pytriton/__init__.py` stands in for the package, so pytriton's own Python code and
  dependencies are not needed. ICU's 28 MB data library (loaded by libxml2, which Triton loads for cloud
  storage and never uses with a local repository) is replaced by ICU's own "stubdata" equivalent, compiled
  here. `libpython3.12.so.1.0` comes along as a fallback for the stub (used only when the machine has none;
  `--no-libpython` leaves it out), and `wrk` with the libraries a bare machine may lack (LuaJIT).
- `wheels.tar.xz`: cp312 manylinux wheels of what the benchmark imports, minus what the machine already has
  (`MACHINE_PROVIDES`, from the device notes' package list: torch, matplotlib, aiohttp, grpcio, ...). Two
  pins have no cp312 wheel on PyPI and are built here with a local 3.12 (`BUILD_FROM_SOURCE`). Some wheels
  are trimmed (`TRIMS`): perf_client (a copy of perf_analyzer), botocore's API models of services the
  benchmark never calls, numpy's tests and f2py.
  Every wheel is rewritten uncompressed (RECORD updated) and every ELF file in it stripped, so that one xz
  stream compresses them all together: about a third smaller than the wheels as PyPI ships them.
- `manifest.json`: every file with its size, the wheels' sizes, and the size check against the carry budget.

Binaries are stripped of their symbol tables (`strip --strip-unneeded`): the debug sections of
libtritonserver, tritonserver and libpython are most of their size and nothing reads them there.

Usage: `python -m benchmarks.gpu_bundle [--out .gpu-bundle] [--python312 PATH] [--no-libpython]`
(or `make gpu-bundle`).
"""

from __future__ import annotations

import argparse
import base64
import fnmatch
import hashlib
import io
import json
import lzma
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

from nexusml.testing.repository import repository_files

ROOT = Path(__file__).resolve().parents[1]
MIB = 1024 * 1024
# What the device tool carries in all (tree + carried paths), and the share the bundle may take of it: the
# remainder is the working tree with room to grow.
CARRY_LIMIT = 64 * MIB
BUNDLE_BUDGET = 54 * MIB
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
# wheelhouse. Two it has are not here, because its versions break the benchmark: protobuf (tritonclient 2.51
# needs protobuf<5) and numpy (the machine's numpy 2 makes tritonclient 2.51's `as_numpy` fail, "cannot
# reshape array of size 0"; pyproject pins numpy<2). The venv's own site-packages come first on sys.path,
# so the bundled numpy 1.26 is the one imported, torch included (its numpy bridge works with 1.x).
MACHINE_PROVIDES = frozenset(
    """aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs certifi charset-normalizer click contourpy
    cycler filelock fonttools frozenlist fsspec grpcio h11 httpcore httpx idna jinja2 kiwisolver markupsafe
    matplotlib msgpack multidict networkx packaging pillow prometheus-client propcache psutil pyparsing
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
    # numpy's test suites (6 MB), f2py, type stubs, and `_simd` (3.5 MB; imported by its tests only).
    "numpy": Trim(drop=("numpy/*tests/*", "numpy/f2py/*", "*.pyi", "numpy/core/_simd.*", "numpy/_pyinstaller/*")),
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


def strip_elf(data: bytes) -> bytes:
    """`data` without its symbol tables and debug sections if it is an ELF file, else unchanged.

    `--strip-unneeded` keeps the dynamic symbols, so libraries still link; a file strip cannot handle (or
    that comes out no smaller) is kept as it is.
    """
    if not data.startswith(b"\x7fELF"):
        return data
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "in", Path(tmp) / "out"
        src.write_bytes(data)
        done = subprocess.run(["strip", "--strip-unneeded", "-o", str(dst), str(src)], capture_output=True)
        if done.returncode != 0 or not dst.exists():
            return data
        stripped = dst.read_bytes()
    return stripped if len(stripped) < len(data) else data


def record_line(name: str, data: bytes) -> str:
    """A wheel RECORD line (PEP 376/427): path, urlsafe-base64 sha256 without padding, size."""
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}"


def repack_wheel(path: Path, trim: Trim | None = None, prepare: Callable[[bytes], bytes] = strip_elf) -> int:
    """Rewrite the wheel uncompressed, without the trimmed files and with `prepare` applied to each file.

    Uncompressed, because the wheels travel inside one xz stream that compresses them far better together
    than deflate does file by file. RECORD is regenerated, so its hashes match the stripped files.
    Returns the bytes of content saved (files dropped or stripped).
    """
    saved = 0
    tmp = path.with_suffix(".tmp")
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as dst:
        infos = [i for i in src.infolist() if not i.is_dir()]
        record = next(i.filename for i in infos if i.filename.endswith(".dist-info/RECORD"))
        lines: list[str] = []
        for info in infos:
            if info.filename == record:
                continue
            if trim is not None and not trim.keeps(info.filename):
                saved += info.file_size
                continue
            data = prepare(src.read(info))
            saved += info.file_size - len(data)
            dst.writestr(info, data, compress_type=zipfile.ZIP_STORED)
            lines.append(record_line(info.filename, data))
        lines.append(f"{record},,")
        dst.writestr(src.getinfo(record), "".join(f"{ln}\n" for ln in lines), compress_type=zipfile.ZIP_STORED)
    tmp.replace(path)
    return saved


def write_wheels_archive(wheels: Iterable[Path], dest: Path) -> None:
    """One tar.xz of the (uncompressed) wheels: xz's 64 MiB window finds the redundancy across them."""
    with tarfile.open(dest, "w:xz", preset=9 | lzma.PRESET_EXTREME) as tar:
        for whl in sorted(wheels):
            tar.add(whl, arcname=f"wheels/{whl.name}")


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


def icu_stub_source(symbol: str) -> str:
    """C source of an empty ICU common-data package named `symbol` (`icudt70_dat`), as ICU's stubdata builds.

    libicuuc needs the symbol to load; with no data in it, ICU's converters and locales fail when asked
    for, which nothing on the benchmark's path does (libxml2 asks only for non-UTF-8 XML documents).
    """
    return f"""/* ICU stubdata (icu4c/source/stubdata): header, UDataInfo "ToCP" 1.0, an empty table of contents. */
typedef struct {{
    unsigned short headerSize;
    unsigned char magic1, magic2;
    struct {{
        unsigned short size, reservedWord;
        unsigned char isBigEndian, charsetFamily, sizeofUChar, reservedByte;
        unsigned char dataFormat[4], formatVersion[4], dataVersion[4];
    }} info;
    char padding[8];
    unsigned int count, reserved;
    struct {{ unsigned int nameOffset, dataOffset; }} toc[1];
}} Header;
__attribute__((visibility("default"))) const Header {symbol} = {{
    32, 0xda, 0x27, {{20, 0, 0, 0, 2, 0, {{0x54, 0x6f, 0x43, 0x50}}, {{1, 0, 0, 0}}, {{0, 0, 0, 0}}}}, {{0}}, 0, 0,
    {{{{0, 0}}}}}};
"""


def icu_data_symbol(lib: Path) -> str | None:
    """The `icudtNN_dat` symbol a libicudata exports (its name carries ICU's major version)."""
    out = subprocess.run(["readelf", "--dyn-syms", "-W", str(lib)], capture_output=True, text=True, check=True).stdout
    found = re.search(r"\b(icudt\d+[lb]?_dat)\b", out)
    return found.group(1) if found else None


def build_icu_stub(real: Path, workdir: Path) -> Path | None:
    """A stand-in for `real` (libicudata, 28 MB) under the same file name and SONAME; None without a compiler."""
    cc = shutil.which("cc") or shutil.which("gcc")
    symbol = icu_data_symbol(real)
    if cc is None or symbol is None:
        print(f"gpu_bundle: {real.name} travels whole (no C compiler here, or no ICU data symbol in it)")
        return None
    source = workdir / "icudata_stub.c"
    source.write_text(icu_stub_source(symbol))
    stub = workdir / real.name
    subprocess.run(
        [cc, "-shared", "-fPIC", "-O2", "-nostdlib", f"-Wl,-soname,{real.name}", "-o", str(stub), str(source)],
        check=True,
    )
    return stub


def replace_icu_data(members: list[tuple[Path, str]], workdir: Path) -> list[tuple[Path, str]]:
    """`members` with libicudata's source swapped for the stub when one can be built here."""
    out = []
    for source, name in members:
        if Path(name).name.startswith("libicudata") and (stub := build_icu_stub(source, workdir)) is not None:
            source = stub
        out.append((source, name))
    return out


def _add_file(tar: tarfile.TarFile, source: Path, arcname: str, prepare: Callable[[bytes], bytes]) -> None:
    data = prepare(source.resolve().read_bytes())
    info = tar.gettarinfo(str(source.resolve()), arcname=arcname)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def write_triton_archive(
    members: list[tuple[Path, str]],
    extras: list[tuple[Path, str]],
    dest: Path,
    prepare: Callable[[bytes], bytes] = strip_elf,
) -> None:
    """One tar.xz: the server (`site/`), the libpython fallback and wrk (`extra/`), each file through `prepare`."""
    with tarfile.open(dest, "w:xz", preset=9 | lzma.PRESET_EXTREME) as tar:
        for source, name in members:
            _add_file(tar, source, f"site/{name}", prepare)
        init = PYTRITON_INIT.encode()
        info = tarfile.TarInfo("site/pytriton/__init__.py")
        info.size = len(init)
        info.mode = 0o644
        tar.addfile(info, io.BytesIO(init))
        for source, name in extras:
            _add_file(tar, source, f"extra/{name}", prepare)


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
    return sum(path.stat().st_size for path in repository_files(ROOT) if path.is_file())


def site_packages() -> Path:
    import pytriton  # only here, on the build machine: the installed wheel is the source

    return Path(pytriton.__file__).resolve().parents[1]


def build(out: Path, python312: str, with_libpython: bool = True) -> dict:
    """Download, trim, strip and pack everything into `out`; returns the manifest (also written there)."""
    started = time.monotonic()
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    wheel_sizes: dict[str, int] = {}
    with tempfile.TemporaryDirectory() as tmp:
        built, every, wheels = Path(tmp) / "built", Path(tmp) / "all", Path(tmp) / "wheels"
        wheels.mkdir()
        subprocess.run(build_command(python312, built), check=True)
        with (ROOT / "pyproject.toml").open("rb") as f:
            reqs = requirements(tomllib.load(f))
        subprocess.run(download_command(sys.executable, reqs, every, built), check=True)
        for whl in sorted(every.glob("*.whl")):
            if keep_wheel(whl.name):
                shutil.copy2(whl, wheels / whl.name)
        for whl in sorted(wheels.glob("*.whl")):
            saved = repack_wheel(whl, TRIMS.get(wheel_name(whl.name)))
            wheel_sizes[whl.name] = whl.stat().st_size
            if saved > MIB:
                print(f"gpu_bundle: {whl.name}: -{saved / MIB:.1f} MiB (trimmed, stripped)")
        write_wheels_archive(wheels.glob("*.whl"), out / "wheels.tar.xz")
        write_triton_archive(
            replace_icu_data(triton_members(site_packages()), Path(tmp)),
            [*(python312_extras(python312) if with_libpython else []), *wrk_extras()],
            out / "triton.tar.xz",
        )
    files = {str(p.relative_to(out)): p.stat().st_size for p in sorted(out.rglob("*")) if p.is_file()}
    manifest = {
        "files": files,
        **budget_report(files, tree_bytes()),
        "wheels_unpacked_bytes": dict(sorted(wheel_sizes.items(), key=lambda kv: -kv[1])),
        "build_s": round(time.monotonic() - started, 1),
    }
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
        "--no-libpython",
        dest="with_libpython",
        action="store_false",
        help="leave out the stub's fallback libpython3.12.so.1.0 (1.5 MiB packed) when the machine surely has one",
    )
    args = p.parse_args(argv)
    manifest = build(args.out, args.python312, args.with_libpython)
    mib = {k: round(v / MIB, 1) for k, v in manifest.items() if k.endswith("_bytes") and isinstance(v, int)}
    print(f"gpu_bundle: {args.out} in {manifest['build_s']} s; MiB: {mib}")
    if not manifest["fits"]:
        print("gpu_bundle: over budget: the device tool would refuse the carry")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
