"""A new model version goes live under traffic, or not at all: install, try, switch, prune.

The steps, each of which must pass before the next (`Swapper.swap`):

1. **install**: download and verify the version into the repository beside the served one (the sync's own
   staging and atomic rename); `config.pbtxt` still serves the old version.
2. **try**: a candidate model (`<name>__candidate`, one instance, the new version's folder linked in) is loaded
   through Triton's repository API, and a **smoke test** sends it one real inference of zeros, checked for every
   output's shape, datatype and finiteness. Users never reach the candidate: the proxy serves `<name>` only.
3. **switch**: `config.pbtxt` points at the new version and `<name>` is loaded again. Triton loads the new
   version in the background while the old one serves, then swaps them; the old version is unloaded once its
   in-flight requests are done. If this load fails, Triton keeps the old one and the old config is put back.
4. **prune** the versions beyond `KEEP_VERSIONS`, and drop the candidate.

A new model (a directory of metadata gained a file) takes the same steps with nothing served before; a model
whose metadata is gone is unloaded and its folder deleted (`remove`).

A failure at any step leaves the old version serving and raises a `NexusError` whose `code` names the cause.
Triton's explicit model control reloads a model whenever its config changes, and a reload keeps the loaded
model until the new one is ready (the availability the switch relies on); the candidate is a model of its own
because loading the new version beside the old inside `<name>` would send unpinned traffic to the higher
version before the smoke test, and costs a third copy of the model in memory during the switch.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException, np_to_triton_dtype, triton_to_np_dtype

from nexusml.core import metadata
from nexusml.core.errors import ModelLoadFailed, NexusError, ServerError, SmokeTestFailed
from nexusml.core.metadata import ModelMetadata, TensorSpec
from nexusml.core.probe import candidate_name, not_loaded, probe_rows, probe_shape
from nexusml.core.triton_errors import TritonFailure, classify, status_and_message
from nexusml.sync import pipeline
from nexusml.sync.repository import RECORD_FILE, Repository
from nexusml.sync.settings import SyncSettings
from nexusml.sync.triton_config import from_pbtxt, instance_count, model_config, serving_config, to_pbtxt
from nexusml.triton.server import ADMIN_HEADER

log = logging.getLogger(__name__)
# Triton errors that say nothing about the new version: the swap is tried again later.
_TRANSIENT = frozenset({TritonFailure.QUEUE_FULL, TritonFailure.TIMED_OUT, TritonFailure.UNREACHABLE})


@dataclass(frozen=True)
class ModelStats:
    """Triton's cumulative statistics of one model (its loaded versions summed): requests that went through its
    queue, the nanoseconds they waited there, and the nanoseconds its instances spent executing batches (input,
    forward pass, output). A reload starts them again from zero."""

    queued: int = 0
    queue_ns: int = 0
    busy_ns: int = 0

    def __add__(self, other: ModelStats) -> ModelStats:
        return ModelStats(self.queued + other.queued, self.queue_ns + other.queue_ns, self.busy_ns + other.busy_ns)


class TritonAdmin:
    """Triton's repository API (load, unload: restricted to the admin key) and the inference the smoke test sends.

    Over gRPC: Triton 2.51's HTTP server answers nothing else while it handles a load request (which would also
    fail the HTTP health probes), while a load over gRPC leaves both endpoints answering (docs/decisions.md).
    """

    def __init__(self, url: str, admin_key: str | None, timeout_s: float) -> None:
        self.url = url
        self.timeout_s = timeout_s
        self.client = grpcclient.InferenceServerClient(url.split("://", 1)[-1].rstrip("/"))
        # Triton wants a restricted gRPC protocol's header prefixed (its --grpc-restricted-protocol rule).
        self.headers = {f"triton-grpc-protocol-{ADMIN_HEADER}": admin_key} if admin_key else None
        # Held by every load and unload, and by the residency decider across its unloads and the load they make
        # room for: what Triton holds changes one step at a time.
        self.lock = threading.RLock()

    def load(self, model: str) -> None:
        """Load (or reload) `model` from the repository; returns when it is loaded."""
        with self.lock:
            self._call(
                lambda: self.client.load_model(model, headers=self.headers, client_timeout=self.timeout_s),
                ModelLoadFailed,
                f"loading {model}",
            )

    def unload(self, model: str) -> None:
        with self.lock:
            self._call(
                lambda: self.client.unload_model(model, headers=self.headers, client_timeout=self.timeout_s),
                ServerError,
                f"unloading {model}",
            )

    def unavailable(self) -> dict[str, str]:
        """The models of the repository Triton holds but could not load, with its reason (the repository index);
        candidates left out, and models being loaded or unloaded (their state is not UNAVAILABLE)."""
        return not_loaded(self._index())

    def ready(self) -> list[str]:
        """The models Triton holds ready now, by the repository index."""
        return [name for name, state in self.states().items() if state == "READY"]

    def states(self) -> dict[str, str]:
        """Each model's state in the repository index (READY, LOADING, UNLOADING, UNAVAILABLE; "" never loaded)."""
        return {str(entry.get("name")): str(entry.get("state") or "") for entry in self._index()}

    def _index(self) -> list[dict[str, Any]]:
        got = self._call(
            lambda: self.client.get_model_repository_index(
                headers=self.headers, as_json=True, client_timeout=self.timeout_s
            ),
            ServerError,
            "reading the repository index",
        )
        return got.get("models", [])

    def statistics(self) -> dict[str, ModelStats]:
        """Every loaded model's statistics (one call for all models)."""
        got = self._call(
            lambda: self.client.get_inference_statistics(
                "", headers=self.headers, as_json=True, client_timeout=self.timeout_s
            ),
            ServerError,
            "reading the inference statistics",
        )
        totals: dict[str, ModelStats] = {}
        for entry in got.get("model_stats", []):
            queue = entry.get("inference_stats", {}).get("queue", {})
            busy = sum(
                int(batch.get(step, {}).get("ns", 0))
                for batch in entry.get("batch_stats", [])
                for step in ("compute_input", "compute_infer", "compute_output")
            )
            stats = ModelStats(int(queue.get("count", 0)), int(queue.get("ns", 0)), busy)
            totals[entry["name"]] = totals.get(entry["name"], ModelStats()) + stats
        return totals

    def infer(self, model: str, version: int, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        tensors = []
        for name, array in inputs.items():
            tensor = grpcclient.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
            tensor.set_data_from_numpy(array)
            tensors.append(tensor)
        result = self._call(
            lambda: self.client.infer(model, tensors, model_version=str(version), client_timeout=self.timeout_s),
            SmokeTestFailed,
            f"the test inference of {model} version {version}",
        )
        return {out.name: result.as_numpy(out.name) for out in result.get_response().outputs}

    def _call(self, action: Callable[[], Any], failure: type[NexusError], what: str) -> Any:
        """Triton unreachable, busy, out of time or refusing the key -> `ServerError` (transient: tried again);
        else `failure`. What a Triton error means is `nexusml.core.triton_errors`'s rule, the proxy's too."""
        try:
            return action()
        except InferenceServerException as err:
            meaning = classify(err)
            message = status_and_message(err)[1]
            if meaning is TritonFailure.RESTRICTED:
                raise ServerError(
                    f"{what}: Triton refused its repository API: TRITON_ADMIN_KEY is missing or wrong"
                ) from err
            if meaning in _TRANSIENT:
                raise ServerError(f"{what}: Triton at {self.url} did not answer: {message}") from err
            raise failure(f"{what}: {message}") from err


def smoke_inputs(meta: ModelMetadata, max_batch_size: int = 1, preferred: Sequence[int] = ()) -> dict[str, np.ndarray]:
    """Zeros for every input, shaped as every probe is (`nexusml.core.probe`)."""
    return {
        spec.name: np.zeros(probe_shape(spec.shape, max_batch_size, preferred), dtype=triton_to_np_dtype(spec.dtype))
        for spec in meta.inputs
    }


def check_outputs(meta: ModelMetadata, outputs: dict[str, np.ndarray], rows: int = 1) -> None:
    """Every declared output present, with `rows` rows of the declared shape and datatype, and finite."""
    for spec in meta.outputs:
        array = outputs.get(spec.name)
        if array is None:
            raise SmokeTestFailed(f"output {spec.name} is missing from the answer (got {sorted(outputs)})")
        _check_output(spec, array, rows)


def _check_output(spec: TensorSpec, array: np.ndarray, rows: int) -> None:
    expected = (rows, *spec.shape)
    fits = len(array.shape) == len(expected) and all(e in (-1, a) for e, a in zip(expected, array.shape, strict=True))
    if not fits:
        shape = "x".join("?" if d == -1 else str(d) for d in expected)
        raise SmokeTestFailed(f"output {spec.name} has shape {list(array.shape)}, the metadata says {shape}")
    got = np_to_triton_dtype(array.dtype)
    if got != spec.dtype:
        raise SmokeTestFailed(f"output {spec.name} is {got}, the metadata says {spec.dtype}")
    if array.dtype.kind == "f" and not bool(np.isfinite(array).all()):
        raise SmokeTestFailed(f"output {spec.name} is not finite for an input of zeros")


def served_version(repo: Repository, name: str) -> int | None:
    """The version `config.pbtxt` serves; None when it names none (or not one)."""
    text = repo.config_text(name)
    if text is None:
        return None
    versions = from_pbtxt(text).get("version_policy", {}).get("specific", {}).get("versions", [])
    return int(versions[0]) if len(versions) == 1 else None


def served(repo: Repository, name: str) -> ModelMetadata | None:
    """The metadata of the version `config.pbtxt` serves, from that version's record; None when none is."""
    version = served_version(repo, name)
    if version is None:
        return None
    try:
        record = json.loads((repo.version_dir(name, version) / RECORD_FILE).read_text())
        return metadata.parse(record["metadata"])
    except (OSError, ValueError, KeyError, NexusError):
        return None


class Swapper:
    """Runs the steps of a swap against one Triton; `on_step(step)` reports progress (for logs and metrics)."""

    def __init__(self, settings: SyncSettings, admin: TritonAdmin) -> None:
        self.settings = settings
        self.admin = admin
        self.repo = Repository(settings.repository)

    def swap(self, meta: ModelMetadata, on_step: Callable[[str], None] = lambda step: None) -> None:
        with self.repo.locked(meta.name):
            on_step("install")
            pipeline.install(meta, self.settings)
            try:
                on_step("try")
                self._try(meta)
                on_step("switch")
                self._switch(meta)
            except BaseException:
                current = served(self.repo, meta.name)
                if current is None or current.version != meta.version:
                    self.repo.remove(meta.name, meta.version)  # a version that failed leaves nothing behind
                raise
            pruned = self.repo.prune(meta.name, meta.version, self.settings.keep_versions)
            if pruned:
                log.info("pruned versions %s of %s", pruned, meta.name)

    def _try(self, meta: ModelMetadata) -> None:
        """Load the candidate and smoke-test it; it is unloaded and removed whatever happens."""
        loaded = False
        try:
            candidate, config = self.load_candidate(meta)
            loaded = True
            batch = config["max_batch_size"]
            preferred = config.get("dynamic_batching", {}).get("preferred_batch_size", [])
            answer = self.admin.infer(candidate, meta.version, smoke_inputs(meta, batch, preferred))
            check_outputs(meta, answer, probe_rows(batch, preferred))
        finally:
            self.unload_candidate(meta.name, loaded)

    def load_candidate(self, meta: ModelMetadata) -> tuple[str, dict[str, Any]]:
        """Stage `meta`'s installed version as the candidate model (one instance) and load it.

        Returns the candidate's name and its model config (a dict as Triton's protobuf has it).
        """
        config = model_config(meta, serving_config(meta, self.settings))
        config["name"] = candidate_name(meta.name)
        for group in config["instance_group"]:
            group["count"] = 1
        candidate = self.repo.stage_candidate(meta.name, meta.version, to_pbtxt(config))
        self.admin.load(candidate)
        return candidate, config

    def unload_candidate(self, name: str, loaded: bool = True) -> None:
        """Unload `name`'s candidate (when it was loaded) and remove its folder."""
        if loaded:
            try:
                self.admin.unload(candidate_name(name))
            except NexusError as err:
                log.warning("%s", err)
        self.repo.drop_candidate(name)

    def instances(self, name: str) -> int | None:
        """The instances `name`'s config.pbtxt asks for; None when it has none."""
        text = self.repo.config_text(name)
        return None if text is None else instance_count(from_pbtxt(text))

    def _switch(self, meta: ModelMetadata) -> None:
        """Point the config at the new version and reload; on failure Triton keeps the old, and so does the disk.

        The new version keeps the instances the old one was scaled to (`scale`), within the settings' range: a busy
        model stays busy across a version. A new model starts with MIN_INSTANCE_COUNT."""
        low, high = self.settings.instance_range
        count = min(max(self.instances(meta.name) or low, low), high)
        self._load_config(meta.name, pipeline.config_text(meta, self.settings, instances=count))

    def _load_config(self, name: str, text: str) -> None:
        """Write `text` as `name`'s config and load it; Triton keeps serving the old config until the new one is
        loaded. On failure Triton keeps the old, and so does the disk.

        A new model (no config before) that fails to load loses its config again: a folder without one is no
        model to Triton, and `swap` then removes the version and the folder."""
        previous = self.repo.config_text(name)
        self.repo.write_config(name, text)
        try:
            self.admin.load(name)
        except BaseException:
            if previous is not None:
                self.repo.write_config(name, previous)
            else:
                self.repo.drop_config(name)
            raise

    def scale(self, name: str, count: int) -> bool:
        """Serve `name`'s served version with `count` instances; False when there is nothing to change.

        The config is the one the sync writes for that count (with one instance the batcher's queue policy goes,
        `nexusml.sync.triton_config.model_config`), so only the count and what follows from it changes. Under the
        model's lock: never during its swap or a sync."""
        with self.repo.locked(name):
            meta = served(self.repo, name)
            if meta is None or self.instances(name) == count:
                return False
            self._load_config(name, pipeline.config_text(meta, self.settings, instances=count))
        return True

    def reload(self, name: str) -> None:
        """Load the served `name` again as its config stands, under its lock (`ModelLoadFailed` when it fails)."""
        with self.repo.locked(name):
            self.admin.load(name)

    def remove(self, name: str) -> None:
        """Unload `name` (Triton lets its in-flight requests finish) and delete its folder, under its lock.

        The folder goes only once the unload went through: Triton unreachable raises `ServerError` (tried again at
        the next poll) and leaves the repository as it was."""
        with self.repo.locked(name):
            self.admin.unload(name)
            self.repo.drop_model(name)
