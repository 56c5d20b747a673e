"""`seqwarm eval`: the scorers against toy models whose probabilities are known, and the command on a tiny run."""

import json
import math
from dataclasses import asdict
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from seqwarm.cli import main
from seqwarm.config import load_config
from seqwarm.eval.harness import harness_results
from seqwarm.eval.results import (
    EVAL_FILE,
    FORMAT,
    TaskResult,
    default_json_path,
    format_counts,
    format_table,
    format_value,
    metric_label,
    read_eval,
    results_json,
    write_eval,
)
from seqwarm.eval.scoring import lambada_hits, sliding_windows, window_nll
from seqwarm.eval.texts import lambada_split, lambada_style_items, lambada_tokens, wikitext_detokenize, word_count
from seqwarm.lifecycle import train
from seqwarm.metrics import read_metrics
from seqwarm.report import write_report
from seqwarm.tokenizer import gpt2_encoding

CPU = torch.device("cpu")


class PositionLM(torch.nn.Module):
    """A toy with the model interface (`hidden`, `output_weight`, `cfg`) whose next-token distribution
    depends only on the position p in the window: log-probabilities `logp[:, p]`, context ignored."""

    def __init__(self, logp: torch.Tensor):
        super().__init__()
        vocab, window = logp.shape
        self.cfg = SimpleNamespace(vocab_size=vocab, max_seqlen=window)
        self.wte = torch.nn.Embedding(vocab, window)
        self.wte.weight.data = logp.clone()

    def output_weight(self) -> torch.Tensor:
        return self.wte.weight

    def hidden(self, idx: torch.Tensor) -> torch.Tensor:
        B, T = idx.shape
        return torch.eye(self.cfg.max_seqlen)[:T].expand(B, T, -1)  # logits at p = logp[:, p]


def test_sliding_windows_score_every_token_once_with_megatron_context():
    # 10 tokens, a window of 4, stride 2: the first window scores all 4 targets, then 2 new ones
    # each, and the last window ends at the last token.
    assert sliding_windows(10, 4, 2) == [(0, 4, 4), (2, 6, 2), (4, 8, 2), (5, 9, 1)]
    for n, window, stride in [(2, 4, 1), (5, 8, 3), (100, 16, 16), (101, 16, 5), (1000, 32, 7)]:
        wins = sliding_windows(n, window, stride)
        scored = [t for s, e, k in wins for t in range(e - k + 1, e + 1)]  # target indices
        assert scored == list(range(1, n))  # each token after the first, once, in order
        assert all(0 <= s and e - s == min(window, n - 1) for s, e, _ in wins)
        for s, e, k in wins[1:]:
            assert k <= stride and (e - k + 1) - s >= window - stride  # left context of each scored token


def test_wikitext_scorer_gives_the_hand_computed_perplexity():
    # P(token 0) at window positions 0..3 is 1/2, 1/4, 1/8, 1/16: -log p = (p + 1) ln 2.
    vocab, q = 5, torch.tensor([1 / 2, 1 / 4, 1 / 8, 1 / 16], dtype=torch.float64)
    logp = torch.empty(vocab, 4, dtype=torch.float64)
    logp[0], logp[1:] = q.log(), ((1 - q) / (vocab - 1)).log()
    model = PositionLM(logp.float())
    tokens = np.zeros(10, dtype=np.int64)
    # Windows (0,4) scores positions 0-3, (2,6) and (4,8) positions 2-3, (5,9) position 3:
    # (1 + 2 + 3 + 4) + 2 * (3 + 4) + 4 = 28 halvings over 9 scored tokens.
    for batch_size in (1, 3):
        total, count = window_nll(model, tokens, stride=2, batch_size=batch_size, device=CPU, progress=False, desc="t")
        assert count == 9
        assert total == pytest.approx(28 * math.log(2), rel=1e-6)
        assert math.exp(total / count) == pytest.approx(2 ** (28 / 9), rel=1e-6)
    # Without overlap (stride = window) tokens 5-8 are scored at positions 0-3 of a fresh window:
    # (0,4) and (4,8) cost 1 + 2 + 3 + 4 each, the end-aligned (5,9) scores position 3 only.
    total, count = window_nll(model, tokens, stride=4, batch_size=2, device=CPU, progress=False, desc="t")
    assert (count, total) == (9, pytest.approx((10 + 10 + 4) * math.log(2), rel=1e-6))


def test_wikitext_detokenizer_and_word_count():
    raw = ' = Valkyria = \n \n Senjō no Valkyria 3 : Unrecorded Chronicles is a 3 @,@ 000 @-@ year ( long ) game ; it \'s " fine " . \n'
    assert wikitext_detokenize(raw) == (
        ' = Valkyria =\n\nSenjō no Valkyria 3: Unrecorded Chronicles is a 3,000-year (long) game; it\'s "fine".\n'
    )
    assert wikitext_detokenize("x\n = = Legacy = = \n") == "x\n== Legacy ==\n"
    # 28 words and 2 line ends inside the stripped text: what Megatron-LM's split(" ") counts.
    assert word_count(raw) == 30 == len(raw.strip().split(" "))
    assert word_count("Plain prose, two lines.\n\nAnd more.") == 6 + 2


def test_lambada_split_is_megatrons_strict_split():
    assert lambada_split("He looked at the  dog") == ("He looked at the", "dog")
    context, target = lambada_tokens("She smiled at the Cheshire")
    enc = gpt2_encoding()
    assert enc.decode(context) == "She smiled at the" and enc.decode(target) == " Cheshire"
    assert len(target) == 2  # a multi-token target word
    with pytest.raises(ValueError):
        lambada_split("alone")


def test_lambada_scorer_needs_every_token_of_the_word():
    # The argmax at window position p is token p.
    logp = torch.log_softmax(torch.eye(8) * 5.0, dim=0)
    model = PositionLM(logp)
    items = [
        ([7, 7], [2, 3]),  # targets predicted at positions 1, 2: argmax 1, 2 -> wrong first token
        ([7, 7], [1, 2]),  # both tokens right -> correct
        ([7, 7], [1, 5]),  # first right, second wrong -> not correct
        ([7, 7, 7], [2]),  # one-token word, right
        ([7], [0, 1, 2]),  # three tokens, all right
        ([7] * 10, [6, 7]),  # context longer than the window of 8: its last 7 tokens stay, positions 6, 7 predict
    ]
    positions = [range(min(len(c), 8 + 1 - len(w)) - 1, min(len(c), 8 + 1 - len(w)) - 1 + len(w)) for c, w in items]
    expected = -sum(logp[t, p].item() for (_, w), ps in zip(items, positions) for t, p in zip(w, ps))
    for batch_size in (1, 4, 6):
        hits, total, count = lambada_hits(model, items, batch_size=batch_size, device=CPU, progress=False, desc="t")
        assert hits == [False, True, False, True, True, True]
        assert count == 12
        assert total == pytest.approx(expected, rel=1e-5)


def test_lambada_style_items_end_on_a_sentence_final_word():
    ten = "one two three four five six seven eight nine"
    text = (
        f"{ten} apple. {ten} go. {ten} pear.\n\n"  # 'go' is too short to be a target
        f"{ten} plum! {ten} 'said the Rabbit.' {ten} a-hole? {ten} fig"  # no final punctuation: not a sentence end
    )
    items = lambada_style_items(text)
    # targets need 40 words of passage: plum (40 words), Rabbit, then 'hole' follows a hyphen.
    assert [lambada_split(i)[1] for i in items] == ["plum", "Rabbit"]
    assert items[0].endswith("nine plum") and len(items[0].split()) == 40
    assert items[1].endswith("'said the Rabbit") and len(items[1].split()) >= 40


# --- results: eval.json and the table, on plain data --------------------------------------------------

CHECKPOINT = {"path": "runs/r/checkpoints/step-00000010", "step": 10, "tokens": 4000}


def result(task: str, **metrics: float) -> TaskResult:
    return TaskResult(task=task, dataset=f"{task} data", metrics=metrics, counts={"tokens": 1234})


def test_results_merge_into_an_earlier_eval_of_the_same_checkpoint(tmp_path):
    first = results_json(CHECKPOINT, {"n_layer": 2}, "cpu", [result("val", ppl=5.0), result("test", ppl=6.0)])
    assert first["format"] == FORMAT and first["device"] == "cpu" and list(first["results"]) == ["val", "test"]
    assert first["results"]["val"] == asdict(result("val", ppl=5.0))

    # The same checkpoint again: new tasks are added, re-evaluated ones replaced, the rest kept.
    again = results_json(
        CHECKPOINT, {"n_layer": 2}, "cpu", [result("test", ppl=7.0), result("lambada", acc=0.5)], first
    )
    assert list(again["results"]) == ["val", "test", "lambada"]
    assert again["results"]["test"]["metrics"] == {"ppl": 7.0} and again["results"]["val"] == first["results"]["val"]
    assert first["results"]["test"]["metrics"] == {"ppl": 6.0}  # the earlier document is not modified

    # A newer checkpoint starts afresh.
    newer = results_json({**CHECKPOINT, "step": 20}, {"n_layer": 2}, "cpu", [result("lambada", acc=1.0)], again)
    assert list(newer["results"]) == ["lambada"]


def test_eval_json_round_trips_and_foreign_json_is_ignored(tmp_path):
    doc = results_json(CHECKPOINT, {}, "cpu", [result("val", ppl=5.0)])
    out = tmp_path / "new" / "dir" / EVAL_FILE
    write_eval(out, doc)  # creates the directory, as `--json OUT` may need
    assert read_eval(out) == doc and out.read_text().endswith("}\n")
    assert [p.name for p in out.parent.iterdir()] == [EVAL_FILE]  # no temporary file left
    (tmp_path / "other.json").write_text(json.dumps({"format": "something-else"}))
    (tmp_path / "broken.json").write_text("{")
    assert read_eval(tmp_path / "other.json") is None and read_eval(tmp_path / "broken.json") is None
    assert read_eval(tmp_path / "missing.json") is None


def test_default_json_path_keeps_a_checkpoints_results_with_it(tmp_path):
    checkpoint = tmp_path / "run" / "checkpoints" / "step-00000010"
    checkpoint.mkdir(parents=True)
    assert default_json_path(tmp_path / "run", checkpoint) == tmp_path / "run" / EVAL_FILE
    assert default_json_path(checkpoint, checkpoint) == checkpoint / EVAL_FILE


def test_format_table_one_row_per_metric_with_the_counts_once():
    wiki = TaskResult(
        "wikitext",
        "WikiText",
        {"ppl": 30748.25, "word_ppl": 182634.3712, "loss": 10.33361},
        {"tokens": 69, "scored_tokens": 68},
    )
    harness = TaskResult("lm-eval/piqa", "lm-evaluation-harness: piqa", {"acc": 0.5}, {"items": 4})
    lines = format_table([wiki, asdict(harness)]).split("\n")  # TaskResults or their stored dicts
    assert lines[0].split() == ["task", "dataset", "metric", "value", "n"] and set(lines[1]) == {"-", " "}
    assert lines[2].split("  ")[0] == "wikitext" and lines[2].endswith("69 tokens, 68 scored tokens")
    assert [line.split("  ")[0] for line in lines[3:5]] == ["", ""]  # task and dataset only on its first row
    values = [line[lines[0].index("value") - 5 : lines[0].index("value") + 5].strip() for line in lines[2:]]
    assert values == ["30,748.25", "182,634.37", "10.3336", "0.5000"]  # right-aligned in one column
    assert "perplexity per word (adjusted)" in lines[3]
    assert "accuracy (strict)" not in lines[5] and "  acc  " in lines[5]  # lm-eval's metrics keep their names
    assert metric_label("lambada", "acc") == "accuracy (strict)" and metric_label("lm-eval/x", "acc") == "acc"
    assert format_counts({"target_tokens": 1602, "items": 1400}) == "1,602 target tokens, 1,400 items"
    assert (format_value(99.99994), format_value(100.0), format_value(-0.5)) == ("99.9999", "100.00", "-0.5000")


def test_harness_results_keep_the_default_filters_metrics():
    output = {
        "results": {
            "piqa": {"alias": "piqa", "acc,none": 0.75, "acc_stderr,none": 0.1, "sample_len": 8, "flag": True},
            "arc": {"acc,none": 0.5},
        },
        "n-samples": {"piqa": {"original": 10, "effective": 8}},
    }
    piqa, arc = harness_results(output, version="0.4.13", limit=8, batch_size=2)
    assert (piqa.task, piqa.dataset) == ("lm-eval/piqa", "lm-evaluation-harness 0.4.13: piqa")
    assert piqa.metrics == {"acc": 0.75, "acc_stderr": 0.1} and piqa.counts == {"items": 8}
    assert piqa.settings == {"limit": 8, "batch_size": 2}
    assert arc.metrics == {"acc": 0.5} and arc.counts == {}  # no sample count reported


# --- the command on a tiny trained run -------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_run(corpus_dir, tmp_path_factory):
    """A tiny run whose training validation covers the whole val split (to compare with `eval val`)."""
    cfg = load_config(
        "tiny-slw",
        [
            f"data.path={corpus_dir}",
            f"run.dir={tmp_path_factory.mktemp('eval') / 'run'}",
            "train.num_threads=1",
            "train.max_tokens=3000",
            "eval.max_sequences=100000",
        ],
    )
    train(cfg, progress=False)
    return Path(cfg.run.dir)


@pytest.fixture(scope="module")
def texts(tmp_path_factory):
    d = tmp_path_factory.mktemp("texts")
    wiki = d / "wiki.test.tokens"
    wiki.write_text(" = Valkyria = \n \n The game 's story ( a war ) began in 1 @,@ 935 . \n" * 3)
    lambada = d / "lambada_test.jsonl"
    lambada.write_text(
        "".join(
            json.dumps({"text": t}) + "\n"
            for t in ["the river ran past the old mill", "she opened the letter and read the story"]
        )
    )
    return wiki, lambada


def test_default_tasks_leave_the_slow_wikitext_to_be_asked_for():
    from seqwarm.eval.runner import default_tasks

    assert default_tasks() == ["val", "test", "lambada"]
    assert default_tasks(wikitext="wiki.test.tokens") == ["val", "test", "wikitext", "lambada"]
    assert default_tasks(["hellaswag"]) == []


def test_eval_without_tasks_runs_the_quick_ones(tiny_run, texts, tmp_path):
    """`seqwarm eval RUN` as the README shows it: no WikiText windows unless a WikiText file is given (issue 27)."""
    wiki, lambada = texts
    common = ["eval", str(tiny_run), "--lambada", str(lambada), "--no-progress", "--json"]
    assert main([*common, str(tmp_path / "quick.json")]) == 0
    assert set(json.loads((tmp_path / "quick.json").read_text())["results"]) == {"val", "test", "lambada"}
    assert main([*common, str(tmp_path / "wiki.json"), "--wikitext", str(wiki), "--stride", "64"]) == 0
    assert set(json.loads((tmp_path / "wiki.json").read_text())["results"]) == {"val", "test", "wikitext", "lambada"}


def test_eval_command_writes_results_and_the_report_shows_them(tiny_run, texts, capsys, tmp_path):
    wiki, lambada = texts
    args = [
        "eval",
        str(tiny_run),
        "--wikitext",
        str(wiki),
        "--lambada",
        str(lambada),
        "--stride",
        "16",
        "--no-progress",
    ]
    assert main([*args, "--tasks", "val,wikitext"]) == 0
    assert main([*args, "--tasks", "lambada,test", "--batch-size", "2"]) == 0  # merged into the same file
    out = capsys.readouterr().out
    assert "accuracy (strict)" in out and "perplexity per word (adjusted)" in out
    doc = json.loads((tiny_run / EVAL_FILE).read_text())
    assert set(doc["results"]) == {"val", "test", "wikitext", "lambada"}
    summary = json.loads((tiny_run / "summary.json").read_text())
    assert doc["checkpoint"]["step"] == summary["steps"] and doc["checkpoint"]["tokens"] == summary["tokens"]

    # val: the same number the trainer's own validation computed, by a separate code path
    last_eval = [r for r in read_metrics(tiny_run / "metrics.jsonl") if "val/loss" in r][-1]
    val = doc["results"]["val"]
    assert val["metrics"]["loss"] == pytest.approx(last_eval["val/loss"], rel=1e-4)
    assert val["counts"]["tokens"] % 64 == 0 and val["settings"]["seqlen"] == 64

    w = doc["results"]["wikitext"]
    n_tokens = len(gpt2_encoding().encode_ordinary(wikitext_detokenize(wiki.read_text())))
    assert w["counts"] == {"tokens": n_tokens, "scored_tokens": n_tokens - 1, "words": word_count(wiki.read_text())}
    loss = w["metrics"]["loss"]
    assert w["metrics"]["word_ppl"] == pytest.approx(math.exp(loss * (n_tokens - 1) / (w["counts"]["words"] - 1)))
    assert w["settings"] == {"window": 128, "stride": 16, "detokenized": True}
    import hashlib

    assert w["sha256"] == hashlib.sha256(wiki.read_bytes()).hexdigest() and w["source"] == str(wiki)

    lam = doc["results"]["lambada"]
    assert lam["dataset"] == "LAMBADA: lambada_test.jsonl" and lam["counts"]["items"] == 2
    assert lam["metrics"]["acc"] in (0.0, 0.5, 1.0)

    report = (write_report([tiny_run], tmp_path / "report")).read_text()
    assert "## Zero-shot evaluation" in report and "perplexity per word (adjusted)" in report
    assert (tmp_path / "report" / "zeroshot.csv").read_text().count("\n") == 1 + 2 + 2 + 3 + 2


def test_eval_checkpoint_dir_and_json_option(tiny_run, texts, tmp_path):
    checkpoint = sorted((tiny_run / "checkpoints").iterdir())[-1]
    out = tmp_path / "r.json"
    assert (
        main(
            [
                "eval",
                str(checkpoint),
                "--tasks",
                "lambada",
                "--lambada",
                str(texts[1]),
                "--json",
                str(out),
                "--no-progress",
            ]
        )
        == 0
    )
    assert json.loads(out.read_text())["checkpoint"]["path"] == str(checkpoint)
    assert main(["eval", str(checkpoint), "--tasks", "lambada", "--lambada", str(texts[1]), "--no-progress"]) == 0
    assert (checkpoint / EVAL_FILE).exists()  # a checkpoint's results stay with it, not in the run's eval.json


@pytest.mark.parametrize(
    "args, message",
    [
        (["eval", "{tmp}/nowhere"], "no such run or checkpoint directory"),
        (["eval", "{tmp}/hfdir"], "seqwarm import-hf"),
        (["eval", "{run}", "--tasks", "val,hellaswag"], "--tasks: unknown task hellaswag"),
        (["eval", "{run}", "--tasks", "wikitext", "--stride", "0"], "--stride: must be between 1 and"),
        pytest.param(
            ["eval", "{run}", "--tasks", "val", "--device", "cuda"],
            "--device: cuda requested but no CUDA device is available",
            marks=pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA"),
        ),
        (
            ["eval", "{run}", "--tasks", "lambada", "--lambada", "{tmp}/missing.jsonl"],
            "--lambada: {tmp}/missing.jsonl: no such file",
        ),
        (
            ["eval", "{run}", "--tasks", "lambada", "--lambada", "{tmp}/bad.jsonl"],
            "bad.jsonl:1: expected a JSON object",
        ),
    ],
)
def test_eval_refuses_bad_input_in_one_line(tiny_run, tmp_path, capsys, args, message):
    (tmp_path / "hfdir").mkdir()
    (tmp_path / "hfdir" / "config.json").write_text("{}")
    (tmp_path / "bad.jsonl").write_text("not json\n")
    before = (tiny_run / EVAL_FILE).read_text() if (tiny_run / EVAL_FILE).exists() else None
    fill = lambda a: a.format(tmp=tmp_path, run=tiny_run)  # noqa: E731
    assert main([fill(a) for a in args] + ["--no-progress"]) == 2
    err = capsys.readouterr().err
    assert fill(message) in err and err.count("\n") == 1
    after = (tiny_run / EVAL_FILE).read_text() if (tiny_run / EVAL_FILE).exists() else None
    assert after == before  # nothing evaluated, nothing written
