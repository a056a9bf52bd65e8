"""The Modal app that runs llc experiments serverlessly (``llc run|sweep --backend=modal``).

    modal token new                     # once: authenticate
    modal deploy modal_app.py           # optional: the client runs the app ephemerally anyway

The image installs the project's own dependencies from pyproject.toml and adds the local ``llc``
sources (plus pyproject.toml, so the code fingerprint, and hence every run id, is the same
remotely as locally). Runs write to the ``llc-artifacts`` volume mounted at ``/artifacts``:
one directory per run id, exactly as a local run writes under ``./artifacts``. The client
(``llc.pipeline.backends.modal_backend``) calls ``run_experiment_remote.map(...)`` and downloads each run
directory as soon as its call returns.

Timeouts, retries and resources live on the decorator, not on the command line.
"""

from __future__ import annotations

import os
from pathlib import Path

import modal

PROJECT_DIR = Path(__file__).resolve().parent
APP_NAME = "llc-experiments"
VOLUME_NAME = "llc-artifacts"
MOUNT = "/artifacts"
REMOTE_ROOT = "/root"  # where the image puts the llc package and pyproject.toml

_env = {"LLC_ARTIFACTS": MOUNT, "JAX_PLATFORMS": "cpu"}
if os.environ.get("LLC_CODE_VERSION"):
    # An explicit code version must be the same on both sides, or run ids would differ.
    _env["LLC_CODE_VERSION"] = os.environ["LLC_CODE_VERSION"]

image = (
    modal.Image.debian_slim(python_version="3.11")
    .pip_install_from_pyproject(str(PROJECT_DIR / "pyproject.toml"))
    .env(_env)
    .add_local_file(PROJECT_DIR / "pyproject.toml", f"{REMOTE_ROOT}/pyproject.toml")
    .add_local_python_source("llc")
)

artifacts_volume = modal.Volume.from_name(VOLUME_NAME, create_if_missing=True)

app = modal.App(APP_NAME, image=image)


def _root() -> str:
    # Inside a Modal container the volume is the artifacts root; the local path (tests,
    # ``run_experiment_remote.local``) uses the usual local root.
    return MOUNT if not modal.is_local() else os.environ.get("LLC_ARTIFACTS", "artifacts")


@app.function(
    timeout=3 * 60 * 60,  # generous 3 hours per run
    cpu=4.0,
    memory=8192,
    volumes={MOUNT: artifacts_volume},
    retries=modal.Retries(max_retries=3, backoff_coefficient=2.0, initial_delay=10.0),
)
def run_experiment_remote(cfg_dict: dict | list, skip: bool = True) -> dict:
    """Run one experiment (or fetch it from the volume's cache); returns the result record.

    A run that raises comes back as ``{"run_id", "failed": True, "error", "traceback"}`` rather
    than as an exception: a deterministic failure would only fail again, so it must not use up
    the retries, which are there for infrastructure failures (preempted or lost containers).
    """
    from llc.store import cache
    from llc.pipeline.backends.base import guarded_worker
    from llc.config import from_dict

    # A batch (a list of configs) is identified by its first run's id, as the client's task is.
    rid = cache.run_id(from_dict(cfg_dict[0] if isinstance(cfg_dict, list) else cfg_dict))
    payload = guarded_worker(cfg_dict, _root(), skip)  # the traceback also goes to the Modal logs
    if not payload["ok"]:
        return {"run_id": rid, "failed": True, "error": payload["error"], "traceback": payload["traceback"]}
    if not modal.is_local():
        artifacts_volume.commit()  # make the run directories visible to the client's download
    result = payload["result"]
    return {"run_id": rid, "batch": result} if isinstance(result, list) else result


@app.local_entrypoint()
def main(preset: str = "quick") -> None:
    """``modal run modal_app.py --preset quick``: one run, result record printed."""
    from llc.store.jsonfiles import dumps
    from llc.config import build_config, to_dict

    print(dumps(run_experiment_remote.remote(to_dict(build_config(preset)))))
