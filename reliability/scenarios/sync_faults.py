"""Sync faults beyond the harness's `SYNC_FAILURES` table (`nexusml.testing.artifacts`), whose helpers
(run_sync, snapshot, put, tar_of, with_artifact, the full-disk limit) are reused here.

Each case runs `nexus sync` as a subprocess against a repository
already holding version 1, and checks: the exit code names the cause; the repository holds the old version
or the new one, never a mix (on failure: byte-for-byte as before; on success: the new version verifies);
no temporary file (`.staging-*`, `.config-*`) is left behind. S3 faults go through `CuttingRelay`, a TCP
relay in front of moto that cuts the response stream after N bytes.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import tarfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from nexusml.testing.artifacts import FULL_DISK_BYTES, SYNC_FAILURES, put, run_sync, snapshot, tar_of, with_artifact
from nexusml.testing.models import TEST_BUCKET, sync_into
from nexusml.testing.servers import start_local_s3
from reliability.bed import Bed
from reliability.relay import CuttingRelay
from reliability.result import ScenarioResult

ARTIFACT_BYTES = 2 << 20
CUT_AFTER = 256 << 10


@dataclass(frozen=True)
class Case:
    id: str
    exit_code: int
    message: str
    build: Callable[[Bed, str], tuple[Any, dict[str, str], CuttingRelay | None, int | None]]


def _payload(seed: str) -> bytes:
    """Incompressible bytes (so the relay really streams them), deterministic per seed."""
    out, block = bytearray(), seed.encode()
    while len(out) < ARTIFACT_BYTES:
        block = hashlib.sha256(block).digest()
        out += block * 64
    return bytes(out[:ARTIFACT_BYTES])


def _file_meta(bed: Bed, key: str) -> Any:
    uri, sha, size = put(bed.s3_client, key, _payload(key))
    return with_artifact(bed.demo_model.meta, uri=uri, sha256=sha, size=size)


def _moto() -> Callable[[Bed], tuple[str, int]]:
    def address(bed: Bed) -> tuple[str, int]:
        parts = urlsplit(bed.s3_env["AWS_ENDPOINT_URL"])
        return parts.hostname or "127.0.0.1", parts.port or 80

    return address


def _relayed(bed: Bed, relay: CuttingRelay, **extra: str) -> dict[str, str]:
    return {"AWS_ENDPOINT_URL": relay.endpoint_url, "S3_MAX_ATTEMPTS": "3", "S3_READ_TIMEOUT_S": "5", **extra}


def _cut_once(bed: Bed, key: str) -> Any:
    relay = CuttingRelay(_moto()(bed), cut_after=CUT_AFTER, cuts=1)
    return _file_meta(bed, key), _relayed(bed, relay), relay, None


def _cut_always(bed: Bed, key: str) -> Any:
    relay = CuttingRelay(_moto()(bed), cut_after=CUT_AFTER, cuts=None)
    return _file_meta(bed, key), _relayed(bed, relay), relay, None


def _replace(bed: Bed, key: str) -> Callable[[], None]:
    done: list[bool] = []

    def replace() -> None:
        if not done:
            done.append(True)
            bed.s3_client.put_object(Bucket=TEST_BUCKET, Key=key, Body=_payload(key + "-v2"))

    return replace


def _replaced_before_get(bed: Bed, key: str) -> Any:
    replace = _replace(bed, key)
    relay = CuttingRelay(_moto()(bed), on_request=lambda line: replace() if line.startswith(b"GET ") else None)
    return _file_meta(bed, key), _relayed(bed, relay), relay, None


def _replaced_after_cut(bed: Bed, key: str) -> Any:
    relay = CuttingRelay(_moto()(bed), cut_after=CUT_AFTER, cuts=1, on_cut=_replace(bed, key))
    return _file_meta(bed, key), _relayed(bed, relay), relay, None


def _special(kind: bytes) -> Callable[[Bed, str], Any]:
    def build(bed: Bed, key: str) -> Any:
        def add(tar: tarfile.TarFile) -> None:
            data = b"weights"
            info = tarfile.TarInfo("model.pt")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
            special = tarfile.TarInfo("extra")
            special.type = kind
            if kind == tarfile.LNKTYPE:
                special.linkname = "model.pt"
            special.devmajor, special.devminor = 1, 3  # /dev/null
            tar.addfile(special)

        uri, sha, size = put(bed.s3_client, key, tar_of(add))
        return with_artifact(bed.demo_model.meta, uri=uri, sha256=sha, size=size, packaging="tar"), {}, None, None

    return build


def _bomb(bed: Bed, key: str) -> Any:
    """64 MiB of zeros that gzip to ~64 KiB: refused from the tar headers before anything is written."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        info = tarfile.TarInfo("model.pt")
        info.size = 64 << 20
        tar.addfile(info, io.BytesIO(bytes(info.size)))
    uri, sha, size = put(bed.s3_client, key, gzip.compress(raw.getvalue()))
    meta = with_artifact(bed.demo_model.meta, uri=uri, sha256=sha, size=size, packaging="tar")
    return meta, {"MAX_ARTIFACT_BYTES": str(8 << 20)}, None, None


def _full_disk(bed: Bed, key: str) -> Any:
    return _file_meta(bed, key), {}, None, FULL_DISK_BYTES


CASES = [
    Case("s3-cut-once-resumes", 0, "", _cut_once),
    Case("s3-cut-every-time", 6, "download broke", _cut_always),
    Case("object-replaced-between-head-and-get", 7, "changed while downloading", _replaced_before_get),
    Case("object-replaced-between-cut-and-resume", 7, "changed while downloading", _replaced_after_cut),
    Case("archive-char-device", 8, "device file", _special(tarfile.CHRTYPE)),
    Case("archive-block-device", 8, "device file", _special(tarfile.BLKTYPE)),
    Case("archive-fifo", 8, "fifo", _special(tarfile.FIFOTYPE)),
    Case("archive-hard-link", 8, "hard link", _special(tarfile.LNKTYPE)),
    Case("decompression-bomb", 8, "MAX_ARTIFACT_BYTES", _bomb),
    Case("disk-full", 9, "File too large", _full_disk),
]
CASE_IDS = [case.id for case in CASES]


def leftovers(repository: Path) -> list[str]:
    """Temporary files a failed sync must not leave: staging folders and config temp files."""
    return sorted(
        str(p.relative_to(repository))
        for p in repository.rglob("*")
        if p.name.startswith((".staging-", ".config-")) or p.name.endswith(".tmp")
    )


def fresh_repository(bed: Bed, name: str) -> dict[str, str]:
    """A repository already holding the demo model's version 1, and the environment to sync into it."""
    workdir = bed.path(f"sync-{name}")
    env = {**bed.s3_env, "MODEL_REPOSITORY": str(workdir / "model_repository")}
    sync_into(bed.demo_model.meta, env, workdir / "model_repository")
    return env


def run_case(bed: Bed, case: Case, result: ScenarioResult) -> None:
    env = fresh_repository(bed, case.id)
    repository = Path(env["MODEL_REPOSITORY"])
    workdir = repository.parent
    before = snapshot(repository)
    meta, extra, relay, max_file_bytes = case.build(bed, f"faults/{case.id}/{time.monotonic_ns()}")
    started = time.monotonic()
    if relay is not None:
        with relay:
            completed = run_sync(env, meta, workdir, max_file_bytes=max_file_bytes, **extra)
    else:
        completed = run_sync(env, meta, workdir, max_file_bytes=max_file_bytes, **extra)
    elapsed = time.monotonic() - started
    last = (completed.stderr.strip().splitlines() or [""])[-1]
    left = leftovers(repository)
    after = snapshot(repository)
    version = repository / meta.name / str(meta.version)
    if case.exit_code == 0:
        new_ok = (version / "model.pt").is_file() and hashlib.sha256(
            (version / "model.pt").read_bytes()
        ).hexdigest() == meta.artifact.sha256
        intact = new_ok and all(after.get(k) == v for k, v in before.items() if not k.endswith("config.pbtxt"))
    else:
        intact = after == before
    result.figures[case.id] = {
        "exit": completed.returncode,
        "seconds": round(elapsed, 2),
        "relay_cuts": relay.cut_count if relay else 0,
        "message": last.removeprefix("nexus sync: error: ")[:160],
    }
    result.check(
        f"{case.id}: exit {case.exit_code}",
        completed.returncode == case.exit_code and case.message in (last if case.exit_code else case.message),
        f"exit {completed.returncode}: {last[:200]}",
    )
    result.check(
        f"{case.id}: old or new version, never a mix",
        intact,
        "new version verifies" if case.exit_code == 0 else "repository byte-for-byte as before",
    )
    result.check(f"{case.id}: no temporary files", not left and "Traceback" not in completed.stderr, f"{left}")
    if relay is not None and case.id.startswith("s3-cut"):
        result.check(f"{case.id}: the relay did cut", relay.cut_count >= 1, f"{relay.cut_count} cuts")


def run_existing(bed: Bed, result: ScenarioResult, auth_endpoint: str) -> None:
    """The existing failure table, with the leftover check this suite adds."""
    for failure in SYNC_FAILURES:
        case_id, exit_code = failure.id, failure.exit_code
        env = fresh_repository(bed, f"existing-{case_id}")
        repository = Path(env["MODEL_REPOSITORY"])
        before = snapshot(repository)
        meta, extra = failure.prepare(bed.demo_model.meta, bed.s3_client, {"auth_endpoint": auth_endpoint})
        completed = run_sync(env, meta, repository.parent, **extra)
        left = leftovers(repository)
        result.figures[f"existing/{case_id}"] = {"exit": completed.returncode}
        result.check(
            f"existing/{case_id}: exit {exit_code}, untouched, no temp files",
            completed.returncode == exit_code and snapshot(repository) == before and not left,
            f"exit {completed.returncode}, leftovers {left}",
        )


@dataclass(frozen=True)
class Config:
    include_existing: bool = False

    @classmethod
    def long(cls, duration_s: float) -> Config:
        return cls(include_existing=True)


def run(bed: Bed, config: Config = Config()) -> ScenarioResult:
    result = ScenarioResult("sync-faults", settings=config.__dict__.copy())
    for case in CASES:
        run_case(bed, case, result)
    if config.include_existing:
        # The access-denied case needs an S3 endpoint that checks credentials, as in test_pipeline's `auth_s3` fixture.
        auth = start_local_s3(bed.path("auth-s3") / "moto.log", INITIAL_NO_AUTH_ACTION_COUNT="0")
        try:
            run_existing(bed, result, auth.endpoint_url)
        finally:
            auth.stop()
    os.sync()
    return result
