"""`seqwarm prepare`: documents -> tokens -> sharded, memory-mapped files per split, plus meta.json.

Documents (any input format: `seqwarm.data.sources`) are joined with `<|endoftext|>` (each document
is followed by one), as GPT-2 was trained. They are cut into chunks of about `chunk_chars` at
paragraph breaks, and the val/test splits are the chunks whose names hash smallest (`seqwarm.data.split`): so
the split does not depend on the order the files are listed in, the number of workers or the shard
size, and a re-run gives identical files. The input is streamed, twice, in `--workers` processes
that read it themselves (`seqwarm.data.encode`): a first pass finds the split's cuts from the
chunks' hashes, a second tokenizes; this process cuts the input into units, unparsed, and writes
the tokens into shards (`seqwarm.data.shards`). Memory is bounded by `--buffer-mb`, not by the corpus. An interrupted prepare resumes from its last finished shard;
`--append` adds more input to a prepared directory, split by the same rule on its own.

The tokenizer is GPT-2's (the default), a byte-level BPE trained here on the train split's chunks
only, since the split is decided before anything is tokenized (`--tokenizer bpe:N`), or a given
tokenizer.json (`--tokenizer PATH`); the last two are stored in the directory (seqwarm.tokenizer).
The builtin corpus comes through here too, from `seqwarm.data.builtin.corpus`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import os
import shutil
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from seqwarm import __version__
from seqwarm.data.encode import EncodeStats, Workers
from seqwarm.data.format import FORMAT, FORMAT_SHARDED, SPLITS, token_dtype
from seqwarm.data.shards import PROGRESS, SplitWriter, read_progress, write_progress
from seqwarm.data.sources import (
    JSONL_SUFFIXES,
    TEXT_SUFFIXES,
    Document,
    Unit,
    document_units,
    list_inputs,
    read_documents,
    read_input,
    read_units,
)
from seqwarm.data.split import CutFinder, split_units
from seqwarm.errors import DataError
from seqwarm.files import atomic_write, check_writable, directory_lock, file_sha256
from seqwarm.instruments import counts_entropy
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

__all__ = [
    "Document",
    "read_documents",
    "prepare",
    "prepare_documents",
    "PrepareOptions",
    "TEXT_SUFFIXES",
    "JSONL_SUFFIXES",
]

SHARD_TOKENS = 1 << 27  # 134M tokens: 256 MiB of uint16 per shard file
BUFFER_MB = 64
UNIT_BYTES = 1 << 20  # input per unit of work at most (a Parquet/Arrow unit is a record batch)


@dataclass(frozen=True)
class PrepareOptions:
    """How `seqwarm prepare` splits, tokenizes and writes, whatever the input: its command-line options.

    One object for `prepare` (files), `prepare_builtin` (the builtin corpus) and `prepare_documents`
    (the work both share), so a new option is declared once, with its default and its meaning.
    """

    val_fraction: float = 0.01
    """Share of the chunks held out as the val split (`--val-fraction`); chosen by hash, not position."""
    test_fraction: float = 0.01
    """Share of the chunks held out as the test split (`--test-fraction`)."""
    chunk_chars: int = 8000
    """Characters per chunk, the unit the split assigns, cut at paragraph breaks (`seqwarm.data.split`)."""
    tokenizer: str | int | Tokenizer = TOKENIZER_NAME
    """`--tokenizer`: `gpt2`, `bpe:N`, a tokenizer.json path, or what `choose_tokenizer` returned."""
    force: bool = False
    """Replace the output directory (only one seqwarm prepared: `check_output`)."""
    append: bool = False
    """Add the input to a prepared directory, split by the same rule on its own."""
    workers: int | None = None
    """Tokenizing processes; None: the machine's cores (fewer for a small input)."""
    shard_tokens: int = SHARD_TOKENS
    """Tokens per shard file."""
    buffer_mb: float = BUFFER_MB
    """Text held in memory at once, in MB: bounds memory whatever the corpus size."""
    progress: bool = True
    """Progress bars and resume notes on stderr."""
    stats: EncodeStats | None = None
    """Filled with the workers' timings when given (benchmarks); a collector, not a setting."""


def prepare(
    inputs: list[str],
    out: Path,
    options: PrepareOptions | None = None,
    *,
    text_field: str = "text",
    **settings,
) -> Path:
    """Tokenize `inputs` (files, directories, globs: `seqwarm.data.sources`) into `out`.

    `settings`: `PrepareOptions` fields by name (`val_fraction=0`), applied over `options`;
    `text_field`: the JSONL key or Parquet column holding the text (a property of the input).
    """
    options = dataclasses.replace(options or PrepareOptions(), **settings)
    options = dataclasses.replace(options, tokenizer=choose_tokenizer(options.tokenizer))
    check_output(out, options, inputs=inputs)  # before any write
    with directory_lock(out, inside=False, what="prepared-data directory"):
        out = check_output(out, options, inputs=inputs)
        files = list_inputs(inputs)  # a missing input or an unknown format fails before any reading
        return prepare_documents(
            lambda: (doc for file in files for doc in read_input(file, text_field)),
            out,
            options,
            units=lambda unit_bytes: read_units(files, text_field, unit_bytes),
            size_hint=sum(_input_bytes(f.path) for f in files),
            text_field=text_field,
            label=", ".join(inputs),
            sources=[{"name": str(Path(p)), "role": "train"} for p in inputs],
            fingerprint=[f.fingerprint() for f in files] + [text_field],
        )


def _input_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size


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


def check_output(out: Path, options: PrepareOptions, *, inputs: Iterable[str] = ()) -> Path:
    """`out` as a Path, once the split fractions are valid and `out` may be written (before any reading).

    A directory holding an unfinished prepare is resumed (its inputs are checked later); one
    holding a corpus takes `--append` or `--force`. `--force` replaces only a prepared directory
    (a meta.json of this format, `is_prepared`, or an unfinished prepare's progress file), and never
    one that holds an input (`prepare SRC --out SRC --force` would delete the texts);
    `prepare_documents` removes what is there once the input has been read through without error.
    """
    val_fraction, test_fraction = options.val_fraction, options.test_fraction
    force, append = options.force, options.append
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
    options: PrepareOptions,
    *,
    units: Callable[[int], Iterable[Unit]] | None = None,
    size_hint: int | None = None,
    text_field: str = "text",
    label: str,
    sources: list[dict],
    fingerprint: list | None = None,
    heldout: dict[str, list[Document]] | None = None,
    extra_meta: dict | None = None,
) -> Path:
    """Split and tokenize `docs` (a list, or a function giving a fresh iterator: the input is read
    more than once) into `out`; `heldout` texts go to heldout/NAME.jsonl untokenized.

    `units(unit_bytes)` gives the same input as units for the workers (`seqwarm.data.sources.Unit`;
    by default the documents themselves, sent to them), `size_hint` its size in bytes, if known
    (a small input is not worth starting worker processes for), `text_field` what they read.

    `label` names the input in errors, `sources` is meta.json's record of it, `fingerprint` what a
    resumed prepare checks the input against (by default the names and sizes of `docs`),
    `extra_meta` is appended to meta.json. `options`: how to split, tokenize and write.
    """
    o = options
    read = docs if callable(docs) else (lambda: iter(docs))
    if fingerprint is None:
        digest, size_hint = hashlib.sha256(), 0
        for d in read():
            digest.update(f"{d.source}\0{len(d.text)}\0".encode())
            size_hint += len(d.text)
        fingerprint = [digest.hexdigest()]
    if units is None:
        units = lambda unit_bytes: document_units(read(), unit_bytes)  # noqa: E731
    if o.shard_tokens < 1:
        raise DataError(f"--shard-tokens: must be at least 1, got {o.shard_tokens}")
    if o.buffer_mb <= 0:
        raise DataError(f"--buffer-mb: must be positive, got {o.buffer_mb}")
    out = Path(out)
    base = json.loads((out / "meta.json").read_text()) if o.append and (out / "meta.json").is_file() else None
    if base is not None and base.get("format") != FORMAT_SHARDED:
        raise DataError(f"{out}: --append needs the sharded format; prepare this corpus again to convert it")
    tok = _job_tokenizer(choose_tokenizer(o.tokenizer), base, out)
    split_rule = {"chunk_chars": o.chunk_chars, "val_fraction": o.val_fraction, "test_fraction": o.test_fraction}
    job = {
        "label": label,
        "fingerprint": fingerprint,
        "split_rule": split_rule,
        "tokenizer": tok if isinstance(tok, int) else [tok.name, tok.sha256()],
        "shard_tokens": o.shard_tokens,
        "append_to": None if base is None else {s: len(base["splits"][s]["shards"]) for s in SPLITS},
    }
    state = read_progress(out) if (out / PROGRESS).is_file() and not o.force else None
    if state is not None and "unit_bytes" not in state:
        raise DataError(f"{out}: holds an unfinished prepare of an older seqwarm; use --force to start over")
    if state is not None and state["job"] != json.loads(json.dumps(job)):
        raise DataError(
            f"{out}: holds an unfinished prepare of other inputs or settings ({state['job']['label']}); "
            "run that command again to resume it, or use --force to start over"
        )
    n_workers = (os.cpu_count() or 1) if o.workers is None else max(1, o.workers)
    unit_bytes = state["unit_bytes"] if state is not None else _unit_bytes(n_workers, o.buffer_mb)
    if size_hint is not None:  # worker processes pay off only with more units than workers
        n_workers = min(n_workers, max(1, size_hint // unit_bytes))
    max_pending = 1 if n_workers == 1 else 2 * n_workers
    with Workers(n_workers, tok if isinstance(tok, Tokenizer) else None) as pool:
        if state is None:
            cuts = _scan(
                pool, units, unit_bytes, text_field, o.chunk_chars, split_rule, size_hint, max_pending, o.progress
            )
            if not cuts["has_text"]:
                raise DataError(f"{label}: no text found")
            if o.force and out.exists():  # the old directory goes only once the new input is known to be good
                shutil.rmtree(out) if out.is_dir() else out.unlink()
            state = {
                "job": job,
                "cuts": cuts,
                "tokenizer_meta": {},
                "unit_bytes": unit_bytes,
                "done_units": 0,
                "done_chunks": 0,
                "done_chars": 0,
                "splits": None,
            }
            out.mkdir(parents=True, exist_ok=True)
            if isinstance(tok, int):
                state["tokenizer_meta"] = _train_tokenizer(tok, read, o.chunk_chars, cuts, out, o.progress)
            elif tok.json is not None and base is None:
                atomic_write(out / TOKENIZER_FILE, tok.json)
                state["tokenizer_meta"] = {"tokenizer_source": {"file": tok.source}}
            write_progress(out, state)
        elif o.progress:
            print(f"{out}: resuming an unfinished prepare at chunk {state['done_chunks']:,}", file=sys.stderr)
        if isinstance(tok, int):
            tok = read_tokenizer_file(out / TOKENIZER_FILE, f"bpe:{tok}")
        pool.use(tok)
        _tokenize(
            pool,
            units(unit_bytes),
            text_field,
            out,
            state,
            tok,
            base,
            o.chunk_chars,
            o.shard_tokens,
            max_pending,
            o.progress,
            o.stats,
        )
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


def _unit_bytes(workers: int, buffer_mb: float) -> int:
    """The units in flight (2 per worker) and the one being read share the buffer; a unit of at
    most UNIT_BYTES keeps the workers busy on a corpus of a few units' size, and its tokens cheap to send back."""
    max_pending = 1 if workers == 1 else 2 * workers
    return max(1, min(UNIT_BYTES, int(buffer_mb * 1e6) // (max_pending + 1)))


def _scan(pool, units, unit_bytes, text_field, chunk_chars, rule, size_hint, max_pending, progress) -> dict:
    """The first pass: the split's cuts (`seqwarm.data.split.CutFinder`), from every unit's chunk hashes."""
    for keep_all in (False, True):  # again keeping every hash, in the vanishing case that too few were kept
        finder = CutFinder(rule["val_fraction"], rule["test_fraction"], keep_all)
        # Shown after 2 s only: bad input is mostly found in this pass, and its error is best alone on stderr.
        with tqdm(total=size_hint, desc="split", unit="B", unit_scale=True, delay=2, disable=not progress) as bar:
            for result in pool.scan(_shown(units(unit_bytes), bar), text_field, chunk_chars, max_pending=max_pending):
                finder.add(*result)
        cuts = finder.cuts()
        if cuts is not None:
            return cuts
    raise AssertionError("keep_all keeps every hash")


def _shown(units: Iterable[Unit], bar) -> Iterator[Unit]:
    for unit in units:
        bar.update(unit.size)
        yield unit


def _tokenize(
    pool, units, text_field, out, state, tok, base, chunk_chars, shard_tokens, max_pending, progress, stats
) -> None:
    """The second pass: every unit after `state['done_units']` tokenized into its split's shards."""
    dtype = np.dtype(token_dtype(tok.vocab_size))
    first = {s: 0 if base is None else len(base["splits"][s]["shards"]) for s in SPLITS}
    saved = state["splits"] or {}
    writers = {s: SplitWriter(out, s, dtype, shard_tokens, first[s], saved.get(s)) for s in SPLITS}
    units = itertools.islice(units, state["done_units"], None)  # read past, not parsed
    try:
        with tqdm(
            total=state["cuts"]["chars"],
            initial=state["done_chars"],
            desc="tokenize",
            unit="char",
            unit_scale=True,
            disable=not progress,
        ) as bar:
            for n, chars, result in pool.encode(
                units, text_field, chunk_chars, state["cuts"], dtype, max_pending=max_pending, stats=stats
            ):
                for split, tokens in result.items():
                    writers[split].append(tokens)
                state["done_units"] += 1
                state["done_chunks"] += n
                state["done_chars"] += chars
                bar.update(chars)
                if any(w.closed_any for w in writers.values()):
                    _checkpoint(out, state, writers)
        for w in writers.values():
            w.finish()
        _checkpoint(out, state, writers)
    except BaseException:
        for w in writers.values():
            w.abandon()
        raise


def _checkpoint(out: Path, state: dict, writers: dict[str, SplitWriter]) -> None:
    for w in writers.values():
        w.sync()
        w.closed_any = False
    state["splits"] = {s: w.state() for s, w in writers.items()}
    write_progress(out, state)


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
        if splits[s]["tokens"]:  # the plateau's reference (docs/STABILITY.md): one more pass, over memory-mapped shards
            splits[s]["unigram_loss"] = unigram_loss(out, shards, token_dtype(tok.vocab_size))
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


def unigram_loss(out: Path, shards: list[dict], dtype) -> float:
    """The split's unigram entropy in nats (`instruments.unigram_entropy`), from token counts summed shard by shard."""
    counts = np.zeros(0, dtype=np.int64)
    for shard in shards:
        c = np.bincount(np.memmap(out / shard["file"], dtype=dtype, mode="r"))
        counts = np.pad(counts, (0, max(0, len(c) - len(counts)))) + np.pad(c, (0, max(0, len(counts) - len(c))))
    return counts_entropy(counts)


def _feed(digest, f, block: int = 1 << 22) -> None:
    while chunk := f.read(block):
        digest.update(chunk)
