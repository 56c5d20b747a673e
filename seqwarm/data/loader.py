"""Reading prepared token files: full-length sequences, and the truncated rows of each step.

`SequenceIndex` cuts a split into full-length sequences of `seqlen_end + 1` tokens (the paper's
indexing, Section 4; see `seqwarm.data.order`). `TrainLoader` asks a `SequenceOrder` which
segments the next global batch trains on, reads their tokens and truncates them to the step's
pacing length, padding a last tail shorter than that (its padding targets are ignored). A melted
step (`curriculum.packing: melt`, `split` > 1) draws full-length sequences and splits each into
`split` rows of the step's length (`seqwarm.curriculum.melt`): every token of the sequence is trained.

`prefetch(batch_size, seqlen)` reads the next batch's tokens in a background thread while the
current step runs, from a copy of the order: `next_batch` still draws its segments from the order
itself and takes the prefetched rows only when they are of exactly those segments, so batches,
and the order's state (what a checkpoint stores: consumed batches, never prefetched ones), are the
same with and without it.
"""

from __future__ import annotations

import copy
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

from seqwarm.curriculum import truncate
from seqwarm.data.format import SequenceIndex
from seqwarm.data.order import SequenceOrder
from seqwarm.loss import IGNORE_INDEX


@dataclass
class Batch:
    inputs: torch.Tensor  # (rows, seqlen) int64: this process's share of the global batch
    targets: torch.Tensor  # (rows, seqlen) int64, IGNORE_INDEX on padding
    tokens: int  # target tokens of the whole global batch (the clock's increment)
    starts: np.ndarray  # corpus position of each row of the global batch
    served: np.ndarray  # target tokens of each drawn sequence (segment) of the global batch
    split: int = 1  # rows per drawn sequence (melted steps): inputs has len(starts) / world_size x split rows


class TrainLoader:
    """Global batches of truncated sequences, in the order of a `SequenceOrder` over `index`.

    Its state (a checkpoint's `loader`) is the order's. With several processes, each takes the
    contiguous share `rank` of every global batch.
    """

    def __init__(
        self,
        index: SequenceIndex,
        *,
        seed: int,
        drop_tail: bool = True,
        rank: int = 0,
        world_size: int = 1,
        pin_memory: bool = False,
    ):
        self.index = index
        self.order = SequenceOrder(len(index), index.seqlen, seed=seed, drop_tail=drop_tail)
        self.rank, self.world_size = rank, world_size
        self.pin_memory = pin_memory  # page-locked rows, so that .to(cuda, non_blocking=True) is asynchronous
        self._pool: ThreadPoolExecutor | None = None
        self._ahead: tuple[int, int, int, Future] | None = None
        self.prefetch_hits = 0

    def next_batch(self, batch_size: int, seqlen: int, split: int = 1) -> Batch:
        """`batch_size` sequences of the global batch, each served for `seqlen x split` targets, as rows of `seqlen`."""
        starts, served = self.order.next_segments(batch_size, seqlen * split)
        ahead, self._ahead = self._ahead, None
        if ahead is not None and ahead[:3] == (batch_size, seqlen, split):
            p_starts, p_served, inputs, targets = ahead[3].result()
            if np.array_equal(p_starts, starts) and np.array_equal(p_served, served):
                self.prefetch_hits += 1
                return Batch(inputs, targets, int(served.sum()), starts, served, split)
        elif ahead is not None:
            ahead[3].result()  # a guess that missed (a skipped or held step changed the batch): let it finish
        inputs, targets = self._rows(starts, served, seqlen, split)
        return Batch(inputs, targets, int(served.sum()), starts, served, split)

    def prefetch(self, batch_size: int, seqlen: int, split: int = 1) -> None:
        """Start reading the batch that `next_batch(batch_size, seqlen, split)` would return next, in the background."""
        if self._ahead is not None:
            self._ahead[3].result()
        order = copy.deepcopy(self.order)  # integers only: the pool of tails at most, never tokens
        if self._pool is None:
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="seqwarm-prefetch")

        def work():
            starts, served = order.next_segments(batch_size, seqlen * split)
            return (starts, served, *self._rows(starts, served, seqlen, split))

        self._ahead = (batch_size, seqlen, split, self._pool.submit(work))

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool, self._ahead = None, None

    def _rows(
        self, starts: np.ndarray, served: np.ndarray, seqlen: int, split: int = 1
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # The processes share out drawn sequences, then each melts its own: a sequence's rows stay on one process.
        share = len(starts) // self.world_size
        mine = slice(self.rank * share, (self.rank + 1) * share)
        inputs, targets = self.read(starts[mine], served[mine], seqlen * split)
        if split > 1:
            # `melt` of the full rows: piece i of a row is inputs[i*L:(i+1)*L] and the targets beside them, the
            # same tokens (padding targets stay ignored, though melted steps draw full sequences only).
            inputs, targets = inputs.reshape(-1, seqlen), targets.reshape(-1, seqlen)
        if self.pin_memory:
            inputs, targets = inputs.pin_memory(), targets.pin_memory()
        return inputs, targets

    def read(self, starts: np.ndarray, served: np.ndarray, seqlen: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows of `seqlen + 1` tokens from the segments, then truncation into inputs and targets.

        A segment shorter than `seqlen` (a last tail) is padded; its padding targets are ignored.
        """
        # Padded with the corpus's <|endoftext|> (GPT-2's 50256, or the id its own tokenizer gives it).
        buf = np.full((len(starts), seqlen + 1), self.index.pad_id, dtype=np.int64)
        for row, (start, n) in enumerate(zip(starts, served)):
            buf[row, : n + 1] = self.index.tokens[start : start + n + 1]
        inputs, targets = truncate(torch.from_numpy(buf), seqlen)
        padding = torch.arange(seqlen).unsqueeze(0) >= torch.from_numpy(served).unsqueeze(1)
        return inputs, targets.masked_fill(padding, IGNORE_INDEX)

    def state_dict(self) -> dict:
        return self.order.state_dict()

    def load_state_dict(self, state: dict) -> None:
        if self._ahead is not None:
            self._ahead[3].result()
            self._ahead = None  # read from the state being replaced
        self.order.load_state_dict(state)
