"""The naive reference server the design starts from: one Python web process, one forward per request.

No batching, no workers, no threads: the aiohttp handler parses the JSON, runs the model on that one row
and answers, so requests are served strictly one at a time. It loads the same TorchScript artifact that
Triton serves, so the comparison is model for model.

    python -m benchmarks.naive_server --model-file model_repository/demo_mlp/1/model.pt --port 8090

`POST /predict {"input": ROW}` -> `{"output": OUT}` (the proxy's one-row contract); `GET /healthz`.
"""

from __future__ import annotations

import argparse
import warnings

import orjson
import torch
from aiohttp import web

from benchmarks.models import PRECISIONS


def create_app(model: torch.nn.Module, device: torch.device, dtype: torch.dtype = torch.float32) -> web.Application:
    async def predict(request: web.Request) -> web.Response:
        try:
            row = orjson.loads(await request.read())["input"]
            batch = torch.tensor([row], dtype=dtype, device=device)
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as err:
            body = {"error": {"code": "bad_request", "message": str(err)}}
            return web.Response(status=400, body=orjson.dumps(body), content_type="application/json")
        with torch.inference_mode():
            out = model(batch)
        first = out[0] if isinstance(out, tuple | list) else out
        answer = orjson.dumps({"output": first[0].float().cpu().tolist()})
        return web.Response(body=answer, content_type="application/json")

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    app = web.Application(client_max_size=64 << 20)
    app.router.add_post("/predict", predict)
    app.router.add_get("/healthz", healthz)
    return app


def main(argv: list[str] | None = None) -> int:
    args = arguments(__doc__ or "", argv)
    model, device, dtype = load_model(args.model_file, args.threads, args.device, args.precision)
    web.run_app(create_app(model, device, dtype), host=args.host, port=args.port, access_log=None, print=None)
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


def arguments(description: str, argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-file", required=True, help="TorchScript file (the artifact Triton serves)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8090)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (Triton instances use 1)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--precision", default="fp32", choices=sorted(PRECISIONS), help="as the served model's")
    return parser.parse_args(argv)


if __name__ == "__main__":
    raise SystemExit(main())
