"""Tokenizers (seqwarm.tokenizer): GPT-2's own, verified against its published files and ids, and those beyond
it: `prepare --tokenizer gpt2|bpe:N|PATH`, uint32 token files, `model.vocab_size: auto`, and eval and the
Hugging Face export following the data's tokenizer."""

import hashlib
import json
import os
import shutil
from importlib.util import find_spec
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import synthetic_text

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before transformers reads it: nothing here may reach the Hub

from seqwarm.cli import main  # noqa: E402
from seqwarm.config import PACKAGED_CONFIGS, load_config  # noqa: E402
from seqwarm.data import prepare as prepare_module  # noqa: E402
from seqwarm.data.builtin.names import builtin_name, builtin_tokenizer  # noqa: E402
from seqwarm.data.corpus import open_data  # noqa: E402
from seqwarm.data.format import TokenData  # noqa: E402
from seqwarm.data.loader import TrainLoader  # noqa: E402
from seqwarm.data.prepare import prepare, read_documents  # noqa: E402
from seqwarm.data.split import assign_splits, chunk_documents  # noqa: E402
from seqwarm.errors import ConfigError, DataError  # noqa: E402
from seqwarm.files import file_sha256  # noqa: E402
from seqwarm.model_config import model_config  # noqa: E402
from seqwarm.saved import open_saved  # noqa: E402
from seqwarm.tokenizer import (  # noqa: E402
    ENCODER_JSON_SHA256,
    EOT,
    EOT_ID,
    VOCAB_BPE_SHA256,
    gpt2,
    gpt2_encoding,
    gpt2_files,
    load_tokenizer,
    read_tokenizer_file,
    train_bpe,
)

needs_transformers = pytest.mark.skipif(find_spec("transformers") is None, reason="needs seqwarm[hf] (transformers)")

# synthetic_text(0) in a directory named src (document names, which the split rule hashes, are
# src/docNNN.txt), 5% val, 5% test, as GPT-2 tokens: measured before seqwarm had other
# tokenizers. The default must keep producing exactly these files.
GPT2_SPLITS = {
    "train": (16326, "d18cfecc4247202c5c7eb323a74a6e8ac4bd2b53612f977a1ee8ade565e17b9c"),
    "val": (904, "9385ab024c7e70398cf1b2acfaf9b786d65f964471452e7235ca509451059b91"),
    "test": (909, "1e1f3cfaecebaccf7b4467d8efad0b84bedc90283267edd484635a9dfa1775cd"),
}
GPT2_META_KEYS = [
    "format",
    "created_by",
    "tokenizer",
    "vocab_size",
    "eot_id",
    "dtype",
    "splits",
    "shard_tokens",  # the sharded format (issue 13); the splits' tokens and sha256 below are unchanged
    "split_rule",
    "sources",
    "heldout",
]


SPLIT = {"val_fraction": 0.1, "test_fraction": 0.1}  # 30 documents of one chunk each: 3 val, 3 test


def cli(capsys, *argv):
    code = main([str(a) for a in argv])
    return code, capsys.readouterr().err


def write_docs(directory: Path, docs: list[str]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for i, text in enumerate(docs):
        (directory / f"doc{i:02d}.txt").write_text(text)
    return directory


@pytest.fixture(scope="module")
def src(tmp_path_factory):
    return write_docs(tmp_path_factory.mktemp("src") / "docs", synthetic_text(3, n_docs=30, words_per_doc=500))


@pytest.fixture(scope="module")
def bpe_dir(src, tmp_path_factory):
    return prepare([str(src)], tmp_path_factory.mktemp("bpe") / "data", tokenizer="bpe:512", **SPLIT, progress=False)


def big_vocab_tokenizer(path: Path, n_filler: int = 70_000) -> Path:
    """A byte-level BPE tokenizer.json whose merged tokens have ids above 65,535 (uint16 cannot hold them)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {ch: i for i, ch in enumerate(alphabet)}
    vocab |= {f"<filler{i}>": len(alphabet) + i for i in range(n_filler)}  # never produced: only ids
    merges = [("t", "h"), ("th", "e"), ("Ġ", "the")]
    for a, b in merges:
        vocab[a + b] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([EOT])
    tok.save(str(path))
    return path


# --- GPT-2, unchanged ------------------------------------------------------------------------------


def test_files_are_the_ones_tiktoken_pins_for_gpt2():
    vocab_bpe, encoder_json = gpt2_files()
    assert hashlib.sha256(Path(vocab_bpe).read_bytes()).hexdigest() == VOCAB_BPE_SHA256
    assert hashlib.sha256(Path(encoder_json).read_bytes()).hexdigest() == ENCODER_JSON_SHA256


def test_ids_equal_gpt2s():
    enc = gpt2_encoding()
    assert enc.n_vocab == 50257
    # ids published with GPT-2 (and reproduced by every GPT-2 tokenizer)
    assert enc.encode("Hello world") == [15496, 995]
    assert enc.encode("The quick brown fox") == [464, 2068, 7586, 21831]
    assert enc.encode("<|endoftext|>", allowed_special="all") == [EOT_ID]
    assert enc.encode_ordinary("<|endoftext|>") != [EOT_ID]  # plain text never forges the separator
    text = "Sequence Length Warmup: 8 -> 1024 tokens, isn't it?\n\n"
    assert enc.decode(enc.encode(text)) == text


def test_default_gpt2_output_is_byte_identical_to_before(tmp_path, capsys):
    src = tmp_path / "src"
    src.mkdir()
    for i, doc in enumerate(synthetic_text(0)):
        (src / f"doc{i:03d}.txt").write_text(doc)
    corpus_dir = tmp_path / "prepared"
    code, err = cli(capsys, "prepare", src, "--out", corpus_dir, "--val-fraction", "0.05", "--test-fraction", "0.05")
    assert code == 0, err
    meta = json.loads((corpus_dir / "meta.json").read_text())
    assert list(meta) == GPT2_META_KEYS  # no tokenizer_file: a GPT-2 corpus is what it has always been
    assert (meta["tokenizer"], meta["vocab_size"], meta["eot_id"], meta["dtype"]) == ("gpt2", 50257, 50256, "uint16")
    assert {k: (v["tokens"], v["sha256"]) for k, v in meta["splits"].items()} == GPT2_SPLITS
    assert not (corpus_dir / "tokenizer.json").exists()
    assert gpt2().encode_ordinary("Hello world") == [15496, 995]
    assert load_tokenizer(corpus_dir) is gpt2()


def test_a_corpus_from_before_uint32_still_opens(corpus_dir, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(corpus_dir, old)
    meta = json.loads((old / "meta.json").read_text())
    del meta["dtype"]  # the oldest corpora wrote no dtype: uint16
    (old / "meta.json").write_text(json.dumps(meta))
    data = TokenData(old, vocab_size=50257)
    assert data.vocab_size == 50257 and data.eot_id == 50256 and data.splits["train"].dtype == np.uint16
    assert data.tokenizer() is gpt2()


# --- bpe:N ---------------------------------------------------------------------------------------


def test_bpe_training_is_deterministic_and_stored_with_the_tokens(src, bpe_dir, tmp_path):
    again = prepare([str(src)], tmp_path / "again", tokenizer="bpe:512", **SPLIT, progress=False)
    for name in ("tokenizer.json", "train-000000.bin", "val-000000.bin", "test-000000.bin"):
        assert (again / name).read_bytes() == (bpe_dir / name).read_bytes(), name
    meta = json.loads((bpe_dir / "meta.json").read_text())
    assert meta["tokenizer"] == "bpe:512" and meta["tokenizer_file"] == "tokenizer.json"
    assert meta["tokenizer_sha256"] == file_sha256(bpe_dir / "tokenizer.json")
    assert meta["dtype"] == "uint16" and meta["tokenizer_source"]["trained_on"] == "train"
    tok = load_tokenizer(bpe_dir)
    # The synthetic text has few distinct words: the trainer stops before 512 and records what it made.
    assert 257 < tok.vocab_size <= 512 and meta["vocab_size"] == tok.vocab_size
    assert tok.eot_id == tok.vocab_size - 1 == meta["eot_id"]  # <|endoftext|> last, as in GPT-2

    data = TokenData(bpe_dir)
    train = np.asarray(data.splits["train"])
    assert train.max() < tok.vocab_size and (train == tok.eot_id).any()
    # The token file decodes back to the train split's text, each document closed by <|endoftext|>.
    docs = list(read_documents([str(src)]))
    units = assign_splits(chunk_documents(docs, 8000), 0.1, 0.1)
    expected = "".join(text + (EOT if ends else "") for text, ends, s in units if s == "train")
    assert tok.decode(train.tolist()) == expected


def test_bpe_is_trained_on_the_train_split_only(src, tmp_path, monkeypatch):
    seen = []

    def spy(texts, vocab_size):
        seen.extend(texts)
        return train_bpe(texts, vocab_size)

    monkeypatch.setattr(prepare_module, "train_bpe", spy)
    prepare([str(src)], tmp_path / "d", tokenizer="bpe:300", val_fraction=0.1, test_fraction=0.1, progress=False)
    units = assign_splits(chunk_documents(read_documents([str(src)]), 8000), 0.1, 0.1)
    by_split = {s: [text for text, _, u in units if u == s] for s in ("train", "val", "test")}
    assert by_split["val"] and by_split["test"]
    assert seen == by_split["train"]


def test_ordinary_encoding_never_forges_the_separator(bpe_dir):
    tok = load_tokenizer(bpe_dir)
    assert tok.encode(EOT) == [tok.eot_id]
    assert tok.eot_id not in tok.encode_ordinary(f"a {EOT} b")
    assert tok.decode(tok.encode_ordinary(f"a {EOT} b")) == f"a {EOT} b"


# --- a tokenizer.json, and uint32 -----------------------------------------------------------------


def test_a_large_tokenizer_json_gives_uint32_files_that_round_trip(src, tmp_path, capsys):
    path = big_vocab_tokenizer(tmp_path / "big.json")
    out = tmp_path / "big"
    code, err = cli(
        capsys, "prepare", src, "--out", out, "--tokenizer", path, "--val-fraction", 0.1, "--test-fraction", 0.1
    )
    assert code == 0, err
    meta = json.loads((out / "meta.json").read_text())
    assert meta["dtype"] == "uint32" and meta["vocab_size"] == 70_256 + 3 + 1 and meta["tokenizer"] == "file"
    assert (out / "tokenizer.json").read_bytes() == path.read_bytes()  # copied as it was
    assert (out / "train-000000.bin").stat().st_size == 4 * meta["splits"]["train"]["tokens"]

    data = TokenData(out, vocab_size=meta["vocab_size"])
    tok = data.tokenizer()
    assert data.splits["train"].dtype == np.uint32
    the = tok.encode_ordinary(" the")
    assert the == [70_256 + 2] and the[0] > 65_535  # the merged token: only uint32 holds it
    train = np.asarray(data.splits["train"])
    assert (train == the[0]).any() and train.max() == tok.eot_id
    docs = list(read_documents([str(src)]))
    units = assign_splits(chunk_documents(docs, 8000), 0.1, 0.1)
    assert tok.decode(train.tolist()) == "".join(t + (EOT if e else "") for t, e, s in units if s == "train")
    # The loader reads ids above 65,535 through to the model's inputs, and pads with this <|endoftext|>.
    loader = TrainLoader(data.sequences("train", 64), seed=0)
    batch = loader.next_batch(4, 64)
    assert batch.inputs.max().item() > 65_535 and data.sequences("train", 64).pad_id == tok.eot_id


# --- the vocabulary from the data ----------------------------------------------------------------


def test_model_vocab_size_auto_follows_the_data(bpe_dir, corpus_dir, tmp_path):
    vocab = json.loads((bpe_dir / "meta.json").read_text())["vocab_size"]
    cfg = load_config(PACKAGED_CONFIGS / "tiny-slw.yaml", [f"data.path={bpe_dir}"])
    assert cfg.model.vocab_size == "auto" and model_config(cfg).vocab_size == vocab
    data = open_data(cfg, progress=False)
    assert cfg.model.gpt(data.vocab_size).vocab_size == vocab
    # Without prepared data, auto is GPT-2's vocabulary (`seqwarm plan` before `prepare`).
    assert model_config(load_config("tiny-slw", [f"data.path={tmp_path / 'nothing'}"])).vocab_size == 50257
    assert model_config(load_config("tiny-slw")).vocab_size == 50257  # builtin: GPT-2's
    explicit = load_config("tiny-slw", [f"data.path={bpe_dir}", "model.vocab_size=50257"])
    assert model_config(explicit).vocab_size == 50257
    with pytest.raises(DataError, match=f"vocabulary size {vocab} differs from the model's 50257"):
        open_data(explicit, progress=False)
    with pytest.raises(ConfigError, match="model.vocab_size: expected an integer or auto"):
        load_config("tiny-slw", ["model.vocab_size=big"])


@pytest.mark.slow
@needs_transformers
def test_a_bpe_corpus_trains_evaluates_and_exports(bpe_dir, tmp_path, capsys):
    from transformers import AutoTokenizer, GPT2LMHeadModel

    tok = load_tokenizer(bpe_dir)
    run = tmp_path / "run"
    code, err = cli(
        capsys,
        "train",
        "tiny-slw",
        f"data.path={bpe_dir}",
        f"run.dir={run}",
        "train.max_steps=4",
        "train.num_threads=1",
    )
    assert code == 0, err
    saved = open_saved(run)
    assert saved.gpt.vocab_size == tok.vocab_size  # the checkpoint records the resolved vocabulary
    assert json.loads((saved.checkpoint / "state.json").read_text())["model"]["vocab_size"] == tok.vocab_size

    wiki = tmp_path / "wiki.test.tokens"
    wiki.write_text(" = A river = \n" + "".join(f" {t} \n" for t in synthetic_text(9, n_docs=3, words_per_doc=200)))
    lambada = tmp_path / "lambada.jsonl"
    lambada.write_text("".join(json.dumps({"text": t[:300]}) + "\n" for t in synthetic_text(8, n_docs=4)))
    out_json = tmp_path / "eval.json"
    code, err = cli(
        capsys,
        "eval",
        run,
        "--tasks",
        "val,wikitext,lambada",
        "--wikitext",
        wiki,
        "--lambada",
        lambada,
        "--json",
        out_json,
    )
    assert code == 0, err
    doc = json.loads(out_json.read_text())
    results = doc["results"]
    w = results["wikitext"]
    assert w["settings"]["tokenizer"] == "bpe:512" and w["settings"]["tokenizer_sha256"] == tok.sha256()
    from seqwarm.eval.texts import wikitext_detokenize

    assert w["counts"]["tokens"] == len(tok.encode_ordinary(wikitext_detokenize(wiki.read_text())))
    assert np.isfinite(w["metrics"]["ppl"]) and np.isfinite(results["val"]["metrics"]["ppl"])
    assert results["lambada"]["settings"]["tokenizer"] == "bpe:512"

    hf_dir = tmp_path / "hf"
    code, err = cli(capsys, "export", run, "--hf", hf_dir)
    assert code == 0, err
    hf_tok = AutoTokenizer.from_pretrained(hf_dir, local_files_only=True)
    text = f"The river and the mountain, {EOT} a winter story: ünïcode 42."
    assert hf_tok(text)["input_ids"] == tok.encode(text)
    assert hf_tok(text.replace(EOT, ""))["input_ids"] == tok.encode_ordinary(text.replace(EOT, ""))
    config = json.loads((hf_dir / "config.json").read_text())
    assert config["vocab_size"] == tok.vocab_size
    assert config["eos_token_id"] == config["bos_token_id"] == tok.eot_id == hf_tok.eos_token_id
    hf = GPT2LMHeadModel.from_pretrained(hf_dir, local_files_only=True).eval()
    ids = torch.tensor([tok.encode_ordinary(text)[:32]])
    with torch.no_grad():
        assert (saved.model()(ids) - hf(ids).logits).abs().max().item() <= 1e-4

    # import-hf takes GPT-2-vocabulary models only, and says so.
    capsys.readouterr()  # transformers' loading bar above
    code, err = cli(capsys, "import-hf", hf_dir, "--out", tmp_path / "imported", "tiny-slw", f"data.path={bpe_dir}")
    assert code == 2 and "import-hf takes GPT-2-vocabulary models only" in err and err.count("\n") == 1


def test_eval_of_a_bpe_checkpoint_without_its_data_says_what_to_give(tmp_path, bpe_dir):
    from dataclasses import asdict

    from safetensors.torch import save_file

    from seqwarm.eval.runner import plan_eval
    from seqwarm.model import GPT, GPTConfig

    vocab = load_tokenizer(bpe_dir).vocab_size
    model = GPT(GPTConfig(n_layer=1, n_head=1, d_model=16, max_seqlen=32, vocab_size=vocab))
    ck = tmp_path / "step-00000001"
    ck.mkdir()
    save_file(model.state_dict(), ck / "model.safetensors")
    (ck / "state.json").write_text(json.dumps({"model": asdict(model.cfg), "clock": {"step": 1, "tokens": 1}}))
    wiki = tmp_path / "w.txt"
    wiki.write_text(" = T = \n the river and the king . \n")
    with pytest.raises(DataError, match="give --data DIR"):
        plan_eval(ck, ["wikitext"], wikitext=str(wiki), progress=False)
    plan = plan_eval(ck, ["wikitext"], wikitext=str(wiki), data=str(bpe_dir), progress=False)
    assert plan.tokenizer.name == "bpe:512"


# --- bad inputs ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "spec,message",
    [
        ("bpe:0", "--tokenizer bpe:0: bpe:N needs a vocabulary N >= 257"),
        ("bpe:abc", "--tokenizer bpe:abc: bpe:N needs a vocabulary N >= 257"),
        ("bpe:", "--tokenizer bpe:: bpe:N needs a vocabulary N >= 257"),
        ("nope.json", "--tokenizer nope.json: not gpt2, bpe:N, or an existing tokenizer.json file"),
        ("garbage", "not a valid tokenizer.json"),
        ("no-eot", "has no <|endoftext|> token"),
    ],
)
def test_bad_tokenizers_are_one_line_errors_before_any_work(spec, message, src, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("garbage").write_text("{not json")
    if spec == "no-eot":
        tok = read_tokenizer_file(big_vocab_tokenizer(tmp_path / "eot.json", n_filler=10))
        Path("no-eot").write_text(tok.json.replace(EOT, "<|end|>"))
    out = tmp_path / "out"
    code, err = cli(capsys, "prepare", src, "--out", out, "--tokenizer", spec)
    assert code == 2 and message in err and err.count("\n") == 1, err
    assert not out.exists()


def test_builtin_names():
    assert builtin_tokenizer("builtin") == "gpt2" and builtin_tokenizer("builtin-bpe1024") == "bpe:1024"
    for other in ("builtin-bpe", "builtin-bpe0", "builtin-bpe01", "./builtin", "data/builtin", "builtin-gpt2"):
        assert builtin_tokenizer(other) is None, other
    assert builtin_name("gpt2") == "builtin" and builtin_name("bpe:1024") == "builtin-bpe1024"
    assert builtin_name("my/tokenizer.json") is None


def test_builtin_bpe_is_prepared_into_the_cache_under_its_name(tmp_path, monkeypatch):
    from seqwarm.data.builtin import corpus

    monkeypatch.setenv("SEQWARM_CACHE", str(tmp_path))
    cfg = load_config("tiny-slw", ["data.path=builtin-bpe700"])
    assert model_config(cfg).vocab_size == 700  # known before the corpus is prepared
    calls = []
    monkeypatch.setattr(corpus, "prepare_builtin", lambda out, **kw: calls.append((out, kw["tokenizer"])))
    assert corpus.ensure_builtin(progress=False, name="builtin-bpe700") == tmp_path / "data" / "builtin-bpe700"
    assert calls == [(tmp_path / "data" / "builtin-bpe700", "bpe:700")]


def test_builtin_cache_takes_no_tokenizer_json(capsys, bpe_dir):
    code, err = cli(capsys, "prepare", "--tokenizer", str(bpe_dir / "tokenizer.json"))
    assert code == 2 and "give --out DIR" in err and err.count("\n") == 1


def test_a_changed_tokenizer_json_is_refused(bpe_dir, tmp_path):
    changed = tmp_path / "changed"
    shutil.copytree(bpe_dir, changed)
    text = (changed / "tokenizer.json").read_text()
    (changed / "tokenizer.json").write_text(text.replace('"Ġthe"', '"Ġthf"', 1))
    with pytest.raises(DataError, match="tokenizer.json: sha256 does not match meta.json"):
        TokenData(changed)
    with pytest.raises(DataError, match="tokenizer.json: sha256 does not match meta.json"):
        load_tokenizer(changed)
    (changed / "tokenizer.json").unlink()
    with pytest.raises(DataError, match="tokenizer.json: tokenizer file is missing"):
        TokenData(changed)
