"""Which models to serve and their schemas, read from Triton and followed; the upstream client's lifetime.

Which models: `MODEL_NAME` (that one only); else `NEXUS_META_PATH`, a file (its model) or a directory (every model
of `nexusml.core.catalog.read`, re-read when `catalog.stamp` changes, checked every `SCHEMA_REFRESH_S`: a new file
is a new model, a removed one stops being served, an unusable one keeps its model served, by the rule of the sync
and the watcher: `departed`); else Triton's repository index (every ready model, candidates
left out, checked again every `SCHEMA_REFRESH_S` for new ones). Until the names are known (a broken metadata file,
a Triton that does not answer) that is retried every `SCHEMA_RETRY_S`, and the proxy answers 503 saying why.

Each model has a task of its own: its schema is read until Triton has it (the model is "loading"; "failed" when
Triton has it but the proxy cannot serve it), then re-read every `SCHEMA_REFRESH_S`, so validation follows a new
version the watcher put live. The proxy starts and answers `/healthz` without Triton.

With a memory budget (`RESIDENCY_URL`) a model may not be loaded in Triton: its task waits until the decider says
it is (a heartbeat, or a request's load) before it reads the schema, instead of retrying a read that cannot work; a
schema once read is kept while the model is unloaded (its re-reads skip it meanwhile), so the model answers
`/v2/models/{name}` and validates requests from it when it is loaded again. The heartbeat runs as long as the app.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path

from aiohttp import web

from nexusml.core import catalog
from nexusml.core.catalog import Catalog
from nexusml.core.errors import MetadataError, NexusError
from nexusml.core.probe import CANDIDATE_SUFFIX
from proxy.client import connect
from proxy.errors import ModelUnknown, NotReady, ProxyError, UpstreamForbidden, UpstreamUnavailable
from proxy.health import READINESS, Readiness
from proxy.residency import Residency
from proxy.schema import ModelSchema
from proxy.state import STATE, ModelState, ProxyState

SCHEMA_RETRY_S = 1.0
SCHEMA_REFRESH_S = 2.0

log = logging.getLogger("proxy")


class Loader:
    """The tasks that decide the served models and follow them: one for the set, one per model."""

    def __init__(self, state: ProxyState, readiness: Readiness) -> None:
        self.state = state
        self.readiness = readiness  # its answers for a removed model are dropped with it
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.retiring: set[asyncio.Task[None]] = set()
        self.decided = asyncio.Event()  # set once the first set of models is known
        self.mode = ""  # where the names come from: name, file, directory or index (decided with them)
        self.stamp: catalog.Stamp | None = None  # the directory's, when last read
        self.sources: dict[str, str] = {}  # each served model's metadata file name, from the directory's reads
        self.emptied = False  # the directory's last read named nothing while models were served (logged once)
        self.shm_opening: asyncio.Task[None] | None = None  # the worker's one registration, started once

    async def run(self) -> None:
        """Decide the models (retrying until something names them), then follow where they come from."""
        state, settings = self.state, self.state.settings
        logged: str | None = None
        while True:
            try:
                await self.discover()
                break
            except Exception as err:  # anything else would end this task silently and leave /readyz stale
                # Configuration problems (no model named, a broken metadata file) are not Triton's: say so plainly.
                configuration = isinstance(err, ModelUnknown | MetadataError)
                if configuration or isinstance(err, NotReady):
                    state.problem = str(err)
                else:
                    state.problem = f"model metadata not available from {settings.model_server_url}: {err}"
                if not isinstance(err, NexusError):
                    log.exception("unexpected error deciding which models to serve")
                if logged != type(err).__name__:
                    level = logging.ERROR if configuration else logging.WARNING
                    log.log(level, "%s; retrying every %g s", state.problem, SCHEMA_RETRY_S)
                    logged = type(err).__name__
            await asyncio.sleep(SCHEMA_RETRY_S)
        self.decided.set()
        if self.mode in ("name", "file"):
            return  # one model, named once and for all
        while True:
            await asyncio.sleep(SCHEMA_REFRESH_S)
            try:
                await self.discover()
            except Exception as err:  # the models served stay as they are
                if not isinstance(err, NexusError):
                    log.exception("unexpected error re-reading which models to serve")

    async def discover(self) -> None:
        """Bring the served models in line with what names them now."""
        state, settings = self.state, self.state.settings
        mode = self.mode or where_names_come_from(state)
        state.implicit_default = mode != "directory"
        if mode == "name":
            self.serve_only([settings.model_name])
        elif mode == "directory":
            self.follow_catalog(settings.meta_path)
        elif mode == "file":
            self.serve_only(catalog.read(settings.meta_path).names)
        else:
            await self.follow_index()
        self.mode = mode
        state.problem = None if state.models else state.problem

    def serve_only(self, names: list[str]) -> None:
        for name in names:
            if name not in self.state.models:
                self.add(name)

    def follow_catalog(self, directory: Path) -> None:
        """The directory's catalog, re-read when its stamp changes: new models added, held names left as they are,
        a model removed only when the file that published it is gone (`departed`); its problems shown in
        /v1/models, each logged once. A read that names nothing, usable or not, while models are served is taken
        for a listing that could not be read (a volume being swapped), as the sync and the watcher take it:
        everything served stays."""
        stamp = catalog.stamp(directory)
        if stamp == self.stamp:
            return
        found: Catalog = catalog.read(directory)
        self.stamp = stamp
        state = self.state
        emptied = not (found.models or found.problems) and bool(state.models)
        if emptied and not self.emptied:
            log.warning(
                "NEXUS_META_PATH=%s names no model while %s are served: taken for a listing that could not be read, "
                "every model stays served",
                directory,
                state.served(),
            )
        self.emptied = emptied
        for line in found.problems.values():
            if line not in state.problems:
                log.error("metadata not used: %s", line)
        state.problems = [found.problems[source] for source in sorted(found.problems)]
        state.held = found.held
        for name in found.names:
            if name not in state.models:
                self.add(name)
        for name in catalog.departed(found, state.models, self.sources):
            self.remove(name)
        self.sources = catalog.remembered_sources(found, self.sources, set(self.sources) - set(state.models))
        if not state.models:
            state.problem = f"no usable model metadata in NEXUS_META_PATH={directory}"

    async def follow_index(self) -> None:
        """Every ready model of Triton's index, candidates left out; new ones are added (a model that leaves the
        index stays served: a reload in progress must not make it 404)."""
        state, settings = self.state, self.state.settings
        assert state.upstream is not None
        try:
            models = await state.upstream.ready_models()
        except UpstreamForbidden as err:
            raise ModelUnknown(
                f"cannot tell which model to serve: MODEL_NAME is empty, there is no metadata at "
                f"NEXUS_META_PATH={settings.meta_path}, and {err}; set MODEL_NAME or mount the metadata"
            ) from err
        served = [name for name in models if not name.endswith(CANDIDATE_SUFFIX)]
        if not served and not state.models:
            raise NotReady(f"MODEL_NAME is not set and Triton serves no ready model {models}")
        self.serve_only(served)

    def add(self, name: str) -> None:
        model = self.state.add_model(name)
        self.tasks[name] = asyncio.get_running_loop().create_task(self.follow_model(model))
        if self.decided.is_set():
            log.info("model %s added: its metadata appeared", name)

    def remove(self, name: str) -> None:
        """Stop serving `name` (404 from now on); its requests in flight finish, then its coalescer is closed."""
        model = self.state.remove_model(name)
        self.readiness.forget(name)
        task = self.tasks.pop(name, None)
        if task is not None:
            task.cancel()
        if model is not None:
            log.info("model %s removed: its metadata is gone", name)
            retire = asyncio.get_running_loop().create_task(self.retire(model))
            self.retiring.add(retire)
            retire.add_done_callback(self.retiring.discard)

    async def retire(self, model: ModelState) -> None:
        """Close a removed model's coalescer once its requests in flight are done (each ends by its deadline), or
        at once when the app stops."""
        settings = self.state.settings
        bound = settings.request_timeout_ms / 1000 + settings.body_timeout_s
        waited = 0.0
        try:
            while model.in_flight and waited < bound:
                await asyncio.sleep(0.05)
                waited += 0.05
        finally:
            if model.coalescer is not None:
                await model.coalescer.close()

    async def follow_model(self, model: ModelState) -> None:
        """Read the model's schema until it works, register shared memory (once, for the first model ready),
        then re-read the schema every SCHEMA_REFRESH_S."""
        state = self.state
        assert state.upstream is not None
        await load_schema(state, model)
        schema = model.schema
        assert schema is not None
        if self.shm_opening is None:
            # Shielded: the first model removed meanwhile must not cancel the worker's one registration.
            self.shm_opening = asyncio.get_running_loop().create_task(state.upstream.shm.open())
            await asyncio.shield(self.shm_opening)
        log.info(
            "serving model %s (versions %s) from %s; coalescing %s",
            schema.name,
            ",".join(schema.versions),
            state.settings.model_server_url,
            model.coalescing(),
        )
        await follow_schema(state, model)

    async def settled(self) -> None:
        """Until the models are decided and each then known has its first schema; with a memory budget only until
        they are decided: a model not loaded has no schema to read, and a request for it reads it."""
        await self.decided.wait()
        if self.state.residency is not None:
            return
        await asyncio.gather(*(model.loaded.wait() for model in list(self.state.models.values())))

    async def close(self) -> None:
        opening = [self.shm_opening] if self.shm_opening is not None else []
        for task in [*self.tasks.values(), *self.retiring, *opening]:
            task.cancel()
        await asyncio.gather(*self.retiring, *opening, return_exceptions=True)
        for model in self.state.models.values():
            if model.coalescer is not None:
                await model.coalescer.close()


def where_names_come_from(state: ProxyState) -> str:
    """name (MODEL_NAME), directory or file (NEXUS_META_PATH), else index (Triton's)."""
    settings = state.settings
    if settings.model_name:
        return "name"
    if catalog.is_directory(settings.meta_path):
        return "directory"
    return "file" if settings.meta_path.is_file() else "index"


async def upstream_ctx(app: web.Application) -> AsyncIterator[None]:
    """aiohttp cleanup context: the upstream client, the loader and the followers live as long as the app; closing
    the client unregisters and unlinks its shared-memory region."""
    state = app[STATE]
    state.upstream = connect(state.settings)
    beating: asyncio.Task[None] | None = None
    if state.settings.residency_url:
        residency = state.residency = Residency(state.settings, state.busy)
        await residency.open()
        beating = asyncio.create_task(residency.run())
    loader = Loader(state, app[READINESS])
    deciding = asyncio.create_task(loader.run())
    # A Triton that is up answers within the timeout; one that is not must not hold up start-up.
    settling = asyncio.create_task(loader.settled())
    await asyncio.wait({settling}, timeout=2 * state.settings.connect_timeout_s)
    settling.cancel()
    try:
        yield
    finally:
        deciding.cancel()
        await loader.close()
        if beating is not None and state.residency is not None:
            beating.cancel()
            await state.residency.close()
        await state.upstream.close()


async def load_schema(state: ProxyState, model: ModelState) -> None:
    """Read the model's schema from Triton, retrying until it works (or the model is removed, or the app stops);
    with a memory budget, each try once the model is loaded.

    Each new kind of problem is logged once, so a model that can never become ready says why in one line.
    """
    settings, residency = state.settings, state.residency
    logged: str | None = None
    while True:
        if residency is not None:
            await residency.until_resident(model.name)
        try:
            await read_schema(state, model)
            return
        except Exception as err:
            # Not there yet (Triton unreachable, the model not loaded) is loading; anything else failed.
            model.failed = not isinstance(err, UpstreamUnavailable)
            model.problem = f"model {model.name}: metadata not available from {settings.model_server_url}: {err}"
            if not isinstance(err, NexusError):
                log.exception("unexpected error reading model %s's metadata", model.name)
            if logged != type(err).__name__:
                log.warning("%s; retrying every %g s", model.problem, SCHEMA_RETRY_S)
                logged = type(err).__name__
        await asyncio.sleep(SCHEMA_RETRY_S)


async def read_schema(state: ProxyState, model: ModelState) -> ModelSchema:
    """Read the model's schema from Triton once and serve it: one read per model at a time, shared by its follower
    and the requests that waited for its load."""
    reading = model.reading
    if reading is None:
        reading = model.reading = asyncio.get_running_loop().create_task(_read_schema(state, model))
        reading.add_done_callback(lambda done: _read_done(model, done))
    return await asyncio.shield(reading)


async def _read_schema(state: ProxyState, model: ModelState) -> ModelSchema:
    assert state.upstream is not None
    schema = await state.upstream.schema(model.name, state.settings.model_version)
    model.serve(schema)
    return schema


def _read_done(model: ModelState, reading: asyncio.Task[ModelSchema]) -> None:
    if model.reading is reading:
        model.reading = None
    if not reading.cancelled():
        reading.exception()  # retrieved here: its readers may all have left before it ended


async def follow_schema(state: ProxyState, model: ModelState) -> None:
    """Re-read the schema every `SCHEMA_REFRESH_S`, so validation follows a new version the watcher put live
    (its interface may differ). Two small metadata calls per model and worker; a failure keeps the schema it has.
    A model not loaded now (memory budget) is not asked: it keeps the schema it has until it is loaded again."""
    assert state.upstream is not None
    residency = state.residency
    while True:
        await asyncio.sleep(SCHEMA_REFRESH_S)
        current = model.schema
        if current is None or (residency is not None and model.name not in residency.resident):
            continue
        try:
            fresh = await state.upstream.schema(current.name, state.settings.model_version)
        except ProxyError:
            continue
        if fresh == current:
            continue
        model.serve(fresh)
        log.info("model %s now serves version %s", fresh.name, ",".join(fresh.versions))
