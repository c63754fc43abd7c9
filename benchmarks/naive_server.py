"""The naive reference server the design starts from: one Python web process, one forward per request.

No batching, no workers, no threads: the aiohttp handler parses the JSON, runs the model on that one row
and answers, so requests are served strictly one at a time. It loads the same TorchScript artifact that
Triton serves, so the comparison is model for model.

A baseline only counts if it is written as carefully as what it is compared with, so it runs the way the
proxy does: a uvloop event loop, orjson both ways, the row read by numpy straight from the parsed JSON
(`np.asarray` then `torch.from_numpy`, not `torch.tensor` walking a Python list), no access log.

    python -m benchmarks.naive_server --model-file model_repository/demo_mlp/1/model.pt --port 8090 --input-shape 5

`POST /predict {"input": ROW}` -> `{"output": OUT}` (the proxy's one-row contract; a body that is not such a
row answers 400 `bad_request`); `GET /healthz`.
"""

from __future__ import annotations

import argparse
import warnings

import numpy as np
import orjson
import torch
import uvloop
from aiohttp import web

from benchmarks.models import PRECISIONS

JSON = "application/json"


def _bad_request(message: str) -> web.Response:
    body = {"error": {"code": "bad_request", "message": message}}
    return web.Response(status=400, body=orjson.dumps(body), content_type=JSON)


def read_row(body: bytes, shape: tuple[int, ...] | None) -> np.ndarray:
    """The body's `input` as an FP32 array of `shape` (any non-scalar shape when None); ValueError otherwise.

    JSON cannot carry NaN or infinity, so a non-finite value here came from a `null`: refused like the rest.
    """
    try:
        doc = orjson.loads(body)
        row = doc["input"]
        array = np.asarray(row, dtype=np.float32)
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as err:
        raise ValueError(f"expected a JSON object {{'input': ROW}} of numbers: {err}") from err
    if array.ndim == 0 or (shape is not None and array.shape != shape):
        expected = "a list" if shape is None else f"shape {list(shape)}"
        raise ValueError(f"'input' has shape {list(array.shape)}, expected {expected}")
    if not np.isfinite(array).all():
        raise ValueError("'input' holds a value that is not a number")
    return array


def create_app(
    model: torch.nn.Module,
    device: torch.device,
    dtype: torch.dtype = torch.float32,
    shape: tuple[int, ...] | None = None,
) -> web.Application:
    async def predict(request: web.Request) -> web.Response:
        try:
            array = read_row(await request.read(), shape)
        except ValueError as err:
            return _bad_request(str(err))
        batch = torch.from_numpy(array).unsqueeze(0).to(device=device, dtype=dtype)
        with torch.inference_mode():
            out = model(batch)
        first = out[0] if isinstance(out, tuple | list) else out
        answer = orjson.dumps({"output": first[0].float().cpu().tolist()})
        return web.Response(body=answer, content_type=JSON)

    async def healthz(_: web.Request) -> web.Response:
        return web.Response(body=b'{"status":"ok"}', content_type=JSON)

    app = web.Application(client_max_size=64 << 20)
    app.router.add_post("/predict", predict)
    app.router.add_get("/healthz", healthz)
    return app


def main(argv: list[str] | None = None) -> int:
    args = arguments(__doc__ or "", argv)
    model, device, dtype = load_model(args.model_file, args.threads, args.device, args.precision)
    app = create_app(model, device, dtype, args.input_shape)
    web.run_app(app, host=args.host, port=args.port, access_log=None, print=None, loop=uvloop.new_event_loop())
    return 0


def load_model(
    model_file: str, threads: int, device_name: str, precision: str = "fp32"
) -> tuple[torch.nn.Module, torch.device, torch.dtype]:
    """The TorchScript artifact Triton serves, with `threads` intra-op threads (shared by both baselines), in
    the precision Triton serves it in, so that the comparison stays model for model."""
    torch.set_num_threads(threads)
    device = torch.device(device_name)
    dtype = PRECISIONS[precision]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit is deprecated in favour of torch.export, still supported
        return torch.jit.load(model_file, map_location=device).eval().to(dtype), device, dtype


def _shape(text: str) -> tuple[int, ...]:
    return tuple(int(dim) for dim in text.split(",") if dim.strip())


def arguments(description: str, argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-file", required=True, help="TorchScript file (the artifact Triton serves)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8090)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (Triton instances use 1)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--precision", default="fp32", choices=sorted(PRECISIONS), help="as the served model's")
    parser.add_argument(
        "--input-shape", type=_shape, help="one row's shape, comma separated (e.g. 5): other rows answer 400"
    )
    return parser.parse_args(argv)


if __name__ == "__main__":
    raise SystemExit(main())
