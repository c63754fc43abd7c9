"""Self-healing for a Triton whose model is READY but no longer answers: one probe, one watchdog.

Why: Triton 2.51 keeps a Python-backend model READY after its stub process died and never restarts the stub,
so every inference fails ("Stub process is not healthy") while Triton's own health endpoints say all is well.
Only an inference notices, and only a Triton restart heals it. Three supervisors use this one file:

- `nexus up` (`nexusml.command.stack`) runs a `Watchdog` that calls `probe` every few seconds and restarts Triton
  after K consecutive failures, with an exponential back-off between restarts so that a model broken for
  good is not restarted in a tight loop;
- compose mounts this file into Triton's container as its healthcheck (`python3 watchdog.py ... --end-after K`):
  Docker and podman never restart an *unhealthy* container, only an exited one, so after K consecutive
  failures the check ends tritonserver with SIGTERM and `restart: unless-stopped` starts it again;
- the Helm chart ships it in a ConfigMap as Triton's exec startup and liveness probe; the kubelet restarts the
  container and its CrashLoopBackOff is the back-off.

Standard library only. Of the project it imports only `nexusml.core.probe` (the probe's shape and which
models are served; standard library too), which the standalone copy that compose and the chart run in NVIDIA's
Triton image carries inlined (`make chart-files` generates it). Settings come from the command line (or, in
`nexus up`, from the stack's settings), never the environment.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import signal
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path

# --- inlined from nexusml/core/probe.py by `make chart-files` ---

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


log = logging.getLogger(__name__)

# Bytes per element of each Triton datatype in the binary tensor extension. BYTES elements are a 4-byte length
# prefix plus the bytes, so zeros are empty strings.
ELEMENT_BYTES = {
    "BOOL": 1,
    "INT8": 1,
    "UINT8": 1,
    "INT16": 2,
    "UINT16": 2,
    "FP16": 2,
    "BF16": 2,
    "INT32": 4,
    "UINT32": 4,
    "FP32": 4,
    "INT64": 8,
    "UINT64": 8,
    "FP64": 8,
    "BYTES": 4,
}


class ProbeFailed(Exception):
    """The model does not answer; the message is the one-line cause."""


class Answered(ProbeFailed):
    """Triton answered with an HTTP error `status` (it is up: the failure is the request's, or the model's)."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class NotLoaded(ProbeFailed):
    """The model is not ready: loading, or it failed to load. Not what a restart heals (a dead stub leaves its
    model READY), and with many models one that never loads must not get the others' Triton restarted."""


class _Busy(Exception):
    """Triton refused for load (HTTP 503: queue full): a busy model, not a broken one."""


def _call(url: str, deadline: float, body: bytes | None = None, headers: dict[str, str] | None = None) -> bytes:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise ProbeFailed(f"no answer within the probe's timeout ({url})")
    request = urllib.request.Request(url, data=body, headers=headers or {}, method="POST" if body else "GET")
    try:
        with urllib.request.urlopen(request, timeout=remaining) as response:  # Triton's own URL, from the caller
            return response.read()
    except urllib.error.HTTPError as err:
        if err.code == 503:
            raise _Busy from err
        text = err.read(300).decode(errors="replace").strip()
        raise Answered(f"HTTP {err.code} from {url}: {text}", err.code) from err
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise ProbeFailed(f"{url}: {reason}") from err


def inference_request(config: dict) -> tuple[bytes, bytes]:
    """Header and body of an inference of zeros for the model `config` (Triton's JSON model config).

    Shaped as every probe is (`probe_shape`). Inputs travel as binary data, which every datatype (FP16 and
    BYTES included) accepts; outputs come back binary, so the answer stays small.
    """
    max_batch = int(config.get("max_batch_size", 0))
    preferred = (config.get("dynamic_batching") or {}).get("preferred_batch_size", [])
    inputs, body = [], b""
    for spec in config.get("input", []):
        if spec.get("optional"):
            continue
        datatype = spec["data_type"].removeprefix("TYPE_").replace("STRING", "BYTES")
        shape = list(probe_shape(spec.get("dims", []), max_batch, preferred))
        size = math.prod(shape) * ELEMENT_BYTES[datatype]
        inputs.append(
            {"name": spec["name"], "shape": shape, "datatype": datatype, "parameters": {"binary_data_size": size}}
        )
        body += bytes(size)
    outputs = [{"name": spec["name"], "parameters": {"binary_data": True}} for spec in config.get("output", [])]
    header = json.dumps({"inputs": inputs, "outputs": outputs}).encode()
    return header, header + body


def probe(http_url: str, model: str, timeout_s: float, loaded_only: bool = False) -> str | None:
    """None when `model` answers an inference (or Triton says it is busy); else the cause, in one line.

    Asks readiness, then the model config (not a restricted API), then one inference of zeros; the whole
    probe is bounded by `timeout_s`. With `loaded_only`, a model that is not ready passes (`NotLoaded`).
    """
    deadline = time.monotonic() + timeout_s
    base = f"{http_url.rstrip('/')}/v2/models/{urllib.parse.quote(model, safe='')}"
    try:
        try:
            _call(f"{base}/ready", deadline)
        except Answered as err:  # Triton is up and says the model is not ready (400): loading, or failed to load
            failure = NotLoaded if 400 <= err.status < 500 else ProbeFailed
            raise failure(f"model {model} is not ready: {err}") from err
        except ProbeFailed as err:  # no answer at all (refused, timed out): Triton is down or hung, never "not loaded"
            raise ProbeFailed(f"model {model} is not ready: {err}") from err
        config = json.loads(_call(f"{base}/config", deadline))
        header, body = inference_request(config)
        headers = {"Inference-Header-Content-Length": str(len(header)), "Content-Type": "application/octet-stream"}
        try:
            _call(f"{base}/infer", deadline, body, headers)
        except ProbeFailed as err:
            raise ProbeFailed(f"model {model} is ready but does not answer an inference: {err}") from err
    except _Busy:
        return None
    except NotLoaded as err:
        return None if loaded_only else str(err)
    except (ProbeFailed, ValueError, KeyError) as err:  # ValueError/KeyError: a config we cannot read
        return str(err) if isinstance(err, ProbeFailed) else f"model {model}: unreadable config: {err!r}"
    return None


class Watchdog:
    """Restarts Triton after `failures` consecutive failed probes, with exponential back-off between restarts.

    `poll()` is called often by its owner's loop (never from another thread, so a restart cannot race the
    owner's view of the process); it probes every `interval_s`. The first restart happens as soon as the
    failures are counted; each later one waits at least the current back-off after the previous restart
    (`backoff_s`, doubling up to `backoff_max_s`), so a model broken for good costs one restart per back-off
    period, not a tight loop. Probes passing for `backoff_max_s` in a row reset the back-off: a stub that dies
    once a week is restarted at once every time.
    """

    def __init__(
        self,
        check: Callable[[], str | None],
        restart: Callable[[str], None],
        *,
        failures: int,
        interval_s: float,
        backoff_s: float,
        backoff_max_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.check = check
        self.restart = restart
        self.failures = failures
        self.interval_s = interval_s
        self.backoff_s = backoff_s
        self.backoff_max_s = backoff_max_s
        self.clock = clock
        self.restarts = 0  # the counter the log lines carry
        self.last_cause: str | None = None
        self._failed = 0
        self._due = clock() + interval_s
        self._delay = backoff_s
        self._not_before = -math.inf
        self._healthy_since: float | None = None
        self._held = False

    def poll(self) -> None:
        now = self.clock()
        if now < self._due:
            return
        self._due = now + self.interval_s
        cause = self.check()
        if cause is None:
            if self._failed:
                log.info("watchdog: the model answers again after %d failed probe(s)", self._failed)
            self._failed, self._held = 0, False
            self._healthy_since = now if self._healthy_since is None else self._healthy_since
            if now - self._healthy_since >= self.backoff_max_s:
                self._delay = self.backoff_s
            return
        self._healthy_since = None
        self._failed += 1
        self.last_cause = cause
        if self._failed <= self.failures:  # then one line while held back, not one per probe
            log.warning("watchdog: probe failed (%d of %d before a restart): %s", self._failed, self.failures, cause)
        if self._failed < self.failures:
            return
        if now < self._not_before:
            if not self._held:
                log.error(
                    "watchdog: Triton restart %d held back %.0f s (back-off: the model failed again after restart %d)",
                    self.restarts + 1,
                    self._not_before - now,
                    self.restarts,
                )
                self._held = True
            return
        self.restarts += 1
        log.error(
            "watchdog: restarting Triton (restart %d): %d consecutive probes failed: %s",
            self.restarts,
            self._failed,
            cause,
        )
        self.restart(cause)
        self._failed, self._held = 0, False
        after = self.clock()
        self._not_before = after + self._delay
        self._delay = min(self._delay * 2, self.backoff_max_s)
        self._due = after + self.interval_s


# --- container healthcheck / probe ---------------------------------------------------------------------------


def _process_named(name: str) -> tuple[int, int] | None:
    """(pid, start time in clock ticks since boot) of the process whose command name is `name`, in this
    container's PID namespace; None when there is none."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if (entry / "comm").read_text().strip() == name:
                stat = (entry / "stat").read_text()
                return int(entry.name), int(stat.rsplit(")", 1)[1].split()[19])
        except (OSError, IndexError, ValueError):
            continue  # it ended while we looked
    return None


def _end_after(cause: str | None, state_file: Path, limit: int, target: str) -> None:
    """Count consecutive failures in `state_file`; at `limit`, SIGTERM `target` so the engine restarts it.

    Armed only once the current `target` process has passed a probe: a model still loading (or one that never
    loads) is left to the engine's start period, never killed in a loop. The count belongs to one `target`
    process (its start time), so a restarted server starts from zero.
    """
    found = _process_named(target)
    if found is None:
        return
    pid, started = found
    try:
        state = json.loads(state_file.read_text())
    except (OSError, ValueError):
        state = {}
    if state.get("started") != started:
        state = {"started": started, "armed": False, "failed": 0}
    if cause is None:
        state.update(armed=True, failed=0)
    elif state["armed"]:
        state["failed"] += 1
        if state["failed"] >= limit:
            print(f"triton-watchdog: ending {target} (pid {pid}) after {limit} failed probes: {cause}", file=sys.stderr)
            os.kill(pid, signal.SIGTERM)
            state.update(armed=False, failed=0)
    state_file.write_text(json.dumps(state))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Probe Triton's models with one inference each; exit 0 if all answer.")
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="Triton's HTTP URL")
    parser.add_argument("--model", action="append", default=[], help="model to probe (repeatable)")
    parser.add_argument(
        "--repository",
        type=Path,
        help="probe every model of this repository that is loaded (no --model): one that failed to load, or is "
        "loading, is not a failure",
    )
    parser.add_argument("--timeout", type=float, default=4.0, help="seconds the whole probe may take")
    parser.add_argument("--end-after", type=int, default=0, help="SIGTERM --target after this many failures")
    parser.add_argument("--target", default="tritonserver", help="command name of the process to end")
    parser.add_argument("--state", type=Path, default=Path("/tmp/nexus-triton-watchdog.json"), help="failure count")
    args = parser.parse_args(argv)
    models = args.model or (served_models(args.repository) if args.repository else [])
    if not models:
        print("unhealthy: no model to probe (--model or a --repository with models)", file=sys.stderr)
        return 1
    deadline = time.monotonic() + args.timeout
    cause = None
    for model in models:
        cause = probe(args.url, model, max(deadline - time.monotonic(), 0.01), loaded_only=not args.model)
        if cause is not None:
            break
    if args.end_after > 0:
        _end_after(cause, args.state, args.end_after, args.target)
    if cause is not None:
        print(f"unhealthy: {cause}", file=sys.stderr)
        return 1
    print(f"healthy: {', '.join(models)} answered")
    return 0


if __name__ == "__main__":
    sys.exit(main())
