"""Generic Triton Python-backend model: batched PyTorch inference on GPU or CPU.

`nexus sync` copies this file into every version folder beside the model file. Everything it needs comes
from the model config Triton passes in (tensor names and dtypes, `parameters`), so one file serves any
model described by `.nexus_meta.json`. It imports only torch, numpy and Triton's own utilities, because it
runs inside Triton's Python stub (in the NGC image, nothing of this project is installed there).

Batching is real: the requests of one `execute` call are grouped by their non-batch shapes, each group is
concatenated into one tensor per input and run in one forward pass, and the results are split back. A
request that cannot be served gets its own error response and the rest are still answered; when a whole
batched forward fails, its requests are retried one by one so one poisonous request fails alone. The rows a
request says are padding (`PADDING_PARAMETER`: the proxy fills a batch up to a preferred size so that Triton runs
it at once) are left out of the forward; their outputs are copies of the last real row's, which is what the forward
makes of the proxy's padding (copies of that row).

Where a batch's time goes is timed per stage and logged when `STAGE_LOG_INTERVAL_S` asks (`StageClock`).
On a GPU, requests are concatenated straight into pinned host buffers that are copied to the device
asynchronously, and `PRECISION` (fp16 or bf16, when the model's metadata allows it) runs the forward in
reduced precision, after checking its outputs against fp32 at load.

Each instance reports what it costs in memory (`MemoryReport`), so that `nexus watch` can keep the loaded models
within MODEL_MEMORY_BUDGET.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import hashlib
import importlib
import itertools
import json
import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import triton_python_backend_utils as pb_utils

Result = TypeVar("Result")


def at_idle_priority(work: Callable[[], Result]) -> Result:
    """`work()`, run in a thread of its own scheduled SCHED_IDLE: on the CPU time the serving models leave.

    A stub's start (torch's import and the weights, about two CPU-seconds) at normal priority takes the CPU from the
    models already serving: on two cores, a hot model's p99 rose x2.6 to x4 whenever another model loaded. An
    unprivileged thread may enter SCHED_IDLE but never leave it, hence a thread for the loading only; inference stays
    on the stub's own thread. The policy yields only within the kernel's scheduling group: Triton's container, or on a
    host without containers the stub's own session at the lowest weight (`own_scheduling_group`); see docs/decisions.md,
    "Residency: an eviction ends ...". Where the kernel refuses it, the work runs at normal priority.
    """
    outcome: list[Any] = []

    def run() -> None:
        with contextlib.suppress(AttributeError, OSError):
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
        try:
            outcome.append((True, work()))
        except BaseException as err:  # re-raised in the caller's thread
            outcome.append((False, err))

    thread = threading.Thread(target=run, name="nexus-load")
    thread.start()
    thread.join()
    succeeded, value = outcome[0]
    if not succeeded:
        raise value
    return value


AUTOGROUP = Path("/proc/self/autogroup")
AUTOGROUP_ENABLED = Path("/proc/sys/kernel/sched_autogroup_enabled")
LOWEST_NICE = 19


def started_by_triton(parent: Path | None = None) -> bool:
    """Is this process a stub of tritonserver's (its parent), rather than a test or a tool importing this file?"""
    try:
        return (parent or Path(f"/proc/{os.getppid()}/comm")).read_text().strip() == "tritonserver"
    except OSError:
        return False


def exit_without_teardown() -> None:
    """End the stub at once, after Python's other exit handlers, skipping its interpreter's teardown.

    A stub finalizes its interpreter once it has answered Triton's finalize and let go of its shared memory, and
    tearing down every module torch imported is seconds of CPU per stub, which Triton waits for one stub after
    another (docs/decisions.md, "A stub ends without its interpreter's teardown"). Registered before torch's import,
    it runs after every handler registered since (last in, first out); handlers registered before it are skipped.
    """
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    with contextlib.suppress(Exception):
        ctypes.CDLL(None).fflush(None)  # C's stdio too: TorchScript's print and libtorch write there
    os._exit(0)


def own_scheduling_group(parent: Path | None = None, enabled: Path = AUTOGROUP_ENABLED) -> bool:
    """Leave Triton's session for one of this stub's own; True when the stub is in one, made here or already by the
    bash that started it (`nexus triton` has it source nexusml/triton/stub_session.sh, which does this before the
    stub's interpreter loads).

    Where processes are in the root CPU cgroup (no container, no systemd unit with a CPU controller: `nexus up`, the
    test bed) and the kernel's autogroups are on, the kernel weighs sessions against each other, whatever the
    priority of their threads. In Triton's session a starting stub takes its full share from the proxy and the
    clients, idle priority or not. In a session of its own, the stub can weigh least while it starts and ends
    (`set_group_nice`), and as much as one session while it serves. Only a stub Triton started leaves, and only where
    autogroups are on: this file is also imported by tests and tools, whose session stays theirs. The cgroup is not
    looked at: in a container the stub leaves too, and its weight there changes nothing (the container's cgroup is
    what the kernel weighs).
    """
    try:
        if enabled.read_text().strip() != "1" or not started_by_triton(parent):
            return False
        if os.getsid(0) != os.getpid():
            os.setsid()
    except OSError:
        return False
    return True


def set_group_nice(
    nice: int, autogroup: Path = AUTOGROUP, tries: int | None = 50, cancel: threading.Event | None = None
) -> bool:
    """This session's weight as the kernel's autogroup nice; True when it was set, False when refused, after
    `tries` (None: until it is set) or once `cancel` is set.

    Anyone may raise the nice to 19 and bring it back to 0 (only a negative one needs privileges). Without
    privileges the kernel takes one change per 100 ms for the whole machine and answers EAGAIN within that time,
    so a change is tried again: stubs start together.
    """
    attempts = itertools.count() if tries is None else range(tries)
    for attempt in attempts:
        if attempt:
            time.sleep(0.11)  # past the kernel's 100 ms
        if cancel is not None and cancel.is_set():
            return False
        try:
            autogroup.write_text(f"{nice}\n")
            return True
        except BlockingIOError:
            continue
        except OSError:
            return False
    return False


def group_nice(autogroup: Path = AUTOGROUP) -> int | None:
    """This session's autogroup nice (`/autogroup-<id> nice <n>`), None when it cannot be read."""
    try:
        return int(autogroup.read_text().split()[-1])
    except (OSError, ValueError, IndexError):
        return None


def restore_group_weight(logger: Any, model: str, ending: threading.Event, autogroup: Path = AUTOGROUP) -> None:
    """The session's nice back to 0 once the stub serves: tried once here, then from a thread if the kernel's rate
    limit refused it (stubs that load together ask within the same 100 ms), so a load never waits for it. A
    stub left at the lowest weight would serve on what every other process leaves, so the thread asks until the
    kernel agrees, and says so in Triton's log past the first tries; it stops once `ending` is set (the stub's
    finalize lowers the weight again)."""
    if not set_group_nice(0, autogroup, tries=1):
        threading.Thread(
            target=_restore_later, args=(logger, model, ending, autogroup), name="nexus-weight", daemon=True
        ).start()


def _restore_later(logger: Any, model: str, ending: threading.Event, autogroup: Path) -> None:
    if set_group_nice(0, autogroup, cancel=ending) or ending.is_set():
        return
    logger.log_warn(f"{model}: its stub still has the lowest CPU weight it started at; asking the kernel again")
    set_group_nice(0, autogroup, None, ending)


def warmup_executions(config: dict[str, Any]) -> int:
    """The `execute` calls Triton's warmup makes before the model is ready: each `model_warmup` sample `count` times,
    once when `count` is 0 (its default); Triton skips a sample without a `batch_size`."""
    return sum(
        max(1, int(sample.get("count") or 0))
        for sample in config.get("model_warmup", ())
        if int(sample.get("batch_size") or 0) > 0
    )


STUB = started_by_triton()
if STUB:
    atexit.register(exit_without_teardown)
OWN_GROUP = STUB and own_scheduling_group()
# Fewer tries than the return to 0: a stub that cannot start low starts at a session's weight rather than late.
LOWERED = OWN_GROUP and (group_nice() == LOWEST_NICE or set_group_nice(LOWEST_NICE, tries=10))
torch = at_idle_priority(lambda: importlib.import_module("torch"))

STAGES = ("inputs", "concatenate", "to_device", "forward", "to_host", "responses")
PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
REPORT_ROOT = Path("/dev/shm/nexus-memory")
SMAPS_ROLLUP = Path("/proc/self/smaps_rollup")
STATM = Path("/proc/self/statm")
# The request parameter naming how many of a request's last rows are padding: `proxy.stacked`'s name, which this
# file cannot import (tests/nexusml/backend/test_model.py holds the two equal).
PADDING_PARAMETER = "nexus_padding_rows"


class StageClock:
    """Seconds spent per stage of a batch, since the instance loaded, logged every `STAGE_LOG_INTERVAL_S`.

    Host stages are timed by the wall clock. On a GPU the copies and the forward are asynchronous, so the
    three device stages are timed by CUDA events recorded between them and read once the outputs are on the
    host, which waits for them anyway: timing adds no synchronisation. The totals go to Triton's log as one
    `nexus_backend_stages model=... pid=... batches=N inputs=S ...` line (cumulative, per instance), not to
    Triton's metrics: custom metrics shared by several instances crash tritonserver 2.51 when the model reloads,
    and every watcher swap reloads it (docs/decisions.md).
    """

    def __init__(self, device: torch.device, labels: str, interval_s: float) -> None:
        self.seconds = dict.fromkeys(STAGES, 0.0)
        self.batches = 0
        self.events = [torch.cuda.Event(enable_timing=True) for _ in range(4)] if device.type == "cuda" else []
        self.labels = labels
        self.interval_s = interval_s
        self.mark = self.logged = time.perf_counter()

    def start(self) -> None:
        self.mark = time.perf_counter()

    def host(self, stage: str) -> None:
        now = time.perf_counter()
        self.seconds[stage] += now - self.mark
        self.mark = now

    def device(self, stage: str) -> None:
        """The end of a device stage: an event on a GPU (after `device_begin`), the wall clock on a CPU."""
        if self.events:
            self.events[STAGES.index(stage) - 1].record()
        else:
            self.host(stage)

    def device_begin(self) -> None:
        """Before the first copy to the device; `device` then records the end of each device stage."""
        if self.events:
            self.events[0].record()

    def device_end(self) -> None:
        """On a GPU, after the outputs reached the host: read the events (all complete by then)."""
        if not self.events:
            return
        self.events[-1].synchronize()
        for stage, (begin, end) in zip(STAGES[2:5], itertools.pairwise(self.events), strict=True):
            self.seconds[stage] += begin.elapsed_time(end) / 1000
        self.mark = time.perf_counter()

    def log(self, force: bool = False) -> None:
        now = time.perf_counter()
        if self.interval_s <= 0 or not (force or now - self.logged >= self.interval_s):
            return
        self.logged = now
        totals = " ".join(f"{stage}={seconds:.6f}" for stage, seconds in self.seconds.items())
        pb_utils.Logger.log_info(f"nexus_backend_stages {self.labels} batches={self.batches} {totals}")


class PinnedStaging:
    """One pinned host buffer per input, reused across batches, that requests are concatenated into.

    A copy to the GPU from ordinary (pageable) memory is synchronous and goes through a staging buffer of
    the driver's; from pinned memory it is one asynchronous DMA, and concatenating into the buffer replaces
    the copy `np.concatenate` makes anyway. A buffer is refilled only once the copies that read it last
    have finished (`copied`, recorded after them).
    """

    def __init__(self) -> None:
        self.buffers: dict[int, torch.Tensor] = {}
        self.copied = torch.cuda.Event()

    def fill(self, index: int, parts: list[np.ndarray]) -> torch.Tensor:
        shape = (sum(part.shape[0] for part in parts), *parts[0].shape[1:])
        size = int(np.prod(shape))
        dtype = torch.from_numpy(np.empty(0, dtype=parts[0].dtype)).dtype
        buffer = self.buffers.get(index)
        if buffer is None or buffer.numel() < size or buffer.dtype != dtype:
            buffer = torch.empty(1 << max(size - 1, 0).bit_length(), dtype=dtype, pin_memory=True)
            self.buffers[index] = buffer
        self.copied.synchronize()
        staged = buffer[:size].view(shape)
        np.concatenate(parts, out=staged.numpy())
        return staged


def report_dir(repository: Path, root: Path = REPORT_ROOT) -> Path:
    """The directory of the memory reports of `repository`'s stubs: `nexusml.core.memory.report_dir`'s rule, which
    this file cannot import (tests/nexusml/core/test_memory.py holds the two equal)."""
    return root / hashlib.sha256(str(repository.resolve()).encode()).hexdigest()[:16]


def own_host_bytes(rollup: Path = SMAPS_ROLLUP, statm: Path = STATM) -> tuple[int, int]:
    """This process's proportional set size (PSS) and private bytes. PSS counts the pages it shares with the other
    stubs (torch's libraries) a share each, so the stubs' figures add up to what they cost together; the private
    pages (no other process maps them) are what ending this stub gives back. RSS for both where the kernel has no
    `smaps_rollup` (before Linux 4.14), which counts the shared pages once per stub."""
    try:
        fields = {}
        for line in rollup.read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in ("Pss", "Private_Clean", "Private_Dirty"):
                fields[key] = int(rest.split()[0]) * 1024
        return fields["Pss"], fields.get("Private_Clean", 0) + fields.get("Private_Dirty", 0)
    except (OSError, ValueError, IndexError, KeyError):
        pass
    rss = int(statm.read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    return rss, rss


class MemoryReport:
    """This instance's memory, written every `interval_s` to `<report_dir>/<model>@<instance>.json` for the watcher.

    The first write is made before `initialize` returns, so a model Triton calls ready has its report; a thread
    refreshes it (a model's memory grows with its first batches). Written only while the directory exists: the
    watcher makes it when a budget is set, so without one nothing is measured. The file is replaced atomically (a
    temporary file renamed), so a reader never sees half of one; readable by the watcher (files 0o644). A failure to
    write (full, read-only) is logged once and never fails the model.
    """

    def __init__(
        self,
        args: dict[str, str],
        device: torch.device,
        logger: Any,
        root: Path = REPORT_ROOT,
        interval_s: float = 1,
    ) -> None:
        name = f"{args['model_name']}@{args['model_instance_name']}.json"
        self.path = report_dir(Path(args["model_repository"]).parent, root) / name
        self.fields = {
            "model": args["model_name"],
            "version": args["model_version"],
            "instance": args["model_instance_name"],
            "pid": os.getpid(),
        }
        self.device = device
        self.logger = logger
        self.interval_s = interval_s
        self.failed = False
        self.stopped = threading.Event()
        self.write()
        self.thread = threading.Thread(target=self._refresh, name="nexus-memory-report", daemon=True)
        self.thread.start()

    def write(self) -> None:
        if not self.path.parent.is_dir():
            return
        device_bytes = torch.cuda.memory_reserved(self.device) if self.device.type == "cuda" else 0
        temporary = self.path.with_name(f".{self.path.name}.tmp")
        try:
            host_bytes, private_bytes = own_host_bytes()
            report = {
                **self.fields,
                "host_bytes": host_bytes,
                "private_bytes": private_bytes,
                "device_bytes": device_bytes,
            }
            descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            with os.fdopen(descriptor, "w") as out:
                json.dump({**report, "written": time.time()}, out)
            os.replace(temporary, self.path)
        except OSError as err:
            if not self.failed:
                self.failed = True
                self.logger.log_warn(f"memory report {self.path} not written: {err}")

    def _refresh(self) -> None:
        while not self.stopped.wait(self.interval_s):
            self.write()

    def stop(self) -> None:
        """Stop refreshing and remove the report, unless another process wrote it since: the same instance of the
        model's next version, which Triton loads before it finalizes this one."""
        self.stopped.set()
        self.thread.join()
        try:
            if json.loads(self.path.read_text()).get("pid") == os.getpid():
                self.path.unlink()
        except (OSError, ValueError):
            pass


def padding_rows(request: Any, rows: int) -> int:
    """How many of the request's `rows` are padding: `PADDING_PARAMETER`, kept below `rows` (at least one row is
    real); 0 when absent or not a whole number, as from a client other than the proxy."""
    try:
        text = request.parameters()
        if PADDING_PARAMETER not in text:
            return 0
        value = json.loads(text).get(PADDING_PARAMETER, 0)
    except (AttributeError, TypeError, ValueError):
        return 0
    if not isinstance(value, int) or isinstance(value, bool):
        return 0
    return min(max(value, 0), max(rows - 1, 0))


class Member:
    """One request of a batched forward: its position in `execute`'s requests, its input arrays, and how many of
    its last rows are padding."""

    __slots__ = ("arrays", "index", "padding", "real_rows")

    def __init__(self, index: int, arrays: list[np.ndarray], padding: int) -> None:
        self.index = index
        self.arrays = arrays
        self.padding = padding
        self.real_rows = len(arrays[0]) - padding

    def real(self, input_index: int) -> np.ndarray:
        """Input `input_index` without the padding rows."""
        array = self.arrays[input_index]
        return array[: self.real_rows] if self.padding else array

    def padded(self, output: np.ndarray) -> np.ndarray:
        """An output of the real rows, with the padding rows' outputs after them: copies of the last real row's."""
        if not self.padding:
            return output
        return np.concatenate((output, np.repeat(output[-1:], self.padding, axis=0)))


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        params = {key: value["string_value"] for key, value in config.get("parameters", {}).items()}
        self.logger = pb_utils.Logger
        self.inputs = [(spec["name"], pb_utils.triton_string_to_numpy(spec["data_type"])) for spec in config["input"]]
        self.outputs = [(spec["name"], pb_utils.triton_string_to_numpy(spec["data_type"])) for spec in config["output"]]
        self.preferred = frozenset(config.get("dynamic_batching", {}).get("preferred_batch_size", ()))
        # The stub is one process per instance: without this each instance spawns a thread per core and
        # they fight over the CPU (ResNet-50 ran 10x slower; docs/decisions.md).
        torch.set_num_threads(int(params.get("TORCH_THREADS", "1")))
        if args["model_instance_kind"] == "GPU":
            self.device = torch.device(f"cuda:{args['model_instance_device_id']}")
            torch.cuda.set_device(self.device)
            self.staging: PinnedStaging | None = PinnedStaging()
        else:
            self.device = torch.device("cpu")
            self.staging = None
        path = Path(args["model_repository"]) / args["model_version"] / params["ARTIFACT_FILE"]
        if self.device.type == "cpu":
            # A GPU host has cores to spare, and CUDA's own threads would inherit the idle policy.
            self.model = at_idle_priority(lambda: self._load(path, params["ARTIFACT_FORMAT"]))
        else:
            self.model = self._load(path, params["ARTIFACT_FORMAT"])
        self.compute_dtype = torch.float32
        if params.get("PRECISION", "fp32") != "fp32":
            self._reduce_precision(config, params)
        labels = f"model={args['model_name']} version={args['model_version']} pid={os.getpid()}"
        self.clock = StageClock(self.device, labels, float(params.get("STAGE_LOG_INTERVAL_S", "0")))
        self.logger.log_info(
            f"{args['model_name']} v{args['model_version']}: {path.name} loaded on {self.device}"
            f" ({params.get('PRECISION', 'fp32')})"
        )
        self.memory = MemoryReport(args, self.device, self.logger)
        self.ending = threading.Event()
        self.name = args["model_name"]
        if OWN_GROUP and not LOWERED:
            self.logger.log_warn(f"{self.name}: its stub started at a full session's CPU weight, not the lowest")
        # Triton's warmup runs next, on this thread, before the model is ready: its first passes (TorchScript's
        # profiling and optimization among them) keep the lowest weight too (docs/decisions.md).
        self.warmups_left = warmup_executions(config) if LOWERED else 0
        if LOWERED and not self.warmups_left:
            restore_group_weight(self.logger, self.name, self.ending)

    def _load(self, path: Path, artifact_format: str) -> torch.nn.Module:
        if artifact_format == "torchscript":
            return torch.jit.load(str(path), map_location=self.device).eval()
        if artifact_format == "torch_export":
            # torch.export.load rebuilds the graph from its own serialized form (no arbitrary unpickling).
            program = torch.export.load(str(path))
            if self.device.type == "cpu":
                return program.module()
            passes = getattr(torch.export, "passes", None)
            if passes is not None and hasattr(passes, "move_to_device_pass"):
                return passes.move_to_device_pass(program, self.device).module()
            return program.module().to(self.device)  # torch < 2.6 (the NGC 24.10 image ships 2.5)
        raise ValueError(f"unknown ARTIFACT_FORMAT {artifact_format!r}")

    def _reduce_precision(self, config: dict, params: dict[str, str]) -> None:
        """Convert the model to PRECISION, refusing the load when its outputs drift from fp32's too far.

        The check runs one batch of seeded standard-normal inputs (zeros for integer inputs; a variable
        dimension gets length 8) through both and compares each output's largest difference with the largest
        fp32 magnitude: `PRECISION_TOLERANCE` (from the metadata) of it at most.
        """
        tolerance = float(params["PRECISION_TOLERANCE"])
        generator = torch.Generator().manual_seed(0)
        max_batch_size = int(config.get("max_batch_size", 0))
        batch = [min(8, max_batch_size)] if max_batch_size > 0 else []
        columns = []
        for spec, (_, dtype) in zip(config["input"], self.inputs, strict=True):
            shape = batch + [8 if dim == -1 else int(dim) for dim in spec["dims"]]
            if np.issubdtype(dtype, np.floating):
                columns.append(torch.randn(shape, generator=generator).numpy().astype(dtype))
            else:
                columns.append(np.zeros(shape, dtype=dtype))
        reference = self._checked_forward(columns, "fp32")
        self.compute_dtype = PRECISIONS[params["PRECISION"]]
        self.model = self.model.to(self.compute_dtype)
        reduced = self._checked_forward(columns, params["PRECISION"])
        for (name, _), want, got in zip(self.outputs, reference, reduced, strict=True):
            if not np.issubdtype(want.dtype, np.floating):
                continue
            scale = float(np.abs(want).max()) or 1.0
            drift = float(np.abs(want.astype(np.float64) - got.astype(np.float64)).max()) / scale
            if not drift <= tolerance:
                raise ValueError(
                    f"output {name} in {params['PRECISION']} differs from fp32 by {drift:.3g} of its scale, "
                    f"over PRECISION_TOLERANCE {tolerance:g}"
                )

    def _checked_forward(self, columns: list[np.ndarray], precision: str) -> list[np.ndarray]:
        try:
            return self._forward([torch.from_numpy(column) for column in columns])
        except Exception as err:  # TorchScript's messages carry whole tracebacks: keep their last line
            last = str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
            raise ValueError(f"the precision check's batch fails in {precision}: {last}") from err

    def execute(self, requests: list) -> list:
        self.clock.start()
        responses: list = [None] * len(requests)
        groups: dict[tuple, list[Member]] = {}
        for index, request in enumerate(requests):
            try:
                arrays = self._request_arrays(request)
            except ValueError as err:
                responses[index] = self._error(err, pb_utils.TritonError.INVALID_ARG)
                continue
            signature = tuple(array.shape[1:] for array in arrays)
            rows = len(arrays[0])
            # The proxy pads only up to a preferred size: other requests need not pay for reading parameters.
            padding = padding_rows(request, rows) if rows in self.preferred else 0
            groups.setdefault(signature, []).append(Member(index, arrays, padding))
        self.clock.host("inputs")
        for members in groups.values():
            self._run_group(members, responses)
        self.clock.log()
        if self.warmups_left:
            self.warmups_left -= 1
            if not self.warmups_left:
                restore_group_weight(self.logger, self.name, self.ending)
        return responses

    def _request_arrays(self, request: object) -> list[np.ndarray]:
        arrays = []
        for name, dtype in self.inputs:
            tensor = pb_utils.get_input_tensor_by_name(request, name)
            if tensor is None:
                raise ValueError(f"input {name} is missing")
            arrays.append(tensor.as_numpy().astype(dtype, copy=False))
        rows = {array.shape[0] for array in arrays}
        if len(rows) != 1:
            raise ValueError(f"inputs disagree on the batch dimension: {sorted(rows)}")
        return arrays

    def _run_group(self, members: list[Member], responses: list) -> None:
        try:
            columns = [self._column(i, [m.real(i) for m in members]) for i in range(len(self.inputs))]
            self.clock.host("concatenate")
            outputs = self._forward(columns, self.clock)
            self.clock.batches += 1
        except Exception as err:
            if len(members) == 1:
                responses[members[0].index] = self._error(err, pb_utils.TritonError.INTERNAL)
                return
            self.logger.log_warn(f"batched forward of {len(members)} requests failed ({err}); retrying singly")
            for member in members:
                self._run_group([member], responses)
            return
        offsets = np.cumsum([member.real_rows for member in members])[:-1]
        per_output = [np.split(output, offsets) for output in outputs]
        for position, member in enumerate(members):
            tensors = [
                pb_utils.Tensor(name, member.padded(parts[position]))
                for (name, _), parts in zip(self.outputs, per_output, strict=True)
            ]
            responses[member.index] = pb_utils.InferenceResponse(output_tensors=tensors)
        self.clock.host("responses")

    def _column(self, index: int, parts: list[np.ndarray]) -> torch.Tensor:
        """One input of a group as one host tensor (on a GPU, in pinned memory)."""
        if self.staging is not None:
            return self.staging.fill(index, parts)
        return torch.from_numpy(np.concatenate(parts))

    def _forward(self, columns: list[torch.Tensor], clock: StageClock | None = None) -> list[np.ndarray]:
        if clock:
            clock.device_begin()
        tensors = [column.to(self.device, non_blocking=True) for column in columns]
        if self.staging is not None:
            self.staging.copied.record()
        if self.compute_dtype != torch.float32:
            tensors = [t.to(self.compute_dtype) if t.is_floating_point() else t for t in tensors]
        if clock:
            clock.device("to_device")
        with torch.inference_mode():
            result = self.model(*tensors)
        if clock:
            clock.device("forward")
        results = result if isinstance(result, tuple | list) else (result,)
        if len(results) != len(self.outputs):
            raise ValueError(f"model returned {len(results)} outputs, the config declares {len(self.outputs)}")
        rows = columns[0].shape[0]
        arrays = []
        for tensor, (name, dtype) in zip(results, self.outputs, strict=True):
            if tensor.shape[0] != rows:
                raise ValueError(f"output {name} has {tensor.shape[0]} rows for {rows} input rows")
            if tensor.dtype in (torch.float16, torch.bfloat16):  # numpy has no bfloat16
                tensor = tensor.float()
            arrays.append(tensor.detach().cpu().numpy().astype(dtype, copy=False))
        if clock:
            clock.device("to_host")
            clock.device_end()
        return arrays

    def _error(self, err: Exception, code: int) -> object:
        return pb_utils.InferenceResponse(error=pb_utils.TritonError(str(err), code))

    def finalize(self) -> None:
        self.clock.log(force=True)
        self.model = None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        self.memory.stop()
        self.ending.set()
        if OWN_GROUP:
            # The exit's unmapping off the serving models' CPU; tried once, as an exit is not delayed for it.
            set_group_nice(LOWEST_NICE, tries=1)
