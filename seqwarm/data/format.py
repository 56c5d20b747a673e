"""The on-disk format of a prepared corpus: a directory of token shards and its meta.json.

`seqwarm prepare` writes it (`seqwarm.data.prepare`); training and evaluation read it through
`TokenData`, which checks every file against meta.json before anything trains on it (or, with
`data.verify: lazy`, each shard the first time it is read).

    DIR/meta.json        format, tokenizer, vocabulary size, token dtype, and per split: token count, the sha256
                         of its whole token stream, and its shards (file, token count, sha256)
    DIR/train-000000.bin token ids (uint16, or uint32 for a vocabulary over 65,536), documents separated by
    DIR/...              <|endoftext|>; a split's shards, in order, are one stream (`TokenStream`)
    DIR/tokenizer.json   the tokenizer, unless it is GPT-2's (meta.json: tokenizer_file, tokenizer_sha256)
    DIR/heldout/*.jsonl  texts kept out of every split (the builtin corpus's evaluation texts)
    DIR/progress.json    only while a prepare is unfinished (no meta.json yet): where it resumes

The single-file format of seqwarm 0.2 (`seqwarm-tokens-v1`: DIR/train.bin, val.bin, test.bin,
meta.json's splits naming one file each) still reads, as it always did.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

from seqwarm.errors import DataError, first_line
from seqwarm.files import file_sha256
from seqwarm.tokenizer import EOT_ID, VOCAB_SIZE, Tokenizer, tokenizer_from_meta

FORMAT = "seqwarm-tokens-v1"  # one file per split
FORMAT_SHARDED = "seqwarm-tokens-v2"
TOKEN_DTYPE = np.uint16  # GPT-2's vocabulary (50257) fits; the dtype of every corpus prepared before uint32
TOKEN_DTYPES = {"uint16": np.uint16, "uint32": np.uint32}
SPLITS = ("train", "val", "test")


def token_dtype(vocab_size: int) -> type[np.unsignedinteger]:
    """The narrowest dtype that holds every id of the vocabulary: half the disk and page cache of uint32 when it fits."""
    return np.uint16 if vocab_size <= 1 << 16 else np.uint32


def data_vocab_size(meta: dict) -> int:
    """The vocabulary of a prepared corpus's tokenizer, what `model.vocab_size: auto` takes.

    GPT-2's for a corpus tokenized with it (whatever meta.json's `vocab_size` claims, so that a
    meta.json that disagrees with its tokens is the vocabulary error it has always been), else the
    size recorded with its tokenizer.json, which `prepare` read off the tokenizer itself.
    """
    if meta.get("tokenizer_file") is None:
        return VOCAB_SIZE
    return int(meta["vocab_size"])


class TokenStream:
    """A split's shards as one read-only token array: `len`, slices, `np.asarray`; one np.memmap per shard.

    A slice reads only the pages it covers, so memory follows the batch, not the corpus. With
    `verify="lazy"` each shard's sha256 is checked the first time it is read.
    """

    def __init__(self, files: list[Path], counts: list[int], dtype, sha256: list[str] | None = None):
        self.dtype = np.dtype(dtype)
        self.files = files
        self.maps = [np.memmap(f, dtype=dtype, mode="r") if n else np.empty(0, dtype) for f, n in zip(files, counts)]
        self.offsets = np.concatenate([[0], np.cumsum(counts, dtype=np.int64)])
        self.pending = dict(enumerate(sha256)) if sha256 is not None else {}  # shard -> sha256 still to check

    def __len__(self) -> int:
        return int(self.offsets[-1])

    @property
    def shape(self) -> tuple[int]:
        return (len(self),)

    def _shard(self, i: int) -> np.ndarray:
        if i in self.pending:
            if file_sha256(self.files[i]) != self.pending[i]:
                raise DataError(
                    f"{self.files[i]}: sha256 does not match meta.json; the shard is corrupted (re-run `seqwarm prepare`)"
                )
            del self.pending[i]
        return self.maps[i]

    def __getitem__(self, key):
        if isinstance(key, (int, np.integer)):
            i = int(key) + len(self) if key < 0 else int(key)
            shard = int(np.searchsorted(self.offsets, i, side="right")) - 1
            return self._shard(shard)[i - self.offsets[shard]]
        start, stop, step = key.indices(len(self))
        if step != 1:
            return np.asarray(self)[key]
        if stop <= start:
            return np.empty(0, self.dtype)
        first = int(np.searchsorted(self.offsets, start, side="right")) - 1
        last = int(np.searchsorted(self.offsets, stop - 1, side="right")) - 1
        pieces = [
            self._shard(s)[max(start - self.offsets[s], 0) : min(stop, self.offsets[s + 1]) - self.offsets[s]]
            for s in range(first, last + 1)
        ]
        return pieces[0] if len(pieces) == 1 else np.concatenate(pieces)

    def __array__(self, dtype=None, copy=None):
        out = self[0 : len(self)] if len(self) else np.empty(0, self.dtype)
        return np.asarray(out, dtype=dtype)


def member_path(directory: Path, name: object, where: str) -> Path:
    """`directory / name` for a file that meta.json names, refused when the name could reach outside
    `directory` (absolute, `..`, not a string): a meta.json must not make seqwarm read arbitrary files."""
    bad = not isinstance(name, str) or not name or "\\" in name
    if bad or PurePosixPath(name).is_absolute() or ".." in PurePosixPath(name).parts:
        raise DataError(f"{where}: {name!r} is not a file name inside {directory}")
    return directory / name


def max_token_id(tokens: np.ndarray, block: int = 1 << 26) -> int:
    """The largest id in a token array (-1 when empty), read in blocks so a memmap is never loaded whole."""
    return max((int(tokens[i : i + block].max()) for i in range(0, len(tokens), block)), default=-1)


@dataclass(frozen=True)
class SequenceIndex:
    """Full-length sequences of `seqlen + 1` tokens over a token array, with stride `seqlen`."""

    tokens: np.ndarray
    seqlen: int
    pad_id: int = EOT_ID  # what the loader pads a last short row with: the corpus's <|endoftext|>

    def __len__(self) -> int:
        return max(len(self.tokens) - 1, 0) // self.seqlen

    def rows(self, indices) -> torch.Tensor:
        """(len(indices), seqlen + 1) int64."""
        # Imported here: `seqwarm prepare` imports this module and never builds a tensor (torch's
        # import is about 1.5 CPU-s and 250 MB of resident memory).
        import torch

        L = self.seqlen
        return torch.from_numpy(np.stack([self.tokens[i * L : i * L + L + 1] for i in indices]).astype(np.int64))


class TokenData:
    """A directory written by `seqwarm prepare`, validated against its meta.json.

    `vocab_size`, when given, must be meta.json's (the model's vocabulary against the data's);
    `self.vocab_size` is the data's tokenizer's (`data_vocab_size`), `self.eot_id` its separator.
    """

    def __init__(self, path: str | Path, *, verify: str = "full", vocab_size: int | None = None):
        self.path = Path(path)
        meta_path = self.path / "meta.json"
        if not self.path.exists():
            raise DataError(f"data.path: {self.path} does not exist (create it with `seqwarm prepare`)")
        if not self.path.is_dir():
            raise DataError(f"data.path: {self.path} is a file, not a directory written by `seqwarm prepare`")
        if not meta_path.exists() and (self.path / "progress.json").exists():
            raise DataError(
                f"data.path: {self.path} holds an unfinished `seqwarm prepare`; run the same command again to finish it"
            )
        if not meta_path.exists():
            raise DataError(f"data.path: {meta_path} is missing; not a directory written by `seqwarm prepare`")
        try:
            self.meta = json.loads(meta_path.read_text())
            splits = self.meta["splits"]
            if not isinstance(splits, dict):
                raise TypeError("splits is not a mapping")
        except (OSError, ValueError, KeyError, TypeError) as e:  # ValueError: bad JSON or not UTF-8
            raise DataError(f"{meta_path}: unreadable metadata ({first_line(e)})") from e
        if vocab_size is not None:
            self.check_vocab(vocab_size)
        dtype_name = self.meta.get("dtype", "uint16")
        if dtype_name not in TOKEN_DTYPES:
            raise DataError(f"{meta_path}: token dtype {dtype_name!r} is not one of {', '.join(TOKEN_DTYPES)}")
        dtype = TOKEN_DTYPES[dtype_name]
        try:
            self.vocab_size = data_vocab_size(self.meta)
            self.eot_id = int(self.meta.get("eot_id", EOT_ID))
        except (KeyError, TypeError, ValueError) as e:
            raise DataError(f"{meta_path}: unreadable tokenizer record ({e})") from e
        if self.meta.get("tokenizer_file") is not None:
            file = member_path(self.path, self.meta["tokenizer_file"], f"{meta_path}: tokenizer_file")
            if not file.exists():
                raise DataError(f"{file}: tokenizer file is missing")
            if verify in ("full", "lazy") and file_sha256(file) != self.meta.get("tokenizer_sha256"):
                raise DataError(f"{file}: sha256 does not match meta.json; the tokenizer was changed")
        if verify not in ("full", "size", "lazy"):
            raise DataError(f"data.verify: {verify!r} is not one of full, size, lazy")
        self.splits: dict[str, np.ndarray | TokenStream] = {}
        for name in SPLITS:
            info = splits.get(name)
            if info is None:
                raise DataError(f"{meta_path}: split {name!r} is missing")
            if not isinstance(info, dict) or not isinstance(info.get("tokens"), int) or info["tokens"] < 0:
                raise DataError(f"{meta_path}: split {name!r} has no valid token count")
            if "shards" in info:
                self.splits[name] = self._open_shards(info["shards"], dtype, verify, f"{meta_path}: splits.{name}")
                continue
            file = member_path(self.path, info.get("file"), f"{meta_path}: splits.{name}.file")
            if not file.is_file():
                raise DataError(f"{file}: token file is missing")
            itemsize = np.dtype(dtype).itemsize
            if file.stat().st_size != info["tokens"] * itemsize:
                raise DataError(
                    f"{file}: size does not match meta.json ({info['tokens']} tokens); the file is corrupted"
                )
            if verify in ("full", "lazy") and file_sha256(file) != info["sha256"]:
                raise DataError(
                    f"{file}: sha256 does not match meta.json; the file is corrupted (re-run `seqwarm prepare`)"
                )
            self.splits[name] = np.memmap(file, dtype=dtype, mode="r") if info["tokens"] else np.empty(0, dtype)
            self._check_ids(file, info, self.splits[name], verify)
        if len(self.splits["train"]) == 0:
            raise DataError(f"{self.path / splits['train'].get('file', 'train-*.bin')}: the train split is empty")

    def _open_shards(self, shards: list[dict], dtype, verify: str, where: str) -> TokenStream:
        files, itemsize = [], np.dtype(dtype).itemsize
        for i, shard in enumerate(shards):
            if not isinstance(shard, dict) or not isinstance(shard.get("tokens"), int) or shard["tokens"] < 0:
                raise DataError(f"{where}.shards[{i}]: no valid token count")
            file = member_path(self.path, shard.get("file"), f"{where}.shards[{i}].file")
            if not file.exists():
                raise DataError(f"{file}: shard is missing")
            if file.stat().st_size != shard["tokens"] * itemsize:
                raise DataError(
                    f"{file}: size does not match meta.json ({shard['tokens']} tokens); the shard is corrupted"
                )
            if verify == "full" and file_sha256(file) != shard["sha256"]:
                raise DataError(
                    f"{file}: sha256 does not match meta.json; the shard is corrupted (re-run `seqwarm prepare`)"
                )
            ids = np.memmap(file, dtype=dtype, mode="r") if shard["tokens"] else np.empty(0, dtype)
            self._check_ids(file, shard, ids, verify)  # lazy: the recorded max_id, as under size
            files.append(file)
        lazy = [s["sha256"] for s in shards] if verify == "lazy" else None
        return TokenStream(files, [s["tokens"] for s in shards], dtype, lazy)

    def _check_ids(self, file: Path, info: dict, tokens: np.ndarray, verify: str) -> None:
        """DataError for a token id at or above the vocabulary: the embedding would index past its
        table mid-run. `full` reads the ids (a sha256 recomputed after an edit would not catch them);
        `size` trusts the `max_id` that `prepare` recorded (corpora prepared before it have none)."""
        top = max_token_id(tokens) if verify == "full" else info.get("max_id", -1)
        if not isinstance(top, int) or top >= self.vocab_size:
            raise DataError(
                f"{file}: token id {top} is outside the vocabulary of {self.vocab_size} (re-run `seqwarm prepare`)"
            )

    def check_vocab(self, vocab_size: int) -> None:
        """DataError unless meta.json's vocabulary is the model's `vocab_size`."""
        if self.meta.get("vocab_size") != vocab_size:
            raise DataError(
                f"{self.path / 'meta.json'}: vocabulary size {self.meta.get('vocab_size')} "
                f"differs from the model's {vocab_size}"
            )

    def tokenizer(self) -> Tokenizer:
        """The tokenizer the corpus was prepared with (GPT-2's, or its tokenizer.json, checked against meta.json)."""
        return tokenizer_from_meta(self.meta, self.path)

    def sequences(self, split: str, seqlen: int) -> SequenceIndex:
        index = SequenceIndex(self.splits[split], seqlen, pad_id=self.eot_id)
        if len(index) == 0:
            raise DataError(
                f"{self.path / self.meta['splits'][split].get('file', split + '-*.bin')}: {len(self.splits[split])} tokens, "
                f"shorter than one sequence of {seqlen + 1}"
            )
        return index
