"""Modal backend, tested up to the network (Modal's service cannot be reached from here).

Covered: the app/image/volume/function definitions import and carry the documented settings; the
remote function runs through its local path; configs, records and failures survive
serialisation; the client maps, attributes failures and downloads each run's directory from a
(faked) volume listing; without credentials the CLI fails fast in one line and writes nothing.
"""

from __future__ import annotations

import importlib.util
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

modal = pytest.importorskip("modal")

from llc.store import cache  # noqa: E402
from llc.pipeline.backends import CACHED, DONE, FAILED, execute  # noqa: E402
from llc.pipeline.backends.modal_backend import ArtifactDownloadError, ModalBackend, download_run  # noqa: E402
from llc.config import from_dict, to_dict  # noqa: E402

from backend_support import (  # noqa: E402,F401  (fixtures are used by name)
    pinned_code_version, points, reference, same_numbers)

PROJECT = cache.PROJECT_DIR
# `.local()` warns that volumes are not mounted locally: expected, the tests use a local root.
pytestmark = pytest.mark.filterwarnings("ignore:The run_experiment_remote function is executing locally")


@pytest.fixture(scope="module")
def modal_app():
    from llc.pipeline.backends.modal_backend import load_modal_app

    return load_modal_app()


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def corrupt_target(root: Path, cfg) -> None:
    from llc.engine.targets import target_id

    tdir = root / "targets" / target_id(cfg)
    tdir.mkdir(parents=True)
    (tdir / "meta.json").write_text(json.dumps({"id": target_id(cfg), "dtype": "float32"}))
    cache.seal(tdir, {})


class FakeVolume:
    """The two calls the client makes on a modal.Volume, served from a local directory."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.reads: list[str] = []

    def listdir(self, path: str, *, recursive: bool = False):
        from modal.volume import FileEntry, FileEntryType

        base = self.root / path.lstrip("/")
        found = base.rglob("*") if recursive else base.iterdir()
        return [FileEntry(path=str(p.relative_to(self.root)), type=FileEntryType.FILE if p.is_file()
                          else FileEntryType.DIRECTORY, mtime=0, size=p.stat().st_size) for p in sorted(found)]

    def read_file(self, path: str):
        self.reads.append(path)
        data = (self.root / path.lstrip("/")).read_bytes()
        for i in range(0, len(data), 4096):  # in chunks, like the real one
            yield data[i:i + 4096]


class FakeFunction:
    """``.map`` with Modal's signature, executing the real function through its local path."""

    def __init__(self, function, remote_root: Path, monkeypatch, lost: set[str] = frozenset(),
                 disconnect_after: int | None = None):
        self.function, self.remote_root, self.mp = function, remote_root, monkeypatch
        self.lost = lost  # run ids whose container "disappears" (an exception not tied to a run)
        self.disconnect_after = disconnect_after  # the client's connection breaks after this many results
        self.calls: list[dict] = []

    def map(self, inputs, kwargs=None, order_outputs=True, return_exceptions=False, wrap_returned_exceptions=True):
        inputs = list(inputs)
        self.calls.append({"n": len(inputs), "kwargs": kwargs, "order_outputs": order_outputs,
                           "return_exceptions": return_exceptions})
        self.mp.setenv("LLC_ARTIFACTS", str(self.remote_root))
        for i, cfg_dict in enumerate(reversed(inputs)):  # unordered: not necessarily in input order
            if i == self.disconnect_after:
                raise ConnectionError("stream closed by peer")
            payload = pickle.loads(pickle.dumps(cfg_dict))  # what crosses the wire
            if cache.run_id(from_dict(payload)) in self.lost:
                yield modal.exception.FunctionTimeoutError("container lost after 3 retries")
                continue
            try:
                out = self.function.local(payload, **(kwargs or {}))
            except Exception as exc:  # noqa: BLE001
                if not return_exceptions:
                    raise
                yield pickle.loads(pickle.dumps(exc))
            else:
                yield pickle.loads(pickle.dumps(out))


class FakeApp:
    def __init__(self):
        self.entered = self.exited = 0

    def run(self):
        app = self

        class _Ctx:
            def __enter__(self):
                app.entered += 1

            def __exit__(self, *exc):
                app.exited += 1
                return False

        return _Ctx()


# --------------------------------------------------------------------------- definitions

def test_app_image_volume_and_function_settings(monkeypatch):
    recorded: dict = {}
    original_function = modal.App.function
    original_pyproject = modal.Image.pip_install_from_pyproject

    def spy_function(self, *args, **kwargs):
        recorded["function"] = kwargs
        return original_function(self, *args, **kwargs)

    def spy_pyproject(self, path, *args, **kwargs):
        recorded["pyproject"] = path
        return original_pyproject(self, path, *args, **kwargs)

    monkeypatch.setattr(modal.App, "function", spy_function)
    monkeypatch.setattr(modal.Image, "pip_install_from_pyproject", spy_pyproject)
    spec = importlib.util.spec_from_file_location("modal_app_spied", PROJECT / "modal_app.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)

    assert mod.app.name == "llc-experiments"
    assert isinstance(mod.image, modal.Image)
    assert Path(recorded["pyproject"]) == PROJECT / "pyproject.toml"  # the project's own dependencies
    kw = recorded["function"]
    assert kw["timeout"] >= 3600
    assert isinstance(kw["retries"], modal.Retries) and kw["retries"].max_retries == 3
    assert kw["retries"].backoff_coefficient == 2.0 and kw["retries"].initial_delay.total_seconds() == 10.0
    assert list(kw["volumes"]) == ["/artifacts"]
    assert kw["volumes"]["/artifacts"] is mod.artifacts_volume and mod.artifacts_volume.name == "llc-artifacts"
    assert isinstance(mod.run_experiment_remote, modal.Function)


# --------------------------------------------------------------------------- worker, serialisation

def test_remote_function_local_path_equals_a_local_run(modal_app, reference, points, tmp_path, monkeypatch):
    _, ref = reference
    monkeypatch.setenv("LLC_ARTIFACTS", str(tmp_path))
    record = modal_app.run_experiment_remote.local(to_dict(points[0].cfg))
    assert record["run_id"] == ref[0].run_id and not record["cached"]
    assert same_numbers(record, ref[0].result)
    assert cache.is_complete(tmp_path / record["run_id"])
    again = modal_app.run_experiment_remote.local(to_dict(points[0].cfg))
    assert again == {**record, "cached": True}
    # A failing run comes back as data naming its run id (exceptions would use up Modal's retries).
    corrupt_target(tmp_path, points[1].cfg)
    failed = modal_app.run_experiment_remote.local(to_dict(points[1].cfg))
    failed = pickle.loads(pickle.dumps(failed))
    assert failed["failed"] and failed["run_id"] == points[1].run_id
    assert failed["error"].startswith("PrecisionError") and "Traceback" in failed["traceback"]
    assert not (tmp_path / points[1].run_id).exists()


def test_configs_and_records_round_trip(points, reference):
    for p in points:
        wire = json.loads(json.dumps(to_dict(p.cfg)))
        assert from_dict(wire) == p.cfg and cache.run_id(from_dict(wire)) == p.run_id
    for out in reference[1]:
        assert json.loads(json.dumps(out.result)) == out.result
        assert pickle.loads(pickle.dumps(out.result)) == out.result


# --------------------------------------------------------------------------- artifact download

def test_download_writes_the_run_tree(reference, tmp_path):
    root, ref = reference
    vol = FakeVolume(root)
    rid = ref[0].run_id
    local = download_run(vol, rid, tmp_path)
    assert local == tmp_path / rid
    assert tree(local) == tree(root / rid)
    assert vol.reads[-1].endswith(cache.COMPLETE_MARKER)  # the completion marker comes last
    n = len(vol.reads)
    download_run(vol, rid, tmp_path)  # already complete: nothing fetched again
    assert len(vol.reads) == n


def test_download_refuses_incomplete_or_unsafe_listings(reference, tmp_path):
    root, ref = reference
    remote = tmp_path / "remote"
    rid = ref[0].run_id
    (remote / rid).mkdir(parents=True)
    (remote / rid / "config.json").write_text("{}")  # a run still being written: no manifest
    with pytest.raises(ArtifactDownloadError, match="incomplete"):
        download_run(FakeVolume(remote), rid, tmp_path / "local")
    assert not (tmp_path / "local" / rid).exists()

    class Evil(FakeVolume):
        def listdir(self, path, *, recursive=False):
            from modal.volume import FileEntry, FileEntryType

            return [FileEntry(path=f"{rid}/../../etc/passwd", type=FileEntryType.FILE, mtime=0, size=1)]

    with pytest.raises(ArtifactDownloadError, match="unexpected path"):
        download_run(Evil(remote), rid, tmp_path / "local")


# --------------------------------------------------------------------------- client end to end

def test_modal_client_maps_attributes_failures_and_downloads(modal_app, points, reference, tmp_path, monkeypatch):
    ref_root, ref = reference
    remote, local = tmp_path / "volume", tmp_path / "local"
    remote.mkdir()
    # The two smoke runs are already on the volume (cached there); a third one fails remotely.
    for o in ref:
        import shutil

        shutil.copytree(ref_root / o.run_id, remote / o.run_id)
    bad = from_dict({**to_dict(points[0].cfg), "target": {**to_dict(points[0].cfg)["target"], "quadratic": {"dim": 3}}})
    corrupt_target(remote, bad)
    fn, vol, app = FakeFunction(modal_app.run_experiment_remote, remote, monkeypatch), FakeVolume(remote), FakeApp()
    backend = ModalBackend(function=fn, volume=vol, app=app)

    outs = sorted((o for o in execute(backend, [p.cfg for p in points] + [bad], local) if o is not None),
                  key=lambda o: o.index)
    assert fn.calls == [{"n": 3, "kwargs": {"skip": True}, "order_outputs": False, "return_exceptions": True}]
    assert app.entered == app.exited == 1
    assert [o.status for o in outs] == [CACHED, CACHED, FAILED]
    assert outs[2].run_id == cache.run_id(bad) and outs[2].error.startswith("PrecisionError")
    assert "Traceback" in outs[2].info["traceback"]
    for mine, theirs in zip(outs, ref):
        assert same_numbers(mine.result, theirs.result)
        assert mine.result["artifacts"] == str(local.resolve() / mine.run_id)
        assert tree(local / mine.run_id) == tree(ref_root / mine.run_id)
    assert not (local / outs[2].run_id).exists()

    # Complete locally now: a second sweep submits nothing.
    again = [o for o in execute(backend, [p.cfg for p in points], local) if o is not None]
    assert {o.status for o in again} == {CACHED} and len(fn.calls) == 1


def test_no_artifacts_leaves_the_volume_alone(modal_app, points, reference, tmp_path, monkeypatch):
    ref_root, ref = reference
    import shutil

    remote = tmp_path / "volume"
    shutil.copytree(ref_root / ref[0].run_id, remote / ref[0].run_id)
    fn, vol = FakeFunction(modal_app.run_experiment_remote, remote, monkeypatch), FakeVolume(remote)
    backend = ModalBackend(function=fn, volume=vol, app=None, download=False)
    (out,) = [o for o in execute(backend, [points[0].cfg], tmp_path / "local") if o is not None]
    assert out.status in (DONE, CACHED) and out.result["artifacts"] == f"modal://llc-artifacts/{out.run_id}"
    assert vol.reads == [] and not (tmp_path / "local").exists()


def test_infrastructure_errors_fail_only_the_runs_without_a_result(modal_app, points, tmp_path, monkeypatch):
    remote = tmp_path / "volume"
    remote.mkdir()
    fn = FakeFunction(modal_app.run_experiment_remote, remote, monkeypatch, lost={points[1].run_id})
    backend = ModalBackend(function=fn, volume=FakeVolume(remote), app=FakeApp())
    outs = sorted((o for o in execute(backend, [p.cfg for p in points], tmp_path / "local") if o is not None),
                  key=lambda o: o.index)
    assert [o.status for o in outs] == [DONE, FAILED]
    assert "FunctionTimeoutError: container lost" in outs[1].error
    assert cache.is_complete(tmp_path / "local" / outs[0].run_id)
    # The connection breaks after one result: that one is kept, the other fails with the reason.
    fn = FakeFunction(modal_app.run_experiment_remote, remote, monkeypatch, disconnect_after=1)
    app = FakeApp()
    backend = ModalBackend(function=fn, volume=FakeVolume(remote), app=app)
    outs = sorted((o for o in execute(backend, [p.cfg for p in points], tmp_path / "local2") if o is not None),
                  key=lambda o: o.index)
    assert [o.status for o in outs] == [FAILED, DONE]  # unordered: the last input came back first
    assert outs[0].error == "Modal: ConnectionError: stream closed by peer"
    assert app.entered == app.exited == 1


# --------------------------------------------------------------------------- no credentials

@pytest.mark.parametrize("command", [
    ["sweep", "--space", "smoke", "--backend", "modal", "--out", "{tmp}/res.csv", "--artifacts", "{tmp}/art"],
    ["run", "--target", "quadratic", "--samplers", "sgld", "--backend", "modal", "--artifacts", "{tmp}/art"],
])
def test_modal_without_credentials_fails_fast(tmp_path, command):
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODAL_")}
    env.update({"HOME": str(tmp_path), "MODAL_CONFIG_PATH": str(tmp_path / "no-modal.toml")})
    args = [a.replace("{tmp}", str(tmp_path)) for a in command]
    proc = subprocess.run([sys.executable, "-m", "llc", *args], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "modal token new" in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing half-written
