"""The models benchmarked, and the in-process compute ceiling.

A `ModelCase` knows how to build and publish its artifact (TorchScript, uploaded to S3 with its metadata
as the control plane would) and what one request looks like. Three cases: the demo MLP of `nexusml.command.demo`
(the CPU run), a ResNet-50 with random weights written here in plain torch (the GPU run, and the large-input
paths; torchvision is not installable beside torch 2.13 on these machines, and nothing is downloaded), and a
tiny image model with the same 3x224x224 input (the large-input paths of `--quick`).
"""

from __future__ import annotations

import json
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from nexusml.command import demo
from nexusml.core.metadata import Artifact, BatchingHints, ModelMetadata, PrecisionHints, TensorSpec
from nexusml.sync import storage

# PRECISION's values (nexusml.sync.settings) as torch dtypes, for the runs beside Triton (ceiling, baselines).
PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass(frozen=True)
class ModelCase:
    key: str  # Triton model name (the batching-off copy is `<key>_nobatch`)
    description: str
    input_shape: tuple[int, ...]  # one row, without the batch dimension
    publish: Callable[[Any, str, Path, str | None], ModelMetadata]  # (s3, bucket, workdir, endpoint) -> meta
    # A companion added only for the large-input paths (the run's own models have no image input): it runs
    # those paths alone, and is synced with batching on only.
    large_only: bool = False

    @property
    def nobatch_key(self) -> str:
        return f"{self.key}_nobatch"

    @property
    def image_input(self) -> bool:
        """A C x H x W input: the large-input paths apply (a request is a whole tensor, not a few numbers)."""
        return len(self.input_shape) == 3

    def array(self) -> np.ndarray:
        """One request's input: deterministic small values, FP32, of the input shape."""
        count = math.prod(self.input_shape)
        flat = [round((i % 7) * 0.25 - 0.75, 2) for i in range(count)] if count > 5 else [1, 2, 3, 4, 5][:count]
        return np.array(flat, dtype=np.float32).reshape(self.input_shape)

    def row(self) -> Any:
        """`array()` as the nested list a JSON body carries."""
        return self.array().tolist()

    def body(self) -> str:
        """The proxy's one-row JSON body."""
        return json.dumps({"input": self.row()}, separators=(",", ":"))

    def v2_binary_body(self, batched: bool = True) -> tuple[bytes, int]:
        """The same row as an Open Inference Protocol request in the binary tensor extension, and the length of
        its JSON header (the `Inference-Header-Content-Length` header).

        The header names the tensor and its byte count; the raw little-endian FP32 bytes follow it. Outputs
        come back binary too (`binary_data_output`), as `tritonclient.http` asks for with `binary_data=True`.
        `batched`: the model takes a batch dimension (the `<key>` model does, `<key>_nobatch` does not).
        """
        data = np.ascontiguousarray(self.array(), dtype="<f4").tobytes()
        shape = [1, *self.input_shape] if batched else list(self.input_shape)
        tensor = {"name": "INPUT__0", "shape": shape, "datatype": "FP32", "parameters": {"binary_data_size": len(data)}}
        header = json.dumps({"inputs": [tensor], "parameters": {"binary_data_output": True}}, separators=(",", ":"))
        return header.encode() + data, len(header)

    def triton_body(self) -> str:
        """The same row as an Open Inference Protocol (KServe v2) JSON request: what a client sends to Triton's own
        HTTP endpoint, or to the proxy's `/v2/.../infer` (path (c2))."""
        flat = torch.tensor(self.row(), dtype=torch.float32).reshape(-1).tolist()
        tensor = {"name": "INPUT__0", "shape": [1, *self.input_shape], "datatype": "FP32", "data": flat}
        return json.dumps({"inputs": [tensor]}, separators=(",", ":"))

    def shape_arg(self) -> str:
        """perf_analyzer's `--shape NAME:d1,d2` (no batch dimension)."""
        return "INPUT__0:" + ",".join(str(d) for d in self.input_shape)


def mlp_case(hidden: int = 1024, layers: int = 3) -> ModelCase:
    spec = demo.DemoSpec(hidden=hidden, layers=layers)

    def publish(s3: Any, bucket: str, workdir: Path, endpoint: str | None) -> ModelMetadata:
        return demo.publish(spec, s3, bucket, workdir / spec.name, endpoint)

    text = f"demo MLP {spec.width}->" + "->".join([str(hidden)] * layers) + f"->{spec.outputs}, fp32, TorchScript"
    return ModelCase(spec.name, text, (spec.width,), publish)


# ------------------------------------------------------------------------------------------- ResNet-50


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        width = planes
        self.conv1 = nn.Conv2d(inplanes, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Module | None = None
        if stride != 1 or inplanes != planes * self.expansion:
            self.downsample = nn.Sequential(
                nn.Conv2d(inplanes, planes * self.expansion, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes * self.expansion),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet50(nn.Module):
    """torchvision's resnet50 architecture (v1.5: stride on the 3x3 conv), random weights, 1000 classes."""

    def __init__(self, num_classes: int = 1000, layers: tuple[int, ...] = (3, 4, 6, 3)) -> None:
        super().__init__()
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.layer1 = self._stage(64, layers[0], 1)
        self.layer2 = self._stage(128, layers[1], 2)
        self.layer3 = self._stage(256, layers[2], 2)
        self.layer4 = self._stage(512, layers[3], 2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512 * Bottleneck.expansion, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def _stage(self, planes: int, blocks: int, stride: int) -> nn.Sequential:
        stage = [Bottleneck(self.inplanes, planes, stride)]
        self.inplanes = planes * Bottleneck.expansion
        stage += [Bottleneck(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*stage)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def _publisher(
    name: str,
    build: Callable[[], nn.Module],
    input_shape: tuple[int, ...],
    classes: int,
    precision: PrecisionHints = PrecisionHints(),  # noqa: B008 (frozen)
) -> Callable[[Any, str, Path, str | None], ModelMetadata]:
    """Publishing for a model written here: seeded weights, traced to TorchScript, uploaded, its metadata."""

    def publish(s3: Any, bucket: str, workdir: Path, endpoint: str | None) -> ModelMetadata:
        folder = workdir / name
        folder.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(0)
        model = build().eval()
        path = folder / "model.pt"
        with warnings.catch_warnings(), torch.inference_mode():
            warnings.simplefilter("ignore")
            torch.jit.save(torch.jit.trace(model, torch.zeros(1, *input_shape)), str(path))
        location = storage.ObjectLocation(bucket, f"{name}/1/model.pt")
        storage.upload(s3, location, path, endpoint)
        return ModelMetadata(
            name=name,
            version=1,
            artifact=Artifact(
                uri=str(location), sha256=storage.sha256_file(path), size=path.stat().st_size, format="torchscript"
            ),
            inputs=(TensorSpec("INPUT__0", "FP32", input_shape),),
            outputs=(TensorSpec("OUTPUT__0", "FP32", (classes,)),),
            batching=BatchingHints(),
            precision=precision,
        )

    return publish


def resnet50_case(image: int = 224) -> ModelCase:
    shape = (3, image, image)
    return ModelCase(
        "resnet50",
        f"ResNet-50 (random weights), 3x{image}x{image} fp32 input, TorchScript",
        shape,
        # As a control plane would publish a validated image model: fp16 and bf16 allowed, so a GPU serves it in
        # fp16 (PRECISION=auto); a CPU keeps fp32. Measured drift from fp32: 0.5 % (see nexusml.core.metadata).
        _publisher("resnet50", ResNet50, shape, 1000, PrecisionHints(("fp16", "bf16"), 0.02)),
    )


class TinyImageNet(nn.Module):
    """A 3xHxW classifier with next to no compute: one 16x16 stride-16 convolution, pooling, a linear layer.

    The large-input paths of `--quick` use it: the proxy's work on a 3x224x224 request (the figure those paths
    measure) is the same as for ResNet-50, while the model's, which would make the smoke run slow on CPU, is nil.
    """

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 16, stride=16)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(torch.relu(self.conv(x))), 1))


def tiny_image_case(image: int = 224) -> ModelCase:
    shape = (3, image, image)
    return ModelCase(
        "tiny_image",
        f"tiny image model (one strided conv, random weights), 3x{image}x{image} fp32, TorchScript",
        shape,
        _publisher("tiny_image", TinyImageNet, shape, 10),
    )


# --------------------------------------------------------------------------------------- the ceiling


def ceiling(
    model_file: Path,
    input_shape: tuple[int, ...],
    batches: tuple[int, ...] = (1, 8, 32, 64, 128, 256),
    seconds: float = 1.0,
    threads: tuple[int, ...] = (1,),
    device: str = "cpu",
    precision: str = "fp32",
) -> dict[str, Any]:
    """Samples/s of the served artifact run in this process at each batch size and torch thread count
    (inference mode, in the precision the served model runs in); the ceiling is the best of them.

    Several thread counts because neither wins everywhere: on a 2-core VM two OpenMP threads collapse when
    anything else wants a core, while one thread is what each Triton instance gets (`TORCH_THREADS=1`).
    A fresh load per point, and ten warm-up calls, keep TorchScript's shape specialisation out of the timing.
    """
    dev = torch.device(device)
    dtype = PRECISIONS[precision]
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    previous = torch.get_num_threads()
    by_threads: dict[str, dict[str, float]] = {}
    try:
        for count in threads:
            torch.set_num_threads(count)
            by_batch: dict[str, float] = {}
            for batch in batches:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    model = torch.jit.load(str(model_file), map_location=dev).eval().to(dtype)
                with torch.inference_mode():
                    x = torch.rand((batch, *input_shape), device=dev, dtype=dtype)
                    for _ in range(10):
                        model(x)
                    sync()
                    runs, started = 0, time.perf_counter()
                    while True:
                        model(x)
                        runs += 1
                        if runs % 4 == 0 or batch >= 32:
                            sync()
                            if time.perf_counter() - started >= seconds:
                                break
                    sync()
                    by_batch[str(batch)] = runs * batch / (time.perf_counter() - started)
            by_threads[str(count)] = by_batch
    finally:
        torch.set_num_threads(previous)
    best_threads, best_batch = max(
        ((t, b) for t, rows in by_threads.items() for b in rows), key=lambda tb: by_threads[tb[0]][tb[1]]
    )
    return {
        "samples_per_s": by_threads[best_threads][best_batch],
        "best_batch": int(best_batch),
        "threads": int(best_threads),
        "by_batch": by_threads[best_threads],
        "by_threads": by_threads,
        "device": device,
        "precision": precision,
    }
