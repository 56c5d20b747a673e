"""`seqwarm prepare`: text -> tokens -> one memory-mapped file per split, plus meta.json.

Documents are joined with `<|endoftext|>` (each document is followed by one), as GPT-2 was trained.
The val/test splits are chosen by hashing fixed-size chunks of the documents, so the split of a
corpus does not depend on the order its files are listed in, and a re-run gives identical files.
The tokenizer is GPT-2's (the default), a byte-level BPE trained here on the train split's chunks
only, since the split is decided before anything is tokenized (`--tokenizer bpe:N`), or a given
tokenizer.json (`--tokenizer PATH`); the last two are stored in the directory (seqwarm.tokenizer).
The output directory is written whole or not at all (`seqwarm.files.atomic_directory`). The
builtin corpus comes through here too, from `seqwarm.data.builtin.corpus`.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from seqwarm import __version__
from seqwarm.data.format import FORMAT, SPLITS, token_dtype
from seqwarm.errors import DataError
from seqwarm.files import atomic_directory, check_writable
from seqwarm.tokenizer import (
    TOKENIZER_FILE,
    TOKENIZER_NAME,
    Tokenizer,
    gpt2,
    parse_tokenizer,
    read_tokenizer_file,
    require_tokenizers,
    train_bpe,
)

TEXT_SUFFIXES = {".txt", ".md", ".rst", ".text"}
JSONL_SUFFIXES = {".jsonl", ".json"}


@dataclass(frozen=True)
class Document:
    source: str  # a stable name: e.g. "docs/a.txt", "docs/b.jsonl:3", "shakespeare/hamlet", "wikipedia/Anarchism"
    text: str


def prepare(
    inputs: list[str],
    out: Path,
    *,
    val_fraction: float = 0.01,
    test_fraction: float = 0.01,
    chunk_chars: int = 8000,
    force: bool = False,
    progress: bool = True,
    tokenizer: str = TOKENIZER_NAME,
) -> Path:
    """Tokenize `inputs` (text/JSONL files and directories) into `out` with `tokenizer` (`--tokenizer`)."""
    chosen = choose_tokenizer(tokenizer)
    out = check_output(out, val_fraction=val_fraction, test_fraction=test_fraction, force=force)
    return prepare_documents(
        list(read_documents(inputs)),
        out,
        label=", ".join(inputs),
        sources=[{"name": str(Path(p)), "role": "train"} for p in inputs],
        val_fraction=val_fraction,
        test_fraction=test_fraction,
        chunk_chars=chunk_chars,
        progress=progress,
        tokenizer=chosen,
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


def check_output(out: Path, *, val_fraction: float, test_fraction: float, force: bool) -> Path:
    """`out` as a Path, once the split fractions are valid and `out` may be written (before any reading)."""
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise DataError(
            f"--val-fraction/--test-fraction: need fractions summing below 1, got {val_fraction}, {test_fraction}"
        )
    out = Path(out)
    check_writable(out, "--out", directory=True)
    if out.exists() and any(out.iterdir()) and not force:
        raise DataError(f"{out}: output directory exists and is not empty (use --force to replace it)")
    return out


def prepare_documents(
    docs: list[Document],
    out: Path,
    *,
    label: str,
    sources: list[dict],
    heldout: dict[str, list[Document]] | None = None,
    extra_meta: dict | None = None,
    val_fraction: float,
    test_fraction: float,
    chunk_chars: int,
    progress: bool,
    tokenizer: str | int | Tokenizer = TOKENIZER_NAME,
) -> Path:
    """Split and tokenize `docs` into `out` (replaced whole); `heldout` texts go to heldout/NAME.jsonl untokenized.

    `label` names the input in errors, `sources` is meta.json's record of it, `extra_meta` is
    appended to meta.json. `tokenizer` is what `choose_tokenizer` takes.
    """
    heldout = heldout or {}
    tok = choose_tokenizer(tokenizer)
    if not docs or not any(d.text.strip() for d in docs):
        raise DataError(f"{label}: no text found")
    units = assign_splits(chunk_documents(docs, chunk_chars), val_fraction, test_fraction)
    tokenizer_meta = {}
    if isinstance(tok, int):
        # Trained on the train split only: val and test stay unseen by the tokenizer as by the model.
        train_texts = [text for text, _, s in units if s == "train"]
        if progress:
            print(f"training a byte-level BPE of {tok:,} tokens on {len(train_texts):,} train chunks", file=sys.stderr)
        tok = train_bpe(train_texts, tok)
        tokenizer_meta["tokenizer_source"] = {
            "trained_on": "train",
            "chars": sum(len(t) for t in train_texts),
            "tokenizers": require_tokenizers().__version__,
        }
    elif tok.json is not None:
        tokenizer_meta["tokenizer_source"] = {"file": tok.source}
    dtype = token_dtype(tok.vocab_size)
    with atomic_directory(out) as tmp:  # `out` is either the old directory or complete
        if tok.json is not None:
            (tmp / TOKENIZER_FILE).write_bytes(tok.json.encode())
            tokenizer_meta = {"tokenizer_file": TOKENIZER_FILE, "tokenizer_sha256": tok.sha256(), **tokenizer_meta}
        splits = {}
        for split in SPLITS:
            texts = [(text, ends) for text, ends, s in units if s == split]
            splits[split] = write_tokens(
                texts, tmp / f"{split}.bin", tok, dtype, desc=f"tokenize {split}", progress=progress
            )
        for name, held in heldout.items():
            path = tmp / "heldout" / f"{name}.jsonl"
            path.parent.mkdir(exist_ok=True)
            with path.open("w") as f:
                for d in held:
                    f.write(json.dumps({"source": d.source, "text": d.text}) + "\n")
        meta = {
            "format": FORMAT,
            "created_by": f"seqwarm {__version__}",
            "tokenizer": tok.name,
            "vocab_size": tok.vocab_size,
            "eot_id": tok.eot_id,
            "dtype": np.dtype(dtype).name,
            **tokenizer_meta,  # nothing for GPT-2: its meta.json is what it has always been
            "splits": splits,
            "split_rule": {"chunk_chars": chunk_chars, "val_fraction": val_fraction, "test_fraction": test_fraction},
            "sources": sources,
            "heldout": {name: f"heldout/{name}.jsonl" for name in heldout},
            **(extra_meta or {}),
        }
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    return out


def read_documents(inputs: Iterable[str]) -> Iterator[Document]:
    """Text files (one document each), JSONL files (one document per line, field `text`), directories of them."""
    for item in inputs:
        path = Path(item)
        if not path.exists():
            raise DataError(f"{path}: no such file or directory")
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        files = [p for p in files if p.suffix in TEXT_SUFFIXES | JSONL_SUFFIXES] if path.is_dir() else files
        if not files:
            raise DataError(f"{path}: no .txt/.md/.jsonl files in this directory")
        for file in files:
            # A document is named by its path below the input's parent, not by its absolute path: the
            # split rule hashes the names, and it must not change when the corpus moves.
            yield from _read_file(file, file.relative_to(path.parent).as_posix())


def _read_file(file: Path, name: str) -> Iterator[Document]:
    try:
        if file.suffix in JSONL_SUFFIXES:
            with file.open(encoding="utf-8") as f:
                for lineno, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    try:
                        text = json.loads(line)["text"]
                    except (json.JSONDecodeError, KeyError, TypeError) as e:
                        raise DataError(f"{file}:{lineno}: expected a JSON object with a 'text' field") from e
                    if not isinstance(text, str):
                        raise DataError(f"{file}:{lineno}: 'text' must be a string")
                    yield Document(f"{name}:{lineno}", text)
        else:
            yield Document(name, file.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise DataError(f"{file}: not UTF-8 text") from e
    except OSError as e:
        raise DataError(f"{file}: cannot read ({e.strerror})") from e


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


def write_tokens(
    texts: list[tuple[str, bool]],
    path: Path,
    tok: Tokenizer,
    dtype: type[np.unsignedinteger],
    *,
    desc: str,
    progress: bool,
    batch: int = 256,
) -> dict:
    """Tokenize (text, ends_document) pieces into a file of `dtype`; return its token count, sha256 and largest id.

    `<|endoftext|>` is appended after each document's last piece as a token id, and text is encoded
    as ordinary text, so a document that happens to contain that string does not forge a separator.
    """
    eot = tok.eot_id
    sha = hashlib.sha256()
    n_tokens, max_id = 0, -1
    total_chars = sum(len(t) for t, _ in texts)
    with (
        path.open("wb") as f,
        tqdm(total=total_chars, desc=desc, unit="char", unit_scale=True, disable=not progress) as bar,
    ):
        for i in range(0, len(texts), batch):
            part = texts[i : i + batch]
            ids = tok.encode_ordinary_batch([t for t, _ in part])
            pieces = [np.asarray(t + [eot] if ends else t, dtype=np.int64) for t, (_, ends) in zip(ids, part)]
            arr = np.concatenate(pieces) if pieces else np.empty(0, np.int64)
            if len(arr) and not 0 <= arr.min() <= arr.max() < tok.vocab_size:  # a tokenizer.json with sparse ids
                raise DataError(
                    f"tokenizer {tok.name}: produced id {arr.max()} outside its vocabulary of {tok.vocab_size}"
                )
            max_id = max(max_id, int(arr.max()) if len(arr) else -1)
            arr = arr.astype(dtype)
            data = arr.tobytes()
            f.write(data)
            sha.update(data)
            n_tokens += len(arr)
            bar.update(sum(len(t) for t, _ in part))
    # max_id: what `TokenData` checks against the vocabulary under `data.verify: size` without reading the ids
    return {"file": path.name, "tokens": n_tokens, "sha256": sha.hexdigest(), "max_id": max_id}
