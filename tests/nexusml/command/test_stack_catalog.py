"""`nexus up` with a directory of metadata: the proxy is given the directory, the banner and the watchdog cover
every model. No servers: the pieces `up` assembles, one by one."""

from __future__ import annotations

from pathlib import Path

import pytest

from nexusml.command import stack
from nexusml.command.demo import write_metadata
from nexusml.core import catalog
from nexusml.core.errors import SettingsError
from nexusml.core.process import ManagedProcess
from nexusml.core.settings import load
from nexusml.testing.models import stub_metadata
from nexusml.triton.server import TritonServer


def _settings(tmp_path: Path, meta_path: Path) -> stack.StackSettings:
    env = {"NEXUS_META_PATH": str(meta_path), "MODEL_REPOSITORY": str(tmp_path / "repo")}
    return load(stack.StackSettings, env)


@pytest.mark.parametrize(
    ("directory", "model_name"), [pytest.param(True, "", id="directory"), pytest.param(False, "a", id="file")]
)
def test_the_proxy_is_given_the_directory_and_no_model_name(tmp_path: Path, directory: bool, model_name: str) -> None:
    meta_path = tmp_path / ("meta" if directory else "meta.json")
    settings = _settings(tmp_path, meta_path)
    triton = TritonServer(settings.triton, {})
    proxy = stack._proxy(settings, triton, model_name, {"MODEL_NAME": "set by the user"})
    assert proxy.env["MODEL_NAME"] == model_name
    assert proxy.env["NEXUS_META_PATH"] == str(meta_path)


def test_the_banner_names_every_model_and_its_route(tmp_path: Path) -> None:
    (tmp_path / "meta").mkdir()
    for meta in (stub_metadata("a", width=3), stub_metadata("b", width=2)):
        write_metadata(meta, tmp_path / "meta")
    banner = stack._banner(catalog.read(tmp_path / "meta"), 8080, directory=True)
    assert "/models/a/predict" in banner and '{"input": [1, 2, 3]}' in banner
    assert "/models/b/predict" in banner and '{"input": [1, 2]}' in banner
    write_metadata(stub_metadata("a", width=3), tmp_path / "a.json")
    single = stack._banner(catalog.read(tmp_path / "a.json"), 8080, directory=False)
    assert "a v1 is served" in single and "/predict" in single and "/models/" not in single


def test_the_watchdog_probes_only_the_loaded_models_of_a_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A model that is not ready (being added or removed, or failed to load) is not what a restart heals: every
    model is probed with `loaded_only`, and a loaded one that does not answer is the cause."""
    settings = _settings(tmp_path, tmp_path / "meta")
    for name in ("a", "b"):
        (settings.triton.repository / name).mkdir(parents=True)
        (settings.triton.repository / name / "config.pbtxt").write_text("")
    answers: dict[str, str | None] = {"a": None, "b": None}
    asked: list[tuple[str, bool]] = []

    def fake_probe(url: str, model: str, timeout: float, loaded_only: bool = False) -> str | None:
        asked.append((model, loaded_only))
        return answers[model]

    monkeypatch.setattr(stack, "probe", fake_probe)
    running: list[ManagedProcess] = [TritonServer(settings.triton, {})]
    watchdog = stack._watchdog(settings, running, 0, None, {})
    assert watchdog is not None
    assert watchdog.check() is None
    assert asked == [("a", True), ("b", True)]
    answers["b"] = "model b is ready but does not answer an inference"
    assert watchdog.check() == answers["b"]


@pytest.mark.parametrize(
    ("extra", "refused"),
    [
        pytest.param({"WATCH_INTERVAL_S": "0", "MODEL_BUCKET": "bucket"}, "follows the prefix", id="watcher-off"),
        pytest.param({}, "with no S3 configured", id="local-s3"),
    ],
)
def test_an_s3_prefix_needs_the_watcher_and_an_s3_of_its_own(
    tmp_path: Path, extra: dict[str, str], refused: str
) -> None:
    env = {
        "NEXUS_META_PATH": str(tmp_path / "models"),
        "MODEL_REPOSITORY": str(tmp_path / "repo"),
        "WATCH_META_URI": "s3://bucket/models/",
        **extra,
    }
    with pytest.raises(SettingsError, match=refused):
        load(stack.StackSettings, env)
