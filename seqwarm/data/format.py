"""The on-disk format of a prepared corpus: a directory of token files and its meta.json.

`seqwarm prepare` writes it (`seqwarm.data.prepare`); training and evaluation read it through
`TokenData`, which checks every file against meta.json before anything trains on it.

    DIR/meta.json        format, tokenizer, vocabulary size, and per split: file, token count, sha256
    DIR/train.bin        uint16 GPT-2 token ids, documents separated by <|endoftext|>
    DIR/val.bin, test.bin
    DIR/heldout/*.jsonl  texts kept out of every split (the builtin corpus's evaluation texts)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from seqwarm.errors import DataError
from seqwarm.files import file_sha256

FORMAT = "seqwarm-tokens-v1"
TOKEN_DTYPE = np.uint16  # the GPT-2 vocabulary (50257) fits
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class SequenceIndex:
    """Full-length sequences of `seqlen + 1` tokens over a token array, with stride `seqlen`."""

    tokens: np.ndarray
    seqlen: int

    def __len__(self) -> int:
        return max(len(self.tokens) - 1, 0) // self.seqlen

    def rows(self, indices) -> torch.Tensor:
        """(len(indices), seqlen + 1) int64."""
        L = self.seqlen
        return torch.from_numpy(np.stack([self.tokens[i * L : i * L + L + 1] for i in indices]).astype(np.int64))


class TokenData:
    """A directory written by `seqwarm prepare`, validated against its meta.json."""

    def __init__(self, path: str | Path, *, verify: str = "full", vocab_size: int | None = None):
        self.path = Path(path)
        meta_path = self.path / "meta.json"
        if not self.path.exists():
            raise DataError(f"data.path: {self.path} does not exist (create it with `seqwarm prepare`)")
        if not meta_path.exists():
            raise DataError(f"data.path: {meta_path} is missing; not a directory written by `seqwarm prepare`")
        try:
            self.meta = json.loads(meta_path.read_text())
            splits = self.meta["splits"]
        except (json.JSONDecodeError, KeyError) as e:
            raise DataError(f"{meta_path}: unreadable metadata ({e})") from e
        if vocab_size is not None and self.meta.get("vocab_size") != vocab_size:
            raise DataError(
                f"{meta_path}: vocabulary size {self.meta.get('vocab_size')} differs from the model's {vocab_size}"
            )
        self.splits: dict[str, np.ndarray] = {}
        for name in SPLITS:
            info = splits.get(name)
            if info is None:
                raise DataError(f"{meta_path}: split {name!r} is missing")
            file = self.path / info["file"]
            if not file.exists():
                raise DataError(f"{file}: token file is missing")
            itemsize = np.dtype(TOKEN_DTYPE).itemsize
            if file.stat().st_size != info["tokens"] * itemsize:
                raise DataError(
                    f"{file}: size does not match meta.json ({info['tokens']} tokens); the file is corrupted"
                )
            if verify == "full" and file_sha256(file) != info["sha256"]:
                raise DataError(
                    f"{file}: sha256 does not match meta.json; the file is corrupted (re-run `seqwarm prepare`)"
                )
            self.splits[name] = (
                np.memmap(file, dtype=TOKEN_DTYPE, mode="r") if info["tokens"] else np.empty(0, TOKEN_DTYPE)
            )
        if len(self.splits["train"]) == 0:
            raise DataError(f"{self.path / splits['train']['file']}: the train split is empty")

    def sequences(self, split: str, seqlen: int) -> SequenceIndex:
        index = SequenceIndex(self.splits[split], seqlen)
        if len(index) == 0:
            raise DataError(
                f"{self.path / self.meta['splits'][split]['file']}: {len(self.splits[split])} tokens, "
                f"shorter than one sequence of {seqlen + 1}"
            )
        return index
