"""Files written so that a crash never leaves a half-written one behind, file digests, directory locks.

Every file seqwarm writes goes through here: `atomic_write` for one file, `atomic_directory` for a
directory that must appear complete or not at all (a checkpoint, a prepared corpus, an export),
`open_append`/`append_line` for the logs that only grow (metrics.jsonl, resumes.jsonl), and
`directory_lock` keeps a second process from writing into a directory one is writing.
Both write beside the target and `os.replace` into place, which POSIX makes atomic within a file
system; the data is fsynced before the rename so that a power cut cannot publish an empty file.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from seqwarm.errors import SeqwarmError


def file_sha256(path: str | Path) -> str:
    """The sha256 of a file's bytes, read in blocks (memory does not grow with the file)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def default_mode(*, directory: bool) -> int:
    """The permission bits a plain `open`/`mkdir` would give under the current umask."""
    mask = os.umask(0)
    os.umask(mask)
    return (0o777 if directory else 0o666) & ~mask


def fsync_path(path: str | Path) -> None:
    """Make a file's data, or a directory's entries, durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str | Path, data: str | bytes) -> None:
    """Replace `path` with `data` in one step: readers see the old file or the new one, never a part."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, default_mode(directory=False))  # mkstemp makes it private
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_path(path.parent)


@contextlib.contextmanager
def atomic_directory(final: str | Path, *, mode: int | None = None) -> Iterator[Path]:
    """Yield an empty temporary directory beside `final`; on success it replaces `final` whole.

    An existing `final` is swapped out and deleted only after the new one is in place, so at every
    moment `final` is either the old complete directory or the new one. On an exception (a crash,
    Ctrl-C) the temporary directory is removed and `final` is untouched. The files written into it
    are fsynced before the rename. `mode`: the new directory's permission bits (default: umask's).
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        yield tmp
        for p in tmp.rglob("*"):
            if p.is_file():
                fsync_path(p)
        fsync_path(tmp)
        os.chmod(tmp, default_mode(directory=True) if mode is None else mode)  # mkdtemp makes it private
        if final.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{final.name}.old-", dir=final.parent))
            os.replace(final, old / final.name)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
        fsync_path(final.parent)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def append_line(path: str | Path, line: str) -> None:
    """Append one line to a log file (resumes.jsonl), durably.

    The line goes out in one `write` on an O_APPEND descriptor and is fsynced. A previous line cut by
    a crash (no final newline) is closed first, so the new line never fuses with it: the readers skip
    the cut line (`seqwarm.metrics.read_metrics`) and keep this one.
    """
    data = line.rstrip("\n").encode() + b"\n"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, default_mode(directory=False))
    try:
        size = os.fstat(fd).st_size
        if size:
            with open(path, "rb") as f:
                f.seek(size - 1)
                if f.read(1) != b"\n":
                    data = b"\n" + data
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def open_append(path: str | Path) -> IO[str]:
    """A text file opened for appending (metrics.jsonl during a run), its cut last line closed first.

    Rows are appended, never rewritten, while a run trains; a crash can cut at most the last row,
    which the readers skip. A rewrite (a resume's truncation) goes through `atomic_write`.
    """
    path = Path(path)
    if path.exists() and path.stat().st_size:
        with open(path, "rb") as f:
            f.seek(-1, os.SEEK_END)
            cut = f.read(1) != b"\n"
        if cut:
            append_line(path, "")  # close the cut line: the next row starts on its own line
    return open(path, "a")


# --- directory locks ------------------------------------------------------------------------------

LOCK = ".seqwarm.lock"
"""The lock file of a run directory (inside it); a prepared directory's is beside it (`lock_path`)."""

_held: dict[str, int] = {}  # lock path -> nesting depth: a process may re-enter its own lock


def lock_path(directory: str | Path, *, inside: bool) -> Path:
    """Where the lock of `directory` lives: inside it, or beside it (`.NAME.lock`) for a directory that
    is replaced whole by a rename (a prepared corpus), whose lock must outlive the swap."""
    directory = Path(directory)
    return directory / LOCK if inside else directory.parent / f".{directory.name}.lock"


def lock_holder(path: str | Path) -> str:
    """Who the lock file `path` says holds it: 'pid N on host H (since T)', or 'unknown' when it says nothing."""
    try:
        info = json.loads(Path(path).read_text())
        return f"pid {info['pid']} on host {info['host']} (since {info['since']})"
    except (OSError, ValueError, KeyError, TypeError):
        return "an unknown process"


@contextlib.contextmanager
def directory_lock(
    directory: str | Path, *, inside: bool = True, what: str = "directory", wait: bool = False
) -> Iterator[Path]:
    """Hold an exclusive lock on `directory` for the body's duration; SeqwarmError when another process holds it.

    `fcntl.flock` on a lock file: the kernel releases it when its holder exits, however it exits
    (kill -9 included), so a lock left by a dead process is simply taken over; the file's text
    (PID, host, start time) is only there to name the holder in the error. The holder deletes the
    file before it lets go; whoever then gets the flock of the deleted file sees that the path no
    longer names it and starts over on a new file, so two processes never hold "the" lock at once.
    The same process may take a lock it already holds (nested calls). `inside`: see `lock_path`; the
    parent directories are created when missing. `wait`: block until the holder is done instead of
    failing (the builtin corpus's cache, which a second run may simply wait for). A file system
    without flock (some NFS mounts) runs unlocked, with a warning.
    """
    path = lock_path(directory, inside=inside)
    key = os.path.realpath(path)
    if key in _held:
        _held[key] += 1
        try:
            yield path
        finally:
            _held[key] -= 1
        return
    fd = _acquire(path, directory, what, wait)
    try:
        record = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
        _held[key] = 0
        try:
            yield path
        finally:
            del _held[key]
            with contextlib.suppress(OSError):
                # While still holding it (see the docstring), and only if the path still names our file:
                # a directory replaced whole meanwhile (import-hf --force of a run) may hold another's.
                if os.stat(path).st_ino == os.fstat(fd).st_ino:
                    os.unlink(path)
    finally:
        os.close(fd)  # releases the flock


def _acquire(path: Path, directory: str | Path, what: str, wait: bool) -> int:
    """An open descriptor of the lock file `path`, flocked, that `path` still names."""
    import fcntl  # POSIX only, like the rest of seqwarm's process handling

    while True:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, default_mode(directory=False))
        except OSError as e:
            raise SeqwarmError(f"{directory}: cannot create its lock file {path.name} ({e.strerror})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise SeqwarmError(
                f"{directory}: {what} in use by another seqwarm process, {lock_holder(path)}; "
                "wait for it to finish or stop it"
            ) from None
        except OSError as e:  # ENOLCK, EOPNOTSUPP: no locks on this file system
            print(f"seqwarm: warning: {directory}: cannot lock ({e.strerror}); running unlocked", file=sys.stderr)
            return fd
        try:
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)  # the holder before us deleted this file as it let go: lock the new one


def only_lock(directory: str | Path) -> bool:
    """Whether `directory` is missing, empty, or holds nothing but its lock file."""
    directory = Path(directory)
    return not directory.exists() or all(p.name == LOCK for p in directory.iterdir())


def check_writable(path: str | Path, what: str, *, directory: bool) -> None:
    """SeqwarmError, before any work, unless `path` can be written as a file (`directory=False`) or a
    directory: a file where a directory is expected (or the reverse), a file among its parents, or a
    nearest existing parent that this process may not write into (permissions, a read-only mount)."""
    from seqwarm.errors import SeqwarmError

    path = Path(path)
    if path.exists() and path.is_dir() != directory:
        kind = "a directory, not a file" if path.is_dir() else "a file, not a directory"
        raise SeqwarmError(f"{what} {path}: is {kind}")
    parent = path.parent  # atomic writes create their temporary file or directory beside the target
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise SeqwarmError(f"{what} {path}: {parent} is a file, not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise SeqwarmError(f"{what} {path}: {parent} is not writable (permission denied or a read-only file system)")
