"""JSON records of the artifacts (result.json, metrics.json, config.json, ...) and the error of an
unusable artifact.

Apart from ``artifacts`` (NetCDF, which needs ArviZ and xarray): a run answered from the cache
reads its result.json and prints it without importing either (nor JAX).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np


class ArtifactError(RuntimeError):
    """A run directory or NetCDF file that cannot be used; the message names the file."""


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def _clean(obj: Any) -> Any:
    """Replace NaN/inf by None so that the JSON stays standard (and round-trips)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


def dumps(obj: Any, indent: int | None = 2) -> str:
    return json.dumps(_clean(json.loads(json.dumps(obj, default=_json_default))), indent=indent)


def moved(obj: Any, old: str, new: str) -> Any:
    """``obj`` with every string naming ``old`` or a path below it re-rooted at ``new``: a cached
    record read from a directory copied or moved elsewhere then names where its files are now."""
    if isinstance(obj, str) and (obj == old or obj.startswith(old.rstrip("/") + "/")):
        return new + obj[len(old):]
    if isinstance(obj, dict):
        return {k: moved(v, old, new) for k, v in obj.items()}
    if isinstance(obj, list):
        return [moved(v, old, new) for v in obj]
    return obj


def write_json(path: Path, obj: Any) -> Path:
    Path(path).write_text(dumps(obj) + "\n")
    return Path(path)


def read_json(path: Path) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ArtifactError(f"{path}: missing") from None
    except json.JSONDecodeError as exc:
        raise ArtifactError(f"{path}: invalid JSON ({exc})") from None
