"""The residency decider's rules, against a fake Triton (its repository API) and stub reports written by hand.

What Triton really does with the loads and unloads, and what the stubs really report, is held by
`test_residency_servers.py`."""

from __future__ import annotations

import json
import re
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from nexusml.core.errors import ModelLoadFailed, ServerError, SettingsError
from nexusml.core.memory import Memory
from nexusml.core.settings import RESIDENCY_HEADER, load
from nexusml.sync.repository import Repository
from nexusml.updates.residency import LoadFailed, NoRoom, OverBudget, Residency, TooLate, UnknownModel, serve_api
from nexusml.updates.watch import WatchSettings

MIB = 2**20


class FakeAdmin:
    """Triton's repository API: loading a model makes its stub write a report of `sizes[model]` bytes."""

    def __init__(self, reports: Path, sizes: dict[str, Memory], broken: tuple[str, ...] = ()) -> None:
        self.reports, self.sizes, self.broken = reports, sizes, broken
        self.loaded: list[str] = []
        self.calls: list[str] = []
        self.lock = threading.RLock()

    def ready(self) -> list[str]:
        return list(self.loaded)

    def states(self) -> dict[str, str]:
        return dict.fromkeys(self.loaded, "READY")

    def load(self, model: str) -> None:
        self.calls.append(f"load {model}")
        if model in self.broken:
            raise ModelLoadFailed(f"loading {model}: its model.py raised")
        self.loaded.append(model)
        size = self.sizes[model]
        report = {"model": model, "version": "1", "instance": f"{model}_0", "pid": 1, "host_bytes": size.host}
        report["device_bytes"] = size.device
        (self.reports / f"{model}@{model}_0.json").write_text(json.dumps({**report, "written": time.time()}))

    def unload(self, model: str) -> None:
        self.calls.append(f"unload {model}")
        self.loaded.remove(model)
        (self.reports / f"{model}@{model}_0.json").unlink()


class FakeSwapper:
    def __init__(self, repo: Repository, admin: FakeAdmin) -> None:
        self.repo, self.admin = repo, admin

    def instances(self, name: str) -> int:
        return 1


def decider(
    tmp_path: Path, budget_mib: int, sizes_mib: dict[str, int | tuple[int, int]], **options: object
) -> Residency:
    """A decider over models of `sizes_mib` (host, or (host, device)) in a repository of their folders."""
    repository, reports = tmp_path / "repository", tmp_path / "reports"
    reports.mkdir()
    for name in sizes_mib:
        (repository / name).mkdir(parents=True)
        config = f'name: "{name}"\nversion_policy {{ specific {{ versions: 1 }} }}'
        (repository / name / "config.pbtxt").write_text(config)
    sizes = {name: Memory(*(size if isinstance(size, tuple) else (size, 0))) * MIB for name, size in sizes_mib.items()}
    admin = FakeAdmin(reports, sizes, **options)  # type: ignore[arg-type]
    swapper = FakeSwapper(Repository(repository), admin)
    pinned = tuple(options.pop("pinned", ())) if "pinned" in options else ()
    return Residency(budget_mib * MIB, pinned, swapper, CollectorRegistry(), reports)  # type: ignore[arg-type]


def measured(residency: Residency, name: str, size_mib: int, version: str = "1") -> None:
    """`name` measured at an earlier load of `version`."""
    entry = residency.entry(name)
    entry.memory, entry.version = Memory(size_mib * MIB), version


def test_the_least_recently_used_idle_model_makes_room(tmp_path: Path) -> None:
    residency = decider(tmp_path, 250, {"a": 100, "b": 100, "c": 100})
    residency.ensure("a")
    residency.ensure("b")
    residency.heartbeat([], ["a"])  # a used after b: b is the least recently used
    answer = residency.ensure("c")
    assert answer["loaded"] and answer["bytes"] == 100 * MIB
    assert sorted(residency.swapper.admin.loaded) == ["a", "c"]
    assert residency.snapshot()["models"]["b"]["state"] == "not_resident"
    assert residency.snapshot()["models"]["b"]["evictions"] == 1


def test_host_and_device_memory_are_each_within_the_budget(tmp_path: Path) -> None:
    residency = decider(tmp_path, 250, {"a": (50, 200), "b": (50, 100)})
    residency.ensure("a")
    residency.ensure("b")  # 100 MiB of host would fit; 300 MiB of device would not
    assert residency.swapper.admin.loaded == ["b"]
    snapshot = residency.snapshot()
    assert snapshot["used_bytes"] == 100 * MIB
    assert snapshot["models"]["a"]["device_bytes"] == 200 * MIB and snapshot["models"]["a"]["bytes"] == 250 * MIB


def test_a_busy_model_is_never_unloaded(tmp_path: Path) -> None:
    residency = decider(tmp_path, 150, {"a": 100, "b": 100})
    residency.ensure("a")
    with pytest.raises(NoRoom, match="busy or pinned"):
        residency.ensure("b", busy=["a"])
    assert residency.swapper.admin.loaded == ["a"]


def test_a_resident_model_answers_without_a_load(tmp_path: Path) -> None:
    residency = decider(tmp_path, 500, {"a": 100})
    assert residency.ensure("a")["loaded"]
    assert not residency.ensure("a")["loaded"]
    assert residency.swapper.admin.calls == ["load a"]


@pytest.mark.parametrize(
    ("name", "error", "message"),
    [
        pytest.param("zzz", UnknownModel, "not in the repository", id="unknown"),
        pytest.param("huge", OverBudget, "needs 600.0 MiB .* more than MODEL_MEMORY_BUDGET=500.0 MiB", id="too-large"),
        pytest.param("broken", LoadFailed, "its model.py raised", id="load-fails"),
    ],
)
def test_refusals_name_their_cause(tmp_path: Path, name: str, error: type[Exception], message: str) -> None:
    residency = decider(tmp_path, 500, {"a": 100, "huge": 600, "broken": 10}, broken=("broken",))
    residency.ensure("a")
    measured(residency, "huge", 600)  # measured at an earlier load
    with pytest.raises(error, match=message):
        residency.ensure(name)
    assert residency.swapper.admin.loaded == ["a"]


def test_a_failed_load_is_not_tried_again_at_once(tmp_path: Path) -> None:
    residency = decider(tmp_path, 500, {"broken": 10}, broken=("broken",))
    for _ in range(3):
        with pytest.raises(ModelLoadFailed):
            residency.ensure("broken")
    assert residency.swapper.admin.calls == ["load broken"]
    assert residency.snapshot()["models"]["broken"]["state"] == "failed"


def test_enforce_unloads_idle_models_while_over_budget(tmp_path: Path) -> None:
    residency = decider(tmp_path, 500, {"a": 100, "b": 100, "c": 100})
    for name in ("a", "b", "c"):
        residency.ensure(name)
    residency.budget = 150 * MIB
    residency.heartbeat(["c"], [])
    assert residency.enforce() == ["a", "b"]
    assert residency.swapper.admin.loaded == ["c"]


def test_warm_loads_the_most_recently_used_that_fit(tmp_path: Path) -> None:
    first = decider(tmp_path, 500, {"a": 100, "b": 100, "c": 100})
    for name in ("a", "b", "c"):
        first.ensure(name)
        time.sleep(0.01)
    first.remember()
    for name in ("a", "b", "c"):
        first.swapper.admin.unload(name)
    again = Residency(250 * MIB, (), first.swapper, CollectorRegistry(), first.reports)  # type: ignore[arg-type]
    again.warm()
    assert sorted(again.swapper.admin.loaded) == ["b", "c"]


def test_the_api_answers_with_the_error_codes(tmp_path: Path) -> None:
    residency = decider(tmp_path, 500, {"a": 100, "huge": 600})
    measured(residency, "huge", 600)
    server = serve_api(residency, "127.0.0.1", 0, key="k3y")
    base = f"http://127.0.0.1:{server.server_address[1]}/v1/residency"
    try:

        def post(path: str, body: dict, key: str = "k3y") -> tuple[int, dict]:
            headers = {RESIDENCY_HEADER: key}
            request = urllib.request.Request(base + path, json.dumps(body).encode(), headers, method="POST")
            try:
                with urllib.request.urlopen(request, timeout=10) as response:
                    return response.status, json.loads(response.read())
            except urllib.error.HTTPError as err:
                return err.code, json.loads(err.read())

        assert post("/a", {"busy": []})[0] == 200
        assert post("/%61", {})[1]["name"] == "a", "the name is URL-decoded, as the proxy encodes it"
        assert post("/huge", {})[1]["error"]["code"] == "over_memory_budget"
        assert post("/huge", {})[0] == 507
        assert post("/nope", {})[0] == 404
        assert post("/a", {"busy": "a"})[0] == 400
        status, snapshot = post("", {"busy": ["a"], "used": ["a"]})
        assert status == 200 and snapshot["models"]["a"]["state"] == "resident"
        assert snapshot["used_bytes"] == 100 * MIB and snapshot["budget_bytes"] == 500 * MIB
        assert post("", {}, key="wrong") == (401, post("", {}, key="")[1])
        assert post("", {}, key="")[1]["error"]["code"] == "unauthorized"
        assert post("/a", {"deadline_s": "soon"})[0] == 400
        residency.swapper.admin.ready = lambda: 1 / 0  # type: ignore[method-assign]
        status, answer = post("", {})
        assert (status, answer["error"]["code"]) == (500, "internal_error")
    finally:
        server.shutdown()


@pytest.mark.parametrize(
    ("name", "state", "problem"),
    [
        pytest.param("a", "not_resident", None, id="fits: loads on its first request"),
        pytest.param("huge", "failed", "holds 300.0 MiB once loaded .* even alone", id="too-large: refused"),
    ],
)
def test_a_new_model_is_unloaded_after_its_install(tmp_path: Path, name: str, state: str, problem: str | None) -> None:
    residency = decider(tmp_path, 200, {"a": 100, "huge": 300})
    residency.swapper.admin.load(name)  # the watcher's swap loaded it to test it
    residency.settle_new(name)
    assert residency.swapper.admin.loaded == []
    listing = residency.snapshot()["models"][name]
    assert listing["state"] == state and listing["bytes"] is not None
    assert (problem is None) == (listing["problem"] is None)
    if problem is not None:
        assert re.search(problem, listing["problem"])


def test_a_model_that_turns_busy_while_another_is_unloaded_is_spared(tmp_path: Path) -> None:
    residency = decider(tmp_path, 300, {"a": 100, "b": 100, "c": 100, "d": 200})
    for name in ("a", "b", "c"):
        residency.ensure(name)
        time.sleep(0.01)
    measured(residency, "d", 200)  # room for two of the three is needed
    admin = residency.swapper.admin
    unload = admin.unload

    def unload_then_b_gets_a_request(model: str) -> None:
        unload(model)
        residency.heartbeat(["b"], [])

    admin.unload = unload_then_b_gets_a_request  # type: ignore[method-assign]
    residency.ensure("d")
    assert sorted(admin.loaded) == ["b", "d"]


def test_triton_unreachable_never_ends_the_watcher(tmp_path: Path) -> None:
    residency = decider(tmp_path, 300, {"a": 100})

    def unreachable() -> list[str]:
        raise ServerError("reading the repository index: Triton at grpc://triton:8001 did not answer")

    residency.swapper.admin.ready = unreachable  # type: ignore[method-assign]
    assert residency.enforce() == []
    residency.warm()
    assert not residency.room_for("a", Memory(MIB))


def test_names_the_repository_does_not_hold_are_not_remembered(tmp_path: Path) -> None:
    residency = decider(tmp_path, 300, {"a": 100})
    residency.heartbeat(["junk"] * 3, ["a", "typo"])
    assert list(residency.snapshot()["models"]) == ["a"]


def test_a_call_whose_caller_stopped_waiting_is_dropped(tmp_path: Path) -> None:
    residency = decider(tmp_path, 300, {"a": 100})
    with pytest.raises(TooLate):
        residency.ensure("a", deadline_s=-1)
    assert residency.swapper.admin.calls == []


def test_a_budget_without_the_api_is_refused() -> None:
    with pytest.raises(SettingsError, match="MODEL_MEMORY_BUDGET needs RESIDENCY_PORT"):
        load(WatchSettings, {"MODEL_MEMORY_BUDGET": "1GiB", "RESIDENCY_PORT": "0"})


def test_the_decider_takes_no_file_lock(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A swap holds its model's file lock while it waits for the admin lock: the decider, holding the admin lock,
    must never wait for a file lock (that was a deadlock)."""
    residency = decider(tmp_path, 150, {"a": 100, "b": 100})

    def locked(name: str) -> None:
        raise AssertionError(f"the decider took {name}'s file lock")

    monkeypatch.setattr(residency.repo, "locked", locked)
    residency.ensure("a")
    residency.ensure("b")  # a unloaded for it
    assert residency.swapper.admin.loaded == ["b"]


def test_a_guess_is_held_to_what_the_pinned_models_leave(tmp_path: Path) -> None:
    residency = decider(tmp_path, 1000, {"pinned": 600, "b": 300})
    residency.pinned = {"pinned"}
    residency.ensure("pinned")  # the largest stub measured: b's guess is 600 MiB and more
    assert residency.estimate("b").host > 400 * MIB
    residency.ensure("b")
    assert sorted(residency.swapper.admin.loaded) == ["b", "pinned"]


def test_room_made_for_a_swap_is_not_taken_by_a_request(tmp_path: Path) -> None:
    residency = decider(tmp_path, 300, {"a": 100, "b": 100})
    residency.ensure("a")
    measured(residency, "b", 100)
    assert residency.room_for("x", Memory(150 * MIB))
    residency.ensure("b")  # 100 + 150 held for the swap + 100: a makes room
    assert residency.swapper.admin.loaded == ["b"]
    residency.release("x")
    residency.ensure("a")
    assert sorted(residency.swapper.admin.loaded) == ["a", "b"]


def test_a_model_the_watcher_could_not_install_is_listed_failed_until_it_is(tmp_path: Path) -> None:
    residency = decider(tmp_path, 200, {"a": 100})
    residency.not_installed("broken", "model broken version 1 not installed (integrity: sha256 mismatch)")
    listing = residency.snapshot()["models"]
    assert listing["broken"]["state"] == "failed" and "sha256 mismatch" in listing["broken"]["problem"]
    assert listing["broken"]["bytes"] is None and listing["a"]["state"] == "not_resident"
    assert "broken" not in residency.entries  # listed, not made a model the decider could load
    residency.entry("broken")  # as a swap's estimate makes one
    assert residency.snapshot()["models"]["broken"]["state"] == "failed"
    with pytest.raises(UnknownModel, match="sha256 mismatch"):  # a request is told why, not "not in the repository"
        residency.ensure("broken")
    residency.not_installed("broken", None)
    residency.entries.pop("broken")
    assert "broken" not in residency.snapshot()["models"]
