"""Files written so that a crash never leaves a half-written one behind, and file digests.

Every file seqwarm writes goes through here: `atomic_write` for one file, `atomic_directory` for a
directory that must appear complete or not at all (a checkpoint, a prepared corpus, an export).
Both write beside the target and `os.replace` into place, which POSIX makes atomic within a file
system; the data is fsynced before the rename so that a power cut cannot publish an empty file.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


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
