"""The order in which training visits the corpus: which segments each global batch trains on.

The train split is indexed, as in the paper (Section 4), into full-length sequences of
`seqlen_end + 1` tokens: sequence i covers tokens [i * L, i * L + L] (inputs plus the shifted
targets), so consecutive sequences share one token and every token is a target exactly once.
Sequences are visited in a pseudo-random order drawn from the seed, a new one each epoch, computed
on the fly (a Feistel permutation), so memory grows with the batch, not with the corpus. Each step
truncates its sequences to the pacing length; with `drop_tail: false` the truncated tails go to a
bounded pool from which later batches take a share of their rows (`split_segments`, `tail_share`).

This is bookkeeping on integers only, no tokens: `TrainLoader` reads the tokens of the segments
drawn here, and `seqwarm plan` draws the same segments without any corpus.
"""

from __future__ import annotations

import hashlib

import numpy as np

from seqwarm.errors import DataError


def split_segments(starts: np.ndarray, lengths: np.ndarray, seqlen: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Serve at most `seqlen` targets of each segment (start, n): return (served, tail_starts, tail_lengths).

    A tail starts where the served part stops, so its first input token is the last served target
    and every target token is served exactly once. Segments that fit entirely leave no tail.
    """
    served = np.minimum(lengths, seqlen)
    rest = lengths > served
    return served, (starts + served)[rest], (lengths - served)[rest]


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


_GAMMA = 0x9E3779B97F4A7C15  # splitmix64's increment, 2^64 / the golden ratio


def _mix(x: np.ndarray, key: int) -> np.ndarray:
    """splitmix64's finaliser of x + key: a cheap, well-spread integer hash (uint64 wraps around)."""
    z = x + np.uint64((key * _GAMMA) & 0xFFFFFFFFFFFFFFFF)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def epoch_key(seed: int, epoch: int) -> int:
    """The permutation key of one epoch: a new order every epoch, the same for the same seed."""
    return int.from_bytes(hashlib.sha256(f"seqwarm:{seed}:{epoch}".encode()).digest()[:8], "little")


POOL_BATCHES = 8
"""The tail pool holds at most this many global batches of pending tails (docs/DESIGN.md, "Truncation
and `drop_tail`"): a tail is served again after about this many steps, and a checkpoint stores at most
2 * POOL_BATCHES integers per row of the batch."""


def tail_share(pending: int, batch_size: int, capacity: int) -> int:
    """How many rows of a batch are pending tails; the rest are fresh sequences.

    Half the batch (at least one row, so that the pool drains even at batch size 1) while the pool has
    room; more when the fresh rows would otherwise overflow its `capacity`, since each fresh row
    truncated below full length adds one tail. Never more than the pool holds or the batch has rows.
    """
    return min(pending, batch_size, max(max(1, batch_size // 2), pending + batch_size - capacity))


class SequenceOrder:
    """The segments of every global batch, deterministic from the seed, resumable.

    `n_sequences` full-length sequences of `seqlen` targets each (sequence i starts at token
    i * seqlen). State: how many fresh sequences have been drawn, and the pool of pending tails
    (`drop_tail: false`), at most POOL_BATCHES global batches of them.
    """

    def __init__(self, n_sequences: int, seqlen: int, *, seed: int, drop_tail: bool = True):
        self.n_sequences, self.seqlen = n_sequences, seqlen
        self.seed, self.drop_tail = seed, drop_tail
        self.consumed = 0  # fresh full-length sequences drawn so far
        self.tail_starts = np.empty(0, dtype=np.int64)
        self.tail_lengths = np.empty(0, dtype=np.int64)
        # Batches never to train on (rewind-and-skip, `seqwarm.rewind`): {"at": position, "to": state}. When the
        # order reaches `at` it continues from `to`, the state after the last skipped batch, as BigScience's
        # --skip-train-iteration-range skips iterations; a resumed or replayed run skips exactly those batches.
        self.skips: list[dict] = []

    def position(self) -> list[int]:
        """Where the order is, as two integers that grow with every batch drawn: fresh sequences drawn, and
        target tokens served (every drawn target is served or pending in the pool), so a batch of tails only
        still moves it."""
        return [self.consumed, self.consumed * self.seqlen - int(self.tail_lengths.sum())]

    def skip(self, at: list[int], to: dict) -> None:
        """From now on, on reaching position `at`, continue from state `to` (a `state_dict` of this order)."""
        self.skips.append({"at": list(at), "to": {k: v for k, v in to.items() if k != "skips"}})

    def next_segments(self, batch_size: int, seqlen: int) -> tuple[np.ndarray, np.ndarray]:
        """(starts, served) of the next global batch, truncated to `seqlen`: a share of pending tails, then fresh ones.

        `starts` are token positions; `served[i]` is how many targets row i trains on (at most
        `seqlen`; less for a last tail). The tails taken are a pseudo-random subset of the pool, in
        pool order; the pool keeps the others and receives the tails of this batch.
        """
        if self.skips:
            here = self.position()
            for skip in self.skips:
                if skip["at"] == here:
                    self._set(skip["to"])
                    break
        L = self.seqlen
        pending = len(self.tail_starts)
        k = tail_share(pending, batch_size, POOL_BATCHES * batch_size) if pending else 0
        if k == pending:
            taken = np.arange(pending)
        else:
            # A random subset, not the oldest tails: otherwise the rows of one batch would travel through
            # the pool together and meet again every POOL_BATCHES steps as consecutive chunks. The k
            # smallest of splitmix64's outputs, one per pool slot, in O(pool) time: they are distinct
            # (multiplying by the odd _GAMMA and the finaliser are bijections of uint64), so no ties.
            rank = _mix(np.arange(pending, dtype=np.uint64) * np.uint64(_GAMMA), self._pool_key())
            taken = np.sort(np.argpartition(rank, k - 1)[:k])
        starts = np.concatenate([self.tail_starts[taken], self._draw(batch_size - k) * L])
        lengths = np.concatenate([self.tail_lengths[taken], np.full(batch_size - k, L, dtype=np.int64)])
        served, tail_starts, tail_lengths = split_segments(starts, lengths, seqlen)
        self.tail_starts = np.delete(self.tail_starts, taken)
        self.tail_lengths = np.delete(self.tail_lengths, taken)
        if not self.drop_tail:
            self.tail_starts = np.concatenate([self.tail_starts, tail_starts])
            self.tail_lengths = np.concatenate([self.tail_lengths, tail_lengths])
        return starts, served

    def _pool_key(self) -> int:
        """The key of this step's choice of tails, from the state alone (so a resumed run chooses alike).

        It hashes the number of target tokens served so far (with `drop_tail: false` every drawn target
        is served or pending), which grows at every step, so each step gets its own choice.
        """
        served = self.consumed * self.seqlen - int(self.tail_lengths.sum())
        return int.from_bytes(hashlib.sha256(f"seqwarm:{self.seed}:tails:{served}".encode()).digest()[:8], "little")

    def _draw(self, count: int) -> np.ndarray:
        """The next `count` sequence indices; an epoch that runs out continues with the next one's order."""
        n = self.n_sequences
        positions = np.arange(self.consumed, self.consumed + count, dtype=np.int64)
        self.consumed += count
        out = np.empty(count, dtype=np.int64)
        epochs = positions // n
        for epoch in range(int(epochs[0]), int(epochs[-1]) + 1) if count else ():
            sel = epochs == epoch
            out[sel] = permute(positions[sel] % n, n, epoch_key(self.seed, epoch))
        return out

    def state_dict(self) -> dict:
        """The data position a checkpoint stores (state.json's `loader`); its keys are part of the format
        (`skips` only once a rewind recorded one, so a run without rewinds writes what it always did)."""
        state = {
            "seed": self.seed,
            "consumed": self.consumed,
            "tail_starts": self.tail_starts.tolist(),
            "tail_lengths": self.tail_lengths.tolist(),
        }
        if self.skips:
            state["skips"] = [dict(s) for s in self.skips]
        return state

    def load_state_dict(self, state: dict) -> None:
        if state["seed"] != self.seed:
            raise DataError(f"run.seed {self.seed} differs from the checkpoint's data order seed {state['seed']}")
        self._set(state)
        self.skips = [dict(s) for s in state.get("skips", [])]

    def _set(self, state: dict) -> None:
        self.consumed = int(state["consumed"])
        self.tail_starts = np.asarray(state["tail_starts"], dtype=np.int64)
        self.tail_lengths = np.asarray(state["tail_lengths"], dtype=np.int64)
