"""Run identity, atomic and verified cache directories, and the locks around them.

A run is keyed by the hash of its normalized config, a code fingerprint and the versions of the
numerical libraries, so identical work is never redone and a change of llc's code or of
JAX/BlackJAX/Optax/NumPy produces a new key (with ``LLC_CODE_VERSION`` set, the code part is that
label: keeping it honest is then the deployer's job).

A cached directory (a run, a target) is written into ``.<name>.tmp-<pid>-<rand>@<host>`` next to
its final place and renamed there when whole. Its ``manifest.json``, written last, lists every
file with its size and SHA-256; a directory counts as cached only if every listed file is there
with those bytes (``verify``). A damaged one is moved to ``.broken/`` and recomputed. Work on one
key happens under an exclusive lock (``key_lock``), so concurrent identical runs compute once.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import hashlib
import json
import os
import re
import secrets
import shutil
import socket
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Iterator

from llc.config import ConfigError, RunConfig, normalized
from llc.store.layout import CAL_DIR, TARGETS_DIR
from llc.store.writes import failed_path

PACKAGE_DIR = Path(__file__).resolve().parent.parent
PROJECT_DIR = PACKAGE_DIR.parent
CODE_VERSION_ENV = "LLC_CODE_VERSION"
# Written last into a cache directory; lists every other file with its size and SHA-256.
COMPLETE_MARKER = MANIFEST = "manifest.json"
LOCK_DIR = ".locks"  # <parent>/.locks/<name>.lock, one per cache key
BROKEN_DIR = ".broken"  # damaged directories are moved here, not deleted (a user may want them)
# A leftover temporary directory of a process on another host (whose liveness cannot be checked)
# counts as stale after this long with its key unlocked; writing one takes seconds to minutes.
STALE_AFTER_S = 3600.0
Log = Callable[[str], None]


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



# --------------------------------------------------------------------------- manifests

def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def file_records(directory: Path) -> dict[str, dict[str, Any]]:
    """``{relative posix path: {"size", "sha256"}}`` of every file under ``directory`` but the manifest."""
    directory = Path(directory)
    out = {}
    for path in sorted(directory.rglob("*")):
        rel = path.relative_to(directory).as_posix()
        if path.is_file() and rel != MANIFEST:
            out[rel] = {"size": path.stat().st_size, "sha256": _sha256(path)}
    return out


def seal(directory: Path, manifest: dict[str, Any], exclude: tuple[str, ...] = ()) -> Path:
    """Write ``manifest.json`` (``manifest`` plus the file list) last into a directory being built.

    ``exclude``: files that are legitimately rewritten in the complete directory later (records
    that list its figures); they are not part of what the cache verifies."""
    directory = Path(directory)
    files = {rel: rec for rel, rec in file_records(directory).items() if rel not in exclude}
    doc = {**manifest, "files": files}
    path = directory / MANIFEST
    path.write_text(json.dumps(doc, indent=2, default=str) + "\n")
    return path


def verify(directory: Path) -> str | None:
    """None when ``directory`` is a whole cache entry; otherwise the reason, one short phrase."""
    directory = Path(directory)
    if not directory.is_dir():
        return "missing"
    try:
        doc = json.loads((directory / MANIFEST).read_text())
    except FileNotFoundError:
        return f"no {MANIFEST} (interrupted, or written by another tool)"
    except (OSError, ValueError) as exc:
        return f"{MANIFEST} unreadable ({type(exc).__name__})"
    files = doc.get("files") if isinstance(doc, dict) else None
    if not isinstance(files, dict):
        return f"{MANIFEST} lists no files (written by an older llc)"
    for rel, rec in files.items():
        path = directory / rel
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            return f"{rel} is missing"
        if not isinstance(rec, dict) or size != rec.get("size"):
            return f"{rel} has {size} bytes, {rec.get('size') if isinstance(rec, dict) else '?'} recorded"
        if _sha256(path) != rec.get("sha256"):
            return f"{rel} does not match its recorded checksum"
    return None


def verify_sealed_file(path: Path) -> str | None:
    """None unless ``path`` lies in a sealed cache directory (a calibration's recommended.toml) and
    differs from what its manifest recorded; then the reason, one short phrase."""
    path = Path(path)
    try:
        doc = json.loads((path.parent / MANIFEST).read_text())
    except (OSError, ValueError):
        return None  # not in a sealed directory: an ordinary file
    rec = doc.get("files", {}).get(path.name) if isinstance(doc, dict) and isinstance(doc.get("files"), dict) else None
    if not isinstance(rec, dict) or not path.is_file():
        return None
    if path.stat().st_size != rec.get("size") or _sha256(path) != rec.get("sha256"):
        return f"it does not match the checksum recorded in {path.parent / MANIFEST}"
    return None


def run_dir_problem(path: Path) -> str | None:
    """Why ``path`` cannot be read as a saved run, in one line; None when it can be (or is no
    directory: the reader says so). An artifacts root names its runs; a run without its manifest
    was interrupted or is still being written, so its files may be partial."""
    path = Path(path)
    if not path.is_dir() or (path / MANIFEST).is_file():
        return None
    runs = sorted(d.name for d in path.iterdir() if d.is_dir() and not d.name.startswith(".")
                  and (d / MANIFEST).is_file())
    if runs:
        shown = ", ".join(runs[:5]) + (f", ... ({len(runs)} in all)" if len(runs) > 5 else "")
        return f"{path} is an artifacts root, not a run; give one of its runs: {shown} (e.g. {path / runs[0]})"
    return (f"{path}: incomplete run (no {MANIFEST}: interrupted or still being written); "
            "run it again to complete it, or `llc clean` to remove leftovers")


def is_complete(directory: Path) -> bool:
    """A whole, verified cache entry (every file its manifest lists, byte for byte)."""
    return verify(directory) is None


def move_aside(directory: Path) -> Path:
    """Move a damaged cache directory into ``<parent>/.broken/`` (kept for inspection; `llc clean`)."""
    directory = Path(directory)
    dest_dir = directory.parent / BROKEN_DIR
    dest_dir.mkdir(parents=True, exist_ok=True)
    dest = dest_dir / f"{directory.name}.{time.strftime('%Y%m%dT%H%M%S')}-{_tag()}"
    os.rename(directory, dest)
    return dest


def usable(directory: Path, what: str, log: Log = lambda msg: None) -> bool:
    """True if ``directory`` is a whole cache entry. A damaged one is moved aside and said so in
    one line, so the caller recomputes it. Call with the key's lock held."""
    directory = Path(directory)
    if not directory.exists():
        return False
    reason = verify(directory)
    if reason is None:
        return True
    moved = move_aside(directory)
    log(f"cache: {what} {directory.name} is damaged ({reason}); moved to {moved}, recomputing")
    return False


# --------------------------------------------------------------------------- temporary directories and files

HOST = socket.gethostname()
# .<name>.tmp-<pid>-<rand>@<host> and .<name>.old-<pid>-<rand>@<host>: the owner is in the name.
_TEMP_RE = re.compile(r"^\.(?P<name>.+)\.(?P<kind>tmp|old)-(?P<pid>\d+)-(?P<rand>[0-9a-f]+)@(?P<host>.+)$")


def owner_tag() -> str:
    """``<pid>-<random>@<host>``: the owner part of a temporary file or directory name."""
    return f"{os.getpid()}-{secrets.token_hex(3)}@{HOST}"


_tag = owner_tag


def _make_dir(path: Path) -> Path:
    # os.mkdir honours the umask (0755 by default); tempfile.mkdtemp would force 0700.
    os.mkdir(path)
    return path


@contextlib.contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Yield a temporary directory next to ``final``; rename it into place only on success.

    On any exception the temporary directory is removed, so nothing half-written is ever found
    at ``final``; after a kill -9 it is left, named with its owner's pid and host, and removed by
    ``remove_stale`` (at the next run's start, or ``llc clean``). An existing ``final`` (a forced
    re-run) is replaced only once the new one is whole.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = _make_dir(final.parent / f".{final.name}.tmp-{_tag()}")
    try:
        yield tmp
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, OSError) and exc.filename is None and failed_path(exc) is None:
            exc.filename = str(final)  # a bare write() error names no file: the directory it was for
        raise
    old = None
    if final.exists():
        old = final.parent / f".{final.name}.old-{_tag()}"
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


@contextlib.contextmanager
def atomic_file(path: Path, mode: str = "w", **kwargs: Any) -> Iterator[Any]:
    """Open ``.<name>.tmp-<pid>-<rand>@<host>`` beside ``path`` for writing and rename it over
    ``path`` when the block ends without error: readers never meet half a file. Created with
    the user's umask (0644 by default; ``tempfile.mkstemp`` would force 0600). A leftover of a
    killed writer is named with its owner and removed by ``remove_stale_files``."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{owner_tag()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, mode, **kwargs) as fh:
            yield fh
        os.replace(tmp, path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.filename is None:
            exc.filename = str(path)  # write() and close() errors name no file
        raise


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by someone else
    try:  # a killed process not yet reaped by its parent (a zombie) is gone all the same
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


@dataclass(frozen=True)
class Litter:
    """Something in an artifacts directory that no complete result needs."""

    path: Path
    kind: str  # "temporary", "swap", "damaged", "lock"
    why: str
    stale: bool  # safe to remove now

    def size(self) -> int:
        if self.path.is_dir():
            return sum(p.stat().st_size for p in self.path.rglob("*") if p.is_file())
        return self.path.stat().st_size if self.path.exists() else 0


def _temp_status(path: Path, m: re.Match, locked: bool = True) -> tuple[bool, str]:
    pid, host = int(m["pid"]), m["host"]
    if locked and lock_held(path.parent, m["name"]):
        return False, f"{m['name']} is locked by a running process"
    age = time.time() - path.lstat().st_mtime
    if host == HOST:
        if not _pid_alive(pid):
            return True, f"pid {pid} on {host} is gone"
        if age > STALE_AFTER_S:
            return True, f"pid {pid} holds no lock and it is {age / 3600:.1f} h old"
        return False, f"pid {pid} on {host} is running"
    if age > STALE_AFTER_S:
        return True, f"owner pid {pid} on {host}; unlocked and {age / 3600:.1f} h old"
    return False, f"owner pid {pid} on {host} (another host); less than {STALE_AFTER_S / 3600:.0f} h old"


def find_litter(directory: Path, *, everything: bool = True) -> list[Litter]:
    """Temporary and swap directories (stale or in use) directly under ``directory`` (an artifacts
    root or its targets/); with ``everything`` also damaged directories moved aside and unused
    lock files."""
    directory = Path(directory)
    out: list[Litter] = []
    if not directory.is_dir():
        return out
    for path in sorted(directory.iterdir()):
        m = _TEMP_RE.match(path.name)
        if m:
            stale, why = _temp_status(path, m)
            out.append(Litter(path, "temporary" if m["kind"] == "tmp" else "swap", why, stale))
    if not everything:
        return out
    for entry in sorted(directory.iterdir()):  # half-written figures or records inside complete entries
        if entry.is_dir() and not entry.name.startswith("."):
            out.extend(stale_files(entry))
    broken = directory / BROKEN_DIR
    if broken.is_dir():
        out.extend(Litter(p, "damaged", "moved aside after failing verification", True) for p in sorted(broken.iterdir()))
    locks = directory / LOCK_DIR
    if locks.is_dir():
        for p in sorted(locks.glob("*.lock")):
            if not lock_held(directory, p.name.removesuffix(".lock")):
                out.append(Litter(p, "lock", "not held", True))
    return out


def remove_litter(item: Litter) -> None:
    if item.kind == "lock":
        # Unlink only while holding it, so a process that has just opened it re-opens a fresh one.
        with _try_lock(item.path) as got:
            if got:
                item.path.unlink(missing_ok=True)
        return
    if item.path.is_dir():
        shutil.rmtree(item.path, ignore_errors=True)
    else:
        item.path.unlink(missing_ok=True)


# Directories of an artifacts root that hold cache entries (each may hold temporary ones).
CACHE_SUBDIRS = ("", TARGETS_DIR, CAL_DIR)


def cache_dirs(root: Path) -> list[Path]:
    return [Path(root) / sub if sub else Path(root) for sub in CACHE_SUBDIRS]


def remove_stale(directory: Path, log: Log = lambda msg: None) -> list[Path]:
    """Remove stale temporary/swap directories under ``directory``; one line per removal."""
    removed = []
    for item in find_litter(directory, everything=False):
        if item.stale:
            remove_litter(item)
            removed.append(item.path)
            log(f"removed stale temporary directory {item.path} ({item.why})")
    return removed


def stale_files(directory: Path, name: str | None = None) -> list[Litter]:
    """Stale ``.<name>.tmp-<owner>`` files left by ``atomic_file`` writers (of ``name``, or any)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    out = []
    for path in directory.glob(f".{glob.escape(name) if name else '*'}.tmp-*"):
        m = _TEMP_RE.match(path.name)
        if m and path.is_file() and (name is None or m["name"] == name):
            stale, why = _temp_status(path, m, locked=False)
            if stale:
                out.append(Litter(path, "temporary", why, True))
    return out


def remove_stale_files(directory: Path, name: str | None = None) -> list[Path]:
    """Remove stale temporary files of ``atomic_file`` writers (a sweep CSV, a run's figures)."""
    removed = []
    for item in stale_files(directory, name):
        item.path.unlink(missing_ok=True)
        removed.append(item.path)
    return removed


# --------------------------------------------------------------------------- locks

try:
    import fcntl
except ImportError:  # not POSIX: no locking (documented: concurrent identical runs then both compute)
    fcntl = None  # type: ignore[assignment]


def lock_path(parent: Path, name: str) -> Path:
    return Path(parent) / LOCK_DIR / f"{name}.lock"


def _open_lock(path: Path) -> int:
    while True:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            return os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        except FileNotFoundError:  # the empty lock directory was just removed by its last user
            continue


def _release(fd: int, path: Path) -> None:
    """Unlink a held lock file, then its directory if that is now empty, then unlock.

    Unlinked while still held, so lock files do not pile up; a waiter that opened this file sees
    it is gone (``_same_file``) and opens a fresh one."""
    with contextlib.suppress(OSError):
        os.unlink(path)
    with contextlib.suppress(OSError):  # not empty: another key is locked there
        os.rmdir(path.parent)
    os.close(fd)


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.fstat(fd).st_ino == os.stat(path).st_ino
    except FileNotFoundError:
        return False


@contextlib.contextmanager
def _try_lock(path: Path) -> Iterator[bool]:
    if fcntl is None:
        yield True
        return
    try:
        fd = _open_lock(path)
    except OSError:
        yield False
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            yield False
            return
        yield _same_file(fd, path)
    finally:
        os.close(fd)


def lock_held(parent: Path, name: str) -> bool:
    """Whether another process holds the lock of ``parent/name`` right now."""
    path = lock_path(parent, name)
    if fcntl is None or not path.exists():
        return False
    with _try_lock(path) as got:
        return not got


@contextlib.contextmanager
def key_lock(final: Path, what: str, log: Log = lambda msg: None) -> Iterator[None]:
    """Hold the exclusive lock of cache entry ``final`` (``<parent>/.locks/<name>.lock``).

    A second process asking for the same key says so in one line and waits; the OS releases the
    lock when its holder exits, even after kill -9. Where the file system cannot lock (some network
    mounts), the work goes on unlocked.
    """
    final = Path(final)
    path = lock_path(final.parent, final.name)
    if fcntl is None:
        yield
        return
    def busy() -> None:
        owner = _read_owner(path)
        log(f"{what} {final.name} is being computed by {owner or 'another process'}; waiting for it")

    fd = _hold(path, lambda: _open_lock(path), busy)
    if fd is None:
        yield
        return
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {HOST}\n".encode())
        yield
    finally:
        _release(fd, path)


def _hold(path: Path, opener: Callable[[], int], busy: Callable[[], None] | None = None) -> int | None:
    """Open ``path`` with ``opener`` and lock it exclusively, waiting for the holder (``busy`` is
    called once the lock turns out to be held); the locked descriptor, or None where the file
    system cannot lock. Reopens if the file was unlinked between open and lock (a holder's
    ``_release``, or ``llc clean``)."""
    while True:
        fd = opener()
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (fcntl.LOCK_NB if busy else 0))
            except BlockingIOError:
                busy()
                fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                return None
            raise
        if _same_file(fd, path):
            return fd
        os.close(fd)


def _read_owner(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive lock on ``path`` itself (a sibling lock file of a shared file, e.g. a CSV)."""
    path = Path(path)
    if fcntl is None:
        yield
        return
    fd = _hold(path, lambda: os.open(path, os.O_RDWR | os.O_CREAT, 0o666))
    if fd is None:
        yield
        return
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)  # while held, as in key_lock
        os.close(fd)


# --------------------------------------------------------------------------- the artifacts root

def check_root(root: Path, flag: str = "--artifacts", create: bool = True) -> Path:
    """The artifacts root is a writable directory, or can be created as one; else ConfigError, one
    line. ``create=False`` checks without leaving anything behind (before a backend is known to work)."""
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise ConfigError(f"{flag}: {root} is a file, not a directory")
    existing = root
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"{flag}: cannot create {root}: {existing} is a file")
    where = root if create else existing
    if create:
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"{flag}: cannot create {root} ({exc.strerror or exc})") from None
    probe = where / f".write-test-{_tag()}"
    try:
        # Try for real: os.access is wrong for root on read-only mounts and for ACLs.
        probe.mkdir()
        probe.rmdir()
    except OSError as exc:
        if where == root:
            raise ConfigError(f"{flag}: {root} is not writable ({exc.strerror or exc})") from None
        raise ConfigError(f"{flag}: cannot create {root} ({where} is not writable: {exc.strerror or exc})") from None
    return root
