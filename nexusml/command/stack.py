"""`nexus up` (`make run`): the whole data plane on one machine, in the order compose and Helm use.

local S3 + demo model (only when no S3 is configured) -> `nexus sync` -> Triton -> proxy on `PORT` -> watcher.
Each step is its own process with its own settings, as in the container deployments; a step that fails
stops the job with that step's exit code, and SIGINT/SIGTERM stop the servers in reverse order.

While serving, a watchdog (`nexusml.triton.watchdog`) sends Triton one probe inference every
`WATCHDOG_INTERVAL_S` and restarts it on the same ports after `WATCHDOG_FAILURES` failures in a row: a dead
Python-backend stub leaves the model READY but answering nothing, which only a restart heals. The proxy keeps
running and reconnects by itself. The watchdog runs in this loop, not in a thread, so the restart and the
check for servers that died never race.

`NEXUS_META_PATH` may name a directory of metadata (`nexusml.core.catalog`): the sync installs every model of it, the
proxy serves them all (it is given the directory, and no MODEL_NAME), the watcher follows each, and the watchdog
probes every model of the repository that is loaded (a model being added or removed is not a dead one).

The watcher (`nexus watch`, a child like the others) puts a new metadata's version live without downtime
(docs/operations.md, "Model updates"). Triton's repository API is restricted to a key made here for this run (unless
TRITON_ADMIN_KEY is set), which only the watcher is given; its shared-memory API to another key (unless
TRITON_SHM_KEY is set), which only the proxy is given. The watcher's residency API wants a third (unless
RESIDENCY_KEY is set), which only the watcher and the proxy are given: the other steps (Triton, which runs the
models' code, above all) do not get it, also when the user set it.

With MODEL_MEMORY_BUDGET (docs/operations.md, "Memory budget") Triton starts with PINNED_MODELS only (its settings
read the budget), the watcher's decider loads the others on demand within the budget, and the proxy asks it through
RESIDENCY_URL, set here to the watcher's RESIDENCY_HOST and RESIDENCY_PORT unless given. The decider is needed:
the watcher then starts before the proxy (whose readiness asks it), and WATCH_INTERVAL_S=0 is refused. The watchdog
probes only the models that are loaded, as for a directory: a model unloaded to make room is not a dead one.
"""

from __future__ import annotations

import dataclasses
import logging
import secrets
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

from nexusml.command.s3local import LocalS3
from nexusml.core import catalog, logs, metadata
from nexusml.core.errors import NexusError, ServerError, SettingsError
from nexusml.core.probe import served_models
from nexusml.core.process import ManagedProcess, Stopped, call, guarded, stop_all, supervising
from nexusml.core.settings import META_PATH, RESIDENCY_KEY, env, nested
from nexusml.sync import mirror
from nexusml.sync.settings import S3Settings
from nexusml.triton.server import TritonServer
from nexusml.triton.settings import TritonSettings
from nexusml.triton.watchdog import Watchdog, probe
from nexusml.updates.watch import WatchSettings
from proxy.settings import ProxySettings

log = logging.getLogger(__name__)

LOCAL_BUCKET = "nexus-models"


@dataclass(frozen=True)
class StackSettings:
    """`nexus up` (`make run`): local S3 when none is configured -> demo model -> sync -> Triton -> proxy."""

    meta_path: Path = META_PATH.field()
    local_s3_port: int = env(
        "LOCAL_S3_PORT", 9000, "port of the local S3 started when none is configured", int, minimum=1, maximum=65535
    )
    watchdog_interval_s: float = env(
        "WATCHDOG_INTERVAL_S",
        5.0,
        "seconds between the watchdog's probe inferences to Triton; 0 turns the watchdog off",
        float,
        minimum=0,
        maximum=3600,
    )
    watchdog_failures: int = env(
        "WATCHDOG_FAILURES",
        3,
        "failed probes in a row that make the watchdog restart Triton",
        int,
        minimum=1,
        maximum=100,
    )
    watchdog_timeout_s: float = env(
        "WATCHDOG_TIMEOUT_S",
        5.0,
        "longest a probe (ready, config, one inference) may take",
        float,
        minimum=0.1,
        maximum=600,
    )
    watchdog_backoff_s: float = env(
        "WATCHDOG_BACKOFF_S",
        30.0,
        "least time between two restarts, doubled after each one up to WATCHDOG_BACKOFF_MAX_S",
        float,
        minimum=0,
        maximum=86400,
    )
    watchdog_backoff_max_s: float = env(
        "WATCHDOG_BACKOFF_MAX_S",
        600.0,
        "cap of the back-off; probes passing this long in a row reset it",
        float,
        minimum=0,
        maximum=86400,
    )
    s3: S3Settings = nested(S3Settings)
    triton: TritonSettings = nested(TritonSettings)
    proxy: ProxySettings = nested(ProxySettings)
    watch: WatchSettings = nested(WatchSettings)

    def validate(self) -> None:
        if self.watch.interval_s > 0 and self.watch.metrics_port == 0:
            raise SettingsError(
                "`nexus up` sees the watcher ready on WATCH_METRICS_PORT: set a port, or WATCH_INTERVAL_S=0"
            )
        if mirror.is_prefix(self.watch.sync.meta_uri):
            if self.watch.interval_s == 0:
                raise SettingsError(
                    f"WATCH_META_URI={self.watch.sync.meta_uri}: the watcher follows the prefix; unset "
                    "WATCH_INTERVAL_S=0"
                )
            if self.local_s3:
                raise SettingsError(
                    f"WATCH_META_URI={self.watch.sync.meta_uri}: with no S3 configured `nexus up` runs a local S3 "
                    "with the demo model; set AWS_ENDPOINT_URL or MODEL_BUCKET for your S3"
                )
        if self.watch.memory_budget is not None and self.watch.interval_s == 0:
            raise SettingsError(
                "MODEL_MEMORY_BUDGET needs the watcher (its decider loads and unloads the models): unset "
                "WATCH_INTERVAL_S=0, or MODEL_MEMORY_BUDGET"
            )
        if self.watch.memory_budget is not None and self.watch.residency_port == 0:
            raise SettingsError(
                "MODEL_MEMORY_BUDGET: the proxy asks the watcher's decider on RESIDENCY_PORT: set a port, not 0"
            )
        if self.watchdog_backoff_max_s < self.watchdog_backoff_s:
            raise SettingsError(
                f"WATCHDOG_BACKOFF_MAX_S={self.watchdog_backoff_max_s:g} is below "
                f"WATCHDOG_BACKOFF_S={self.watchdog_backoff_s:g}"
            )

    @property
    def local_s3(self) -> bool:
        """No endpoint and no bucket configured: run a local S3 and publish the demo model into it."""
        return self.s3.endpoint_url is None and self.s3.model_bucket is None


class StepFailed(NexusError):
    """A one-shot step (publish, sync) exited non-zero: `nexus up` exits with that step's code."""

    def __init__(self, name: str, exit_code: int) -> None:
        super().__init__(f"{name} failed with exit code {exit_code}")
        self.exit_code = exit_code


def _step(name: str, argv: list[str], env: dict[str, str]) -> None:
    log.info("%s: %s", name, logs.command_line(argv))
    code = call(guarded([sys.executable, "-m", "nexusml", *argv]), name, env)
    if code != 0:
        raise StepFailed(name, code)


def _proxy(settings: StackSettings, triton: TritonServer, model: str, env: dict[str, str]) -> ManagedProcess:
    """The front proxy, talking gRPC to the Triton just started with the shared-memory key of this run, ready when
    /readyz says so. `model` is the one model of a metadata file; empty for a directory, which the proxy reads."""
    proxy_env = {
        **env,
        "MODEL_SERVER_URL": triton.grpc_url,
        "MODEL_NAME": model,
        "NEXUS_META_PATH": str(settings.meta_path),
        "TRITON_SHM_KEY": triton.settings.shm_key or "",
        RESIDENCY_KEY.var.name: settings.watch.residency_key or "",  # the key of the watcher's API: it sends it
    }
    if settings.watch.memory_budget is not None:
        proxy_env["RESIDENCY_URL"] = settings.proxy.residency_url or _residency_url(settings)
    ready = f"http://127.0.0.1:{settings.proxy.port}/readyz"
    return _child("proxy", "proxy", proxy_env, ready, settings.proxy.shutdown_grace_s + 5, "PORT")


def _residency_url(settings: StackSettings) -> str:
    """The watcher's residency API, where it binds it (as its metrics' ready URL below)."""
    return f"http://{settings.watch.residency_host}:{settings.watch.residency_port}"


def _watcher(settings: StackSettings, triton: TritonServer, env: dict[str, str]) -> ManagedProcess:
    """`nexus watch` on the Triton just started, with the admin key of this run; ready when its metrics answer."""
    watch_env = {
        **env,
        "MODEL_SERVER_URL": triton.grpc_url,
        "TRITON_ADMIN_KEY": triton.settings.admin_key or "",
        RESIDENCY_KEY.var.name: settings.watch.residency_key or "",
    }
    ready = f"http://{settings.watch.metrics_host}:{settings.watch.metrics_port}/metrics"
    return _child("watcher", "watch", watch_env, ready, settings.watch.load_timeout_s, "WATCH_METRICS_PORT")


def _child(
    name: str, command: str, env: dict[str, str], ready_url: str, stop_timeout_s: float, port_setting: str
) -> ManagedProcess:
    """`nexus <command>` as a child of this stack, ready when `ready_url` answers."""
    return ManagedProcess(
        name,
        [sys.executable, "-m", "nexusml", command],
        env,
        ready_url=ready_url,
        startup_timeout_s=60,
        stop_timeout_s=stop_timeout_s,
        port_setting=port_setting,
    )


def _curl(meta: metadata.ModelMetadata, port: int, route: str) -> str:
    width = meta.inputs[0].shape[0] if len(meta.inputs) == 1 and meta.inputs[0].shape[0] > 0 else 5
    body = '{"input": [' + ", ".join(str(i + 1) for i in range(width)) + "]}"
    return f"  curl -X POST http://localhost:{port}{route} -H \"Content-Type: application/json\" -d '{body}'\n"


def _banner(models: catalog.Catalog, port: int, directory: bool) -> str:
    if not directory:
        meta = next(iter(models.models.values()))
        return (
            f"\n{meta.name} v{meta.version} is served. Front proxy: http://localhost:{port}\n"
            f"{_curl(meta, port, '/predict')}Stop with Ctrl-C."
        )
    served = ", ".join(f"{m.name} v{m.version}" for m in models.models.values()) or "no model yet"
    return (
        f"\n{served}: served from {len(models.models)} metadata files. Front proxy: http://localhost:{port} "
        f"(GET /v1/models lists them)\n"
        + "".join(_curl(meta, port, f"/models/{meta.name}/predict") for meta in models.models.values())
        + "Stop with Ctrl-C."
    )


def _servers(settings: StackSettings, triton: TritonServer, model: str, env: dict[str, str]) -> list[ManagedProcess]:
    """The proxy and the watcher (unless WATCH_INTERVAL_S=0), in the order they start: the proxy, then the watcher;
    with a budget the watcher first, since the proxy is ready only when the watcher's decider answers."""
    proxy = _proxy(settings, triton, model, env)
    if settings.watch.interval_s == 0:
        return [proxy]
    watcher = _watcher(settings, triton, env)
    return [watcher, proxy] if settings.watch.memory_budget is not None else [proxy, watcher]


def _environment(environ: dict[str, str]) -> dict[str, str]:
    """The environment every step starts from: the user's, less RESIDENCY_KEY, which the settings hold and only the
    watcher and the proxy are given."""
    return {name: value for name, value in environ.items() if name != RESIDENCY_KEY.var.name}


def _keyed(settings: StackSettings) -> StackSettings:
    """`settings` with this run's keys, each made here unless the user set it: Triton's admin key (for the watcher),
    its shared-memory key (for the proxy), and the residency API's (the watcher's, also given to the proxy)."""
    return dataclasses.replace(
        settings,
        triton=dataclasses.replace(
            settings.triton,
            admin_key=settings.triton.admin_key or secrets.token_urlsafe(24),
            shm_key=settings.triton.shm_key or secrets.token_urlsafe(24),
        ),
        watch=dataclasses.replace(
            settings.watch, residency_key=settings.watch.residency_key or secrets.token_urlsafe(24)
        ),
    )


def up(settings: StackSettings, environ: dict[str, str]) -> int:
    env = _environment(environ)
    running: list[ManagedProcess] = []
    try:
        with supervising():  # the first SIGINT/SIGTERM raises Stopped; later ones are ignored
            _run(settings, env, running)
    except Stopped as signal_name:
        log.info("%s: stopping", signal_name)
        return 0
    except StepFailed as failed:
        log.error("%s", failed)  # the step printed its own cause
        return failed.exit_code
    finally:
        stop_all(running)


def _run(settings: StackSettings, env: dict[str, str], running: list[ManagedProcess]) -> NoReturn:
    """Start every step in order, then wait; appends each server to `running` as it starts."""
    if settings.local_s3:
        s3 = LocalS3(settings.local_s3_port, env, port_setting="LOCAL_S3_PORT")
        s3.start()
        running.append(s3)
        env.update(s3.client_environment())
        env["MODEL_BUCKET"] = LOCAL_BUCKET
        log.info("no S3 configured: local S3 at %s, publishing the demo model", s3.endpoint_url)
        _step("publish demo model", ["publish-demo"], env)
    _step("sync", ["sync"], env)
    settings = _keyed(settings)
    logs.hide(settings.watch.residency_key)  # Triton's keys: TritonServer hides them
    triton = TritonServer(settings.triton, env)
    triton.start()
    running.append(triton)
    directory = catalog.is_directory(settings.meta_path)
    models = catalog.read(settings.meta_path)
    for server in _servers(settings, triton, "" if directory else models.names[0], env):
        server.start()
        running.append(server)
    logs.say(_banner(models, settings.proxy.port, directory))
    watchdog = _watchdog(settings, running, running.index(triton), _probed(settings, models, directory), env)
    while True:
        for process in running:
            if not process.alive():
                code = process.process.returncode if process.process else None
                raise ServerError(f"{process.name} exited unexpectedly with code {code}")
        if watchdog is not None:
            watchdog.poll()
        time.sleep(0.2)


def _probed(settings: StackSettings, models: catalog.Catalog, directory: bool) -> str | None:
    """The one model the watchdog probes, or None: every model of the repository that is loaded (a directory, or
    a budget, under which a model not loaded is one unloaded to make room or never asked for)."""
    return None if directory or settings.watch.memory_budget is not None else models.names[0]


def _watchdog(
    settings: StackSettings, running: list[ManagedProcess], slot: int, model: str | None, env: dict[str, str]
) -> Watchdog | None:
    """The watchdog over the Triton at `running[slot]`; a restart replaces it there, on the same ports.

    `model` is the one model probed; None (a directory of metadata): every model of the repository that is loaded,
    as the deployments' healthcheck does. One that is not ready (the watcher still loading or removing it, or a
    model that failed to load) is not what a restart heals: a dead stub leaves its model READY."""
    if settings.watchdog_interval_s == 0:
        return None

    def check() -> str | None:
        triton = running[slot]
        assert isinstance(triton, TritonServer)
        if model is not None:
            return probe(triton.http_url, model, settings.watchdog_timeout_s)
        for name in served_models(settings.triton.repository):
            cause = probe(triton.http_url, name, settings.watchdog_timeout_s, loaded_only=True)
            if cause is not None:
                return cause
        return None

    def restart(cause: str) -> None:
        running[slot].stop()
        fresh = TritonServer(settings.triton, env)
        running[slot] = fresh  # before start(): a signal meanwhile stops the new one too
        fresh.start()
        log.info("watchdog: Triton restarted (restart %d) and ready", watchdog.restarts)

    watchdog = Watchdog(
        check,
        restart,
        failures=settings.watchdog_failures,
        interval_s=settings.watchdog_interval_s,
        backoff_s=settings.watchdog_backoff_s,
        backoff_max_s=settings.watchdog_backoff_max_s,
    )
    return watchdog
