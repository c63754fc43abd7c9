"""Which model to serve and its schema, read from Triton and followed; the upstream client's lifetime.

The schema is read at start-up and, while Triton is unreachable, retried in the background: the proxy starts
and answers `/healthz` without Triton, and `/readyz` and `/predict` say 503 until the schema is in. Once in,
it is re-read every `SCHEMA_REFRESH_S`, so validation follows a new version the watcher put live.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

from aiohttp import web

from nexusml.core import metadata
from nexusml.core.errors import MetadataError, NexusError
from proxy.client import Upstream, connect
from proxy.errors import ModelUnknown, NotReady, ProxyError, UpstreamForbidden
from proxy.settings import ProxySettings
from proxy.state import STATE, ProxyState

SCHEMA_RETRY_S = 1.0
SCHEMA_REFRESH_S = 2.0

log = logging.getLogger("proxy")


async def upstream_ctx(app: web.Application) -> AsyncIterator[None]:
    """aiohttp cleanup context: the upstream client, the loader and the follower live as long as the app; closing
    the client unregisters and unlinks its shared-memory region."""
    state = app[STATE]
    state.upstream = connect(state.settings)
    follower: list[asyncio.Task[None]] = []
    loader = asyncio.create_task(_load(state, follower))
    # A Triton that is up answers within the timeout; one that is not must not hold up start-up.
    await asyncio.wait({loader}, timeout=2 * state.settings.connect_timeout_s)
    try:
        yield
    finally:
        loader.cancel()
        for task in follower:
            task.cancel()
        if state.coalescer is not None:
            await state.coalescer.close()
        await state.upstream.close()


async def _load(state: ProxyState, follower: list[asyncio.Task[None]]) -> None:
    """Read the schema until it works, serve it, register the shared-memory region, then start following the schema
    (the task goes into `follower`).

    The region is registered once the model is ready, because Triton answers then; a Triton restarted later has
    forgotten it, which the first request through it finds out (`SharedMemory.forgot`) and registers it again.
    """
    await load_schema(state)
    schema = state.schema
    assert schema is not None and state.upstream is not None
    await state.upstream.shm.open()
    log.info(
        "serving model %s (versions %s) from %s; coalescing %s",
        schema.name,
        ",".join(schema.versions),
        state.settings.model_server_url,
        state.coalescing(),
    )
    follower.append(asyncio.get_running_loop().create_task(follow_schema(state)))


async def load_schema(state: ProxyState) -> None:
    """Find the model and read its schema from Triton, retrying until it works (or the app stops).

    Each new kind of problem is logged once, so a proxy that can never become ready says why in one line.
    """
    assert state.upstream is not None
    settings = state.settings
    logged: str | None = None
    while True:
        try:
            name = await model_name(state.upstream, settings)
            state.serve(await state.upstream.schema(name, settings.model_version))
            return
        except Exception as err:  # anything else would end this task silently and leave /readyz stale
            # Configuration problems (no model named, a broken metadata file) are not Triton's: say so plainly.
            configuration = isinstance(err, ModelUnknown | MetadataError)
            if configuration:
                state.schema_problem = str(err)
            else:
                state.schema_problem = f"model metadata not available from {settings.model_server_url}: {err}"
            if not isinstance(err, NexusError):
                log.exception("unexpected error reading the model's metadata")
            if logged != type(err).__name__:
                level = logging.ERROR if configuration else logging.WARNING
                log.log(level, "%s; retrying every %g s", state.schema_problem, SCHEMA_RETRY_S)
                logged = type(err).__name__
        await asyncio.sleep(SCHEMA_RETRY_S)


async def follow_schema(state: ProxyState) -> None:
    """Re-read the schema every `SCHEMA_REFRESH_S`, so validation follows a new version the watcher put live
    (its interface may differ). Two small metadata calls per worker; a failure keeps the schema it has."""
    assert state.upstream is not None
    while True:
        await asyncio.sleep(SCHEMA_REFRESH_S)
        current = state.schema
        if current is None:
            continue
        try:
            fresh = await state.upstream.schema(current.name, state.settings.model_version)
        except ProxyError:
            continue
        if fresh == current:
            continue
        state.serve(fresh)
        log.info("model %s now serves version %s", fresh.name, ",".join(fresh.versions))


async def model_name(upstream: Upstream, settings: ProxySettings) -> str:
    """Which model to serve: `MODEL_NAME`, else the control plane's metadata, else Triton's repository index.

    The metadata comes before the index because deployments restrict Triton's model-repository API to an
    admin key the proxy does not hold (compose and the chart mount the metadata for the sync anyway);
    the index serves `nexus proxy` pointed at a Triton of its own with nothing configured.
    """
    if settings.model_name:
        return settings.model_name
    if settings.meta_path.is_file():
        return metadata.load(settings.meta_path).name
    try:
        models = await upstream.ready_models()
    except UpstreamForbidden as err:
        raise ModelUnknown(
            f"cannot tell which model to serve: MODEL_NAME is empty, there is no metadata file at "
            f"NEXUS_META_PATH={settings.meta_path}, and {err}; set MODEL_NAME or mount the metadata"
        ) from err
    if len(models) != 1:
        raise NotReady(f"MODEL_NAME is not set and Triton serves {len(models)} ready models {models}")
    return models[0]
