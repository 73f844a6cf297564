"""Atomic file writes (a reader, or a resumed run after `kill -9`, never sees a half-written file), and the
lock that gives a folder to one process at a time.

Nothing is written through a link this process did not make: a folder may come from someone else, and a
link planted in it (`run.json` -> ~/.bashrc) must not turn a write into the loss of another file. Files
are opened with O_NOFOLLOW or replaced by rename after a check, and a link is refused with one line.
Every file gets the mode the user's umask gives (safetensors' save_file alone makes 0600 files).
"""

from __future__ import annotations

import contextlib
import errno
import logging
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


def file_mode() -> int:
    """The mode a new file gets from the user's umask, as `open` and `touch` give it."""
    return 0o666 & ~_umask()


def refuse_link(path: str | os.PathLike) -> None:
    """One line when `path` is a symbolic link: this process writes files, never through links it did not make."""
    if os.path.islink(path):
        raise TIError(f"{path} is a symbolic link, which this command did not make; nothing was written through it",
                      f"remove the link (rm {path}) or use another folder")


def open_no_follow(path: str | os.PathLike, flags: int) -> int:
    """os.open without following a link at `path` (a planted link is one line), for a regular file only."""
    import stat

    try:
        fd = os.open(path, flags | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0), file_mode())
    except OSError as exc:
        if exc.errno == errno.ELOOP or os.path.islink(path):
            refuse_link(path)
        raise OSError(exc.errno, exc.strerror, str(path)) from exc
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode) or info.st_nlink > 1:  # a FIFO, a device, or a hard link to another file
        os.close(fd)
        what = "a hard link" if info.st_nlink > 1 else "a special file"
        raise TIError(f"{path} is not a plain file of this folder ({what}); nothing was written to it",
                      f"remove it (rm {path}) or use another folder")
    return fd


class NoFollowFileHandler(logging.FileHandler):
    """The run's log file (Hydra's job logging, `conf/hydra/job_logging/ti.yaml`): appended without
    following a link. A link in its place gets nothing, and the run then refuses the folder in one line."""

    def _open(self):
        try:
            fd = open_no_follow(self.baseFilename, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        except (TIError, OSError):
            return open(os.devnull, "a", encoding=self.encoding, errors=self.errors)
        return open(fd, "a", encoding=self.encoding, errors=self.errors)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        # mkstemp makes 0600, and so does a writer that replaces the file (safetensors): a result file
        # reads like any other
        os.chmod(tmp, file_mode(), follow_symlinks=False)
        refuse_link(path)  # a rename would not write through it, but a link there is not ours to replace
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
def atomic_dir(path: str | os.PathLike, keep_existing: bool = False) -> Iterator[Path]:
    """Yield a temporary folder beside `path`; rename it onto `path` only if the block succeeds.

    `keep_existing`: the content is the same whoever makes it (a cache filled from a fixed source), so a
    folder another process finished first is kept and ours dropped, instead of one replacing the other
    while it may be read (several jobs of a sweep start on an empty cache at once)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    os.chmod(tmp, 0o777 & ~_umask())
    try:
        yield tmp
        refuse_link(path)
        if keep_existing and _filled(path):
            return
        if path.exists():
            shutil.rmtree(path)
        try:
            os.replace(tmp, path)
        except OSError:
            if not (keep_existing and _filled(path)):  # another process renamed its copy in between
                raise
    except Exception as exc:
        _raise_named(exc, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _filled(path: Path) -> bool:
    return path.is_dir() and any(path.iterdir())


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
    fd = open_no_follow(path, os.O_RDWR | os.O_CREAT)
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


def folder_held(folder: str | os.PathLike) -> bool:
    """Whether a process holds `folder` now (`folder_lock`); False without a lock file, or without flock."""
    try:
        import fcntl
    except ImportError:
        return False
    try:
        flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
        fd = os.open(Path(folder) / LOCK_FILE, flags)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except OSError:
        return True
    finally:
        os.close(fd)
