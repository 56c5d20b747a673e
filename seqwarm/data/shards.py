"""Writing a prepared corpus's token shards, resumably.

Each split is a sequence of shard files `SPLIT-NNNNNN.bin` of `shard_tokens` tokens each (the
last one of a `prepare` run shorter). A shard is appended to as tokens arrive; when it is full it
is closed, fsynced and hashed. `progress.json` records, at item boundaries, how many chunks of the
input are done and, per split, the finished shards and how many tokens the open one holds; a
resumed prepare truncates the open shard to that length, deletes anything written after it, and
goes on from that chunk. Shards are not written through `seqwarm.files.atomic_write` since they
grow over hours; they are published by meta.json, written atomically last, and a reader never
opens a directory without it (`TokenData` names an unfinished one).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np

from seqwarm.errors import DataError, first_line
from seqwarm.files import atomic_write, file_sha256

PROGRESS = "progress.json"
_SHARD = re.compile(r"(train|val|test)-(\d{6})\.bin")


def shard_name(split: str, index: int) -> str:
    return f"{split}-{index:06d}.bin"


def read_progress(directory: Path) -> dict:
    path = directory / PROGRESS
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise DataError(f"{path}: unreadable ({first_line(e)}); use --force to start over") from None


def write_progress(directory: Path, progress: dict) -> None:
    atomic_write(directory / PROGRESS, json.dumps(progress, indent=1) + "\n")


class SplitWriter:
    """The shards of one split written by this job, continuing after the `first_index` shards already published."""

    def __init__(
        self,
        directory: Path,
        split: str,
        dtype: np.dtype,
        shard_tokens: int,
        first_index: int,
        state: dict | None = None,
    ):
        self.directory, self.split, self.dtype, self.shard_tokens = directory, split, np.dtype(dtype), shard_tokens
        state = state or {"shards": [], "open": None}
        self.shards: list[dict] = list(state["shards"])
        self.index = first_index + len(self.shards)
        self.file = None
        self.written = 0
        self.closed_any = False
        keep = {s["file"] for s in self.shards}
        if state["open"] is not None:
            # Tokens written after the last checkpoint are dropped: they are written again from its chunk.
            path = directory / state["open"]["file"]
            self.written = int(state["open"]["tokens"])
            if not path.is_file() or path.stat().st_size < self.written * self.dtype.itemsize:
                raise DataError(f"{path}: shorter than progress.json records; use --force to start over")
            os.truncate(path, self.written * self.dtype.itemsize)
            self.file = path.open("ab")
            keep.add(path.name)
        for path in directory.iterdir():  # shards begun after the checkpoint
            m = _SHARD.fullmatch(path.name)
            if m and m.group(1) == split and int(m.group(2)) >= first_index and path.name not in keep:
                path.unlink()

    @property
    def path(self) -> Path:
        return self.directory / shard_name(self.split, self.index)

    def append(self, tokens: np.ndarray) -> None:
        while len(tokens):
            if self.file is None:
                self.file, self.written = self.path.open("wb"), 0
            take = min(len(tokens), self.shard_tokens - self.written)
            self.file.write(tokens[:take].tobytes())
            self.written += take
            tokens = tokens[take:]
            if self.written == self.shard_tokens:
                self._close()

    def _close(self) -> None:
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        ids = np.memmap(self.path, dtype=self.dtype, mode="r") if self.written else np.empty(0, self.dtype)
        # max_id: what `TokenData` checks against the vocabulary without reading the ids (data.verify: size)
        top = max((int(ids[i : i + (1 << 26)].max()) for i in range(0, len(ids), 1 << 26)), default=-1)
        del ids
        entry = {"file": self.path.name, "tokens": self.written, "sha256": file_sha256(self.path), "max_id": top}
        self.shards.append(entry)
        self.file, self.written, self.index = None, 0, self.index + 1
        self.closed_any = True

    def sync(self) -> None:
        if self.file is not None:
            self.file.flush()
            os.fsync(self.file.fileno())

    def state(self) -> dict:
        return {
            "shards": self.shards,
            "open": None if self.file is None else {"file": self.path.name, "tokens": self.written},
        }

    def finish(self) -> list[dict]:
        """Close the last shard (a shorter one); the shards this job wrote."""
        if self.file is not None and self.written:
            self._close()
        elif self.file is not None:
            self.file.close()
            self.path.unlink()
            self.file = None
        return self.shards

    def abandon(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None
