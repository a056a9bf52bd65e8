import dataclasses
import json

import pytest

from llc.store import cache
from llc.config import RunConfig, SAMPLERS, apply_overrides, build_config


def _leaf_paths(obj, prefix=""):
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            yield from _leaf_paths(value, f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}", value


def _changed(value):
    if isinstance(value, bool):
        return str(not value)
    if isinstance(value, int):
        return str(value + 1)
    if isinstance(value, float):
        return repr(value * 0.5 if value else 0.5)
    if value is None:
        return "3"
    if isinstance(value, tuple) and not value:
        return "0"  # an empty list of strings (posterior.restrict): one entry
    if isinstance(value, tuple):
        return ",".join(str(v) for v in (*value, value[-1])) if isinstance(value[0], int) else None
    return None


def test_run_id_stable(monkeypatch):
    monkeypatch.delenv(cache.CODE_VERSION_ENV, raising=False)
    assert cache.run_id(RunConfig()) == cache.run_id(build_config())
    assert len(cache.run_id(RunConfig())) == 12


def test_run_id_sensitive_to_every_semantic_field(monkeypatch):
    monkeypatch.setenv(cache.CODE_VERSION_ENV, "fixed")
    base = build_config(None, [f"samplers={','.join(SAMPLERS)}", "sgld.precond=adam"])
    seen = {cache.run_id(base)}
    checked = 0
    for path, value in _leaf_paths(base):
        other_kind = path.startswith("target.") and not path.startswith(("target.mlp.", "target.seed", "target.dtype"))
        if path in ("save_plots", "samplers") or other_kind:
            continue  # presentation, or fields of other target kinds (tested in test_config)
        if path == "training.weight_decay":
            continue  # adamw only; the default optimizer is adam (tested in test_config)
        new = _changed(value)
        if new is None:
            continue
        try:
            changed = apply_overrides(base, [f"{path}={new}"])
        except Exception:
            continue
        rid = cache.run_id(changed)
        assert rid not in seen, f"changing {path} did not change run_id"
        seen.add(rid)
        checked += 1
    assert checked > 60
    assert cache.run_id(dataclasses.replace(base, save_plots=False)) == cache.run_id(base)


def test_run_id_follows_code_version(monkeypatch):
    cfg = RunConfig()
    monkeypatch.setenv(cache.CODE_VERSION_ENV, "a")
    a = cache.run_id(cfg)
    monkeypatch.setenv(cache.CODE_VERSION_ENV, "b")
    assert cache.run_id(cfg) != a
    monkeypatch.delenv(cache.CODE_VERSION_ENV)
    assert cache.run_id(cfg) not in (a,)


def test_code_change_changes_fingerprint(monkeypatch, tmp_path):
    monkeypatch.delenv(cache.CODE_VERSION_ENV, raising=False)
    pkg = tmp_path / "llc"
    pkg.mkdir()
    (pkg / "a.py").write_text("x = 1\n")
    monkeypatch.setattr(cache, "PACKAGE_DIR", pkg)
    monkeypatch.setattr(cache, "PROJECT_DIR", tmp_path)
    cache._source_fingerprint.cache_clear()
    before = cache.code_fingerprint()
    (pkg / "a.py").write_text("x = 2\n")
    cache._source_fingerprint.cache_clear()
    after = cache.code_fingerprint()
    cache._source_fingerprint.cache_clear()
    assert before != after


def test_atomic_dir_leaves_nothing_on_failure(tmp_path):
    final = tmp_path / "run"
    with pytest.raises(RuntimeError):
        with cache.atomic_dir(final) as tmp:
            (tmp / "partial.nc").write_text("half")
            raise RuntimeError("boom")
    assert not final.exists()
    assert list(tmp_path.iterdir()) == []


def test_atomic_dir_replaces_only_when_complete(tmp_path):
    final = tmp_path / "run"
    with cache.atomic_dir(final) as tmp:
        cache.seal(tmp, {"v": 1})
    assert cache.is_complete(final)
    with pytest.raises(KeyboardInterrupt):
        with cache.atomic_dir(final) as tmp:
            raise KeyboardInterrupt
    assert json.loads((final / cache.COMPLETE_MARKER).read_text())["v"] == 1
    with cache.atomic_dir(final) as tmp:
        cache.seal(tmp, {"v": 2})
    assert json.loads((final / cache.COMPLETE_MARKER).read_text())["v"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_unused_preconditioner_settings_do_not_change_run_id(monkeypatch):
    monkeypatch.setenv(cache.CODE_VERSION_ENV, "fixed")
    plain = build_config(None, ["samplers=sgld"])
    assert cache.run_id(plain) == cache.run_id(apply_overrides(plain, ["sgld.beta1=0.5", "sgld.eps=1e-6"]))
    adam = apply_overrides(plain, ["sgld.precond=adam"])
    assert cache.run_id(adam) != cache.run_id(apply_overrides(adam, ["sgld.beta1=0.5"]))
