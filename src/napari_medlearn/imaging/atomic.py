"""Safe output: atomic files, all-or-none sets of files, one job per folder, one error line.

- :func:`atomic_path`: one file is written to a fresh temporary sibling, then ``os.replace``\\ d
  over its name: a reader never sees a half-written file, and a failed write leaves the old file
  (if any) untouched. The temporary name (``.<name>.<12 hex>.tmp<suffix>``) keeps the target's
  suffix (``.nii.gz``, ``.npy``), so libraries that choose a format from the name write the right
  one, and it is created with mode 0o666 under the umask, like any new file (``mkstemp``'s 0o600
  would survive the rename).
- :func:`staged_outputs`: the outputs of one job are written into a hidden temporary folder inside
  the output folder (same naming) and moved under their final names only once all of them are
  complete; on any failure none of them appears and the files already there are left as they were.
- :func:`folder_lock`: an output folder is taken by one job at a time (``.medlearn.lock``, holding
  the owner's pid, host, start time and command); it also removes what interrupted runs left.
- :func:`error_message`: every ``OSError`` as the one line a user reads
  (``cannot write out/labels.nii.gz: No space left on device``): the CLI, the batch and the widgets
  all say it the same way.

Locks are ``fcntl.flock`` locks, not ``O_CREAT | O_EXCL`` lock files: the kernel releases a flock
when its process ends however it ends (SIGKILL, out of memory, a crash), so a lock is never left
behind by a dead owner and no pid has to be judged alive (pids are reused, and mean nothing on
another host of a shared filesystem; Linux NFS clients map flock onto NFS byte-range locks). The
lock file itself stays informative: a second run reads who holds it. Every temporary file or folder
is flock-ed by its writer while it is written, so a later run tells an abandoned temporary (no lock)
from one being written right now, by any process (the GUI's saves do not take folder locks). On a
platform without ``fcntl`` (Windows) nothing is locked and no temporary is ever removed.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import socket
import stat
import sys
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

try:
    import fcntl
except ImportError:  # pragma: no cover (Windows)
    fcntl = None

LOCK_FILE = ".medlearn.lock"
STAGE_NAME = "medlearn-outputs"     # the staging folder: .medlearn-outputs.<hex>.tmp
_TEMPORARY = re.compile(r"\.(?P<name>.+)\.[0-9a-f]{12}\.tmp(?P<suffix>.*)", re.S)
_NO_LOCKS = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EINVAL, errno.EBADF)


class FolderInUse(OSError):
    """An output folder another job holds; the message says who."""


# ----- one line per error --------------------------------------------------------------------

def error_message(exc: BaseException) -> str:
    """The one line a user reads for ``exc``: ``cannot write out/labels.nii.gz: No space left on
    device`` for an output that failed, ``<path>: <cause>`` for other file errors, else the first
    line of the message."""
    if isinstance(exc, OSError) and exc.errno is not None and exc.strerror:
        if exc.filename is None:
            return exc.strerror
        action = getattr(exc, "action", None)
        if action:
            return f"cannot {action} {exc.filename}: {exc.strerror}"
        if exc.filename2 is not None:
            return f"cannot move {exc.filename} to {exc.filename2}: {exc.strerror}"
        return f"{exc.filename}: {exc.strerror}"
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _naming(exc: OSError, path: str | os.PathLike, action: str, about=()) -> OSError:
    """``exc`` said of ``path`` (the file the user asked for, not a temporary one): the same
    errno and subclass (PermissionError, ...). Errors about another file than ``about`` (and
    errors without an errno) are kept as they are."""
    if exc.errno is None or not exc.strerror:
        return exc
    if exc.filename is not None and about and os.fspath(exc.filename) not in {os.fspath(a) for a in about}:
        return exc
    named = OSError(exc.errno, exc.strerror, os.fspath(path))
    named.action = action
    return named


# ----- temporary names -----------------------------------------------------------------------

def _mkdir(folder: Path) -> None:
    """``folder`` and its parents made; a file in the way is "Not a directory", not "File exists"."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), os.fspath(folder)) from None


def _suffix(name: str) -> str:
    return name[-7:] if name.lower().endswith(".nii.gz") else Path(name).suffix


def temporary_name(path: str | os.PathLike) -> Path:
    """A fresh hidden temporary name beside ``path``: ``.<name>.<12 hex>.tmp<suffix>``."""
    path = Path(path)
    return path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp{_suffix(path.name)}")


def is_temporary_name(name: str) -> bool:
    """True for exactly the names :func:`temporary_name` makes (nothing else hidden)."""
    m = _TEMPORARY.fullmatch(name)
    return m is not None and _suffix(m["name"]) == m["suffix"]


def _flock(fd: int) -> bool | None:
    """Take an exclusive lock on ``fd`` without waiting: True taken, False held by another open
    file (another process, or another writer of this one), None when there are no locks here."""
    if fcntl is None:  # pragma: no cover (Windows)
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError as e:
        if e.errno in _NO_LOCKS:
            return None
        raise
    return True


def _remove_quietly(path: Path) -> None:
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    except FileNotFoundError:
        pass


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path``.

    The temporary is locked while it is written (see the module docstring). An ``OSError`` of the
    write (disk full, read-only, permission) names ``path``, not the temporary file.

    Examples
    --------
    >>> with atomic_path("out/labels.nii.gz") as tmp:   # doctest: +SKIP
    ...     nib.save(img, tmp)
    """
    path = Path(path)
    tmp = temporary_name(path)
    try:
        _mkdir(path.parent)
        fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)   # reserve the name
    except OSError as e:
        raise _naming(e, path, "write") from None
    try:
        _flock(fd)
        try:
            yield tmp
            os.replace(tmp, path)
        except OSError as e:
            raise _naming(e, path, "write", about=(tmp, path.parent)) from None
    finally:
        try:
            if os.path.lexists(tmp):
                tmp.unlink()
        finally:
            os.close(fd)


def remove_stale_temporaries(folder: str | os.PathLike, before: float | None = None) -> list[Path]:
    """Remove the temporaries of :func:`temporary_name`'s naming in ``folder`` that their writer
    left: not locked by anyone, and last changed before ``before`` (a time; default now). No other
    file is looked at. Returns what was removed."""
    before = time.time() if before is None else before
    removed: list[Path] = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        if not is_temporary_name(entry.name):
            continue
        try:
            st = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        is_dir = stat.S_ISDIR(st.st_mode)
        if not (is_dir or stat.S_ISREG(st.st_mode)) or st.st_mtime >= before:
            continue
        try:
            fd = os.open(entry.path, os.O_RDONLY | os.O_NOFOLLOW | (os.O_DIRECTORY if is_dir else 0))
        except OSError:
            continue
        try:
            if _flock(fd):
                _remove_quietly(Path(entry.path))
                removed.append(Path(entry.path))
        except OSError:
            pass
        finally:
            os.close(fd)
    return removed


# ----- all outputs of a job, or none ---------------------------------------------------------

@contextmanager
def staged_outputs(folder: str | os.PathLike, overwrite: bool = True) -> Iterator[Path]:
    """Yield a hidden temporary folder inside ``folder`` to write a job's outputs into; when the
    block ends they are moved under their names in ``folder``, all of them or none.

    On any failure (of the block or of a move) the temporary folder is removed, files moved
    already are taken out again and the files they replaced restored: ``folder`` is as it was. An
    ``OSError`` names the final file (``folder/labels.nii.gz``), not the temporary one. Without
    ``overwrite`` an existing file of the same name is an error, checked before anything is moved.
    """
    folder = Path(folder)
    stage = temporary_name(folder / STAGE_NAME)
    try:
        _mkdir(folder)
        stage.mkdir()
    except OSError as e:
        raise _naming(e, folder, "write to") from None
    try:
        fd = os.open(stage, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    try:
        _flock(fd)
        try:
            yield stage
            _commit(stage, folder, overwrite)
        except OSError as e:
            raise _outside(e, stage, folder) from None
    finally:
        try:
            shutil.rmtree(stage, ignore_errors=True)
        finally:
            os.close(fd)


def _outside(exc: OSError, stage: Path, folder: Path) -> OSError:
    """An error about a file in ``stage`` said of its final name in ``folder``."""
    name = os.fspath(exc.filename) if exc.filename is not None else ""
    if exc.errno is None or not name.startswith(os.fspath(stage)):
        return exc
    rel = os.path.relpath(name, stage)
    return _naming(exc, folder if rel == "." else folder / rel, getattr(exc, "action", None) or "write")


def _commit(stage: Path, folder: Path, overwrite: bool) -> None:
    """Move the files of ``stage`` into ``folder``; undo every move if one fails."""
    names = sorted(p.name for p in stage.iterdir() if not p.name.startswith("."))
    for name in names:     # the failures that can be foreseen, before anything moves
        final = folder / name
        if final.is_dir() and not final.is_symlink():
            raise _naming(OSError(errno.EISDIR, os.strerror(errno.EISDIR)), final, "write")
        if not overwrite and os.path.lexists(final):
            raise FileExistsError(f"{final} already exists (written meanwhile?); not replaced")
    done: list[tuple[Path, Path | None]] = []
    try:
        for name in names:
            final, backup = folder / name, None
            if os.path.lexists(final):
                backup = stage / f".replaced.{name}"
                try:    # a second name for the old file: it is back if a later move fails
                    os.link(final, backup, follow_symlinks=False)
                except OSError:      # no hard links here: that one file cannot be restored
                    backup = None
            os.replace(stage / name, final)
            done.append((final, backup))
    except BaseException:
        for final, backup in reversed(done):
            try:
                if backup is not None:
                    os.replace(backup, final)
                else:
                    final.unlink()
            except OSError:
                pass
        raise


# ----- one job per output folder -------------------------------------------------------------

def _holder(info: dict) -> str:
    if not info:
        return "another medlearn run (starting)"
    return (f"`{info.get('command', 'medlearn')}` (pid {info.get('pid', '?')} on {info.get('host', '?')}, "
            f"since {info.get('started', '?')})")


def _read_info(fd: int) -> dict:
    try:
        data = os.pread(fd, 1 << 16, 0)
        info = json.loads(data.decode("utf-8")) if data.strip() else {}
        return info if isinstance(info, dict) else {}
    except (OSError, ValueError):
        return {}


def _open_lock(path: Path, folder: Path) -> tuple[int, bool | None]:
    """Open and lock ``path`` (the lock file of ``folder``); FolderInUse when another holds it."""
    for _ in range(20):
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o666)
        except OSError as e:
            raise _naming(e, folder, "write to") from None
        got = _flock(fd)
        if got is False:
            info = _read_info(fd)
            os.close(fd)
            raise FolderInUse(f"{folder} is in use by {_holder(info)}: wait for it to finish or choose "
                              "another output folder")
        try:     # the last holder removes the file when it is done: we may hold a removed one
            a, b = os.fstat(fd), os.stat(path, follow_symlinks=False)
            if (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino):
                return fd, got
        except FileNotFoundError:
            pass
        os.close(fd)
    raise FolderInUse(f"{folder}: cannot take its lock {path.name} (other runs keep taking it)")


@contextmanager
def folder_lock(folder: str | os.PathLike, command: str | None = None,
                note: Callable[[str], None] | None = None) -> Iterator[Path]:
    """Hold ``folder`` (made if needed) for one job: ``folder/.medlearn.lock`` records the pid,
    host, start time and ``command`` (default: this process's command line).

    Another job holding it raises :class:`FolderInUse` naming the holder. A lock left by a run
    that has ended (killed) is taken over, and the temporaries such runs left in ``folder`` are
    removed; ``note`` is told both. The lock is released (its file removed) when the block ends,
    however it ends; a folder made here and left empty is removed too.
    """
    folder = Path(folder)
    created = not os.path.lexists(folder)
    try:
        _mkdir(folder)
    except OSError as e:
        raise _naming(e, folder, "create the folder") from None
    path = folder / LOCK_FILE
    try:
        fd, locked = _open_lock(path, folder)
    except BaseException:
        _remove_if_empty(folder, created)
        raise
    try:
        started = time.time()
        old = _read_info(fd)
        if old and note is not None:
            note(f"took over the lock of {_holder(old)} on {folder}, which is no longer running")
        if locked is None and note is not None:
            note(f"{folder}: this filesystem has no file locks; another run at the same time is not detected")
        info = {"pid": os.getpid(), "host": socket.gethostname(),
                "started": time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(started)),
                "command": command or " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])}
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(info) + "\n").encode("utf-8"), 0)
        except OSError as e:
            raise _naming(e, folder, "write to") from None
        if locked:
            removed = remove_stale_temporaries(folder, started)
            if removed and note is not None:
                note(f"removed {len(removed)} temporary file(s) an interrupted run left in {folder}: "
                     + ", ".join(p.name for p in removed))
        yield path
    finally:
        try:
            os.unlink(path)       # while still locked: a run that opened it meanwhile sees it gone
        except OSError:
            pass
        os.close(fd)
        _remove_if_empty(folder, created)


def _remove_if_empty(folder: Path, created: bool) -> None:
    if created:
        try:
            folder.rmdir()
        except OSError:
            pass
