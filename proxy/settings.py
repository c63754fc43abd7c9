"""`nexus proxy` settings: one frozen object per process, read from the environment once, at start-up.

Declared with `nexusml.core.settings.env` like every other settings class, so a bad value stops start-up with a
`SettingsError` naming the variable, and docs/settings.md is generated from the same declarations. Triton's
address, the metadata path and the log level are the shared declarations of `nexusml.core.settings`.
The coalescer has settings of its own (`COALESCE_*`): `BATCH_SIZE` and `BATCH_TIMEOUT_MS` mean Triton's
batcher only (`max_batch_size`, `max_queue_delay_microseconds`), which the sync writes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from nexusml.core.errors import SettingsError
from nexusml.core.settings import (
    LOG_FORMAT,
    LOG_LEVEL,
    META_PATH,
    MODEL_SERVER_URL,
    RESIDENCY_KEY,
    SHM_KEY,
    env,
    parse_bool,
)


def parse_list(raw: str) -> tuple[str, ...]:
    """'a, b,,c' -> ('a', 'b', 'c'): comma lists with blanks ignored."""
    return tuple(part.strip() for part in raw.split(",") if part.strip())


# A -1 dimension is most often a sequence length. 8192 covers the usual model contexts; the body limit alone
# (1 MiB, some 500,000 numbers) bounds memory but not the model's work, which for attention grows with the
# square of the length.
DEFAULT_MAX_DYNAMIC_DIM = 8192


@dataclass(frozen=True)
class ProxySettings:
    """The JSON front proxy in front of Triton."""

    model_server_url: str = MODEL_SERVER_URL.field()
    model_name: str = env(
        "MODEL_NAME",
        "",
        "serve this one model only; empty: every model of NEXUS_META_PATH (a file or a directory of them), else "
        "every ready model of Triton's repository index",
    )
    default_model: str = env(
        "DEFAULT_MODEL",
        "",
        "model that POST /predict answers for; empty: the only model served, except with NEXUS_META_PATH a "
        "directory (there, and with several models, /predict answers 404 model_not_found and clients POST "
        "/models/{name}/predict)",
    )
    meta_path: Path = META_PATH.field()
    model_version: str = env(
        "MODEL_VERSION", "", "pin a version; empty lets Triton answer with its newest ready version"
    )
    host: str = env("HOST", "0.0.0.0", "address the proxy listens on")
    port: int = env("PORT", 8080, "port the proxy listens on", int, minimum=1, maximum=65535)
    workers: int = env(
        "PROXY_WORKERS",
        0,
        "worker processes sharing the port (SO_REUSEPORT); 0: one per 4 usable CPUs, 1 to 8, leaving cores to Triton",
        int,
        minimum=0,
        maximum=64,
    )
    coalesce: bool = env(
        "PROXY_COALESCE",
        True,
        "merge concurrent requests into one upstream request, adaptively (see COALESCE_*)",
        parse_bool,
    )
    coalesce_max_rows: int = env(
        "COALESCE_MAX_ROWS",
        0,
        "most rows the coalescer merges into one upstream request; 0: the model's max_batch_size",
        int,
        minimum=0,
        maximum=4096,
    )
    coalesce_max_batches: int = env(
        "COALESCE_MAX_BATCHES",
        0,
        "merged requests in flight to Triton at once; 0: the model's instance count (what Triton runs at once)",
        int,
        minimum=0,
        maximum=1024,
    )
    coalesce_max_wait_ms: float = env(
        "COALESCE_MAX_WAIT_MS",
        10.0,
        "longest a request queues for a free slot before it is sent anyway (a cap; no request waits at low load)",
        float,
        minimum=0,
        maximum=60_000,
    )
    priority_max_wait_ms: float = env(
        "PRIORITY_MAX_WAIT_MS",
        1000.0,
        "longest a lower priority class's request waits behind higher classes in the coalescer; then it goes "
        "ahead of them",
        float,
        minimum=0,
        maximum=600_000,
    )
    max_body_bytes: int = env(
        "MAX_BODY_BYTES",
        1 << 20,
        "largest request body read (also when chunked); larger answers 413",
        int,
        minimum=64,
        maximum=1 << 30,
    )
    max_dynamic_dim: int = env(
        "MAX_DYNAMIC_DIM",
        DEFAULT_MAX_DYNAMIC_DIM,
        "longest a variable (-1) input dimension may be; longer, or empty, answers 422 wrong_shape",
        int,
        minimum=1,
        maximum=1 << 20,
    )
    max_in_flight: int = env(
        "MAX_IN_FLIGHT",
        256,
        "predictions per worker past their body (uploads in progress hold none); beyond it 429 at once",
        int,
        minimum=1,
        maximum=100_000,
    )
    max_active: int = env(
        "MAX_ACTIVE",
        32,
        "predictions per worker worked on at once while two tenants or more are present (one in progress, or "
        "admitted within 1 s); beyond it a tenant above its weighted share waits, unparsed, for a place",
        int,
        minimum=1,
        maximum=100_000,
    )
    request_timeout_ms: float = env(
        "REQUEST_TIMEOUT_MS",
        10_000.0,
        "deadline of a prediction from arrival; the rest is sent to Triton",
        float,
        minimum=1,
        maximum=600_000,
    )
    connect_timeout_s: float = env(
        "UPSTREAM_CONNECT_TIMEOUT_S",
        2.0,
        "timeout of Triton health and metadata calls",
        float,
        minimum=0.05,
        maximum=600,
    )
    shared_memory: str = env(
        "UPSTREAM_SHARED_MEMORY",
        "auto",
        "tensors to and from Triton through a POSIX shared-memory region per worker: auto (when Triton registers "
        "it, i.e. shares this host's /dev/shm; else in the message, said once in the log and GET /v1/models) or off",
        choices=("auto", "off"),
    )
    shared_memory_bytes: int = env(
        "UPSTREAM_SHARED_MEMORY_BYTES",
        64 << 20,
        "size of each worker's shared-memory region, in bytes (a worker holds two while one retires); a request "
        "whose inputs and outputs do not fit in what is free goes in the message",
        int,
        minimum=1 << 16,
        maximum=1 << 34,
    )
    shm_key: str | None = SHM_KEY.field()
    retry_after_s: int = env(
        "RETRY_AFTER_S", 1, "Retry-After sent with 429 and 503 answers", int, minimum=1, maximum=3600
    )
    header_timeout_s: float = env(
        "HEADER_TIMEOUT_S",
        15.0,
        "a connection must send a request head within this long of opening or of its last response",
        float,
        minimum=0.1,
        maximum=3600,
    )
    body_timeout_s: float = env(
        "BODY_TIMEOUT_S",
        10.0,
        "longest a request body may take to arrive; slower answers 408",
        float,
        minimum=0.1,
        maximum=3600,
    )
    api_keys: tuple[str, ...] = env(
        "API_KEYS",
        (),
        "comma list of accepted keys (Authorization: Bearer or X-API-Key), each its own tenant key-1, key-2, ...; "
        "empty with no API_KEYS_FILE = no auth",
        parse_list,
        secret=True,
    )
    api_keys_file: Path | None = env(
        "API_KEYS_FILE",
        None,
        "YAML or JSON keys file: tenants with their keys, weight, priority, admin and rate limits "
        "(docs/api.md, Tenants); re-read when it changes; not with API_KEYS (default: none)",
        Path,
    )
    api_keys_poll_s: float = env(
        "API_KEYS_POLL_S",
        1.0,
        "how often each worker checks API_KEYS_FILE for a change (a removed key stops working within this long)",
        float,
        minimum=0.05,
        maximum=3600,
    )
    open_endpoints: tuple[str, ...] = env(
        "OPEN_ENDPOINTS",
        ("/healthz", "/readyz", "/metrics", "/openapi.yaml"),
        "comma list of paths that need no API key",
        parse_list,
    )
    ready_probe: bool = env(
        "READY_PROBE",
        True,
        "/readyz also runs a probe inference, so a dead Python-backend stub reads as not ready",
        parse_bool,
    )
    shutdown_grace_s: float = env(
        "SHUTDOWN_GRACE_S",
        20.0,
        "on SIGTERM, how long in-flight requests may finish",
        float,
        minimum=0,
        maximum=3600,
    )
    residency_url: str = env(
        "RESIDENCY_URL",
        "",
        "where `nexus watch` decides which models are loaded within MODEL_MEMORY_BUDGET (its RESIDENCY_HOST and "
        "RESIDENCY_PORT, e.g. http://127.0.0.1:9103): a request for a model not loaded waits for its load; empty: "
        "every model is taken as loaded, as without a budget",
    )
    residency_key: str | None = RESIDENCY_KEY.field()
    log_level: str = LOG_LEVEL.field()  # the workers are processes of their own: each sets its logging from it
    log_format: str = LOG_FORMAT.field()
    access_log: str = env(
        "ACCESS_LOG",
        "errors",
        "which requests get a JSON log line: all (at INFO, 5xx at WARNING), errors (status >= 400 only), off",
        choices=("all", "errors", "off"),
    )

    def validate(self) -> None:
        bad = [path for path in self.open_endpoints if not path.startswith("/")]
        if bad:
            raise SettingsError(f"OPEN_ENDPOINTS={','.join(self.open_endpoints)}: paths must start with /")
        if any(not key or any(c.isspace() for c in key) for key in self.api_keys):
            raise SettingsError("API_KEYS: keys must not contain whitespace")
        if self.model_name and self.default_model and self.default_model != self.model_name:
            raise SettingsError(
                f"DEFAULT_MODEL={self.default_model} but MODEL_NAME={self.model_name} serves that model only"
            )
        if self.residency_url:
            parts = urlsplit(self.residency_url)
            if parts.scheme not in ("http", "https") or not parts.netloc:
                raise SettingsError(f"RESIDENCY_URL={self.residency_url}: expected http://host:port")
        if self.api_keys and self.api_keys_file is not None:
            raise SettingsError(
                "API_KEYS and API_KEYS_FILE are both set: use one (each key of API_KEYS can be a tenant in the file)"
            )

    @property
    def upstream_protocol(self) -> str:
        """'grpc' or 'http', from the scheme of `MODEL_SERVER_URL`."""
        return urlsplit(self.model_server_url).scheme

    @property
    def upstream_address(self) -> str:
        """`host:port` without the scheme, the form tritonclient wants."""
        return urlsplit(self.model_server_url).netloc

    @property
    def worker_count(self) -> int:
        """`PROXY_WORKERS`, with 0 resolved from the CPUs this process may use.

        Measured on 2 cores: a second worker takes CPU from Triton and lowers throughput, so small machines get
        one; a GPU host (16+ cores) gets one per 4 CPUs, capped at 8, leaving most cores to Triton's front end.
        """
        if self.workers:
            return self.workers
        return min(8, max(1, usable_cpus() // 4))


def usable_cpus(cpu_max: Path = Path("/sys/fs/cgroup/cpu.max")) -> int:
    """CPUs this process may run on, lowered to a container's CPU limit (cgroup v2 quota) when there is one:
    a pod limited to 2 CPUs on a 64-core node must not start 16 workers."""
    cpus = len(os.sched_getaffinity(0))
    try:
        quota, period = cpu_max.read_text().split()[:2]
        if quota != "max":
            cpus = min(cpus, max(1, -(-int(quota) // int(period))))
    except (OSError, ValueError):
        pass
    return cpus
