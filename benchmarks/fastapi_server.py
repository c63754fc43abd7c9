"""The design's own baseline: a FastAPI app run by uvicorn, one forward per request.

What the design describes as the starting point, and what many teams write first: a pydantic body model,
an `async def` endpoint that runs the model on the one row it got, one uvicorn process. Same TorchScript
artifact as Triton serves and the same contract as the proxy's one-row `/predict`.

    python -m benchmarks.fastapi_server --model-file model_repository/demo_mlp/1/model.pt --port 8091
"""

from __future__ import annotations

import torch
import uvicorn
from fastapi import FastAPI
from pydantic import BaseModel

from benchmarks.naive_server import arguments, load_model


class Row(BaseModel):
    input: list[float]


def create_app(model: torch.nn.Module, device: torch.device, dtype: torch.dtype = torch.float32) -> FastAPI:
    app = FastAPI()

    @app.post("/predict")
    async def predict(row: Row) -> dict[str, list[float]]:
        batch = torch.tensor([row.input], dtype=dtype, device=device)
        with torch.inference_mode():
            out = model(batch)
        first = out[0] if isinstance(out, tuple | list) else out
        return {"output": first[0].float().cpu().tolist()}

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app


def main(argv: list[str] | None = None) -> int:
    args = arguments(__doc__ or "", argv)
    model, device, dtype = load_model(args.model_file, args.threads, args.device, args.precision)
    uvicorn.run(create_app(model, device, dtype), host=args.host, port=args.port, log_level="warning", access_log=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
