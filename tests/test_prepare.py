"""Tests of `seqwarm prepare`'s split rule and token files (seqwarm.data.prepare)."""

import json

import numpy as np
import pytest
from conftest import synthetic_text

from seqwarm.data.format import TOKEN_DTYPE, TokenData
from seqwarm.data.prepare import Document, PrepareOptions, prepare
from seqwarm.data.split import assign_splits, chunk_documents
from seqwarm.errors import DataError
from seqwarm.tokenizer import EOT_ID, gpt2_encoding

DOCS = [Document(f"docs/{i:02d}.txt", text) for i, text in enumerate(synthetic_text(1, n_docs=30, words_per_doc=600))]


def splits_by_key(docs, chunk_chars=1000, val=0.1, test=0.1) -> dict[str, tuple[str, bool, str]]:
    chunks = list(chunk_documents(docs, chunk_chars))
    return {key: unit for (key, _, _), unit in zip(chunks, assign_splits(chunks, val, test))}


def test_chunks_cut_at_paragraphs_and_rebuild_each_document():
    chunks = list(chunk_documents(DOCS, 1000))
    assert chunks == list(chunk_documents(DOCS, 1000))
    assert len(chunks) > 2 * len(DOCS)
    for doc in DOCS:
        mine = [(key, text, ends) for key, text, ends in chunks if key.startswith(f"{doc.source}#")]
        assert [key for key, _, _ in mine] == [f"{doc.source}#{i}" for i in range(len(mine))]
        assert [ends for _, _, ends in mine] == [False] * (len(mine) - 1) + [True]
        assert "\n\n".join(text for _, text, _ in mine) == doc.text


def test_split_rule_is_deterministic_and_independent_of_the_listing_order():
    units = splits_by_key(DOCS)
    counts = {s: sum(u[2] == s for u in units.values()) for s in ("train", "val", "test")}
    assert counts["val"] == counts["test"] == round(len(units) * 0.1) and counts["train"] > 0
    assert splits_by_key(DOCS) == units
    shuffled = [DOCS[i] for i in np.random.default_rng(0).permutation(len(DOCS))]
    assert splits_by_key(shuffled) == units
    assert splits_by_key(DOCS[::-1]) == units
    # A piece that does not end its document keeps the paragraph break that followed it.
    assert all(text.endswith("\n\n") != ends for text, ends, _ in units.values())


def test_split_rule_refuses_a_corpus_too_small_to_split():
    with pytest.raises(DataError, match="corpus too small to split") as e:
        assign_splits(chunk_documents(DOCS[:2], 100_000), 0.01, 0.01)
    # The way out, in the message: the minimum at these fractions, and the options that change them (issue 27).
    assert "give at least 51 chunks" in str(e.value) and "--val-fraction 0.01 and --test-fraction 0.01" in str(e.value)


@pytest.mark.parametrize("fraction, minimum", [(0.01, 51), (0.1, 6), (0.5, 2), (0.003, 167)])
def test_min_chunks_is_where_a_fraction_first_rounds_to_one(fraction, minimum):
    from seqwarm.data.split import min_chunks

    assert round(minimum * fraction) == 1 and round((minimum - 1) * fraction) == 0
    assert min_chunks(fraction) == minimum


def test_the_suggested_fractions_split_the_corpus(tmp_path):
    """Following the message's advice works: the fractions it names give each held-out split one chunk."""
    import re

    from seqwarm.data.split import CutFinder, scan_chunks

    docs = list(DOCS[:12])
    finder = CutFinder(0.01, 0.01)
    finder.add(*scan_chunks(docs, 100_000))
    with pytest.raises(DataError) as e:
        finder.cuts()
    message = str(e.value)
    assert len(message.splitlines()) == 1 and "--val-fraction and --test-fraction to" in message
    suggested = float(re.search(r"--test-fraction to ([0-9.]+)", message).group(1))
    units = assign_splits(chunk_documents(docs, 100_000), suggested, suggested)
    assert sorted(split for _, _, split in units).count("val") == 1


def write_docs(directory, docs):
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, text in enumerate(docs):
        paths.append(directory / f"doc{i:02d}.txt")
        paths[-1].write_text(text)
    return [str(p) for p in paths]


def test_prepare_twice_gives_identical_files(tmp_path):
    files = write_docs(tmp_path / "src", synthetic_text(2, n_docs=20))
    a = prepare(files, tmp_path / "a", val_fraction=0.1, test_fraction=0.1, progress=False)
    b = prepare(files, tmp_path / "b", val_fraction=0.1, test_fraction=0.1, progress=False)
    names = sorted(p.name for p in a.iterdir())
    assert (
        names
        == sorted(p.name for p in b.iterdir())
        == [
            "meta.json",
            "test-000000.bin",
            "train-000000.bin",
            "val-000000.bin",
        ]
    )
    for name in names:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    TokenData(a)  # and valid
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "src"]  # no temporary directory left


def test_prepare_splits_the_same_text_whatever_the_order_of_the_files(tmp_path):
    files = write_docs(tmp_path / "src", synthetic_text(3, n_docs=20))
    a = TokenData(prepare(files, tmp_path / "a", val_fraction=0.1, test_fraction=0.1, progress=False))
    b = TokenData(prepare(files[::-1], tmp_path / "b", val_fraction=0.1, test_fraction=0.1, progress=False))
    for split in ("train", "val", "test"):
        assert len(a.splits[split]) > 0
        # The same pieces, concatenated in the order the files were given.
        assert np.array_equal(np.sort(a.splits[split]), np.sort(b.splits[split])), split


def test_text_that_spells_the_separator_cannot_forge_one(tmp_path):
    docs = [
        "Before <|endoftext|> after.\n\nA second paragraph with <|endoftext|><|endoftext|> twice.",
        "<|endoftext|>",
        "Plain text, the last document.",
    ]
    files = write_docs(tmp_path / "src", docs)
    (tmp_path / "src" / "more.jsonl").write_text(json.dumps({"text": "JSON <|endoftext|> too"}) + "\n")
    out = prepare(
        [*files, str(tmp_path / "src" / "more.jsonl")],
        tmp_path / "out",
        val_fraction=0,
        test_fraction=0,
        progress=False,
    )
    tokens = np.fromfile(out / "train-000000.bin", dtype=TOKEN_DTYPE).astype(np.int64)
    ends = np.flatnonzero(tokens == EOT_ID)
    assert len(ends) == 4 and ends[-1] == len(tokens) - 1  # one separator after each document, no other
    enc = gpt2_encoding()
    pieces = np.split(tokens, ends + 1)[:-1]
    assert [enc.decode(piece[:-1].tolist()) for piece in pieces] == [*docs, "JSON <|endoftext|> too"]


def test_the_split_does_not_depend_on_where_the_corpus_lies(tmp_path):
    import shutil

    write_docs(tmp_path / "here" / "corpus", synthetic_text(4, n_docs=20))
    shutil.copytree(tmp_path / "here" / "corpus", tmp_path / "moved" / "deeper" / "corpus")
    a = prepare(
        [str(tmp_path / "here" / "corpus")], tmp_path / "a", val_fraction=0.1, test_fraction=0.1, progress=False
    )
    b = prepare(
        [str(tmp_path / "moved" / "deeper" / "corpus")],
        tmp_path / "b",
        val_fraction=0.1,
        test_fraction=0.1,
        progress=False,
    )
    for name in ("train-000000.bin", "val-000000.bin", "test-000000.bin"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


# --- token ids outside the vocabulary, files outside the directory (issue 15) -------------------


def _forge(directory, split: str, position: int, token: int, *, keep_max_id: bool = True) -> None:
    """Write `token` into a split's first shard and recompute meta.json's sha256s, as a hand edit would."""
    import hashlib

    meta = json.loads((directory / "meta.json").read_text())
    info = meta["splits"][split]
    shard = info["shards"][0]
    tokens = np.fromfile(directory / shard["file"], dtype=TOKEN_DTYPE)
    tokens[position] = token
    tokens.tofile(directory / shard["file"])
    shard["sha256"] = hashlib.sha256(tokens.tobytes()).hexdigest()
    info["sha256"] = hashlib.sha256(b"".join((directory / x["file"]).read_bytes() for x in info["shards"])).hexdigest()
    if not keep_max_id:
        shard["max_id"] = info["max_id"] = int(tokens.max())
    (directory / "meta.json").write_text(json.dumps(meta))


@pytest.fixture
def prepared(tmp_path):
    files = write_docs(tmp_path / "src", synthetic_text(3, n_docs=20))
    return prepare(files, tmp_path / "data", val_fraction=0.1, test_fraction=0.1, progress=False)


def test_prepare_records_each_splits_largest_id(prepared):
    meta = json.loads((prepared / "meta.json").read_text())
    for info in meta["splits"].values():
        shards = [np.fromfile(prepared / x["file"], dtype=TOKEN_DTYPE) for x in info["shards"]]
        assert [x["max_id"] for x in info["shards"]] == [int(t.max()) for t in shards]
        assert info["max_id"] == max(int(t.max()) for t in shards) == EOT_ID  # every document ends with <|endoftext|>


@pytest.mark.parametrize("verify", ["full", "size"])
def test_a_token_id_at_the_vocabulary_size_is_refused_before_training(prepared, verify):
    TokenData(prepared, verify=verify)
    # full: the ids are read (meta.json's max_id left as it was); size: the recorded max_id is trusted
    _forge(prepared, "val", 3, 50257, keep_max_id=verify == "full")
    with pytest.raises(DataError, match=r"val-000000\.bin: token id 50257 is outside the vocabulary of 50257") as e:
        TokenData(prepared, verify=verify)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize(
    "field, value",
    [
        ("file", "../outside.bin"),
        ("file", "/etc/passwd"),
        ("file", "sub/../../outside.bin"),
        ("file", 7),
        ("tokenizer_file", "../tokenizer.json"),
    ],
)
def test_meta_json_cannot_name_a_file_outside_the_data_directory(prepared, field, value):
    meta = json.loads((prepared / "meta.json").read_text())
    if field == "file":
        meta["splits"]["train"]["shards"][0]["file"] = value
    else:
        meta["tokenizer_file"] = value
    (prepared / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match=r"is not a file name inside") as e:
        TokenData(prepared)
    assert "meta.json" in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize(
    "meta_text",
    ['["not", "a", "mapping"]', '{"splits": 3}', '{"splits": {"train": {"file": "train.bin"}}}', "\udcff"],
    ids=["list", "splits-not-a-mapping", "no-token-count", "not-utf8"],
)
def test_a_malformed_meta_json_is_one_line(prepared, meta_text):
    if meta_text == "\udcff":
        (prepared / "meta.json").write_bytes(b'{"splits": "\xff\xfe"}')
    else:
        (prepared / "meta.json").write_text(meta_text)
    with pytest.raises(DataError, match=r"meta\.json") as e:
        TokenData(prepared)
    assert "\n" not in str(e.value)


def test_a_file_given_as_the_data_directory_is_one_line(prepared):
    with pytest.raises(DataError, match=r"train-000000\.bin is a file, not a directory"):
        TokenData(prepared / "train-000000.bin")


def test_prepare_options_are_one_frozen_object_that_keyword_settings_override(tmp_path):
    import dataclasses

    files = write_docs(tmp_path / "src", synthetic_text(2, n_docs=20))
    options = PrepareOptions(val_fraction=0.1, test_fraction=0.1, progress=False, workers=1)
    a = prepare(files, tmp_path / "a", options)
    b = prepare(files, tmp_path / "b", val_fraction=0.1, test_fraction=0.1, progress=False, workers=1)
    assert json.loads((a / "meta.json").read_text())["splits"] == json.loads((b / "meta.json").read_text())["splits"]
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.force = True  # shared by prepare, prepare_builtin and prepare_documents: nobody changes it midway
    with pytest.raises(DataError, match="--shard-tokens: must be at least 1"):
        prepare(files, tmp_path / "c", options, shard_tokens=0)  # a keyword setting overrides the object's
    with pytest.raises(TypeError, match="shard_token"):
        prepare(files, tmp_path / "d", options, shard_token=10)  # a misspelt setting is not ignored
