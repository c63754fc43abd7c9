"""The probe inference and the candidate's name, one rule each for every process that needs them.

Three callers send Triton an inference of zeros to learn whether a model really answers: the watcher's smoke
test of a new version (`nexusml.updates.swap`), the proxy's readiness check, and Triton's watchdog. They build
their requests differently (gRPC arrays, the proxy's client, raw HTTP), but the shape comes from here.

Standard library only: the watchdog runs where nothing else of ours is installed (Triton's own container), so
its standalone copy carries this module inlined (`make chart-files`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

# The model the watcher loads to try a new version before users get it; not served, so never probed.
CANDIDATE_SUFFIX = "__candidate"


def candidate_name(name: str) -> str:
    return f"{name}{CANDIDATE_SUFFIX}"


def served_models(repository: Path) -> list[str]:
    """The models of a repository folder that Triton serves to users: those with a config, candidates left out."""
    return sorted(
        p.parent.name for p in repository.glob("*/config.pbtxt") if not p.parent.name.endswith(CANDIDATE_SUFFIX)
    )


def probe_rows(max_batch_size: int, preferred: Sequence[int]) -> int:
    """Rows of a probe: the smallest preferred batch size that fits, else one.

    Triton's dynamic batcher runs a batch of a preferred size at once; a single row it would hold for its
    queue delay, which a probe with a short timeout would take for a hung model.
    """
    return min([int(n) for n in preferred if int(n) <= max_batch_size] or [1])


def probe_shape(dims: Sequence[int], max_batch_size: int, preferred: Sequence[int]) -> tuple[int, ...]:
    """The shape of one input of a probe: the batch dimension (when the model has one) of `probe_rows`, then
    `dims` with each variable dimension (-1) given length 1."""
    batch = (probe_rows(max_batch_size, preferred),) if max_batch_size > 0 else ()
    return batch + tuple(max(int(d), 1) for d in dims)


def not_loaded(index: list[dict]) -> dict[str, str]:
    """The models of Triton's repository index (either protocol's JSON form) it could not load, each with the first
    line of its reason (a Python backend's failure carries the stub's traceback after it); candidates left out."""
    return {
        str(entry.get("name")): (str(entry.get("reason") or "").strip() or "not loaded").splitlines()[0]
        for entry in index
        if entry.get("state") == "UNAVAILABLE" and not str(entry.get("name")).endswith(CANDIDATE_SUFFIX)
    }
