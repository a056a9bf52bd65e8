"""Run identity and atomic run directories.

A run is keyed by the hash of its normalized config, a code fingerprint and the versions of the
numerical libraries, so identical work is never redone and a change of llc's code or of
JAX/BlackJAX/Optax/NumPy produces a new key (with ``LLC_CODE_VERSION`` set, the code part is that
label: keeping it honest is then the deployer's job).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Iterator

from llc.config import RunConfig, normalized

PACKAGE_DIR = Path(__file__).resolve().parent.parent
PROJECT_DIR = PACKAGE_DIR.parent
CODE_VERSION_ENV = "LLC_CODE_VERSION"
# A run directory is complete when this file exists; it is written last, inside the temp dir.
COMPLETE_MARKER = "manifest.json"


def _hash_files(paths: list[Path], root: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(paths):
        h.update(str(path.relative_to(root)).encode())
        h.update(b"\0")
        h.update(path.read_bytes())
        h.update(b"\0")
    return h.hexdigest()


@lru_cache(maxsize=None)
def _source_fingerprint(subdir: str) -> str:
    base = PACKAGE_DIR / subdir if subdir else PACKAGE_DIR
    files = list(base.rglob("*.py"))
    pyproject = PROJECT_DIR / "pyproject.toml"
    if pyproject.is_file():
        files.append(pyproject)
    return _hash_files(files, PROJECT_DIR)[:16]


def code_fingerprint(subdir: str = "") -> str:
    """``$LLC_CODE_VERSION`` if set, else a hash of ``llc/**/*.py`` (or a sub-package) + pyproject."""
    override = os.environ.get(CODE_VERSION_ENV)
    if override:
        return f"env:{override}"
    return _source_fingerprint(subdir)


def stable_hash(obj: object, length: int = 12) -> str:
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:length]


# Libraries whose upgrade can change results (BlackJAX's tuners especially): part of every key.
RESULT_LIBRARIES = ("jax", "jaxlib", "blackjax", "optax", "numpy")


@lru_cache(maxsize=None)
def library_versions() -> dict[str, str]:
    from importlib import metadata

    out = {}
    for name in RESULT_LIBRARIES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "absent"
    return out


def run_id(cfg: RunConfig) -> str:
    return stable_hash({"config": normalized(cfg), "code": code_fingerprint(), "libs": library_versions()})


def is_complete(run_dir: Path) -> bool:
    return (Path(run_dir) / COMPLETE_MARKER).is_file()


@contextlib.contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Yield a temporary directory next to ``final``; rename it into place only on success.

    On any exception the temporary directory is removed, so nothing half-written is ever found
    at ``final``. An existing ``final`` (a forced re-run) is replaced only once the new one is whole.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if final.exists():
        old = final.parent / f".{final.name}.old-{os.getpid()}"
        os.rename(final, old)
    try:
        os.rename(tmp, final)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if is_complete(final):
            return  # another worker finished the same run first: its result is identical
        if old is not None and not final.exists():
            os.rename(old, final)  # put the previous complete run back
            old = None
        raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
