"""`python -m benchmarks.gpu` (or `benchmarks/gpu_run.sh`): the same benchmark on a CUDA machine.

Two models side by side, each through every path: the demo MLP and a ResNet-50 with random weights
(`benchmarks/models.py`, plain torch, built locally: no torchvision, no download). Models are synced with
`DEVICE=cuda` (Triton `KIND_GPU`); the naive server and the in-process ceiling run on the GPU too; NVML
utilisation is sampled during every point. Output format is identical to the CPU run (`results.json`,
`results.md`, PNGs), in one folder. Sized to finish within 8 minutes on one H100: 3 s per point, a time
budget after which remaining points are recorded as skipped rather than overrunning. The large-input paths
(f) run on the ResNet-50 at one concurrency only (8: enough to keep the GPU fed by binary requests and to
saturate a JSON-parsing proxy worker), two points and one proxy start, about 15 s of the budget.

    python -m benchmarks.gpu --out benchmarks/results/gpu-h100
Any `python -m benchmarks` option may follow and overrides these defaults.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from benchmarks import run

DEFAULTS = [
    "--device",
    "cuda",
    "--model",
    "mlp,resnet50",
    "--concurrency",
    "1,8,32,64,128",
    "--large-concurrency",
    "8",
    "--duration",
    "3",
    "--warmup",
    "1",
    "--ceiling-seconds",
    "1",
    "--time-budget-s",
    "420",
    # Every path but (c2), the v2 JSON form of (c): a proxy figure the CPU runs give; its 30 s go to the GPU's.
    "--paths",
    ",".join(path for path in run.ALL_PATHS if path != "proxy_v2"),
]


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if shutil.which("nvidia-smi") is None and not Path("/dev/nvidiactl").exists():
        print("benchmarks.gpu: no NVIDIA GPU found (nvidia-smi, /dev/nvidiactl); use `python -m benchmarks`")
        return 2
    code = run.main([*DEFAULTS, *args])
    out = next((Path(args[i + 1]) for i, a in enumerate(args[:-1]) if a == "--out"), None)
    if out is not None and shutil.which("nvidia-smi"):
        smi = subprocess.run(["nvidia-smi"], capture_output=True, text=True, check=False)
        (out / "nvidia-smi.txt").write_text(smi.stdout + smi.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
