"""What one small prediction costs the proxy, piece by piece: `python -m benchmarks.request_cost`.

Each piece of the path a `POST /predict` takes is timed alone, in this process, on the objects the proxy
uses (its settings, app, tenancy, coalescer, validation, metrics), with the body `make run`'s users send; the
upstream call is its client-side work only (building the gRPC request, reading the answer), no Triton. With
`--floor`, aiohttp's own cost is measured too: wrk against a bare application with one middleware and against
aiohttp's low-level server, CPU per request of each (the proxy cannot cost less than the first).

The figures are microseconds per request on this machine, medians of `--repeat` runs; they say where the time
goes and what a change saved, side by side (docs/decisions.md, "Where a small request's CPU goes").
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
import timeit
from collections.abc import Callable
from pathlib import Path

import numpy as np
import tritonclient.grpc as grpcclient
import uvloop
from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from tritonclient.grpc._utils import _get_inference_request

from nexusml.core.settings import load
from nexusml.testing.environment import free_port
from proxy import inference, middleware, validation
from proxy.app import create_app
from proxy.client import infer_request
from proxy.coalesce import Coalescer
from proxy.schema import ModelSchema, TensorSchema
from proxy.settings import ProxySettings
from proxy.state import STATE
from proxy.tenants import DEFAULT_TENANT, TENANCY, TENANT, Tenancy

BODY = b'{"input": [1, 2, 3, 4, 5]}'
SCHEMA = ModelSchema(
    "demo_mlp",
    ("1",),
    "python",
    32,
    (TensorSchema("INPUT__0", "FP32", (5,)),),
    (TensorSchema("OUTPUT__0", "FP32", (2,)),),
    instance_count=2,
    preferred_batch_sizes=(4, 8, 16, 32),
)
BATCH = 16  # requests per merged batch in the coalescer and gRPC pieces (per-request figures divide by it)


def per_call_us(call: Callable[[], object], number: int, repeat: int) -> float:
    return statistics.median(timeit.repeat(call, number=number, repeat=repeat)) / number * 1e6


def pieces(number: int, repeat: int) -> list[tuple[str, float]]:
    settings = load(ProxySettings, {"MODEL_SERVER_URL": "grpc://127.0.0.1:1", "MODEL_NAME": SCHEMA.name})
    app = create_app(settings)
    state = app[STATE]
    state.add_model(SCHEMA.name).serve(SCHEMA)
    request = make_mocked_request(
        "POST", "/predict", headers={"Content-Type": "application/json", "Content-Length": str(len(BODY))}, app=app
    )
    match = asyncio.run(_resolve(app, request))
    request._match_info = match
    request[TENANT] = DEFAULT_TENANT
    request[middleware.DEADLINE] = 1e9
    request[middleware.MODEL] = SCHEMA.name
    tenancy = app[TENANCY]
    keyed = Tenancy.from_settings(("key-one",), None)
    keyed_request = make_mocked_request("POST", "/predict", headers={"X-API-Key": "key-one"}, app=app)
    ids = middleware.request_ids()
    prediction = validation.to_prediction(validation.parse_json(BODY), SCHEMA)
    outputs = {"OUTPUT__0": np.ones((1, 2), np.float32)}
    response = web.Response(body=b"{}", content_type=middleware.JSON)

    def admit_release() -> None:
        state.admit(DEFAULT_TENANT)
        state.release(DEFAULT_TENANT)

    def tenant_accounting() -> None:
        tenancy.charge_rows(DEFAULT_TENANT, 1, 0.0)
        state.metrics.tenant_request(DEFAULT_TENANT.name, 1)

    timed: list[tuple[str, Callable[[], object], int]] = [
        ("request id", lambda: ids(request), 1),
        ("tenant: no keys", lambda: middleware.identify(request, tenancy, frozenset()), 1),
        ("tenant: by API key (sha256)", lambda: middleware.identify(keyed_request, keyed, frozenset()), 1),
        ("rate limit check", lambda: keyed.admit(DEFAULT_TENANT, 0.0), 1),
        ("route template", lambda: middleware.route(request), 1),
        ("model lookup (/predict's default, then by name)", lambda: (state.default, state.model(SCHEMA.name)), 1),
        ("Content-Type/-Encoding check", lambda: inference.check_headers(request), 1),
        ("deadline", lambda: inference.request_deadline(request), 1),
        ("MAX_IN_FLIGHT admit + release", admit_release, 1),
        ("parse + validate the body", lambda: validation.predict_from_body(BODY, SCHEMA), 1),
        ("tenant rows + metrics", tenant_accounting, 1),
        ("answer body (orjson)", lambda: validation.response_body(outputs, SCHEMA, prediction), 1),
        (
            "web.Response with model headers",
            lambda: web.Response(
                body=b"{}", content_type=middleware.JSON, headers={"X-Model-Name": "m", "X-Model-Version": "1"}
            ),
            1,
        ),
        ("metrics + access log (record)", lambda: middleware.record(state, request, response, 1e-3, "id", None), 1),
        ("gRPC request (tritonclient)", lambda: _tritonclient_request(prediction), BATCH),
        ("gRPC request (the proxy's infer_request)", lambda: _proxy_request(prediction), BATCH),
    ]
    figures = [(name, per_call_us(call, number, repeat) / per) for name, call, per in timed]
    figures.append(("coalescer: queue, batch, answer", _coalescer_us(prediction, number, repeat)))
    return figures


async def _resolve(app: web.Application, request: web.Request) -> web.UrlMappingMatchInfo:
    return await app.router.resolve(request)  # type: ignore[return-value]


def _tritonclient_request(prediction: validation.Prediction) -> object:
    array = np.repeat(prediction.arrays["INPUT__0"], BATCH, axis=0)
    tensor = grpcclient.InferInput("INPUT__0", list(array.shape), "FP32")
    tensor.set_data_from_numpy(array)
    return _get_inference_request(
        model_name=SCHEMA.name,
        inputs=[tensor],
        model_version="1",
        request_id="",
        outputs=None,
        sequence_id=0,
        sequence_start=False,
        sequence_end=False,
        priority=2,
        timeout=1_000_000,
        parameters=None,
    ).SerializeToString()


def _proxy_request(prediction: validation.Prediction) -> object:
    array = np.repeat(prediction.arrays["INPUT__0"], BATCH, axis=0)
    return infer_request(SCHEMA, "1", {"INPUT__0": array}, 1.0, "", 2).SerializeToString()


def _coalescer_us(prediction: validation.Prediction, number: int, repeat: int) -> float:
    """One request's share of a merged batch: queued, planned, merged, sent (an instant fake), answered; less
    the same requests awaiting a plain future each (their tasks are the handlers' own, not the coalescer's)."""
    arrays = prediction.arrays

    async def send(merged: dict[str, np.ndarray], rows: int, deadline: float, level: int) -> tuple[dict, str]:
        return {"OUTPUT__0": np.zeros((rows, 2), np.float32)}, "1"

    async def plain(future: asyncio.Future[None]) -> None:
        await future

    async def rounds(count: int, coalesced: bool) -> float:
        coalescer = Coalescer(send, max_rows=32, slots=1, max_wait_s=0.01, preferred=SCHEMA.preferred_batch_sizes)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 60
        started = time.perf_counter()
        for _ in range(count):
            if coalesced:
                await asyncio.gather(*(coalescer.submit(arrays, 1, deadline) for _ in range(BATCH)))
            else:
                futures = [loop.create_future() for _ in range(BATCH)]
                waiting = asyncio.gather(*(plain(future) for future in futures))
                await asyncio.sleep(0)
                for future in futures:
                    future.set_result(None)
                await waiting
        return (time.perf_counter() - started) / (count * BATCH) * 1e6

    count = max(number // BATCH, 1)
    per = [uvloop.run(rounds(count, True)) - uvloop.run(rounds(count, False)) for _ in range(repeat)]
    return statistics.median(per)


_FLOOR_SERVER = """
import sys, uvloop
from aiohttp import web
async def handler(request):
    await request.read()
    return web.Response(body=b'{"output":[0.1,0.2]}', content_type="application/json")
async def main(kind, port):
    if kind == "app":
        @web.middleware
        async def each_request(request, handler):
            return await handler(request)
        app = web.Application(middlewares=[each_request])
        app.router.add_post("/predict", handler)
        runner = web.AppRunner(app, access_log=None)
    else:
        runner = web.ServerRunner(web.Server(handler, access_log=None))
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    await __import__("asyncio").Event().wait()
uvloop.run(main(sys.argv[1], int(sys.argv[2])))
"""


def floor(duration_s: int, connections: int) -> list[tuple[str, float]]:
    """aiohttp's own CPU per request: an application with one middleware, and the low-level server."""
    figures = []
    with tempfile.TemporaryDirectory() as workdir:
        script = Path(workdir) / "post.lua"
        script.write_text(
            f'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\nwrk.body = \'{BODY.decode()}\'\n'
        )
        for kind, name in (("app", "aiohttp application + 1 middleware"), ("low", "aiohttp low-level server")):
            port = free_port()
            server = subprocess.Popen([sys.executable, "-c", _FLOOR_SERVER, kind, str(port)])
            try:
                time.sleep(1.5)
                before = _cpu_s(server.pid)
                out = subprocess.run(
                    [
                        "wrk",
                        "-t2",
                        f"-c{connections}",
                        f"-d{duration_s}s",
                        "-s",
                        str(script),
                        f"http://127.0.0.1:{port}/predict",
                    ],
                    capture_output=True,
                    text=True,
                    check=True,
                ).stdout
                used = _cpu_s(server.pid) - before
                requests = int(next(line for line in out.splitlines() if "requests in" in line).split()[0])
                figures.append((f"{name} (wrk, {connections} connections)", used / requests * 1e6))
            finally:
                server.terminate()
                server.wait()
    return figures


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--number", type=int, default=4000, help="calls per timing run")
    parser.add_argument("--repeat", type=int, default=5, help="timing runs; the median is reported")
    parser.add_argument("--floor", action="store_true", help="also measure aiohttp's own cost with wrk")
    parser.add_argument("--duration", type=int, default=5, help="seconds per wrk run (--floor)")
    args = parser.parse_args(argv)
    figures = pieces(args.number, args.repeat)
    if args.floor:
        figures += floor(args.duration, 64)
    print("| piece | µs per request |\n|---|---:|")
    for name, micros in figures:
        print(f"| {name} | {micros:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
