"""Failed writes said in one line: a full disk, a read-only file system, no permission.

Every artifact is written under a temporary name and renamed when whole (``cache.atomic_dir``,
``cache.atomic_file``), and a failure removes the temporary name, so what is left to do when a
write fails is to say which file and why. HDF5 (NetCDF) errors name neither in a usable way, and
an HDF5 file left open after a failed close makes the interpreter segfault at exit when HDF5
flushes it again (closing it by hand crashes as well); the CLI then exits without HDF5's exit
handler, and ``quiet_hdf5_repeats`` silences the same failure reported again as objects are freed.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import sys
from pathlib import Path
from typing import Iterator

# errno -> the words of the one line
WRITE_ERRORS = {
    errno.ENOSPC: "no space left",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
}
_TEMP_PART = re.compile(r"^\.(?P<name>.+)\.tmp-[^/]*$")  # .<name>.tmp-<pid>-<rand>@<host>
_HDF5_NAME = re.compile(r"filename = '(?P<name>[^']+)'")


def _hdf5_write_error(exc: BaseException | None) -> bool:
    return isinstance(exc, (OSError, RuntimeError)) and "file write failed" in str(exc)


@contextlib.contextmanager
def quiet_hdf5_repeats() -> Iterator[None]:
    """Within the block, HDF5 failing again to write a file whose write already failed (as its
    objects are freed: printed through ``sys.excepthook``, then ``sys.unraisablehook``) prints
    nothing: the failure that was raised is said once, by the caller."""
    excepthook, unraisablehook = sys.excepthook, sys.unraisablehook

    def on_exception(kind, value, tb):
        if not _hdf5_write_error(value):
            excepthook(kind, value, tb)

    def on_unraisable(unraisable):
        if not _hdf5_write_error(unraisable.exc_value):
            unraisablehook(unraisable)

    sys.excepthook, sys.unraisablehook = on_exception, on_unraisable
    try:
        yield
    finally:
        sys.excepthook, sys.unraisablehook = excepthook, unraisablehook


def final_name(path: Path) -> Path:
    """The path a temporary name stands for: ``A/.run.tmp-1-ab@h/.x.nc.tmp-2-cd@h`` -> ``A/run/x.nc``."""
    return Path(*[(m.group("name") if (m := _TEMP_PART.match(part)) else part) for part in Path(path).parts])


def _mount_point(path: Path) -> Path:
    path = Path(os.path.abspath(path))
    while not os.path.ismount(path) and path != path.parent:
        path = path.parent
    return path


def human_size(n: float) -> str:
    """A byte count as B / KB / MB / GB."""
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.0f} B"


def failed_path(exc: OSError) -> Path | None:
    """The file a failed write was writing: the error's filename, else the one HDF5 names in its
    message, else the temporary file an llc function on the way was writing (a bare ``write()``)."""
    name = exc.filename
    if name is None and (m := _HDF5_NAME.search(str(exc))):
        name = m.group("name")
    if name is None:
        name = _temp_in_traceback(exc)
    return None if name is None else final_name(Path(os.fsdecode(name)))


def _temp_in_traceback(exc: BaseException) -> str | None:
    """A temporary name (``.<name>.tmp-...``) held by the innermost llc frame that holds one."""
    frames = []
    tb = exc.__traceback__
    while tb is not None:
        frames.append(tb.tb_frame)
        tb = tb.tb_next
    for frame in reversed(frames):
        if not str(frame.f_globals.get("__name__", "")).startswith("llc."):
            continue
        for value in frame.f_locals.values():
            if isinstance(value, (str, Path)) and _TEMP_PART.match(Path(value).name):
                return str(value)
    return None


def write_failure(exc: BaseException, default: Path | None = None) -> str | None:
    """One line for a write that failed for lack of space or permission; None for other errors.
    ``default``: the place named when the error does not say which file (a plain ``write()``)."""
    if not isinstance(exc, OSError) or exc.errno not in WRITE_ERRORS:
        return None
    path = failed_path(exc) or default
    what = WRITE_ERRORS[exc.errno]
    if path is None:
        return f"{what} while writing; nothing half-written is kept"
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        mount = _mount_point(path.parent)
        with contextlib.suppress(OSError):
            what += f" on {mount} ({human_size(shutil.disk_usage(mount).free)} free)"
        return f"{what} while writing {path}; nothing half-written is kept: free some space and run again"
    if exc.errno == errno.EROFS:
        return f"{what}: cannot write {path}; nothing half-written is kept"
    return f"{what}: {path}; nothing half-written is kept"  # EACCES/EPERM: maybe a read, so not "write"
