"""Generic Triton Python-backend model: batched PyTorch inference on GPU or CPU.

`nexus sync` copies this file into every version folder beside the model file. Everything it needs comes
from the model config Triton passes in (tensor names and dtypes, `parameters`), so one file serves any
model described by `.nexus_meta.json`. It imports only torch, numpy and Triton's own utilities, because it
runs inside Triton's Python stub (in the NGC image, nothing of this project is installed there).

Batching is real: the requests of one `execute` call are grouped by their non-batch shapes, each group is
concatenated into one tensor per input and run in one forward pass, and the results are split back. A
request that cannot be served gets its own error response and the rest are still answered; when a whole
batched forward fails, its requests are retried one by one so one poisonous request fails alone.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        params = {key: value["string_value"] for key, value in config.get("parameters", {}).items()}
        self.logger = pb_utils.Logger
        self.inputs = [(spec["name"], pb_utils.triton_string_to_numpy(spec["data_type"])) for spec in config["input"]]
        self.outputs = [(spec["name"], pb_utils.triton_string_to_numpy(spec["data_type"])) for spec in config["output"]]
        # The stub is one process per instance: without this each instance spawns a thread per core and
        # they fight over the CPU (measured: ResNet-50 on an H100 10x slower with the default).
        torch.set_num_threads(int(params.get("TORCH_THREADS", "1")))
        if args["model_instance_kind"] == "GPU":
            self.device = torch.device(f"cuda:{args['model_instance_device_id']}")
            torch.cuda.set_device(self.device)
        else:
            self.device = torch.device("cpu")
        path = Path(args["model_repository"]) / args["model_version"] / params["ARTIFACT_FILE"]
        self.model = self._load(path, params["ARTIFACT_FORMAT"])
        self.logger.log_info(f"{args['model_name']} v{args['model_version']}: {path.name} loaded on {self.device}")

    def _load(self, path: Path, artifact_format: str) -> torch.nn.Module:
        if artifact_format == "torchscript":
            return torch.jit.load(str(path), map_location=self.device).eval()
        if artifact_format == "torch_export":
            # torch.export.load rebuilds the graph from its own serialized form (no arbitrary unpickling).
            program = torch.export.load(str(path))
            if self.device.type == "cpu":
                return program.module()
            passes = getattr(torch.export, "passes", None)
            if passes is not None and hasattr(passes, "move_to_device_pass"):
                return passes.move_to_device_pass(program, self.device).module()
            return program.module().to(self.device)  # torch < 2.6 (the NGC 24.10 image ships 2.5)
        raise ValueError(f"unknown ARTIFACT_FORMAT {artifact_format!r}")

    def execute(self, requests: list) -> list:
        responses: list = [None] * len(requests)
        groups: dict[tuple, list[tuple[int, list[np.ndarray]]]] = {}
        for index, request in enumerate(requests):
            try:
                arrays = self._request_arrays(request)
            except ValueError as err:
                responses[index] = self._error(err, pb_utils.TritonError.INVALID_ARG)
                continue
            signature = tuple(array.shape[1:] for array in arrays)
            groups.setdefault(signature, []).append((index, arrays))
        for members in groups.values():
            self._run_group(members, responses)
        return responses

    def _request_arrays(self, request: object) -> list[np.ndarray]:
        arrays = []
        for name, dtype in self.inputs:
            tensor = pb_utils.get_input_tensor_by_name(request, name)
            if tensor is None:
                raise ValueError(f"input {name} is missing")
            arrays.append(tensor.as_numpy().astype(dtype, copy=False))
        rows = {array.shape[0] for array in arrays}
        if len(rows) != 1:
            raise ValueError(f"inputs disagree on the batch dimension: {sorted(rows)}")
        return arrays

    def _run_group(self, members: list[tuple[int, list[np.ndarray]]], responses: list) -> None:
        try:
            columns = [np.concatenate([arrays[i] for _, arrays in members]) for i in range(len(self.inputs))]
            outputs = self._forward(columns)
        except Exception as err:
            if len(members) == 1:
                responses[members[0][0]] = self._error(err, pb_utils.TritonError.INTERNAL)
                return
            self.logger.log_warn(f"batched forward of {len(members)} requests failed ({err}); retrying singly")
            for member in members:
                self._run_group([member], responses)
            return
        offsets = np.cumsum([arrays[0].shape[0] for _, arrays in members])[:-1]
        per_output = [np.split(output, offsets) for output in outputs]
        for position, (index, _) in enumerate(members):
            tensors = [
                pb_utils.Tensor(name, parts[position])
                for (name, _), parts in zip(self.outputs, per_output, strict=True)
            ]
            responses[index] = pb_utils.InferenceResponse(output_tensors=tensors)

    def _forward(self, columns: list[np.ndarray]) -> list[np.ndarray]:
        tensors = [torch.from_numpy(column).to(self.device, non_blocking=True) for column in columns]
        with torch.inference_mode():
            result = self.model(*tensors)
        results = result if isinstance(result, tuple | list) else (result,)
        if len(results) != len(self.outputs):
            raise ValueError(f"model returned {len(results)} outputs, the config declares {len(self.outputs)}")
        rows = columns[0].shape[0]
        arrays = []
        for tensor, (name, dtype) in zip(results, self.outputs, strict=True):
            if tensor.shape[0] != rows:
                raise ValueError(f"output {name} has {tensor.shape[0]} rows for {rows} input rows")
            arrays.append(tensor.detach().cpu().numpy().astype(dtype, copy=False))
        return arrays

    def _error(self, err: Exception, code: int) -> object:
        return pb_utils.InferenceResponse(error=pb_utils.TritonError(str(err), code))

    def finalize(self) -> None:
        self.model = None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
