"""`nexus up` with MODEL_MEMORY_BUDGET: Triton starts with the pinned models only, the watcher (its decider) starts
before the proxy, the proxy is given RESIDENCY_URL, the watchdog probes only loaded models; the residency API's key
reaches the watcher and the proxy alone. Without a budget nothing changes. No servers: the pieces `up` assembles,
one by one."""

from __future__ import annotations

from pathlib import Path

import pytest

from nexusml.command import stack
from nexusml.command.demo import write_metadata
from nexusml.core import catalog
from nexusml.core.errors import SettingsError
from nexusml.core.settings import load
from nexusml.testing.models import stub_metadata
from nexusml.triton.server import TritonServer, command

BUDGET = {"MODEL_MEMORY_BUDGET": "1500MiB", "PINNED_MODELS": "a,b"}


def _settings(tmp_path: Path, **environ: str) -> stack.StackSettings:
    env = {"NEXUS_META_PATH": str(tmp_path / "meta"), "MODEL_REPOSITORY": str(tmp_path / "repo"), **environ}
    return load(stack.StackSettings, env)


@pytest.mark.parametrize(
    ("environ", "url"),
    [
        pytest.param({}, None, id="no-budget"),
        pytest.param({"RESIDENCY_URL": "http://elsewhere:1"}, "http://elsewhere:1", id="no-budget-url-as-given"),
        pytest.param(BUDGET, "http://127.0.0.1:9103", id="budget"),
        pytest.param({**BUDGET, "RESIDENCY_PORT": "9200"}, "http://127.0.0.1:9200", id="budget-port"),
        pytest.param({**BUDGET, "RESIDENCY_URL": "http://elsewhere:1"}, "http://elsewhere:1", id="budget-url-given"),
    ],
)
def test_the_proxy_is_pointed_at_the_watchers_decider_only_with_a_budget(
    tmp_path: Path, environ: dict[str, str], url: str | None
) -> None:
    settings = _settings(tmp_path, **environ)
    proxy = stack._proxy(settings, TritonServer(settings.triton, {}), "", dict(environ))
    assert proxy.env.get("RESIDENCY_URL") == url


@pytest.mark.parametrize(
    ("environ", "order"),
    [
        pytest.param({}, ["proxy", "watcher"], id="no-budget"),
        pytest.param(BUDGET, ["watcher", "proxy"], id="budget"),
        pytest.param({"WATCH_INTERVAL_S": "0"}, ["proxy"], id="no-watcher"),
    ],
)
def test_with_a_budget_the_watcher_starts_before_the_proxy(
    tmp_path: Path, environ: dict[str, str], order: list[str]
) -> None:
    """The proxy is ready only when the decider answers: with a budget it starts after the watcher."""
    settings = _settings(tmp_path, **environ)
    servers = stack._servers(settings, TritonServer(settings.triton, {}), "", dict(environ))
    assert [server.name for server in servers] == order
    for server in servers:  # the budget reaches the watcher (and the proxy) as the user set it
        assert {k: server.env.get(k) for k in BUDGET} == {k: environ.get(k) for k in BUDGET}


@pytest.mark.parametrize(
    ("environ", "loads", "strict"),
    [
        pytest.param({}, ["*"], "true", id="no-budget"),
        pytest.param(BUDGET, ["a", "b"], "false", id="budget-pinned"),
        pytest.param({"MODEL_MEMORY_BUDGET": "8GiB"}, [], "false", id="budget-nothing-pinned"),
    ],
)
def test_with_a_budget_triton_loads_the_pinned_models_only(
    tmp_path: Path, environ: dict[str, str], loads: list[str], strict: str
) -> None:
    """The stack's Triton reads the budget through its own settings, nested in the stack's."""
    (tmp_path / "meta").write_text("{}")  # one model's file: strict unless a budget says otherwise
    settings = _settings(tmp_path, **environ)
    argv = command(settings.triton, TritonServer(settings.triton, {}).dist, tmp_path / "backends")
    assert [arg.partition("=")[2] for arg in argv if arg.startswith("--load-model=")] == loads
    assert f"--strict-readiness={strict}" in argv and f"--exit-on-error={strict}" in argv


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        pytest.param({**BUDGET, "WATCH_INTERVAL_S": "0"}, "needs the watcher", id="watcher-off"),
        pytest.param({**BUDGET, "RESIDENCY_PORT": "0"}, "RESIDENCY_PORT", id="no-residency-api"),
    ],
)
def test_a_budget_without_the_decider_is_refused(tmp_path: Path, environ: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        _settings(tmp_path, **environ)


@pytest.mark.parametrize(
    ("environ", "directory", "probed"),
    [
        pytest.param({}, False, "a", id="file"),
        pytest.param({}, True, None, id="directory"),
        pytest.param(BUDGET, False, None, id="file-budget"),
    ],
)
def test_with_a_budget_the_watchdog_probes_the_loaded_models_only(
    tmp_path: Path, environ: dict[str, str], directory: bool, probed: str | None
) -> None:
    """One model's file probes that model, loaded or not; under a budget a model not loaded was unloaded to make
    room (or never asked for), which no restart should heal."""
    write_metadata(stub_metadata("a"), tmp_path / "a.json")
    models = catalog.read(tmp_path / "a.json")
    assert stack._probed(_settings(tmp_path, **environ), models, directory) == probed


@pytest.mark.parametrize(
    ("environ", "given"),
    [
        pytest.param({}, None, id="made"),
        pytest.param(BUDGET, None, id="made-budget"),
        pytest.param({**BUDGET, "RESIDENCY_KEY": "the-users-key"}, "the-users-key", id="users"),
    ],
)
def test_the_residency_key_goes_to_the_watcher_and_the_proxy_alone(
    tmp_path: Path, environ: dict[str, str], given: str | None
) -> None:
    """Like Triton's keys, one is made for the run unless set; the watcher's API wants it and the proxy sends it.
    The other steps start from an environment without it, also when the user set it: Triton runs the models' code."""
    settings = stack._keyed(_settings(tmp_path, **environ))
    env = stack._environment({**environ, "OTHER": "kept"})
    assert "RESIDENCY_KEY" not in env and env["OTHER"] == "kept"
    triton = TritonServer(settings.triton, env)
    servers = {server.name: server for server in stack._servers(settings, triton, "", env)}
    watcher, proxy = servers["watcher"], servers["proxy"]
    key = watcher.env["RESIDENCY_KEY"]
    assert proxy.env["RESIDENCY_KEY"] == key
    if given:
        assert key == given
    else:  # random, and none of Triton's keys
        assert len(key) >= 24 and key not in (settings.triton.admin_key, settings.triton.shm_key)
    assert "RESIDENCY_KEY" not in triton.env
    again = stack._keyed(_settings(tmp_path, **environ)).watch.residency_key
    assert (again == key) is bool(given), "a new one each run, unless set"
