"""Reading prepared token files: full-length sequences, a seeded order, truncation per step.

The train split is indexed, as in the paper (Section 4), into full-length sequences of
`seqlen_end + 1` tokens: sequence i covers tokens [i * L, i * L + L] (inputs plus the shifted
targets), so consecutive sequences share one token and every token is a target exactly once.
Sequences are visited in a pseudo-random order drawn from the seed, a new one each epoch, computed
on the fly (a Feistel permutation), so memory grows with the batch, not with the corpus. Each step
truncates its sequences to the pacing length; with `drop_tail: false` the truncated tails are
queued and trained on first in the following steps (see `curriculum.split_segments`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import torch

from seqwarm.curriculum import split_segments, truncate
from seqwarm.errors import DataError
from seqwarm.loss import IGNORE_INDEX
from seqwarm.tokenizer import EOT_ID


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


def permute(positions: np.ndarray, n: int, key: int) -> np.ndarray:
    """A pseudo-random bijection of [0, n), evaluated at `positions`, with O(1) memory.

    A balanced Feistel network is a bijection on [0, 4^k); cycle-walking (re-applying it until the
    value falls below n) restricts it to [0, n) and keeps it a bijection.
    """
    half = max(1, ((n - 1).bit_length() + 1) // 2)
    mask = np.uint64((1 << half) - 1)
    x = positions.astype(np.uint64)
    todo = np.ones(len(x), dtype=bool)
    while todo.any():
        x[todo] = _feistel(x[todo], key, half, mask)
        todo = x >= n
    return x.astype(np.int64)


def _feistel(x: np.ndarray, key: int, half: int, mask: np.uint64, rounds: int = 4) -> np.ndarray:
    left, right = x >> np.uint64(half), x & mask
    for r in range(rounds):
        left, right = right, left ^ (_mix(right, key + r) & mask)
    return (left << np.uint64(half)) | right


def _mix(x: np.ndarray, key: int) -> np.ndarray:
    """splitmix64's finaliser of x + key: a cheap, well-spread integer hash (uint64 wraps around)."""
    z = x + np.uint64((key * 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def epoch_key(seed: int, epoch: int) -> int:
    return int.from_bytes(hashlib.sha256(f"seqwarm:{seed}:{epoch}".encode()).digest()[:8], "little")


@dataclass
class Batch:
    inputs: torch.Tensor  # (rows, seqlen) int64: this process's share of the global batch
    targets: torch.Tensor  # (rows, seqlen) int64, IGNORE_INDEX on padding
    tokens: int  # target tokens of the whole global batch (the clock's increment)
    starts: np.ndarray  # corpus position of each row of the global batch
    served: np.ndarray  # target tokens of each row of the global batch


class TrainLoader:
    """Global batches of truncated sequences, deterministic from the seed, resumable.

    State: how many fresh sequences have been drawn, and the queue of pending tails (at most one
    global batch of them: every queued tail is served at the next step).
    With several processes, each takes the contiguous share `rank` of every global batch.
    """

    def __init__(self, index: SequenceIndex, *, seed: int, drop_tail: bool = True, rank: int = 0, world_size: int = 1):
        self.index, self.seed, self.drop_tail = index, seed, drop_tail
        self.rank, self.world_size = rank, world_size
        self.consumed = 0  # fresh full-length sequences drawn so far
        self.tail_starts = np.empty(0, dtype=np.int64)
        self.tail_lengths = np.empty(0, dtype=np.int64)

    def next_segments(self, batch_size: int, seqlen: int) -> tuple[np.ndarray, np.ndarray]:
        """(starts, served) of the next global batch: queued tails first, then fresh sequences."""
        L = self.index.seqlen
        k = min(batch_size, len(self.tail_starts))
        starts = np.concatenate([self.tail_starts[:k], self._draw(batch_size - k) * L])
        lengths = np.concatenate([self.tail_lengths[:k], np.full(batch_size - k, L, dtype=np.int64)])
        served, tail_starts, tail_lengths = split_segments(starts, lengths, seqlen)
        self.tail_starts, self.tail_lengths = self.tail_starts[k:], self.tail_lengths[k:]
        if not self.drop_tail:
            self.tail_starts = np.concatenate([self.tail_starts, tail_starts])
            self.tail_lengths = np.concatenate([self.tail_lengths, tail_lengths])
        return starts, served

    def _draw(self, count: int) -> np.ndarray:
        n = len(self.index)
        positions = np.arange(self.consumed, self.consumed + count, dtype=np.int64)
        self.consumed += count
        out = np.empty(count, dtype=np.int64)
        epochs = positions // n
        for epoch in range(int(epochs[0]), int(epochs[-1]) + 1) if count else ():
            sel = epochs == epoch
            out[sel] = permute(positions[sel] % n, n, epoch_key(self.seed, epoch))
        return out

    def next_batch(self, batch_size: int, seqlen: int) -> Batch:
        starts, served = self.next_segments(batch_size, seqlen)
        share = batch_size // self.world_size
        mine = slice(self.rank * share, (self.rank + 1) * share)
        inputs, targets = self.read(starts[mine], served[mine], seqlen)
        return Batch(inputs, targets, tokens=int(served.sum()), starts=starts, served=served)

    def read(self, starts: np.ndarray, served: np.ndarray, seqlen: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows of `seqlen + 1` tokens from the segments, then truncation into inputs and targets.

        A segment shorter than `seqlen` (a last tail) is padded; its padding targets are ignored.
        """
        buf = np.full((len(starts), seqlen + 1), EOT_ID, dtype=np.int64)
        for row, (start, n) in enumerate(zip(starts, served)):
            buf[row, : n + 1] = self.index.tokens[start : start + n + 1]
        inputs, targets = truncate(torch.from_numpy(buf), seqlen)
        padding = torch.arange(seqlen).unsqueeze(0) >= torch.from_numpy(served).unsqueeze(1)
        return inputs, targets.masked_fill(padding, IGNORE_INDEX)

    def state_dict(self) -> dict:
        return {
            "seed": self.seed,
            "consumed": self.consumed,
            "tail_starts": self.tail_starts.tolist(),
            "tail_lengths": self.tail_lengths.tolist(),
        }

    def load_state_dict(self, state: dict) -> None:
        if state["seed"] != self.seed:
            raise DataError(f"run.seed {self.seed} differs from the checkpoint's data order seed {state['seed']}")
        self.consumed = int(state["consumed"])
        self.tail_starts = np.asarray(state["tail_starts"], dtype=np.int64)
        self.tail_lengths = np.asarray(state["tail_lengths"], dtype=np.int64)
