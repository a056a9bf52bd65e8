"""Modal (serverless) client: ``run_experiment_remote.map(...)`` + per-run artifact download.

The app itself (image, volume, function with timeouts and retries) is ``modal_app.py`` at the
project's top level. This client runs it ephemerally (``app.run()``), maps the config dicts over
the remote function with unordered outputs, and, as each call returns, copies that run's
directory from the ``llc-artifacts`` volume into ``<artifacts>/<run_id>/`` (atomically, like a
local run). ``download=False`` (``--no-artifacts``) leaves artifacts on the volume only.

Credentials are checked before anything starts, so a missing token fails in one line, exit 2,
with nothing written.
"""

from __future__ import annotations

import contextlib
import importlib
import sys
from pathlib import Path, PurePosixPath
from typing import Any, Iterator, Sequence

from llc.store import cache
from llc.pipeline.backends.base import FAILED, Backend, BackendUnavailable, Outcome, Task, error_line, status_of

VOLUME_NAME = "llc-artifacts"
AUTH_HINT = ("Modal is not authenticated: run `modal token new` "
             "(or set MODAL_TOKEN_ID and MODAL_TOKEN_SECRET)")


class ArtifactDownloadError(RuntimeError):
    pass


def check_credentials() -> None:
    try:
        from modal.config import config
    except ModuleNotFoundError:
        raise BackendUnavailable("the modal backend needs modal: pip install 'llc[modal]'") from None
    if not (config.get("token_id") and config.get("token_secret")):
        raise BackendUnavailable(AUTH_HINT)


def load_modal_app():
    """Import ``modal_app.py`` from the project directory (it is not part of the package)."""
    path = cache.PROJECT_DIR / "modal_app.py"
    if not path.is_file():
        raise BackendUnavailable(f"{path} not found: the modal backend runs from a source checkout of llc")
    if str(cache.PROJECT_DIR) not in sys.path:
        sys.path.insert(0, str(cache.PROJECT_DIR))
    return importlib.import_module("modal_app")


def _is_file(entry: Any) -> bool:
    kind = getattr(entry, "type", None)
    return getattr(kind, "name", kind) in ("FILE", 1)


def _relative(path: str, run_id: str) -> PurePosixPath:
    rel = PurePosixPath(path.lstrip("/"))
    if rel.parts[:1] == (run_id,):
        rel = PurePosixPath(*rel.parts[1:])
    if not rel.parts or rel.is_absolute() or ".." in rel.parts:
        raise ArtifactDownloadError(f"run {run_id}: unexpected path {path!r} in the volume listing")
    return rel


def download_run(volume: Any, run_id: str, root: Path) -> Path:
    """Copy ``/<run_id>/`` of the volume to ``root/<run_id>/``; returns the local directory.

    Uses only ``volume.listdir(path, recursive=True)`` and ``volume.read_file(path)`` (byte
    chunks). The directory appears whole or not at all; an already complete local copy is kept.
    """
    final = Path(root) / run_id
    if cache.is_complete(final):
        return final
    entries = [e for e in volume.listdir(f"/{run_id}", recursive=True) if _is_file(e)]
    files = [(e.path, _relative(e.path, run_id)) for e in entries]
    if not any(rel == PurePosixPath(cache.COMPLETE_MARKER) for _, rel in files):
        raise ArtifactDownloadError(f"run {run_id} on volume {VOLUME_NAME} is incomplete (no {cache.COMPLETE_MARKER})")
    with cache.atomic_dir(final) as tmp:
        # The completion marker last, as everywhere else.
        for path, rel in sorted(files, key=lambda f: str(f[1]) == cache.COMPLETE_MARKER):
            dest = tmp.joinpath(*rel.parts)
            dest.parent.mkdir(parents=True, exist_ok=True)
            with dest.open("wb") as fh:
                for chunk in volume.read_file(path):
                    fh.write(chunk)
    return final


class ModalBackend(Backend):
    name = "modal"

    def __init__(self, *, download: bool = True, function: Any = None, volume: Any = None,
                 app: Any = None) -> None:
        # function/volume/app are injectable so everything short of the network can be tested.
        self.download = download
        self._function, self._volume, self._app = function, volume, app
        self._inflight = 0

    def describe(self) -> str:
        return f"modal (app llc-experiments, volume {VOLUME_NAME}{'' if self.download else ', no download'})"

    def check(self) -> None:
        if self._function is None:
            check_credentials()
            load_modal_app()

    def _resolve(self):
        if self._function is not None:
            return self._function, self._volume, self._app
        mod = load_modal_app()
        return mod.run_experiment_remote, mod.artifacts_volume, mod.app

    def submit(self, tasks: Sequence[Task], root: Path, *, skip: bool) -> Iterator[Outcome | None]:
        function, volume, app = self._resolve()
        pending = {t.run_id: t for t in tasks}
        stray: list[str] = []
        self._inflight = len(pending)
        ctx = app.run() if app is not None else contextlib.nullcontext()
        try:
            ctx.__enter__()
        except Exception as exc:  # auth rejected, no network: one line
            raise BackendUnavailable(f"Modal: {error_line(exc)}") from None
        try:
            results = function.map([t.config for t in tasks], kwargs={"skip": skip}, order_outputs=False,
                                   return_exceptions=True, wrap_returned_exceptions=False)
            for item in results:
                out = self._outcome(item, pending, stray, volume, root)
                if out is not None:
                    self._inflight = len(pending)
                    yield out
        except Exception as exc:  # noqa: BLE001 - the connection to Modal broke: the rest fails with why
            stray.append(f"Modal: {error_line(exc)}")
        except BaseException:  # Ctrl-C or the consumer stopped: stop the ephemeral app too
            self._inflight = 0
            ctx.__exit__(*sys.exc_info())
            raise
        self._inflight = 0
        ctx.__exit__(None, None, None)
        reason = "; ".join(dict.fromkeys(stray)) or "no result came back from Modal"
        for task in pending.values():
            yield Outcome(task.index, task.run_id, FAILED, error=reason)

    def _outcome(self, item: Any, pending: dict[str, Task], stray: list[str], volume: Any,
                 root: Path) -> Outcome | None:
        """One item of the unordered result stream -> the Outcome of the run it belongs to."""
        if isinstance(item, BaseException):
            task = pending.pop(getattr(item, "run_id", None), None)
            if task is None:  # an infrastructure error not tied to a run: reported for what stays pending
                stray.append(error_line(item))
                return None
            return Outcome(task.index, task.run_id, FAILED, error=error_line(item))
        task = pending.pop(item.get("run_id"), None)
        if task is None:
            stray.append(f"remote run id {item.get('run_id')} matches no submitted run "
                         "(code fingerprint differs; set LLC_CODE_VERSION on both sides)")
            return None
        if item.get("failed"):
            return Outcome(task.index, task.run_id, FAILED, error=item.get("error") or "failed",
                           info={"traceback": item.get("traceback")})
        return self._finish(task, item, volume, root)

    def _finish(self, task: Task, record: dict[str, Any], volume: Any, root: Path) -> Outcome:
        info: dict[str, Any] = {"remote": f"modal://{VOLUME_NAME}/{task.run_id}"}
        records = [dict(r) for r in record["batch"]] if "batch" in record else [dict(record)]
        for rec in records:  # a batch task: every run's directory
            rec["artifacts"] = f"modal://{VOLUME_NAME}/{rec['run_id']}"
            if self.download:
                try:
                    rec["artifacts"] = str(download_run(volume, rec["run_id"], root))
                except Exception as exc:  # noqa: BLE001 - the run itself succeeded; say what is missing
                    info["download_error"] = error_line(exc)
        result = records if "batch" in record else records[0]
        return Outcome(task.index, task.run_id, status_of(result), result, info=info)

    def running(self) -> int:
        return self._inflight
