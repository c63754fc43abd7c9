"""The Triton Python-backend model behind the `faulty` test models (copied into a repository by
`reliability.models`); never imported by the project itself.

One small batched model, `OUTPUT__0 = [sum(row), 2 * row[0]]`, so every answer can be checked exactly.
Its `BEHAVIOUR` parameter turns it into a fault:
- `crash`: a row whose first value is `CRASH_TRIGGER` makes the stub call `os._exit`, as a segfaulting
  extension or an OOM-killed stub would, with other requests possibly in the same batch.
- `sleep`: a row whose first value is positive sleeps that many seconds in short steps, checking whether
  Triton cancelled the request; a cancelled request is recorded as a file in `MARKER_DIR`, so a test can
  see that the proxy's deadline reached the model.
"""

import json
import os
import time
import uuid

import numpy as np
import triton_python_backend_utils as pb_utils

CRASH_TRIGGER = -7777.0
STEP_S = 0.01


class TritonPythonModel:
    def initialize(self, args):
        params = json.loads(args["model_config"]).get("parameters", {})
        self.behaviour = params.get("BEHAVIOUR", {}).get("string_value", "")
        self.marker_dir = params.get("MARKER_DIR", {}).get("string_value", "")

    def _mark(self, what):
        if self.marker_dir:
            with open(os.path.join(self.marker_dir, f"{what}-{uuid.uuid4().hex}"), "w") as f:
                f.write(str(time.time()))

    def _sleep(self, request, seconds):
        """Sleep up to `seconds`; returns False when Triton cancelled the request meanwhile."""
        end = time.monotonic() + min(seconds, 60.0)
        while time.monotonic() < end:
            if request.is_cancelled():
                return False
            time.sleep(STEP_S)
        return True

    def execute(self, requests):
        responses = []
        for request in requests:
            rows = pb_utils.get_input_tensor_by_name(request, "INPUT__0").as_numpy().astype(np.float32)
            if self.behaviour == "crash" and (rows[:, 0] == CRASH_TRIGGER).any():
                os._exit(17)
            if self.behaviour == "sleep" and rows.size and float(rows[:, 0].max()) > 0:
                self._mark("started")
                if not self._sleep(request, float(rows[:, 0].max())):
                    self._mark("cancelled")
                    responses.append(
                        pb_utils.InferenceResponse(
                            error=pb_utils.TritonError("cancelled", pb_utils.TritonError.CANCELLED)
                        )
                    )
                    continue
                self._mark("finished")
            out = np.stack([rows.sum(axis=1), 2 * rows[:, 0]], axis=1).astype(np.float32)
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT__0", out)]))
        return responses
