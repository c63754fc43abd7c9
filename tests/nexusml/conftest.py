"""Fixtures shared by the tests of the `nexusml` package."""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path
from typing import ClassVar

import pytest

MODEL_FILE = Path(__file__).resolve().parents[2] / "nexusml" / "backend" / "model.py"


class BackendLogger:
    """Triton's `pb_utils.Logger`, keeping the warnings it is given."""

    warnings: ClassVar[list[str]] = []

    @classmethod
    def log_warn(cls, message: str) -> None:
        cls.warnings.append(message)

    @classmethod
    def log_info(cls, message: str) -> None:
        pass


@pytest.fixture
def backend(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    """nexusml/backend/model.py loaded from its file as Triton's stub loads it, `triton_python_backend_utils` (which
    exists only inside the stub) a stand-in whose Logger is `BackendLogger`, its warnings emptied."""
    fake = types.ModuleType("triton_python_backend_utils")
    fake.Logger = BackendLogger  # type: ignore[attr-defined]
    monkeypatch.setattr(BackendLogger, "warnings", [])
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", fake)
    spec = importlib.util.spec_from_file_location("nexus_backend_model", MODEL_FILE)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
