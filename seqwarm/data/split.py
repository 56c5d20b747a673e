"""The split rule of `seqwarm prepare`: documents cut into chunks, and the chunks whose names hash smallest held out.

A document is cut into chunks of about `chunk_chars` at paragraph breaks; a chunk is named
`SOURCE#INDEX`. The `round(n * val_fraction)` chunks whose sha256 is smallest go to val, the next
`round(n * test_fraction)` to test, the rest to train. The rule looks at names only, so the split does
not depend on the order the files are listed in, the number of workers or the shard size.

Finding the cuts needs every chunk's hash but memory for a few only (`CutFinder`): the val cut is
the hash of the last val chunk, and sha256 is uniform, so only hashes below about twice the
fractions can be cuts. `prepare` runs it in two streaming passes over the input, both in its worker
processes: `scan_chunks` (the hashes of a piece of input) then `split_units` (each chunk's split).

This module imports neither torch nor the tokenizer: prepare's workers import it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator

import numpy as np

from seqwarm.data.sources import Document
from seqwarm.errors import DataError

DIGEST = 32  # bytes of sha256


def chunk_documents(docs: Iterable[Document], chunk_chars: int) -> Iterator[tuple[str, str, bool]]:
    """Cut documents at paragraph breaks into chunks of about `chunk_chars`: (key, text, ends_document).

    A chunk is whole paragraphs (`text.split("\\n\\n")`), the first ones whose lengths, plus 2 for
    each break, reach `chunk_chars`; the last chunk of a document holds what is left.
    """
    for doc in docs:
        paragraphs = doc.text.split("\n\n")
        chunk: list[str] = []
        size = index = 0
        for i, para in enumerate(paragraphs):
            chunk.append(para)
            size += len(para) + 2
            if size >= chunk_chars or i == len(paragraphs) - 1:
                yield f"{doc.source}#{index}", "\n\n".join(chunk), i == len(paragraphs) - 1
                chunk, size, index = [], 0, index + 1


def min_chunks(fraction: float) -> int:
    """The fewest chunks of which `round(n * fraction)` is at least 1 (Python rounds 0.5 to 0)."""
    n = max(1, int(0.5 / fraction))
    while round(n * fraction) < 1:
        n += 1
    return n


def too_small_to_split(n: int, chars: int, val_fraction: float, test_fraction: float) -> DataError:
    """The error for a held-out fraction that rounds to no chunk, with the two ways out: more text, or larger
    fractions (issue 27: the bare chunk count left a new user guessing)."""
    given = [(o, f) for o, f in (("--val-fraction", val_fraction), ("--test-fraction", test_fraction)) if f]
    need = max(min_chunks(f) for _, f in given)
    per_chunk = chars // max(n, 1)
    fractions = " and ".join(f"{o} {f:g}" for o, f in given)
    fix = f"give at least {need:,} chunks (about {need * per_chunk:,} characters)"
    if n > len(given):  # one chunk for each held-out split still leaves training text
        fix += f", or raise {' and '.join(o for o, _ in given)} to {1 / n:.3g} (one chunk each)"
    return DataError(
        f"corpus too small to split: {n:,} chunks of about {per_chunk:,} characters (cut at paragraph breaks), and "
        f"{fractions} of them round to no chunk; {fix}"
    )


def assign_splits(
    chunks: Iterable[tuple[str, str, bool]], val_fraction: float, test_fraction: float
) -> list[tuple[str, bool, str]]:
    """The rule in memory, as its definition: (text, ends_document, split) in corpus order.

    `CutFinder` and `split_units` give the same splits streaming (tests/test_prepare_scale.py).
    """
    chunks = list(chunks)
    order = sorted(range(len(chunks)), key=lambda i: hashlib.sha256(chunks[i][0].encode()).digest())
    n_val = round(len(chunks) * val_fraction)
    n_test = round(len(chunks) * test_fraction)
    if val_fraction and not n_val or test_fraction and not n_test:
        raise too_small_to_split(len(chunks), sum(len(c[1]) for c in chunks), val_fraction, test_fraction)
    split = {i: "val" for i in order[:n_val]} | {i: "test" for i in order[n_val : n_val + n_test]}
    return [(text if ends else text + "\n\n", ends, split.get(i, "train")) for i, (_, text, ends) in enumerate(chunks)]


def scan_chunks(docs: Iterable[Document], chunk_chars: int) -> tuple[int, int, bool, bytes]:
    """What `CutFinder.add` takes of some documents: their chunk count, characters, whether any text
    was seen, and the chunks' sha256 digests concatenated."""
    n = chars = 0
    has_text = False
    digests = []
    for key, text, _ in chunk_documents(docs, chunk_chars):
        n += 1
        chars += len(text)
        has_text = has_text or bool(text.strip())
        digests.append(hashlib.sha256(key.encode()).digest())
    return n, chars, has_text, b"".join(digests)


class CutFinder:
    """The cuts of the rank rule, fed the chunks' hashes in any grouping (`add`), in corpus order.

    Only the hashes whose 8-byte prefix lies below `_bound(fractions, chunks so far)` are kept: the
    bound only falls as chunks come, and the final cuts lie below the final bound but for a
    vanishing chance (then `cuts` returns None and the caller repeats the pass with `keep_all`).
    """

    def __init__(self, val_fraction: float, test_fraction: float, keep_all: bool = False):
        self.val_fraction, self.test_fraction, self.keep_all = val_fraction, test_fraction, keep_all
        self.frac = val_fraction + test_fraction
        self.n = self.chars = 0
        self.has_text = False
        self._kept: list[np.ndarray] = []  # (k, 32) uint8 digests
        self._kept_rows = 0
        self._cap = 4096

    def add(self, n: int, chars: int, has_text: bool, digests: bytes) -> None:
        self.n += n
        self.chars += chars
        self.has_text = self.has_text or has_text
        if not self.frac or not n:
            return
        rows = np.frombuffer(digests, dtype=np.uint8).reshape(n, DIGEST)
        if not self.keep_all:
            rows = _below(rows, _bound(self.frac, self.n))
        self._kept.append(rows)
        self._kept_rows += len(rows)
        if self._kept_rows >= self._cap and not self.keep_all:
            self._prune(_bound(self.frac, self.n))
            self._cap = max(self._cap, 2 * self._kept_rows)

    def _prune(self, bound: int) -> None:
        rows = np.concatenate(self._kept) if self._kept else np.zeros((0, DIGEST), np.uint8)
        rows = _below(rows, bound)
        self._kept, self._kept_rows = [rows], len(rows)

    def cuts(self) -> dict | None:
        """The cuts (hex digests, None for an empty split), chunk and character counts, and whether
        any text was seen; None when too few hashes were kept (repeat the pass with `keep_all`)."""
        if not self.has_text:
            return {"has_text": False}
        n = self.n
        n_val, n_test = round(n * self.val_fraction), round(n * self.test_fraction)
        if n and (self.val_fraction and not n_val or self.test_fraction and not n_test):
            raise too_small_to_split(n, self.chars, self.val_fraction, self.test_fraction)
        self._prune(1 << 64 if self.keep_all else _bound(self.frac, max(n, 1)))
        kept = sorted(bytes(row) for row in self._kept[0])
        if len(kept) < n_val + n_test:
            return None
        return {
            "val": kept[n_val - 1].hex() if n_val else None,
            "test": kept[n_val + n_test - 1].hex() if n_test else None,
            "n": n,
            "chars": self.chars,
            "has_text": True,
            "needs": [s for s, f in (("val", self.val_fraction), ("test", self.test_fraction)) if f],
        }


def _below(rows: np.ndarray, bound: int) -> np.ndarray:
    """The digests whose first 8 bytes, a big-endian integer, are below `bound` (at most 2**64)."""
    if bound >= 1 << 64:
        return rows
    return rows[np.ascontiguousarray(rows[:, :8]).view(">u8").ravel() < np.uint64(bound)]


def _bound(frac: float, n: int) -> int:
    """The hash prefix below which the cuts lie, but for a vanishing chance: twice the expected count, plus 64."""
    return min(1 << 64, int((2 * frac + 64 / n) * (1 << 64)))


def split_units(docs: Iterable[Document], chunk_chars: int, cuts: dict) -> Iterator[tuple[str, str, bool]]:
    """(split, text, ends_document) of every chunk in corpus order, by the cuts of `CutFinder`.

    A piece that does not end its document keeps the paragraph break that followed it.
    """
    val = bytes.fromhex(cuts["val"]) if cuts["val"] else None
    test = bytes.fromhex(cuts["test"]) if cuts["test"] else None
    for key, text, ends in chunk_documents(docs, chunk_chars):
        d = hashlib.sha256(key.encode()).digest() if val or test else b""
        split = "val" if val and d <= val else "test" if test and d <= test else "train"
        yield split, text if ends else text + "\n\n", ends
