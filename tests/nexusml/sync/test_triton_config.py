"""config.pbtxt generation: resolution of the numbers, the exact dict, and one golden file."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from google.protobuf import json_format

from nexusml.core import metadata
from nexusml.core.errors import SettingsError
from nexusml.core.metadata import BatchingHints, PrecisionHints
from nexusml.core.settings import load
from nexusml.sync import triton_config as config
from nexusml.sync.settings import SyncSettings

HERE = Path(__file__).parent
EXAMPLE = metadata.load(HERE.parents[2] / "examples" / "nexus_meta.example.json")
GOLDEN = HERE / "golden" / "demo_mlp.config.pbtxt"
NO_HINTS = dataclasses.replace(EXAMPLE, batching=BatchingHints())


@pytest.mark.parametrize(
    ("meta", "environ", "expected"),
    [
        pytest.param(NO_HINTS, {}, (32, 50_000, (4, 8, 16, 32)), id="defaults"),
        pytest.param(EXAMPLE, {}, (32, 50_000, (4, 8, 16, 32)), id="metadata-hints"),
        pytest.param(
            EXAMPLE, {"BATCH_SIZE": "64", "BATCH_TIMEOUT_MS": "2"}, (64, 2_000, (4, 8, 16, 32)), id="env-overrides"
        ),
        pytest.param(NO_HINTS, {"BATCH_SIZE": "48"}, (48, 50_000, (4, 8, 16, 32, 48)), id="powers-up-to-size"),
        pytest.param(NO_HINTS, {"PREFERRED_BATCH_SIZES": "16,8"}, (32, 50_000, (8, 16)), id="preferred-sorted"),
    ],
)
def test_serving_numbers(meta: metadata.ModelMetadata, environ: dict[str, str], expected: tuple) -> None:
    serving = config.serving_config(meta, load(SyncSettings, {"DEVICE": "cpu", **environ}))
    assert (serving.max_batch_size, serving.max_queue_delay_us, serving.preferred_batch_sizes) == expected


def test_hint_larger_than_env_batch_size_is_rejected() -> None:
    with pytest.raises(SettingsError, match="BATCH_SIZE"):
        config.serving_config(EXAMPLE, load(SyncSettings, {"BATCH_SIZE": "16"}))


@pytest.mark.parametrize(
    ("device", "gpu", "kind"),
    [
        pytest.param("cuda", False, "KIND_GPU", id="cuda"),
        pytest.param("cpu", True, "KIND_CPU", id="cpu"),
        pytest.param("auto", True, "KIND_GPU", id="auto-gpu"),
        pytest.param("auto", False, "KIND_CPU", id="auto-cpu"),
    ],
)
def test_instance_kind_from_device(device: str, gpu: bool, kind: str) -> None:
    serving = config.serving_config(EXAMPLE, load(SyncSettings, {"DEVICE": device}), gpu=gpu)
    assert serving.kind == kind


FP16_BF16 = dataclasses.replace(EXAMPLE, precision=PrecisionHints(("fp16", "bf16"), 0.05))


@pytest.mark.parametrize(
    ("meta", "environ", "gpu", "expected"),
    [
        pytest.param(FP16_BF16, {}, True, "fp16", id="auto-gpu-first-allowed"),
        pytest.param(FP16_BF16, {}, False, "fp32", id="auto-cpu-fp32"),
        pytest.param(EXAMPLE, {}, True, "fp32", id="auto-gpu-none-allowed"),
        pytest.param(FP16_BF16, {"PRECISION": "bf16"}, True, "bf16", id="explicit-allowed"),
        pytest.param(FP16_BF16, {"PRECISION": "bf16"}, False, "bf16", id="explicit-on-cpu"),
        pytest.param(FP16_BF16, {"PRECISION": "fp32"}, True, "fp32", id="explicit-fp32"),
    ],
)
def test_precision(meta: metadata.ModelMetadata, environ: dict[str, str], gpu: bool, expected: str) -> None:
    serving = config.serving_config(meta, load(SyncSettings, environ), gpu=gpu)
    parameters = config.model_config(meta, serving)["parameters"]
    assert parameters["PRECISION"] == {"string_value": expected}
    tolerance = parameters.get("PRECISION_TOLERANCE", {}).get("string_value")
    assert tolerance == (None if expected == "fp32" else "0.05")


def test_precision_the_metadata_does_not_allow_is_refused() -> None:
    with pytest.raises(SettingsError, match=r"PRECISION=fp16, but the metadata of demo_mlp allows no reduced"):
        config.serving_config(EXAMPLE, load(SyncSettings, {"PRECISION": "fp16"}), gpu=True)


def test_model_config_exact_dict() -> None:
    serving = config.serving_config(EXAMPLE, load(SyncSettings, {"DEVICE": "cpu", "PREFERRED_BATCH_SIZES": "32"}))
    assert config.model_config(EXAMPLE, serving) == {
        "name": "demo_mlp",
        "backend": "python",
        "max_batch_size": 32,
        "version_policy": {"specific": {"versions": [1]}},
        "input": [{"name": "INPUT__0", "data_type": "TYPE_FP32", "dims": [5]}],
        "output": [{"name": "OUTPUT__0", "data_type": "TYPE_FP32", "dims": [2]}],
        "dynamic_batching": {
            "max_queue_delay_microseconds": 50_000,
            "preferred_batch_size": [32],
            "priority_levels": 3,
            "default_priority_level": 2,
            "default_queue_policy": {
                "max_queue_size": 256,
                "default_timeout_microseconds": 2_000_000,
                "timeout_action": "REJECT",
                "allow_timeout_override": True,
            },
        },
        "instance_group": [{"kind": "KIND_CPU", "count": 2}],
        "parameters": {
            "ARTIFACT_FILE": {"string_value": "model.pt"},
            "ARTIFACT_FORMAT": {"string_value": "torchscript"},
            "TORCH_THREADS": {"string_value": "1"},
            "PRECISION": {"string_value": "fp32"},
        },
        "model_warmup": [
            {
                "name": f"batch_{size}",
                "batch_size": size,
                "inputs": {"INPUT__0": {"data_type": "TYPE_FP32", "dims": [5], "zero_data": True}},
            }
            for size in (1, 32)
        ],
    }


def test_single_instance_gets_no_queue_policy_nor_priority_levels() -> None:
    """Triton 2.51 stalls a single instance's batcher ~0.5 s when a queue policy or priority levels are set
    (measured)."""
    serving = config.serving_config(EXAMPLE, load(SyncSettings, {"DEVICE": "cpu", "INSTANCE_COUNT": "1"}))
    batching = config.model_config(EXAMPLE, serving)["dynamic_batching"]
    assert not {"default_queue_policy", "priority_levels", "default_priority_level"} & set(batching)
    assert batching["max_queue_delay_microseconds"] == 50_000


def test_dynamic_batching_can_be_turned_off() -> None:
    serving = config.serving_config(EXAMPLE, load(SyncSettings, {"DEVICE": "cpu", "DYNAMIC_BATCHING": "false"}))
    generated = config.model_config(EXAMPLE, serving)
    assert "dynamic_batching" not in generated
    assert generated["max_batch_size"] == 32  # clients may still send batches of their own
    config.to_pbtxt(generated)


def test_variable_dims_are_not_warmed_up() -> None:
    variable = dataclasses.replace(EXAMPLE, inputs=(dataclasses.replace(EXAMPLE.inputs[0], shape=(-1, 5)),))
    serving = config.serving_config(variable, load(SyncSettings, {"DEVICE": "cpu"}))
    assert config.model_config(variable, serving)["model_warmup"] == []


def test_golden_file() -> None:
    """The rendered text for the example metadata on a GPU host with two instances."""
    settings = load(SyncSettings, {"DEVICE": "cuda", "INSTANCE_COUNT": "2", "TORCH_THREADS": "2"})
    text = config.to_pbtxt(config.model_config(EXAMPLE, config.serving_config(EXAMPLE, settings)))
    assert text == GOLDEN.read_text()


def test_render_rejects_what_triton_would() -> None:
    with pytest.raises(json_format.ParseError):
        config.to_pbtxt({"name": "x", "max_batch_size": "lots"})


def test_from_pbtxt_inverts_to_pbtxt() -> None:
    serving = config.serving_config(EXAMPLE, load(SyncSettings, {"DEVICE": "cpu"}))
    generated = config.model_config(EXAMPLE, serving)
    parsed = config.from_pbtxt(config.to_pbtxt(generated))
    assert parsed["max_batch_size"] == 32
    assert parsed["instance_group"] == [{"kind": "KIND_CPU", "count": 2}]


@pytest.mark.parametrize(
    ("environ", "instances", "expected"),
    [
        pytest.param({}, None, 2, id="default"),
        pytest.param({"INSTANCE_COUNT": "3"}, None, 3, id="instance-count"),
        pytest.param({"MIN_INSTANCE_COUNT": "1"}, None, 1, id="synced-with-min"),
        pytest.param({"MIN_INSTANCE_COUNT": "2", "INSTANCE_COUNT": "2"}, None, 2, id="min-equal"),
        pytest.param({"MIN_INSTANCE_COUNT": "1"}, 2, 2, id="scaled-by-the-watcher"),
    ],
)
def test_instance_count(environ: dict[str, str], instances: int | None, expected: int) -> None:
    serving = config.serving_config(EXAMPLE, load(SyncSettings, {"DEVICE": "cpu", **environ}), instances=instances)
    assert serving.instance_count == expected
    assert config.instance_count(config.from_pbtxt(config.to_pbtxt(config.model_config(EXAMPLE, serving)))) == expected


def test_min_instance_count_unset_changes_nothing() -> None:
    fixed = config.model_config(EXAMPLE, config.serving_config(EXAMPLE, load(SyncSettings, {"DEVICE": "cpu"})))
    assert fixed["instance_group"] == [{"kind": "KIND_CPU", "count": 2}]
    same = load(SyncSettings, {"DEVICE": "cpu", "MIN_INSTANCE_COUNT": "2"})
    assert config.model_config(EXAMPLE, config.serving_config(EXAMPLE, same)) == fixed
