"""Archive checks: anything that could escape the target, is not a plain file, is too big, or is not the model file
at the archive's root, is refused."""

from __future__ import annotations

import io
import re
import tarfile
from pathlib import Path

import pytest

from nexusml.core.errors import UnsafeArchive
from nexusml.sync import archive


def make_tar(path: Path, members: list[tarfile.TarInfo], mode: str = "w") -> Path:
    with tarfile.open(path, mode) as tar:
        for info in members:
            data = b"\0" * info.size if info.isfile() else None
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def member(name: str, kind: bytes = tarfile.REGTYPE, size: int = 4, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.size = size if kind == tarfile.REGTYPE else 0
    info.linkname = link
    return info


@pytest.mark.parametrize(
    ("members", "name"),
    [
        pytest.param([member("model.pt")], "model.pt", id="torchscript"),
        pytest.param([member("model.pt2")], "model.pt2", id="torch-export"),
        pytest.param([member("./", tarfile.DIRTYPE), member("./model.pt")], "model.pt", id="tar-of-dot"),
    ],
)
def test_the_model_file_unpacks(tmp_path: Path, members: list[tarfile.TarInfo], name: str) -> None:
    tar = make_tar(tmp_path / "ok.tar", members)
    target = tmp_path / "out"
    target.mkdir()
    archive.unpack(tar, target, max_bytes=1 << 20)
    assert [p.name for p in target.iterdir()] == [name]
    assert (target / name).read_bytes() == b"\0" * 4


@pytest.mark.parametrize(
    ("members", "message"),
    [
        pytest.param([member("../evil")], "escape", id="dot-dot"),
        pytest.param([member("a/../../evil")], "escape", id="nested-dot-dot"),
        pytest.param([member("/etc/evil")], "escape", id="absolute"),
        pytest.param([member("link", tarfile.SYMTYPE, link="/etc/passwd")], "symlink", id="symlink-out"),
        pytest.param([member("link", tarfile.SYMTYPE, link="model.pt")], "symlink", id="symlink-in"),
        pytest.param(
            [member("model.pt"), member("hard", tarfile.LNKTYPE, link="model.pt")], "hard link", id="hardlink"
        ),
        pytest.param([member("null", tarfile.CHRTYPE)], "device", id="char-device"),
        pytest.param([member("disk", tarfile.BLKTYPE)], "device", id="block-device"),
        pytest.param([member("pipe", tarfile.FIFOTYPE)], "fifo", id="fifo"),
        pytest.param([member("model.pt", size=5000)], "MAX_ARTIFACT_BYTES", id="over-cap"),
        pytest.param(
            [member("model.pt", size=600), member("model.pt", size=600)], "MAX_ARTIFACT_BYTES", id="sum-over-cap"
        ),
        pytest.param([member("model.pt"), member("__init__.py")], "'__init__.py' is not allowed", id="python-beside"),
        pytest.param([member("__init__.py"), member("model.pt")], "'__init__.py' is not allowed", id="python-first"),
        pytest.param([member("model.pt"), member("./model.py")], "'./model.py' is not allowed", id="dot-slash-python"),
        pytest.param([member("model.pt"), member("labels.txt")], "'labels.txt' is not allowed", id="data-beside"),
        pytest.param([member("sub/model.pt")], "'sub/model.pt' is not allowed", id="model-in-a-folder"),
        pytest.param([member("pkg", tarfile.DIRTYPE)], "'pkg' is not allowed", id="folder"),
        pytest.param([member("model.pt", tarfile.DIRTYPE)], "'model.pt' is not allowed", id="model-name-as-folder"),
        pytest.param(
            [member("model.pt"), member("pkg/__init__.py")], "'pkg/__init__.py' is not allowed", id="package-beside"
        ),
    ],
)
def test_unsafe_members_are_refused(tmp_path: Path, members: list[tarfile.TarInfo], message: str) -> None:
    tar = make_tar(tmp_path / "bad.tar", members)
    target = tmp_path / "out"
    target.mkdir()
    with pytest.raises(UnsafeArchive, match=re.escape(message)):
        archive.unpack(tar, target, max_bytes=1000)
    assert list(target.iterdir()) == []


def test_decompression_bomb_is_refused_before_writing(tmp_path: Path) -> None:
    """64 MiB of zeros compress to a few KiB; the cap is checked from headers, not after writing."""
    tar = make_tar(tmp_path / "bomb.tar.gz", [member("model.pt", size=64 << 20)], mode="w:gz")
    assert tar.stat().st_size < 1 << 20
    target = tmp_path / "out"
    target.mkdir()
    with pytest.raises(UnsafeArchive, match="MAX_ARTIFACT_BYTES"):
        archive.unpack(tar, target, max_bytes=1 << 20)
    assert list(target.iterdir()) == []


def test_not_a_tar(tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    path.write_bytes(b"PK\x03\x04 not a tar")
    with pytest.raises(UnsafeArchive, match="not a readable tar"):
        archive.unpack(path, tmp_path, max_bytes=1000)


def test_a_caller_that_knows_the_format_allows_its_file_only(tmp_path: Path) -> None:
    tar = make_tar(tmp_path / "other.tar", [member("model.pt2")])
    target = tmp_path / "out"
    target.mkdir()
    with pytest.raises(
        UnsafeArchive, match=re.escape("'model.pt2' is not allowed; an archive holds only model.pt at its root")
    ):
        archive.unpack(tar, target, max_bytes=1000, allowed={"model.pt"})
    assert list(target.iterdir()) == []
