"""`seqwarm prepare` at scale (issue 13): input formats, workers, shards, resume, append, bounded memory, prefetch."""

import gzip
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import synthetic_text

from seqwarm.data.encode import EncodeStats, Workers
from seqwarm.data.format import FORMAT, SequenceIndex, TokenData
from seqwarm.data.loader import TrainLoader
from seqwarm.data.prepare import prepare
from seqwarm.data.sources import Document, list_inputs, read_input, read_units, unit_documents
from seqwarm.data.split import CutFinder, assign_splits, scan_chunks, split_units
from seqwarm.errors import DataError

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")
zstandard = pytest.importorskip("zstandard")

TEXTS = synthetic_text(5, n_docs=40, words_per_doc=300)
SPLIT = {"val_fraction": 0.1, "test_fraction": 0.1, "progress": False}


def jsonl_bytes(texts, field="text"):
    return "".join(json.dumps({field: t, "id": i}) + "\n" for i, t in enumerate(texts)).encode()


def write_formats(root, texts):
    """The same texts as a directory of .txt, JSONL (plain, gz, zst), Parquet and a save_to_disk dataset."""
    (root / "txt").mkdir(parents=True)
    for i, t in enumerate(texts):
        (root / "txt" / f"{i:03d}.txt").write_text(t)
    (root / "c.jsonl").write_bytes(jsonl_bytes(texts))
    (root / "gz").mkdir()
    (root / "gz" / "c.jsonl.gz").write_bytes(gzip.compress(jsonl_bytes(texts)))
    (root / "zst").mkdir()
    (root / "zst" / "c.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(jsonl_bytes(texts)))
    table = pa.table({"id": list(range(len(texts))), "text": texts})
    pq.write_table(table, root / "c.parquet", row_group_size=7)
    ds = root / "saved"
    ds.mkdir()
    with pa.OSFile(str(ds / "data-00000-of-00001.arrow"), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as w:
        for batch in table.to_batches(max_chunksize=9):
            w.write_batch(batch)
    (ds / "state.json").write_text(json.dumps({"_data_files": [{"filename": "data-00000-of-00001.arrow"}]}))
    (ds / "dataset_info.json").write_text("{}")
    return {
        "txt": str(root / "txt"),
        "jsonl": str(root / "c.jsonl"),
        "gz": str(root / "gz" / "c.jsonl.gz"),
        "zst": str(root / "zst" / "c.jsonl.zst"),
        "parquet": str(root / "c.parquet"),
        "dataset": str(ds),
    }


def stream(path, split="train"):
    return np.asarray(TokenData(path).splits[split])


def shard_files(path):
    return {p.name: p.read_bytes() for p in sorted(path.glob("*.bin"))}


@pytest.fixture(scope="module")
def formats(tmp_path_factory):
    return write_formats(tmp_path_factory.mktemp("formats"), TEXTS)


def test_every_format_of_the_same_texts_gives_the_same_tokens(formats, tmp_path):
    outs = {k: prepare([p], tmp_path / k, val_fraction=0, test_fraction=0, progress=False) for k, p in formats.items()}
    reference = stream(outs["txt"])
    assert len(reference) > 10_000
    for kind, out in outs.items():
        assert np.array_equal(stream(out), reference), kind
    # With val/test splits: JSONL's records are named by file and line whatever the compression.
    split = {k: prepare([formats[k]], tmp_path / f"{k}-split", **SPLIT) for k in ("jsonl", "gz", "zst")}
    assert shard_files(split["jsonl"]) == shard_files(split["gz"]) == shard_files(split["zst"])
    assert all(len(stream(split["gz"], s)) for s in ("val", "test"))


@pytest.mark.slow  # two worker processes start (about 10 s on 2 busy cores)
def test_one_and_two_workers_and_any_shard_size_give_the_same_tokens(formats, tmp_path):
    one = prepare([formats["jsonl"]], tmp_path / "one", workers=1, **SPLIT)
    stats = EncodeStats()
    two = prepare(
        [formats["jsonl"]], tmp_path / "two", workers=2, buffer_mb=0.02, shard_tokens=1000, stats=stats, **SPLIT
    )
    assert stats.peak_pending_items > 1, "the items really went through two worker processes"
    small = prepare([formats["jsonl"]], tmp_path / "small", workers=1, shard_tokens=777, **SPLIT)
    meta = {name: json.loads((d / "meta.json").read_text()) for name, d in (("one", one), ("two", two), ("s", small))}
    for split in ("train", "val", "test"):
        a = stream(one, split)
        assert np.array_equal(stream(two, split), a) and np.array_equal(stream(small, split), a), split
        assert meta["one"]["splits"][split]["sha256"] == meta["two"]["splits"][split]["sha256"]
        assert meta["one"]["splits"][split]["sha256"] == meta["s"]["splits"][split]["sha256"]
    shards = meta["s"]["splits"]["train"]["shards"]
    assert len(shards) == -(-len(stream(one)) // 777) and all(s["tokens"] == 777 for s in shards[:-1])
    # Rows that cross shard boundaries read as from one array.
    index_one, index_small = TokenData(one).sequences("train", 64), TokenData(small).sequences("train", 64)
    rows = list(range(len(index_one)))
    assert (index_one.rows(rows) == index_small.rows(rows)).all()


def test_the_streaming_split_rule_is_the_rank_rule():
    docs = [Document(f"doc{i}.txt", "text") for i in range(20_000)]  # one chunk each, keys doc{i}.txt#0
    chunks = [(f"{d.source}#0", d.text, True) for d in docs]
    for val, test in ((0.01, 0.01), (0.003, 0.0), (0.0, 0.2)):
        finder = CutFinder(val, test)
        for i in range(0, len(docs), 1000):  # hashes in groups, as the workers send them; more than one prune
            finder.add(*scan_chunks(docs[i : i + 1000], 8000))
        cuts = finder.cuts()
        by_rank = [split for _, _, split in assign_splits(chunks, val, test)]
        streamed = [split for split, _, _ in split_units(docs, 8000, cuts)]
        assert streamed == by_rank, (val, test)


def test_memory_is_bounded_by_the_buffer(formats, tmp_path):
    stats = EncodeStats()
    prepare([formats["txt"]], tmp_path / "out", workers=1, buffer_mb=0.005, stats=stats, **SPLIT)
    corpus_chars = sum(len(t) for t in TEXTS)
    longest_chunk = max(len(t) for t in TEXTS) + 2  # each document is one chunk here
    assert stats.items > 10 and stats.peak_pending_items == 1, "one worker: each item tokenized as it is filled"
    assert stats.peak_pending_chars <= 5000 + longest_chunk < corpus_chars / 5


def test_an_interrupted_prepare_resumes_to_the_same_result(formats, tmp_path, monkeypatch):
    reference = prepare([formats["jsonl"]], tmp_path / "ref", shard_tokens=2000, buffer_mb=0.005, workers=1, **SPLIT)
    real = Workers.encode

    def crashing(*args, **kw):
        for i, item in enumerate(real(*args, **kw)):
            if i == 9:  # mid-shard: after items written since the last finished shard
                raise KeyboardInterrupt
            yield item

    out = tmp_path / "out"
    monkeypatch.setattr(Workers, "encode", crashing)
    with pytest.raises(KeyboardInterrupt):
        prepare([formats["jsonl"]], out, shard_tokens=2000, buffer_mb=0.005, workers=1, **SPLIT)
    progress = json.loads((out / "progress.json").read_text())
    finished = progress["splits"]["train"]["shards"]
    assert not (out / "meta.json").exists() and finished and progress["done_chunks"] > 0
    with pytest.raises(DataError, match="unfinished `seqwarm prepare`"):
        TokenData(out)
    stamps = {s["file"]: (out / s["file"]).stat().st_mtime_ns for s in finished}
    monkeypatch.setattr(Workers, "encode", real)
    prepare([formats["jsonl"]], out, shard_tokens=2000, buffer_mb=0.005, workers=1, **SPLIT)
    assert {f: (out / f).stat().st_mtime_ns for f in stamps} == stamps, "finished shards are not written again"
    assert shard_files(out) == shard_files(reference)
    assert json.loads((out / "meta.json").read_text()) == json.loads((reference / "meta.json").read_text())
    assert not (out / "progress.json").exists()


def test_resuming_with_other_inputs_is_refused(formats, tmp_path, monkeypatch):
    def crashing(*args, **kw):
        raise KeyboardInterrupt
        yield

    monkeypatch.setattr(Workers, "encode", crashing)
    with pytest.raises(KeyboardInterrupt):
        prepare([formats["jsonl"]], tmp_path / "out", **SPLIT)
    with pytest.raises(DataError, match="unfinished prepare of other inputs"):
        prepare([formats["gz"]], tmp_path / "out", **SPLIT)


def test_append_adds_a_part_split_on_its_own(formats, tmp_path):
    first = prepare([formats["txt"]], tmp_path / "corpus", shard_tokens=3000, **SPLIT)
    before = shard_files(first)
    alone = prepare([formats["jsonl"]], tmp_path / "alone", shard_tokens=3000, **SPLIT)
    prepare([formats["jsonl"]], first, append=True, shard_tokens=3000, **SPLIT)
    after = shard_files(first)
    assert all(after[name] == data for name, data in before.items()), "published shards are kept as they are"
    meta = json.loads((first / "meta.json").read_text())
    assert [s.get("appended", False) for s in meta["sources"]] == [False, True]
    ref_txt = prepare([formats["txt"]], tmp_path / "txt-only", shard_tokens=3000, **SPLIT)
    for split in ("train", "val", "test"):
        assert np.array_equal(stream(first, split), np.concatenate([stream(ref_txt, split), stream(alone, split)]))
    with pytest.raises(DataError, match="holds a prepared corpus"):
        prepare([formats["jsonl"]], first, **SPLIT)


def test_a_corrupted_shard_is_detected(formats, tmp_path):
    out = prepare([formats["jsonl"]], tmp_path / "out", shard_tokens=2000, **SPLIT)
    with open(out / "train-000002.bin", "r+b") as f:
        f.seek(10)
        f.write(b"\x01\x02")
    with pytest.raises(DataError, match="train-000002.bin: sha256 does not match"):
        TokenData(out)
    lazy = TokenData(out, verify="lazy")  # opens; the shard is checked when first read
    assert len(lazy.splits["train"][0:100]) == 100
    with pytest.raises(DataError, match="train-000002.bin: sha256 does not match"):
        lazy.splits["train"][4100:4200]
    TokenData(out, verify="size")  # size-only verification cannot see it, by design


def test_the_single_file_format_still_reads(formats, tmp_path):
    new = prepare([formats["jsonl"]], tmp_path / "new", shard_tokens=1000, **SPLIT)
    meta = json.loads((new / "meta.json").read_text())
    old = tmp_path / "old"
    old.mkdir()
    for split, info in meta["splits"].items():
        (old / f"{split}.bin").write_bytes(np.asarray(TokenData(new).splits[split]).tobytes())
        meta["splits"][split] = {"file": f"{split}.bin", "tokens": info["tokens"], "sha256": info["sha256"]}
    meta["format"] = FORMAT
    del meta["shard_tokens"]
    (old / "meta.json").write_text(json.dumps(meta))
    data = TokenData(old)  # full verification: the split's sha256 is the single file's
    assert isinstance(data.splits["train"], np.memmap)
    assert np.array_equal(data.splits["train"], stream(new))


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("a.jsonl", b'{"text": "ok"}\n[1, 2]\n', "a.jsonl:2: expected a JSON object with a 'text' field"),
        ("a.jsonl", b'{"text": "ok"}\n{"body": "x"}\n', "a.jsonl:2: expected a JSON object with a 'text' field"),
        ("a.jsonl", b'{"text": "ok"}\n{"text": "\xff"}\n', "a.jsonl:2: not UTF-8 text"),
        ("a.txt", b"caf\xe9", "a.txt: not UTF-8 text"),
        ("a.jsonl.gz", gzip.compress(b'{"text": "ok"}\n' * 100)[:-12], "a.jsonl.gz: corrupt gz data"),
        ("a.jsonl.zst", b"\x28\xb5\x2f\xfd" + b"not zstd at all", "a.jsonl.zst: corrupt zst data"),
        ("a.parquet", None, "a.parquet: no column 'text' \\(columns: body"),
        ("a.parquet", b"PAR1 not really", "a.parquet: not a readable Parquet file"),
        ("empty.txt", b"", "no text found"),
    ],
)
def test_bad_input_is_a_one_line_error_naming_the_file(tmp_path, name, content, message):
    path = tmp_path / name
    if content is None:
        pq.write_table(pa.table({"body": ["x"]}), path)
    else:
        path.write_bytes(content)
    with pytest.raises(DataError, match=message) as info:
        prepare([str(path)], tmp_path / "out", val_fraction=0, test_fraction=0, progress=False)
    assert "\n" not in str(info.value)
    assert not (tmp_path / "out").exists(), "nothing written before the input is known to be good"


@pytest.mark.parametrize("unit_bytes", [1, 5000, 1 << 20])
def test_units_read_in_workers_give_the_documents_of_read_input(formats, unit_bytes):
    """The documents, and their names, do not depend on how the input is cut into units."""
    for name, path in formats.items():
        files = list_inputs([path])
        direct = [d for f in files for d in read_input(f)]
        units = list(read_units(files, "text", unit_bytes))
        assert [d for u in units for d in unit_documents(u)] == direct, name
        if name in ("jsonl", "gz", "zst", "txt"):  # cut by size; Parquet and Arrow by record batch
            assert len(units) == (len(direct) if unit_bytes == 1 else 1 if unit_bytes == 1 << 20 else len(units))
            assert unit_bytes != 5000 or 1 < len(units) < len(direct), name


def test_a_bad_line_found_in_a_unit_is_named_by_its_line_number(tmp_path):
    lines = [json.dumps({"text": f"document {i}"}) for i in range(50)]
    lines[37] = json.dumps({"body": "no text field"})
    (tmp_path / "c.jsonl").write_text("\n".join(lines) + "\n")
    units = list(read_units(list_inputs([str(tmp_path / "c.jsonl")]), "text", 100))
    assert len(units) > 5
    with pytest.raises(DataError, match=r"c\.jsonl:38: expected a JSON object with a 'text' field"):
        [d for u in units for d in unit_documents(u)]
    (tmp_path / "b.jsonl").write_bytes(b'{"text": "fine"}\n' * 30 + b'{"text": "\xff"}\n')
    with pytest.raises(DataError, match=r"b\.jsonl:31: not UTF-8 text"):
        [d for u in read_units(list_inputs([str(tmp_path / "b.jsonl")]), "text", 64) for d in unit_documents(u)]


def test_token_arrays_are_the_ordinary_encoding():
    from seqwarm.tokenizer import gpt2

    tok = gpt2()
    texts = [*TEXTS[:5], "", "a <|endoftext|> forged separator", " <|endoftext|>"]
    for threads in (1, 2):
        tok.threads = threads
        arrays = tok.encode_ordinary_arrays(texts)
        assert [a.tolist() for a in arrays] == tok.encode_ordinary_batch(texts)
    assert tok.eot_id not in arrays[-2].tolist()


def test_text_field_picks_the_column_and_globs_expand(tmp_path):
    (tmp_path / "d").mkdir()
    for i in range(3):
        pq.write_table(pa.table({"body": TEXTS[i * 5 : i * 5 + 5]}), tmp_path / "d" / f"p{i}.parquet")
    out = prepare(
        [str(tmp_path / "d" / "*.parquet")], tmp_path / "out", text_field="body", val_fraction=0, test_fraction=0
    )
    ref = prepare([str(tmp_path / "d")], tmp_path / "ref", text_field="body", val_fraction=0, test_fraction=0)
    assert np.array_equal(stream(out), stream(ref))
    assert len(stream(out)) > 1000


def test_loader_batches_are_identical_with_and_without_prefetch(formats, tmp_path):
    out = prepare([formats["jsonl"]], tmp_path / "out", shard_tokens=999, **SPLIT)
    index = TokenData(out).sequences("train", 32)
    assert isinstance(index, SequenceIndex)
    plain = TrainLoader(index, seed=4, drop_tail=False)
    ahead = TrainLoader(index, seed=4, drop_tail=False)
    lengths = [8, 8, 16, 24, 24, 32, 32, 32]
    for step, seqlen in enumerate(lengths):
        a = plain.next_batch(6, seqlen)
        b = ahead.next_batch(6, seqlen)
        assert (a.inputs == b.inputs).all() and (a.targets == b.targets).all() and a.tokens == b.tokens
        assert np.array_equal(a.starts, b.starts) and np.array_equal(a.served, b.served)
        assert plain.state_dict() == ahead.state_dict(), "the state counts consumed batches, not prefetched ones"
        guess = lengths[step + 1] if step + 1 < len(lengths) else 32
        ahead.prefetch(6 if step != 3 else 5, guess)  # one wrong guess: the batch is read again
    assert ahead.prefetch_hits == len(lengths) - 2
    ahead.close()


def test_cli_prepare_appends_and_refuses_a_prepared_directory(formats, tmp_path, capsys):
    from seqwarm.cli import main

    out = tmp_path / "out"
    common = ["--val-fraction", "0", "--test-fraction", "0", "--workers", "1"]
    assert main(["prepare", formats["txt"], "--out", str(out), "--shard-tokens", "4000", *common]) == 0
    assert main(["prepare", formats["txt"], "--out", str(out), *common]) == 2
    assert "holds a prepared corpus (use --append" in capsys.readouterr().err
    assert main(["prepare", formats["parquet"], "--out", str(out), "--append", *common]) == 0
    assert np.array_equal(
        stream(out),
        np.concatenate(
            [stream(prepare([formats["txt"]], tmp_path / "a", val_fraction=0, test_fraction=0, progress=False))] * 2
        ),
    )


@pytest.mark.slow  # a real process, killed mid-run
def test_a_killed_prepare_resumes_to_the_same_result(tmp_path):
    import os
    import signal
    import subprocess
    import sys

    src = tmp_path / "big.jsonl"
    src.write_bytes(jsonl_bytes(synthetic_text(9, n_docs=600, words_per_doc=300)))
    args = ["prepare", str(src), "--shard-tokens", "3000", "--buffer-mb", "0.01", "--workers", "1"]
    reference = tmp_path / "ref"
    import seqwarm

    env = {**os.environ, "PYTHONPATH": str(Path(seqwarm.__file__).parents[1])}  # this tree, from any directory
    subprocess.run([sys.executable, "-m", "seqwarm", *args, "--out", str(reference)], env=env, check=True)
    out = tmp_path / "out"
    # The process kills itself once its progress records 3 train shards. A watcher polling progress.json from here
    # raced the prepare: on a busy machine it could finish before the watcher looked (issue 27, flaky under load).
    proc = subprocess.run([sys.executable, "-c", KILL_AT_3_SHARDS, *args, "--out", str(out)], env=env, timeout=240)
    assert proc.returncode == -signal.SIGKILL, "the prepare was not killed mid-run (else this test checked a plain run)"
    assert not (out / "meta.json").exists() and (out / "progress.json").exists()
    subprocess.run([sys.executable, "-m", "seqwarm", *args, "--out", str(out)], env=env, check=True)
    assert shard_files(out) == shard_files(reference)
    assert (out / "meta.json").read_text() == (reference / "meta.json").read_text()


# `seqwarm prepare ARGS` that SIGKILLs itself right after writing a progress checkpoint with 3 or more train shards;
# items go on being written between checkpoints, so that is mid-shard.
KILL_AT_3_SHARDS = """
import os, signal, sys
import seqwarm.data.prepare as prepare
real = prepare.write_progress
def write_progress(directory, state):
    real(directory, state)
    if state.get("splits") and len(state["splits"]["train"]["shards"]) >= 3:
        os.kill(os.getpid(), signal.SIGKILL)
prepare.write_progress = write_progress
from seqwarm.cli import main
sys.exit(main(sys.argv[1:]))
"""
