"""Tokenizing `prepare`'s stream of chunks, in this process or in `--workers N` processes, in order.

A work item is a list of (split, text, ends_document) pieces in corpus order; its result is, per
split, the tokens of its pieces concatenated (`<|endoftext|>` after a document's last piece).
Items are tokenized independently and their results consumed in submission order, so the tokens
are the same for any number of workers and any item size. At most `max_pending` items are in
flight: with the one being filled, that bounds the text held in memory (`--buffer-mb`).

This module imports no torch, so that worker processes start in well under a second.
"""

from __future__ import annotations

import multiprocessing
from collections import deque
from collections.abc import Iterable, Iterator

import numpy as np

from seqwarm.errors import DataError
from seqwarm.tokenizer import GPT2Tokenizer, JsonTokenizer, Tokenizer, gpt2

Item = list[tuple[str, str, bool]]
Result = dict[str, np.ndarray]

_WORKER_TOKENIZER: Tokenizer | None = None


def tokenizer_spec(tok: Tokenizer) -> tuple:
    """What a worker needs to rebuild `tok` (a Rust tokenizer is not sent through pickle)."""
    return ("gpt2",) if tok.json is None else ("json", tok.json, tok.name, tok.source)


def _init_worker(spec: tuple) -> None:
    global _WORKER_TOKENIZER
    if spec[0] == "gpt2":
        tok = gpt2()
        tok.threads = 1  # the processes are the parallelism; tiktoken's threads would oversubscribe
    else:
        tok = JsonTokenizer(spec[1], spec[2], source=spec[3])
    _WORKER_TOKENIZER = tok


def _encode_in_worker(item: Item, dtype: str) -> Result:
    assert _WORKER_TOKENIZER is not None
    return encode_item(item, _WORKER_TOKENIZER, np.dtype(dtype))


def encode_item(item: Item, tok: Tokenizer, dtype: np.dtype) -> Result:
    """Per split, the tokens of the item's pieces in order, as `dtype`.

    Text is encoded as ordinary text and `<|endoftext|>` appended as an id, so a document that spells
    that string does not forge a separator.
    """
    ids = tok.encode_ordinary_batch([text for _, text, _ in item])
    eot = tok.eot_id
    parts: dict[str, list[np.ndarray]] = {}
    for (split, _, ends), piece in zip(item, ids):
        parts.setdefault(split, []).append(np.asarray(piece + [eot] if ends else piece, dtype=np.int64))
    out = {}
    for split, pieces in parts.items():
        arr = np.concatenate(pieces)
        if len(arr) and not 0 <= arr.min() <= arr.max() < tok.vocab_size:  # a tokenizer.json with sparse ids
            raise DataError(f"tokenizer {tok.name}: produced id {arr.max()} outside its vocabulary of {tok.vocab_size}")
        out[split] = arr.astype(dtype)
    return out


class EncodeStats:
    """How much text the pipeline held at once (tests check the buffer bound with it)."""

    def __init__(self) -> None:
        self.items = 0
        self.peak_pending_chars = 0
        self.peak_pending_items = 0


def encode_stream(
    items: Iterable[Item],
    tok: Tokenizer,
    dtype: np.dtype,
    *,
    workers: int,
    max_pending: int,
    stats: EncodeStats | None = None,
) -> Iterator[tuple[int, int, Result]]:
    """(number of pieces, characters, result) for every item, in order; `workers` > 1 tokenizes in that many processes."""
    stats = stats or EncodeStats()
    if workers <= 1:
        if isinstance(tok, GPT2Tokenizer):
            tok.threads = None
        for item in items:
            stats.items += 1
            stats.peak_pending_items = max(stats.peak_pending_items, 1)
            chars = sum(len(t) for _, t, _ in item)
            stats.peak_pending_chars = max(stats.peak_pending_chars, chars)
            yield len(item), chars, encode_item(item, tok, dtype)
        return
    # spawn: a fresh interpreter, never a fork of a process that may hold torch's or tiktoken's threads.
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(workers, initializer=_init_worker, initargs=(tokenizer_spec(tok),)) as pool:
        pending: deque = deque()
        chars: deque[int] = deque()
        for item in items:
            stats.items += 1
            chars.append(sum(len(t) for _, t, _ in item))
            pending.append((len(item), chars[-1], pool.apply_async(_encode_in_worker, (item, np.dtype(dtype).name))))
            stats.peak_pending_items = max(stats.peak_pending_items, len(pending))
            stats.peak_pending_chars = max(stats.peak_pending_chars, sum(chars))
            if len(pending) >= max_pending:
                n, size, result = pending.popleft()
                chars.popleft()
                yield n, size, result.get()
        while pending:
            n, size, result = pending.popleft()
            chars.popleft()
            yield n, size, result.get()
