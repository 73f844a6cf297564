"""Atomic file writes (a reader, or a resumed run after `kill -9`, never sees a half-written file), and the
lock that gives a folder to one process at a time."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from pathlib import Path
from collections.abc import Iterator

from ..errors import TIError

LOCK_FILE = ".lock"


def _raise_named(exc: Exception, path: Path):
    named = _named(exc, path)
    if named is exc:
        raise exc
    raise named from exc


def _named(exc: BaseException, path: Path) -> BaseException:
    """The error of a failed write, as an OSError that names the file the user knows.

    A write error carries no file name, and safetensors reports a full disk as its own error type;
    both become OSError(errno, ..., path) so the entry point can say which file and why in one line.
    """
    if isinstance(exc, OSError):
        return exc if exc.filename else OSError(exc.errno, exc.strerror, str(path))
    text = str(exc)
    if "No space left on device" in text or "StorageFull" in text:
        return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
    return exc


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; a result file should read like any other
    try:
        yield tmp
        os.replace(tmp, path)
    except Exception as exc:
        _raise_named(exc, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder beside `path`; rename it onto `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    os.chmod(tmp, 0o777 & ~_umask())
    try:
        yield tmp
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    except Exception as exc:
        _raise_named(exc, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike, use: str, fix: str) -> Iterator[Path]:
    """Hold `folder` for this process until the block ends. Another process (or another holder in this one)
    is refused at once with one line naming the folder, what holds it (its `use`, e.g. "a run") and `fix`.

    An advisory lock on FOLDER/.lock (flock): the kernel releases it when the process dies, so a run killed
    with kill -9 never blocks its own resume, and there is no stale lock to clean up.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_FILE
    try:
        import fcntl
    except ImportError:  # Windows: no flock; one process per folder is then the user's to keep
        yield folder
        return
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666 & ~_umask())
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise OSError(exc.errno, exc.strerror, str(path)) from exc
            pid, _, holder = os.pread(fd, 256, 0).decode("utf-8", "replace").strip().partition(" ")
            raise TIError(f"{folder} is in use by {holder or 'another process'}"
                          + (f" (process {pid})" if pid.isdigit() else ""), fix) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {use}\n".encode(), 0)
        yield folder
    finally:
        os.close(fd)  # releases the lock
