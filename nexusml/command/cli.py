"""`nexus`: one command with subcommands; the only reader of `os.environ` and mapper of errors to exits.

Command-line options are folded into the environment mapping before settings are loaded, so each process
still builds exactly one settings object from one source.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from nexusml.core import logs
from nexusml.core.errors import (
    AccessDenied,
    ArtifactNotFound,
    DiskError,
    EndpointUnreachable,
    IntegrityError,
    MetadataError,
    ModelLoadFailed,
    NexusError,
    ServerError,
    SettingsError,
    SmokeTestFailed,
    UnsafeArchive,
)
from nexusml.core.process import stop_signals_held
from nexusml.core.settings import LOG_LEVEL, LogSettings, load

if TYPE_CHECKING:
    from nexusml.sync.pipeline import SyncResult
    from nexusml.sync.settings import SyncSettings
    from nexusml.updates.watch import WatchSettings

log = logging.getLogger("nexus")

# The process exit code of each failure, the one table of them (docs/errors.md lists it; scripts branch on it).
# A class not listed exits with its nearest listed ancestor's code; NexusError's 1 is the generic failure.
EXIT_CODES: dict[type[NexusError], int] = {
    NexusError: 1,
    SettingsError: 2,
    MetadataError: 3,
    ArtifactNotFound: 4,
    AccessDenied: 5,
    EndpointUnreachable: 6,
    IntegrityError: 7,
    UnsafeArchive: 8,
    DiskError: 9,
    ServerError: 10,
    ModelLoadFailed: 11,
    SmokeTestFailed: 12,
}


def exit_code(err: NexusError) -> int:
    """`err`'s exit code: its class's in `EXIT_CODES`, else its nearest ancestor's."""
    return next(EXIT_CODES[cls] for cls in type(err).__mro__ if cls in EXIT_CODES)


def _sync(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    from nexusml.core import catalog, metadata
    from nexusml.core.settings import load
    from nexusml.sync import mirror
    from nexusml.sync.pipeline import sync
    from nexusml.sync.settings import SyncSettings

    settings = load(SyncSettings, environ)
    progress = sys.stdout.isatty() and not args.no_progress
    if mirror.is_prefix(settings.meta_uri):
        assert settings.meta_uri is not None
        mirrored = mirror.S3Mirror(settings.meta_uri, settings)
        mirrored.pull()  # the models of the prefix, into the directory
        if mirrored.failures and not catalog.listing(settings.meta_path):
            raise next(iter(mirrored.failures.values()))  # objects under the prefix, and not one could be read
    if catalog.is_directory(settings.meta_path):
        return _sync_directory(settings, progress)
    meta = metadata.load(settings.meta_path)
    _say_synced(meta.name, sync(meta, settings, progress=progress))
    return 0


def _say_synced(name: str, result: SyncResult) -> None:
    version = result.path.name
    state = "downloaded and verified" if result.downloaded else "already present and verified"
    logs.say(f"synced {name} version {version} -> {result.path} ({state})")
    if result.pruned:
        logs.say(f"pruned versions {result.pruned} of {name}")


def _sync_directory(settings: SyncSettings, progress: bool) -> int:
    """Every usable model of the directory; the exit rule is `CatalogResult.failure` (docs/models.md)."""
    from nexusml.core import catalog
    from nexusml.sync.pipeline import sync_catalog

    models = catalog.read(settings.meta_path)
    for cause in models.problems.values():
        log.error("unusable metadata: %s", cause)

    def report(name: str, outcome: SyncResult | NexusError) -> None:
        if isinstance(outcome, NexusError):
            log.error("model %s not synced (%s): %s", name, outcome.code, outcome)
        else:
            _say_synced(name, outcome)

    result = sync_catalog(models, settings, progress, report)
    for name in result.removed:
        logs.say(f"removed {name}: no metadata file names it any more")
    logs.say(
        f"{settings.meta_path}: {len(result.synced)} of {len(models.models) + len(models.problems)} metadata files "
        f"synced; serving {', '.join(result.serving) or 'no model'}"
    )
    failure = result.failure()
    if failure is not None:
        raise failure
    return 0


def _triton(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    from nexusml.core.errors import ServerError
    from nexusml.core.process import Stopped, stop_all, supervising, wait_for_exit
    from nexusml.core.settings import load
    from nexusml.triton.server import TritonServer
    from nexusml.triton.settings import TritonSettings

    server = TritonServer(load(TritonSettings, environ), dict(environ))
    try:
        with supervising():  # the first SIGINT/SIGTERM raises Stopped; later ones are ignored
            server.start()
            logs.say(f"Triton ready: HTTP {server.http_url}, gRPC {server.grpc_url}")
            wait_for_exit([server])
            raise ServerError(f"tritonserver exited unexpectedly with code {server.process.returncode}")
    except Stopped as signal_name:
        log.info("%s: stopping", signal_name)
        return 0
    finally:
        stop_all([server])


def _watch(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    from nexusml.core.process import Stopped, supervising
    from nexusml.core.settings import load
    from nexusml.updates.watch import WatchSettings

    settings = load(WatchSettings, environ)
    try:
        with supervising():  # the first SIGINT/SIGTERM raises Stopped; later ones are ignored
            if settings.interval_s == 0:
                # Off, but still a service that stays up: compose would restart one that exited, in a loop.
                logs.say("watcher off (WATCH_INTERVAL_S=0); waiting to be stopped")
                while True:
                    time.sleep(3600)
            return _watching(settings)
    except Stopped as signal_name:
        log.info("%s: stopping", signal_name)
        return 0


def _watching(settings: WatchSettings) -> NoReturn:
    from nexusml.updates.watch import serve_metrics, watcher

    watching = watcher(settings)
    serve_metrics(settings, watching.metrics)
    source = settings.sync.meta_uri or settings.sync.meta_path
    logs.say(f"watching {source} every {settings.interval_s:g} s; Triton at {settings.triton_url}")
    if watching.residency is not None:
        from nexusml.core.memory import mib
        from nexusml.updates.residency import serve_api

        serve_api(watching.residency, settings.residency_host, settings.residency_port, settings.residency_key)
        logs.say(
            f"models resident within MODEL_MEMORY_BUDGET={mib(watching.residency.budget)}; residency API on "
            f"{settings.residency_host}:{settings.residency_port}"
        )
        watching.residency.warm()
    while True:
        watching.poll()
        time.sleep(settings.interval_s)


def _publish_demo(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    from nexusml.command import demo
    from nexusml.core.settings import load
    from nexusml.sync import storage
    from nexusml.sync.settings import SyncSettings

    settings = load(SyncSettings, environ)
    bucket = args.bucket or settings.s3.model_bucket or "nexus-models"
    spec = demo.DemoSpec(
        name=args.name,
        version=args.model_version,
        width=args.width,
        outputs=args.outputs,
        heads=args.heads,
        format=args.format,
        packaging=args.packaging,
    )
    s3 = storage.client(settings.s3)
    meta = demo.publish(spec, s3, bucket, Path(args.workdir), settings.s3.endpoint_url)
    target = demo.write_metadata(meta, settings.meta_path)
    logs.say(f"published {meta.artifact.uri}; wrote {target}")
    return 0


def _proxy(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    from nexusml.core.settings import load
    from proxy.server import serve
    from proxy.settings import ProxySettings

    return serve(load(ProxySettings, environ), exit_code)


def _up(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    from nexusml.command.stack import StackSettings, up
    from nexusml.core.settings import load

    return up(load(StackSettings, environ), dict(environ))


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="nexus", description="NexusML data plane")
    root.add_argument(
        "--log-level", type=str.lower, choices=LOG_LEVEL.var.choices, help="log level (env LOG_LEVEL, default info)"
    )
    commands = root.add_subparsers(dest="command", required=True)

    sync = commands.add_parser(
        "sync", help="download the model in .nexus_meta.json (or every model of a directory) into the model repository"
    )
    sync.add_argument("--meta", help="metadata file, or a directory of them (env NEXUS_META_PATH)")
    sync.add_argument("--repository", help="model repository (env MODEL_REPOSITORY)")
    sync.add_argument("--no-progress", action="store_true", help="no progress bar even on a terminal")
    sync.set_defaults(handler=_sync)

    triton = commands.add_parser("triton", help="run the bundled tritonserver on the model repository")
    triton.add_argument("--repository", help="model repository (env MODEL_REPOSITORY)")
    triton.set_defaults(handler=_triton)

    demo = commands.add_parser("publish-demo", help="control-plane stand-in: upload the demo model, write metadata")
    demo.add_argument("--meta", help="metadata file to write, or a directory for <name>.json (env NEXUS_META_PATH)")
    demo.add_argument("--bucket", help="bucket (default MODEL_BUCKET, else nexus-models)")
    demo.add_argument("--name", default="demo_mlp")
    demo.add_argument("--model-version", type=int, default=1)
    demo.add_argument("--width", type=int, default=5, help="input features")
    demo.add_argument("--outputs", type=int, default=2, help="values per output tensor")
    demo.add_argument("--heads", type=int, default=1, help="output tensors")
    demo.add_argument("--format", choices=["torchscript", "torch_export"], default="torchscript")
    demo.add_argument("--packaging", choices=["file", "tar"], default="file")
    demo.add_argument("--workdir", default=".nexus/demo", help="where the exported files are kept")
    demo.set_defaults(handler=_publish_demo)

    watch = commands.add_parser(
        "watch", help="put new metadata's version live under traffic: install, smoke-test, switch, or roll back"
    )
    watch.add_argument("--meta", help="metadata file, or a directory of them (env NEXUS_META_PATH)")
    watch.add_argument("--repository", help="model repository (env MODEL_REPOSITORY)")
    watch.set_defaults(handler=_watch)

    proxy = commands.add_parser("proxy", help="serve the JSON front proxy (POST /predict) in front of Triton")
    proxy.set_defaults(handler=_proxy)

    upc = commands.add_parser("up", help="the main job: local S3 if none configured, sync, Triton, proxy")
    upc.set_defaults(handler=_up)
    return root


# The commands that run until stopped; they take SIGINT/SIGTERM as a stop (`supervising`, the proxy's own).
_SERVICES = frozenset({"up", "watch", "triton", "proxy"})

_OPTION_ENV = {"meta": "NEXUS_META_PATH", "repository": "MODEL_REPOSITORY", "log_level": "LOG_LEVEL"}


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    args = parser().parse_args(argv)
    env = dict(os.environ if environ is None else environ)
    for option, variable in _OPTION_ENV.items():
        value = getattr(args, option, None)
        if value:
            env[variable] = value
    handler: Callable[[argparse.Namespace, Mapping[str, str]], int] = args.handler
    # A service's stop signals wait (held) until its handlers are in: a stop while it imports and loads its
    # settings is then as clean as a later one (docs/operations.md, "Stopping").
    held = stop_signals_held() if args.command in _SERVICES else contextlib.nullcontext()
    try:
        with held:
            logging_settings = load(LogSettings, env)  # before the command's settings: they may log
            logs.configure(logging_settings.log_level.upper(), logging_settings.log_format)
            return handler(args, env)
    except NexusError as err:
        if logs.json_output():
            log.error("nexus %s: error: %s", args.command, err)
        else:
            print(f"nexus {args.command}: error: {err}", file=sys.stderr)
        return exit_code(err)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
