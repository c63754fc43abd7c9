"""Fault-injecting test models laid out in a Triton repository next to a normal model.

`add_faulty_model(repository, name, behaviour)` writes `<repository>/<name>/config.pbtxt` (generated
through Triton's protobuf, like the sync's) and `<name>/1/model.py` (a copy of
`reliability/fault_model.py`). The model is tiny and its answer is a pure function of its input
(`expected_output`), so a scenario can tell a correct 200 from a wrong one.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from nexusml.sync.triton_config import to_pbtxt

MODEL_SOURCE = Path(__file__).with_name("fault_model.py")
CRASH_TRIGGER = -7777.0
WIDTH = 5


def faulty_config(name: str, behaviour: str, marker_dir: Path | None = None, max_batch_size: int = 8) -> str:
    """`config.pbtxt` text: batched, dynamic batching with a short delay, one CPU instance."""
    parameters = {"BEHAVIOUR": {"string_value": behaviour}}
    if marker_dir is not None:
        parameters["MARKER_DIR"] = {"string_value": str(marker_dir)}
    return to_pbtxt(
        {
            "name": name,
            "backend": "python",
            "max_batch_size": max_batch_size,
            "input": [{"name": "INPUT__0", "data_type": "TYPE_FP32", "dims": [WIDTH]}],
            "output": [{"name": "OUTPUT__0", "data_type": "TYPE_FP32", "dims": [2]}],
            "dynamic_batching": {
                "max_queue_delay_microseconds": 1000,
                "default_queue_policy": {"allow_timeout_override": True, "timeout_action": "REJECT"},
            },
            "instance_group": [{"kind": "KIND_CPU", "count": 1}],
            "parameters": parameters,
        }
    )


def add_faulty_model(repository: Path, name: str, behaviour: str, marker_dir: Path | None = None) -> Path:
    """Lay out one test model (`behaviour`: `crash`, `sleep` or `` for a plain one) in `repository`."""
    model_dir = repository / name
    (model_dir / "1").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(MODEL_SOURCE, model_dir / "1" / "model.py")
    (model_dir / "config.pbtxt").write_text(faulty_config(name, behaviour, marker_dir))
    return model_dir


def expected_output(row: list[float]) -> list[float]:
    """What the test model answers for `row`, in float32 like the model."""
    values = np.asarray(row, dtype=np.float32)
    return [float(values.sum(dtype=np.float32)), float(np.float32(2) * values[0])]
