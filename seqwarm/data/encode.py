"""`prepare`'s two passes over the input's units, in this process or in `--workers N` processes, in order.

A unit (`seqwarm.data.sources.Unit`) is a piece of input a worker reads into documents itself, so
the parent process only moves bytes and writes shards. The first pass (`scan_unit`) gives each
unit's chunk hashes for the split rule (`seqwarm.data.split`), the second (`encode_unit`) its tokens
per split: the tokens of its chunks concatenated, `<|endoftext|>` after a document's last chunk.
Units are processed independently and their results consumed in submission order, so the output is
the same for any number of workers and any unit size. At most `max_pending` units are in flight:
with the one being read, that bounds the input held in memory (`--buffer-mb`).

The worker processes are spawned once, for both passes. This module imports no torch, so that
they start in well under a second.
"""

from __future__ import annotations

import multiprocessing
from collections import deque
from collections.abc import Iterable, Iterator

import numpy as np

from seqwarm.data.sources import Unit, unit_documents
from seqwarm.data.split import scan_chunks, split_units
from seqwarm.errors import DataError
from seqwarm.tokenizer import GPT2Tokenizer, JsonTokenizer, Tokenizer, gpt2

Piece = tuple[str, str, bool]  # (split, text, ends_document)
Result = dict[str, np.ndarray]

_WORKER_TOKENIZER: Tokenizer | None = None


def tokenizer_spec(tok: Tokenizer) -> tuple:
    """What a worker needs to rebuild `tok` (a Rust tokenizer is not sent through pickle)."""
    return ("gpt2",) if tok.json is None else ("json", tok.json, tok.name, tok.source)


def _init_worker(spec: tuple | None) -> None:
    global _WORKER_TOKENIZER
    if spec is None:  # the first pass only: the tokenizer is trained after it
        return
    if spec[0] == "gpt2":
        tok = gpt2()
        tok.threads = 1  # the processes are the parallelism; tiktoken's threads would oversubscribe
    else:
        tok = JsonTokenizer(spec[1], spec[2], source=spec[3])
    _WORKER_TOKENIZER = tok


def scan_unit(unit: Unit, field: str, chunk_chars: int) -> tuple[int, int, bool, bytes]:
    """The first pass over a unit: what `split.CutFinder.add` takes."""
    return scan_chunks(unit_documents(unit, field), chunk_chars)


def encode_unit(unit: Unit, field: str, chunk_chars: int, cuts: dict, tok: Tokenizer, dtype: np.dtype):
    """The second pass over a unit: (chunks, characters, tokens per split)."""
    pieces = list(split_units(unit_documents(unit, field), chunk_chars, cuts))
    return len(pieces), sum(len(text) for _, text, _ in pieces), encode_item(pieces, tok, dtype)


def _run(task: str, unit: Unit, args: tuple, tok: Tokenizer | None):
    """One unit of a pass, in a worker or in this process."""
    if task == "scan":
        return scan_unit(unit, *args)
    assert tok is not None
    *rest, dtype = args
    return encode_unit(unit, *rest, tok, np.dtype(dtype))


def _in_worker(task: str, unit: Unit, args: tuple):
    return _run(task, unit, args, _WORKER_TOKENIZER)


def encode_item(pieces: list[Piece], tok: Tokenizer, dtype: np.dtype) -> Result:
    """Per split, the tokens of the pieces in order, as `dtype`.

    Text is encoded as ordinary text and `<|endoftext|>` appended as an id, so a document that spells
    that string does not forge a separator.
    """
    arrays = tok.encode_ordinary_arrays([text for _, text, _ in pieces])
    eot = np.array([tok.eot_id], dtype=np.int64)
    parts: dict[str, list[np.ndarray]] = {}
    for (split, _, ends), ids in zip(pieces, arrays):
        parts.setdefault(split, []).extend((ids, eot) if ends else (ids,))
    out = {}
    for split, chunks in parts.items():
        arr = np.concatenate(chunks)
        if len(arr) and not 0 <= arr.min() <= arr.max() < tok.vocab_size:  # a tokenizer.json with sparse ids
            raise DataError(f"tokenizer {tok.name}: produced id {arr.max()} outside its vocabulary of {tok.vocab_size}")
        out[split] = arr.astype(dtype)
    return out


class EncodeStats:
    """How much input the pipeline held at once (tests check the buffer bound with it)."""

    def __init__(self) -> None:
        self.items = 0
        self.peak_pending_chars = 0  # bytes of the units in flight (characters for documents in memory)
        self.peak_pending_items = 0


class Workers:
    """`n` spawned worker processes (this process itself for n = 1), for both passes; they hold
    `tok`, given now or, when it is still to be trained, by `use` before the second pass."""

    def __init__(self, n: int, tok: Tokenizer | None):
        self.n, self.tok, self._pool = max(1, n), tok, None

    def __enter__(self) -> Workers:
        self._start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop()

    def use(self, tok: Tokenizer) -> None:
        """Encode with `tok` (the workers are started again if they hold another)."""
        if self.tok is not None and tokenizer_spec(self.tok) == tokenizer_spec(tok):
            return
        self._stop()
        self.tok = tok
        self._start()

    def _start(self) -> None:
        if self.n > 1:
            # spawn: a fresh interpreter, never a fork of a process that may hold torch's or tiktoken's threads.
            ctx = multiprocessing.get_context("spawn")
            spec = None if self.tok is None else tokenizer_spec(self.tok)
            self._pool = ctx.Pool(self.n, initializer=_init_worker, initargs=(spec,))
        elif isinstance(self.tok, GPT2Tokenizer):
            self.tok.threads = None  # alone in this process: tiktoken's threads are the parallelism

    def _stop(self) -> None:
        if self._pool is not None:
            self._pool.terminate()  # after an error too: pending units are dropped, not finished
            self._pool.join()
            self._pool = None

    def scan(self, units: Iterable[Unit], field: str, chunk_chars: int, *, max_pending: int, stats=None):
        """`scan_unit` of every unit, in order."""
        return self._map("scan", units, (field, chunk_chars), max_pending, stats)

    def encode(
        self, units: Iterable[Unit], field: str, chunk_chars: int, cuts: dict, dtype, *, max_pending: int, stats=None
    ):
        """`encode_unit` of every unit, in order."""
        return self._map("encode", units, (field, chunk_chars, cuts, np.dtype(dtype).name), max_pending, stats)

    def _map(
        self, task: str, units: Iterable[Unit], args: tuple, max_pending: int, stats: EncodeStats | None
    ) -> Iterator:
        stats = stats or EncodeStats()
        if self._pool is None:
            for unit in units:
                stats.items += 1
                stats.peak_pending_items = max(stats.peak_pending_items, 1)
                stats.peak_pending_chars = max(stats.peak_pending_chars, unit.size)
                yield _run(task, unit, args, self.tok)
            return
        pending: deque = deque()
        sizes: deque[int] = deque()
        for unit in units:
            stats.items += 1
            sizes.append(unit.size)
            pending.append(self._pool.apply_async(_in_worker, (task, unit, args)))
            stats.peak_pending_items = max(stats.peak_pending_items, len(pending))
            stats.peak_pending_chars = max(stats.peak_pending_chars, sum(sizes))
            if len(pending) >= max_pending:
                sizes.popleft()
                yield pending.popleft().get()
        while pending:
            sizes.popleft()
            yield pending.popleft().get()
