"""The budget's units, and the stubs' memory reports as the watcher reads them."""

from __future__ import annotations

import json
import types
from pathlib import Path

import pytest

from nexusml.core.memory import Report, mib, parse_bytes, read_reports, report_dir


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        pytest.param("1048576", 2**20, id="plain-bytes"),
        pytest.param("1500MiB", 1500 * 2**20, id="mebibytes"),
        pytest.param("8GiB", 8 * 2**30, id="gibibytes"),
        pytest.param("2G", 2 * 10**9, id="gigabytes"),
        pytest.param("512M", 512 * 10**6, id="megabytes"),
        pytest.param("1.5GiB", 3 * 2**29, id="fraction"),
        pytest.param(" 64 kib ", 64 * 2**10, id="spaces-and-case"),
        pytest.param("3TB", 3 * 10**12, id="b-suffix"),
        pytest.param("1Ti", 2**40, id="no-b"),
    ],
)
def test_parse_bytes(raw: str, expected: int) -> None:
    assert parse_bytes(raw) == expected


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        pytest.param("", "expected bytes", id="empty"),
        pytest.param("lots", "expected bytes", id="words"),
        pytest.param("8 GB RAM", "expected bytes", id="trailing-text"),
        pytest.param("-1GiB", "expected bytes", id="negative"),
        pytest.param("1PiB", "expected bytes", id="unknown-unit"),
        pytest.param("0", "more than 0", id="zero"),
        pytest.param("0.1", "more than 0", id="under-a-byte"),
    ],
)
def test_parse_bytes_refuses(raw: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_bytes(raw)


@pytest.mark.parametrize(
    ("count", "expected"),
    [
        pytest.param(0, "0.0 MiB", id="zero"),
        pytest.param(3 * 2**19, "1.5 MiB", id="fraction"),
        pytest.param(1500 * 2**20, "1500.0 MiB", id="budget"),
    ],
)
def test_mib(count: int, expected: str) -> None:
    assert mib(count) == expected


@pytest.mark.parametrize(
    "repository",
    [
        pytest.param("model_repository", id="relative"),
        pytest.param("/models", id="absolute"),
        pytest.param("a/../b/./model repository", id="dots-and-space"),
    ],
)
def test_the_backend_names_the_report_directory_by_the_same_rule(
    repository: str, backend: types.ModuleType, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The stubs write where the watcher reads, though the backend cannot import this module."""
    monkeypatch.chdir(tmp_path)
    for root in (Path("/dev/shm"), tmp_path):
        assert backend.report_dir(Path(repository), root) == report_dir(Path(repository), root)
    assert backend.report_dir(Path(repository)) == report_dir(Path(repository))


def test_each_repository_has_its_own_report_directory(tmp_path: Path) -> None:
    directories = {report_dir(tmp_path / name) for name in ("one", "two")}
    assert len(directories) == 2
    assert report_dir(tmp_path / "one" / ".." / "one") == report_dir(tmp_path / "one")
    assert all(d.parent == Path("/dev/shm/nexus-memory") and len(d.name) == 16 for d in directories)


def _report(model: str, instance: str, host_bytes: int) -> Report:
    return Report(model, "1", instance, 100, host_bytes, host_bytes // 2, 0, 1.5)


def test_read_reports_groups_by_model_and_skips_what_is_no_report(tmp_path: Path) -> None:
    wanted = [_report("alpha", "alpha_0_0", 10), _report("alpha", "alpha_0_1", 20), _report("beta", "beta_0_0", 30)]
    for report in wanted:
        (tmp_path / f"{report.model}@{report.instance}.json").write_text(json.dumps(report.__dict__))
    (tmp_path / "gamma@gamma_0_0.json").write_text('{"model": "gamma", "version": "1", "inst')  # half written
    (tmp_path / "delta@delta_0_0.json").write_bytes(b"\x00\xff garbage")
    (tmp_path / "epsilon@epsilon_0_0.json").write_text('{"model": "epsilon"}')  # fields missing
    (tmp_path / "zeta@zeta_0_0.json").write_text("[1, 2]")
    (tmp_path / ".alpha@alpha_0_2.json.tmp").write_text(json.dumps(_report("alpha", "alpha_0_2", 40).__dict__))
    assert read_reports(tmp_path) == {"alpha": wanted[:2], "beta": wanted[2:]}


def test_read_reports_of_a_missing_directory_is_empty(tmp_path: Path) -> None:
    assert read_reports(tmp_path / "absent") == {}
