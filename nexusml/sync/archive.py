"""Unpacking tar artifacts without trusting them.

Every member is checked before anything is written: only regular files (and the archive's root folder),
relative paths that stay inside the target, and a total unpacked size under the cap (the sizes in tar headers
are exactly what extraction writes, so their sum bounds a decompression bomb). `tarfile`'s "data" filter then
applies the same rules again during extraction.

Artifacts are code: the version folder is where Triton's Python stub looks, so an `__init__.py` or a package
beside the model file would be imported and run. An archive may therefore hold the model file alone, at its
root, and nothing else: any other member is refused by name.
"""

from __future__ import annotations

import tarfile
from collections.abc import Collection
from pathlib import Path, PurePosixPath

from nexusml.core.errors import UnsafeArchive
from nexusml.core.metadata import ARTIFACT_FILES

MAX_MEMBERS = 10_000
# The model file of any format; a caller that knows the format passes its one name.
MODEL_FILES = frozenset(ARTIFACT_FILES.values())


def _kind(member: tarfile.TarInfo) -> str:
    if member.issym():
        return "symlink"
    if member.islnk():
        return "hard link"
    if member.ischr() or member.isblk():
        return "device file"
    if member.isfifo():
        return "fifo"
    return "special file"


def _check_member(member: tarfile.TarInfo, allowed: Collection[str]) -> None:
    path = PurePosixPath(member.name)
    if path.is_absolute() or ".." in path.parts:
        raise UnsafeArchive(f"archive member {member.name!r} would escape the target folder")
    if not (member.isfile() or member.isdir()):
        raise UnsafeArchive(f"archive member {member.name!r} is a {_kind(member)}; only files allowed")
    if member.isdir() and not path.parts:
        return  # "." or "./", as `tar -C folder .` writes: the target itself
    if member.isdir() or len(path.parts) != 1 or path.name not in allowed:
        names = ", ".join(sorted(allowed))
        raise UnsafeArchive(f"archive member {member.name!r} is not allowed; an archive holds only {names} at its root")


def check(archive: Path, max_bytes: int, allowed: Collection[str] = MODEL_FILES) -> None:
    """Raise `UnsafeArchive` for the first member that is not safe to unpack or not in `allowed`."""
    total = 0
    try:
        with tarfile.open(archive, "r:*") as tar:
            for count, member in enumerate(tar, start=1):
                _check_member(member, allowed)
                total += member.size
                if total > max_bytes:
                    raise UnsafeArchive(f"archive unpacks to more than MAX_ARTIFACT_BYTES={max_bytes} bytes")
                if count > MAX_MEMBERS:
                    raise UnsafeArchive(f"archive has more than {MAX_MEMBERS} members")
    except (tarfile.TarError, EOFError, OSError) as err:
        raise UnsafeArchive(f"artifact is not a readable tar archive ({err})") from err


def unpack(archive: Path, target: Path, max_bytes: int, allowed: Collection[str] = MODEL_FILES) -> None:
    """Check every member, then extract into `target` (which must exist)."""
    check(archive, max_bytes, allowed)
    try:
        with tarfile.open(archive, "r:*") as tar:
            tar.extractall(target, filter="data")
    except tarfile.FilterError as err:
        raise UnsafeArchive(f"archive rejected while unpacking ({err})") from err
