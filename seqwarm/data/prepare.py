"""`seqwarm prepare`: documents -> tokens -> sharded, memory-mapped files per split, plus meta.json.

Documents (any input format: `seqwarm.data.sources`) are joined with `<|endoftext|>` (each document
is followed by one), as GPT-2 was trained. They are cut into chunks of about `chunk_chars` at
paragraph breaks, and the val/test splits are the chunks whose names hash smallest: so the split
does not depend on the order the files are listed in, the number of workers or the shard size, and
a re-run gives identical files. The input is streamed, twice: a first pass reads only the chunks'
names and keeps the few smallest hashes (`split_cuts`), a second tokenizes, in `--workers`
processes (`seqwarm.data.encode`), into shards (`seqwarm.data.shards`); memory is bounded by
`--buffer-mb`, not by the corpus. An interrupted prepare resumes from its last finished shard;
`--append` adds more input to a prepared directory, split by the same rule on its own.

The tokenizer is GPT-2's (the default), a byte-level BPE trained here on the train split's chunks
only, since the split is decided before anything is tokenized (`--tokenizer bpe:N`), or a given
tokenizer.json (`--tokenizer PATH`); the last two are stored in the directory (seqwarm.tokenizer).
The builtin corpus comes through here too, from `seqwarm.data.builtin.corpus`.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np
from tqdm import tqdm

from seqwarm import __version__
from seqwarm.data.encode import EncodeStats, encode_stream
from seqwarm.data.format import FORMAT, FORMAT_SHARDED, SPLITS, token_dtype
from seqwarm.data.shards import PROGRESS, SplitWriter, read_progress, write_progress
from seqwarm.data.sources import JSONL_SUFFIXES, TEXT_SUFFIXES, Document, list_inputs, read_documents, read_input
from seqwarm.errors import DataError
from seqwarm.files import atomic_write, check_writable, directory_lock, file_sha256
from seqwarm.tokenizer import (
    TOKENIZER_FILE,
    TOKENIZER_NAME,
    Tokenizer,
    gpt2,
    parse_tokenizer,
    read_tokenizer_file,
    require_tokenizers,
    tokenizer_from_meta,
    train_bpe,
)

__all__ = ["Document", "read_documents", "prepare", "prepare_documents", "TEXT_SUFFIXES", "JSONL_SUFFIXES"]

SHARD_TOKENS = 1 << 27  # 134M tokens: 256 MiB of uint16 per shard file
BUFFER_MB = 64
ITEM_CHARS = 1 << 20  # text per work item at most


def prepare(
    inputs: list[str],
    out: Path,
    *,
    val_fraction: float = 0.01,
    test_fraction: float = 0.01,
    chunk_chars: int = 8000,
    force: bool = False,
    append: bool = False,
    progress: bool = True,
    tokenizer: str | int | Tokenizer = TOKENIZER_NAME,
    text_field: str = "text",
    workers: int | None = None,
    shard_tokens: int = SHARD_TOKENS,
    buffer_mb: float = BUFFER_MB,
    stats: EncodeStats | None = None,
) -> Path:
    """Tokenize `inputs` (files, directories, globs: `seqwarm.data.sources`) into `out` with `tokenizer`."""
    chosen = choose_tokenizer(tokenizer)
    check_output(
        out, val_fraction=val_fraction, test_fraction=test_fraction, force=force, append=append, inputs=inputs
    )  # before any write
    with directory_lock(out, inside=False, what="prepared-data directory"):
        out = check_output(
            out, val_fraction=val_fraction, test_fraction=test_fraction, force=force, append=append, inputs=inputs
        )
        files = list_inputs(inputs)  # a missing input or an unknown format fails before any reading
        return prepare_documents(
            lambda: (doc for file in files for doc in read_input(file, text_field)),
            out,
            label=", ".join(inputs),
            sources=[{"name": str(Path(p)), "role": "train"} for p in inputs],
            fingerprint=[f.fingerprint() for f in files] + [text_field],
            val_fraction=val_fraction,
            test_fraction=test_fraction,
            chunk_chars=chunk_chars,
            progress=progress,
            tokenizer=chosen,
            force=force,
            append=append,
            workers=workers,
            shard_tokens=shard_tokens,
            buffer_mb=buffer_mb,
            stats=stats,
        )


def choose_tokenizer(spec: str | int | Tokenizer) -> Tokenizer | int:
    """`--tokenizer` checked before any reading: a Tokenizer (GPT-2's, or a tokenizer.json read and
    validated), or the vocabulary size of a BPE still to be trained on the train split."""
    if isinstance(spec, (Tokenizer, int)):
        return spec
    parsed = parse_tokenizer(spec)
    if parsed == TOKENIZER_NAME:
        return gpt2()
    if isinstance(parsed, int):
        require_tokenizers()  # a missing library fails now, not after reading the corpus
        return parsed
    return read_tokenizer_file(parsed)


def check_output(
    out: Path,
    *,
    val_fraction: float,
    test_fraction: float,
    force: bool,
    append: bool = False,
    inputs: Iterable[str] = (),
) -> Path:
    """`out` as a Path, once the split fractions are valid and `out` may be written (before any reading).

    A directory holding an unfinished prepare is resumed (its inputs are checked later); one
    holding a corpus takes `--append` or `--force`. `--force` replaces only a prepared directory
    (a meta.json of this format, `is_prepared`, or an unfinished prepare's progress file), and never
    one that holds an input (`prepare SRC --out SRC --force` would delete the texts);
    `prepare_documents` removes what is there once the input has been read through without error.
    """
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise DataError(
            f"--val-fraction/--test-fraction: need fractions summing below 1, got {val_fraction}, {test_fraction}"
        )
    out = Path(out)
    if force and append:
        raise DataError("prepare: --force replaces the output directory, --append adds to it; give one")
    check_writable(out, "--out", directory=True)
    if not out.exists() or not any(out.iterdir()):
        if append:
            raise DataError(f"{out}: --append needs a directory written by `seqwarm prepare`")
        return out
    if force:
        for item in inputs:
            src, dest = Path(item).resolve(), out.resolve()
            if src == dest or dest in src.parents:
                raise DataError(f"{item}: an input inside --out {out}; --force would delete it: choose another --out")
        if not is_prepared(out) and not (out / PROGRESS).is_file():
            raise DataError(
                f"--out {out}: not a prepared-data directory (no meta.json of format {FORMAT_SHARDED} or {FORMAT}); "
                "--force replaces only a directory seqwarm prepared: choose another --out or empty it yourself"
            )
        return out
    if (out / PROGRESS).is_file():
        return out  # resumed, or refused if it is another job's (prepare_documents)
    if (out / "meta.json").is_file():
        if append:
            return out
        raise DataError(f"{out}: holds a prepared corpus (use --append to add input to it, --force to replace it)")
    raise DataError(f"{out}: output directory exists and is not empty (use --force to replace it)")


def is_prepared(directory: Path) -> bool:
    """Whether `directory` holds a corpus seqwarm prepared: its marker is a meta.json of this format."""
    try:
        return json.loads((Path(directory) / "meta.json").read_text()).get("format") in (FORMAT, FORMAT_SHARDED)
    except (OSError, ValueError, AttributeError):
        return False


def prepare_documents(
    docs: list[Document] | Callable[[], Iterable[Document]],
    out: Path,
    *,
    label: str,
    sources: list[dict],
    fingerprint: list | None = None,
    heldout: dict[str, list[Document]] | None = None,
    extra_meta: dict | None = None,
    val_fraction: float,
    test_fraction: float,
    chunk_chars: int,
    progress: bool,
    tokenizer: str | int | Tokenizer = TOKENIZER_NAME,
    force: bool = False,
    append: bool = False,
    workers: int | None = None,
    shard_tokens: int = SHARD_TOKENS,
    buffer_mb: float = BUFFER_MB,
    stats: EncodeStats | None = None,
) -> Path:
    """Split and tokenize `docs` (a list, or a function giving a fresh iterator: the input is read
    more than once) into `out`; `heldout` texts go to heldout/NAME.jsonl untokenized.

    `label` names the input in errors, `sources` is meta.json's record of it, `fingerprint` what a
    resumed prepare checks the input against (by default the names and sizes of `docs`),
    `extra_meta` is appended to meta.json. `tokenizer` is what `choose_tokenizer` takes.
    """
    read = docs if callable(docs) else (lambda: iter(docs))
    if fingerprint is None:
        digest = hashlib.sha256()
        for d in read():
            digest.update(f"{d.source}\0{len(d.text)}\0".encode())
        fingerprint = [digest.hexdigest()]
    if shard_tokens < 1:
        raise DataError(f"--shard-tokens: must be at least 1, got {shard_tokens}")
    if buffer_mb <= 0:
        raise DataError(f"--buffer-mb: must be positive, got {buffer_mb}")
    out = Path(out)
    base = json.loads((out / "meta.json").read_text()) if append and (out / "meta.json").is_file() else None
    if base is not None and base.get("format") != FORMAT_SHARDED:
        raise DataError(f"{out}: --append needs the sharded format; prepare this corpus again to convert it")
    tok = _job_tokenizer(choose_tokenizer(tokenizer), base, out)
    split_rule = {"chunk_chars": chunk_chars, "val_fraction": val_fraction, "test_fraction": test_fraction}
    job = {
        "label": label,
        "fingerprint": fingerprint,
        "split_rule": split_rule,
        "tokenizer": tok if isinstance(tok, int) else [tok.name, tok.sha256()],
        "shard_tokens": shard_tokens,
        "append_to": None if base is None else {s: len(base["splits"][s]["shards"]) for s in SPLITS},
    }
    state = read_progress(out) if (out / PROGRESS).is_file() and not force else None
    if state is not None and state["job"] != json.loads(json.dumps(job)):
        raise DataError(
            f"{out}: holds an unfinished prepare of other inputs or settings ({state['job']['label']}); "
            "run that command again to resume it, or use --force to start over"
        )
    if state is None:
        cuts = split_cuts(lambda: chunk_documents(read(), chunk_chars), val_fraction, test_fraction)
        if not cuts["has_text"]:
            raise DataError(f"{label}: no text found")
        if force and out.exists():  # the old directory goes only once the new input is known to be good
            shutil.rmtree(out) if out.is_dir() else out.unlink()
        state = {"job": job, "cuts": cuts, "tokenizer_meta": {}, "done_chunks": 0, "splits": None}
        out.mkdir(parents=True, exist_ok=True)
        if isinstance(tok, int):
            state["tokenizer_meta"] = _train_tokenizer(tok, read, chunk_chars, cuts, out, progress)
        elif tok.json is not None and base is None:
            atomic_write(out / TOKENIZER_FILE, tok.json)
            state["tokenizer_meta"] = {"tokenizer_source": {"file": tok.source}}
        write_progress(out, state)
    elif progress:
        print(f"{out}: resuming an unfinished prepare at chunk {state['done_chunks']:,}", file=sys.stderr)
    if isinstance(tok, int):
        tok = read_tokenizer_file(out / TOKENIZER_FILE, f"bpe:{tok}")
    _tokenize(read, out, state, tok, base, chunk_chars, workers, shard_tokens, buffer_mb, progress, stats)
    _publish(out, state, tok, base, sources, heldout or {}, extra_meta or {}, split_rule)
    return out


def _job_tokenizer(tok: Tokenizer | int, base: dict | None, out: Path) -> Tokenizer | int:
    """The tokenizer of this job: an appended part is tokenized as the corpus was."""
    if base is None:
        return tok
    existing = tokenizer_from_meta(base, out)
    asked = f"bpe:{tok}" if isinstance(tok, int) else tok.name
    if asked not in (TOKENIZER_NAME, existing.name) or (
        isinstance(tok, Tokenizer) and tok.json and tok.json != existing.json
    ):
        raise DataError(f"--tokenizer {asked}: {out} was tokenized with {existing.name}; --append keeps it")
    return existing


def _train_tokenizer(vocab: int, read, chunk_chars: int, cuts: dict, out: Path, progress: bool) -> dict:
    """Train the BPE on the train split's chunks (val and test stay unseen by it) and store it in `out`."""
    if progress:
        print(f"training a byte-level BPE of {vocab:,} tokens on the train chunks", file=sys.stderr)
    chars = 0

    def train_texts() -> Iterator[str]:
        nonlocal chars
        for split, text, _ in split_units(read(), chunk_chars, cuts):
            if split == "train":
                chars += len(text)
                yield text

    tok = train_bpe(train_texts(), vocab)
    atomic_write(out / TOKENIZER_FILE, tok.json)
    return {"tokenizer_source": {"trained_on": "train", "chars": chars, "tokenizers": require_tokenizers().__version__}}


def _tokenize(read, out, state, tok, base, chunk_chars, workers, shard_tokens, buffer_mb, progress, stats) -> None:
    """The second pass: every chunk after `state['done_chunks']` tokenized into its split's shards."""
    dtype = np.dtype(token_dtype(tok.vocab_size))
    first = {s: 0 if base is None else len(base["splits"][s]["shards"]) for s in SPLITS}
    saved = state["splits"] or {}
    writers = {s: SplitWriter(out, s, dtype, shard_tokens, first[s], saved.get(s)) for s in SPLITS}
    workers = (os.cpu_count() or 1) if workers is None else max(1, workers)
    max_pending = 1 if workers == 1 else 2 * workers
    # The items in flight and the one being filled share the buffer; an item of at most ITEM_CHARS
    # keeps the workers busy on a corpus of a few items' size, and its tokens cheap to send back.
    item_chars = max(1, min(ITEM_CHARS, int(buffer_mb * 1e6) // (max_pending + 1)))
    total = state["cuts"]["chars"]
    # Worker processes only pay off with more items than workers; the tokens are the same either way.
    workers = min(workers, max(1, total // item_chars))
    max_pending = 1 if workers == 1 else 2 * workers
    done = state["done_chunks"]
    units = split_units(read(), chunk_chars, state["cuts"])
    skipped = 0
    for _ in range(done):
        skipped += len(next(units)[1])
    try:
        with tqdm(
            total=total, initial=skipped, desc="tokenize", unit="char", unit_scale=True, disable=not progress
        ) as bar:
            for n, chars, result in encode_stream(
                _items(units, item_chars), tok, dtype, workers=workers, max_pending=max_pending, stats=stats
            ):
                for split, tokens in result.items():
                    writers[split].append(tokens)
                done += n
                bar.update(chars)
                if any(w.closed_any for w in writers.values()):
                    _checkpoint(out, state, writers, done)
        for w in writers.values():
            w.finish()
        _checkpoint(out, state, writers, done)
    except BaseException:
        for w in writers.values():
            w.abandon()
        raise


def _checkpoint(out: Path, state: dict, writers: dict[str, SplitWriter], done: int) -> None:
    for w in writers.values():
        w.sync()
        w.closed_any = False
    state["done_chunks"] = done
    state["splits"] = {s: w.state() for s, w in writers.items()}
    write_progress(out, state)


def _items(units: Iterator[tuple[str, str, bool]], item_chars: int) -> Iterator[list[tuple[str, str, bool]]]:
    item, size = [], 0
    for unit in units:
        item.append(unit)
        size += len(unit[1])
        if size >= item_chars:
            yield item
            item, size = [], 0
    if item:
        yield item


def _publish(out, state, tok, base, sources, heldout, extra_meta, split_rule) -> None:
    """meta.json, written last and atomically: the directory is a corpus from this moment on."""
    splits = {}
    for s in SPLITS:
        shards = (base["splits"][s]["shards"] if base else []) + state["splits"][s]["shards"]
        digest = hashlib.sha256()  # of the split's whole token stream, as the single-file format recorded
        for shard in shards:
            with open(out / shard["file"], "rb") as f:
                _feed(digest, f)
        top = max((x.get("max_id", -1) for x in shards), default=-1)  # shards appended by an older prepare: -1
        splits[s] = {"tokens": sum(x["tokens"] for x in shards), "sha256": digest.hexdigest(), "shards": shards}
        splits[s]["max_id"] = top
    if state["cuts"]["needs"] and not all(splits[s]["tokens"] for s in state["cuts"]["needs"]):
        raise DataError(f"{out}: a split came out empty")
    for name, held in heldout.items():
        (out / "heldout").mkdir(exist_ok=True)
        atomic_write(
            out / "heldout" / f"{name}.jsonl",
            "".join(json.dumps({"source": d.source, "text": d.text}) + "\n" for d in held),
        )
    if base is not None:
        meta = dict(base)
        meta["splits"] = splits
        meta["sources"] = base["sources"] + [{**src, "appended": True} for src in sources]
        meta["created_by"] = f"seqwarm {__version__}"
    else:
        tokenizer_meta = dict(state["tokenizer_meta"])
        if tok.json is not None:
            tokenizer_meta = {
                "tokenizer_file": TOKENIZER_FILE,
                "tokenizer_sha256": file_sha256(out / TOKENIZER_FILE),
                **tokenizer_meta,
            }
        meta = {
            "format": FORMAT_SHARDED,
            "created_by": f"seqwarm {__version__}",
            "tokenizer": tok.name,
            "vocab_size": tok.vocab_size,
            "eot_id": tok.eot_id,
            "dtype": np.dtype(token_dtype(tok.vocab_size)).name,
            **tokenizer_meta,  # nothing for GPT-2
            "splits": splits,
            "shard_tokens": state["job"]["shard_tokens"],
            "split_rule": split_rule,
            "sources": sources,
            "heldout": {name: f"heldout/{name}.jsonl" for name in heldout},
            **extra_meta,
        }
    atomic_write(out / "meta.json", json.dumps(meta, indent=2) + "\n")
    (out / PROGRESS).unlink()


def _feed(digest, f, block: int = 1 << 22) -> None:
    while chunk := f.read(block):
        digest.update(chunk)


def chunk_documents(docs: Iterable[Document], chunk_chars: int) -> Iterator[tuple[str, str, bool]]:
    """Cut documents at paragraph breaks into chunks of about `chunk_chars`: (key, text, ends_document)."""
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


def assign_splits(
    chunks: Iterable[tuple[str, str, bool]], val_fraction: float, test_fraction: float
) -> list[tuple[str, bool, str]]:
    """(text, ends_document, split) in corpus order; the chunks with the smallest key hashes go to val, then test."""
    chunks = list(chunks)
    order = sorted(range(len(chunks)), key=lambda i: hashlib.sha256(chunks[i][0].encode()).digest())
    n_val = round(len(chunks) * val_fraction)
    n_test = round(len(chunks) * test_fraction)
    if val_fraction and not n_val or test_fraction and not n_test:
        raise DataError(f"corpus too small to split: {len(chunks)} chunks of {len(chunks[0][1])}+ characters")
    split = {i: "val" for i in order[:n_val]} | {i: "test" for i in order[n_val : n_val + n_test]}
    return [(text if ends else text + "\n\n", ends, split.get(i, "train")) for i, (_, text, ends) in enumerate(chunks)]


def split_cuts(
    chunks: Callable[[], Iterable[tuple[str, str, bool]]], val_fraction: float, test_fraction: float
) -> dict:
    """The split rule of `assign_splits` in one streaming pass, with memory for the few smallest hashes only.

    `assign_splits` sends the `round(n * val_fraction)` chunks whose key hashes smallest to val and
    the next `round(n * test_fraction)` to test; that is: val up to the hash of the last val chunk
    (the cut), test up to the last test chunk's. Finding the cuts needs only the hashes below about
    twice the fractions (sha256 is uniform), kept in a list pruned as the count grows; in the
    negligible case that too few were kept, the pass is repeated keeping all. Returns the cuts (hex,
    None for an empty split), chunk and character counts, and whether any text was seen.
    """
    frac = val_fraction + test_fraction
    for keep_all in (False, True):
        cands: list[bytes] = []
        n = chars = 0
        has_text = False
        bound, cap = 1 << 64, 4096
        for key, text, _ in chunks():
            n += 1
            chars += len(text)
            has_text = has_text or bool(text.strip())
            if not frac:
                continue
            d = hashlib.sha256(key.encode()).digest()
            if int.from_bytes(d[:8], "big") < bound:
                cands.append(d)
                if len(cands) >= cap and not keep_all:
                    bound = _bound(frac, n)
                    cands = [c for c in cands if int.from_bytes(c[:8], "big") < bound]
                    cap = max(cap, 2 * len(cands))
        n_val, n_test = round(n * val_fraction), round(n * test_fraction)
        if not has_text:
            return {"has_text": False}
        if n and (val_fraction and not n_val or test_fraction and not n_test):
            raise DataError(f"corpus too small to split: {n} chunks")
        final = 1 << 64 if keep_all else _bound(frac, max(n, 1))
        cands = sorted(c for c in cands if int.from_bytes(c[:8], "big") < final)
        if len(cands) >= n_val + n_test:
            break
    return {
        "val": cands[n_val - 1].hex() if n_val else None,
        "test": cands[n_val + n_test - 1].hex() if n_test else None,
        "n": n,
        "chars": chars,
        "has_text": has_text,
        "needs": [s for s, f in (("val", val_fraction), ("test", test_fraction)) if f],
    }


def _bound(frac: float, n: int) -> int:
    """The hash prefix below which the cuts lie, but for a vanishing chance: twice the expected count, plus 64."""
    return min(1 << 64, int((2 * frac + 64 / n) * (1 << 64)))


def split_units(docs: Iterable[Document], chunk_chars: int, cuts: dict) -> Iterator[tuple[str, str, bool]]:
    """(split, text, ends_document) of every chunk in corpus order, by the cuts of `split_cuts`.

    A piece that does not end its document keeps the paragraph break that followed it.
    """
    val = bytes.fromhex(cuts["val"]) if cuts["val"] else None
    test = bytes.fromhex(cuts["test"]) if cuts["test"] else None
    for key, text, ends in chunk_documents(docs, chunk_chars):
        d = hashlib.sha256(key.encode()).digest() if val or test else b""
        split = "val" if val and d <= val else "test" if test and d <= test else "train"
        yield split, text if ends else text + "\n\n", ends
