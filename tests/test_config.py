import json
from pathlib import Path

import numpy as np
import pytest

from seqwarm.cli import main
from seqwarm.config import PACKAGED_CONFIGS, field_docs, load_config
from seqwarm.errors import ConfigError
from seqwarm.sweep.grid import build_cells, is_sweep_file, load_sweep_file

SHIPPED = sorted(PACKAGED_CONFIGS.glob("*.yaml"))


def flat(cfg) -> dict:
    return {f"{section}.{name}": value for section, fields in cfg.to_dict().items() for name, value in fields.items()}


def test_configs_dir_is_the_packaged_one():
    assert (Path(__file__).parent.parent / "configs").resolve() == PACKAGED_CONFIGS.resolve()
    assert len(SHIPPED) >= 8


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_every_shipped_config_loads(path, tmp_path):
    if is_sweep_file(path):  # a grid: every run's config must build
        sweep = load_sweep_file(path)
        cells = build_cells(sweep, tmp_path)
        assert len(cells) == np.prod([len(a.values) for a in sweep.axes])
        configs = [c.cfg for c in cells]
    else:
        configs = [load_config(path)]
    for cfg in configs:
        # what config.yaml stores reads back as the same config (every field's type survives YAML)
        assert load_config(None, [f"{k}={json.dumps(v)}" for k, v in flat(cfg).items()]) == cfg


def test_proxy_study_compares_methods_at_equal_tokens_and_shares_its_runs():
    grid, controls, duration, tails = (
        build_cells(load_sweep_file(PACKAGED_CONFIGS / f"proxy-{name}.yaml"), Path(f"unused-{name}"))
        for name in ("grid", "controls", "duration", "tails")
    )
    kinds = {c.coords["method"]: c.cfg.curriculum.kind for c in controls}
    assert kinds == {
        "baseline": "none",
        "slw": "slw",
        "baseline-long-warmup": "none",
        "shortformer": "shortformer",
        "bsz-warmup": "bsz_warmup",
    }
    cells = grid + controls + duration + tails
    assert len({c.cfg.train.max_tokens for c in cells}) == 1  # equal tokens for every method
    assert len({c.cfg.train.lr for c in grid}) >= 4 and len({c.cfg.run.seed for c in grid}) >= 5  # docs/PROXY.md
    long = next(c.cfg for c in controls if c.coords["method"] == "baseline-long-warmup")
    slw = next(c.cfg for c in controls if c.coords["method"] == "slw")
    assert long.train.warmup_steps == slw.curriculum.duration  # the control's warmup lasts as long as SLW's
    # A run shared by two sweeps (same directory) is the same run: same name, same config.
    by_dir = {}
    for c in cells:
        by_dir.setdefault(c.dir, []).append(c.cfg)
    shared = {d: cfgs for d, cfgs in by_dir.items() if len(cfgs) > 1}
    # controls: baseline and slw x 5 seeds at 3e-2; tails: baseline and slw x 5 seeds x 2 LRs, which
    # include the duration grid's baseline and T=60 runs at 1e-2
    assert len(shared) == 10 + 20
    assert {c.cfg.curriculum.drop_tail for c in tails if c.coords["method"] == "slw-keep-tails"} == {False}
    assert all(cfg == cfgs[0] for cfgs in shared.values() for cfg in cfgs)


def test_paper_configs_match_the_paper():
    base = load_config(PACKAGED_CONFIGS / "gpt2-117m-bsz4k-baseline.yaml")
    slw = load_config(PACKAGED_CONFIGS / "gpt2-117m-bsz4k-slw.yaml")
    assert (base.model.gpt().n_layer, base.model.gpt().d_model, base.model.gpt().n_head) == (12, 768, 12)
    assert base.train.max_tokens == slw.train.max_tokens == 37_500 * 4096 * 1024
    assert (slw.curriculum.seqlen_start, slw.curriculum.duration) == (8, 30_000)
    # SLW changes only the curriculum (Section 5.1); everything else is shared
    assert base.train == slw.train and base.model == slw.model and base.eval == slw.eval


def test_overrides_and_type_coercion():
    cfg = load_config(
        PACKAGED_CONFIGS / "tiny-slw.yaml",
        ["train.lr=6e-4", "train.max_tokens=1.5e6", "curriculum.duration=200", "curriculum.drop_tail=false"],
    )
    assert cfg.train.lr == 6e-4 and cfg.train.max_tokens == 1_500_000 and isinstance(cfg.train.max_tokens, int)
    assert cfg.curriculum.duration == 200 and cfg.curriculum.drop_tail is False


def test_every_field_has_a_docstring():
    docs = field_docs()
    from seqwarm.config import _all_keys

    assert set(_all_keys()) == set(docs)
    assert all(docs.values())


BAD = [
    (["curriculum.seqlen_start=128", "curriculum.seqlen_end=64"], "curriculum.seqlen_start"),
    (["curriculum.duration=0"], "curriculum.duration"),
    (["curriculum.pacing=cubic"], "curriculum.pacing"),
    (["curriculum.kind=slow"], "curriculum.kind"),
    (["curriculum.multiple_of=16"], "curriculum.multiple_of"),
    (["curriculum.multiple_of=0"], "curriculum.multiple_of"),
    (["curriculum.multiple_of=2.5"], "curriculum.multiple_of"),
    (["curriculum.seqlen_end=256"], "curriculum.seqlen_end"),
    (["train.micro_batch_size=3"], "train.micro_batch_size"),
    (["train.lr=fast"], "train.lr"),
    (["train.compile=maybe"], "train.compile"),
    (["train.max_tokns=5"], "did you mean train.max_tokens"),
    (["trian.lr=1"], "did you mean train"),
    (["curriculum.pacing=discrete"], "curriculum.stages"),
    (["train.warmup_steps=3", "train.warmup_tokens=3"], "warmup_tokens"),
    (["curriculum.kind=bsz_warmup", "curriculum.batch_warmup_tokens=100"], "curriculum.batch_size_start"),
    (["curriculum.kind=bsz_warmup", "curriculum.batch_size_start=4"], "curriculum.batch_warmup_tokens"),
    (
        ["curriculum.kind=bsz_warmup", "curriculum.batch_size_start=2", "curriculum.batch_warmup_tokens=9"],
        "lie between",
    ),
    (
        ["curriculum.kind=bsz_warmup", "curriculum.batch_size_start=16", "curriculum.batch_warmup_tokens=9"],
        "lie between",
    ),
    (["curriculum.kind=shortformer", "curriculum.duration=null"], "Shortformer's first-stage steps"),
]


@pytest.mark.parametrize("overrides,field", BAD, ids=[b[1] for b in BAD])
def test_bad_config_values_name_the_field(overrides, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        load_config(PACKAGED_CONFIGS / "tiny-slw.yaml", overrides)


def test_unreadable_yaml(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: {lr: [\n")
    with pytest.raises(ConfigError, match="bad.yaml: not valid YAML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.yaml")


def cli(capsys, *argv):
    code = main(list(argv))
    return code, capsys.readouterr().err


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["curriculum.seqlen_start=128"], "curriculum.seqlen_start (128) must be <= curriculum.seqlen_end (64)"),
        (["train.micro_batch_size=3"], "train.micro_batch_size (3) must divide train.global_batch_size (8)"),
        (["train.lrr=1"], "train.lrr: unknown config key (did you mean train.lr?)"),
        (["train.max_steps=ten"], "train.max_steps: expected an integer, got 'ten'"),
    ],
)
def test_cli_bad_input_is_one_line_exit_2_and_writes_nothing(capsys, tmp_path, overrides, message):
    run = tmp_path / "run"
    code, err = cli(capsys, "train", "tiny-slw", f"run.dir={run}", *overrides)
    assert code == 2
    assert err.strip() == f"seqwarm: error: {message}"
    assert not run.exists()


def test_cli_data_errors(capsys, tmp_path, corpus_dir):
    import json
    import shutil

    run = tmp_path / "run"
    code, err = cli(capsys, "train", "tiny-slw", f"run.dir={run}", f"data.path={tmp_path / 'nope'}")
    assert code == 2 and "does not exist" in err and err.count("\n") == 1

    empty = tmp_path / "empty"
    empty.mkdir()
    code, err = cli(capsys, "train", "tiny-slw", f"run.dir={run}", f"data.path={empty}")
    assert code == 2 and "meta.json is missing" in err

    other_vocab = tmp_path / "vocab"
    shutil.copytree(corpus_dir, other_vocab)
    meta = json.loads((other_vocab / "meta.json").read_text())
    (other_vocab / "meta.json").write_text(json.dumps({**meta, "vocab_size": 32000}))
    code, err = cli(capsys, "train", "tiny-slw", f"run.dir={run}", f"data.path={other_vocab}")
    assert code == 2 and "vocabulary size 32000 differs from the model's 50257" in err

    code, err = cli(
        capsys,
        "train",
        "tiny-slw",
        f"run.dir={run}",
        f"data.path={corpus_dir}",
        "model.max_seqlen=4096",
        "curriculum.seqlen_end=4096",
    )
    assert code == 2 and "shorter than one sequence" in err

    corrupt = tmp_path / "corrupt"
    shutil.copytree(corpus_dir, corrupt)
    data = bytearray((corrupt / "train-000000.bin").read_bytes())
    data[100] ^= 0xFF
    (corrupt / "train-000000.bin").write_bytes(bytes(data))
    code, err = cli(capsys, "train", "tiny-slw", f"run.dir={run}", f"data.path={corrupt}")
    assert code == 2 and "train-000000.bin: sha256 does not match" in err
    assert not run.exists()


def test_cli_prepare_errors(capsys, tmp_path):
    (tmp_path / "empty.txt").write_text("")
    code, err = cli(capsys, "prepare", str(tmp_path / "empty.txt"), "--out", str(tmp_path / "out"))
    assert code == 2 and "no text found" in err
    (tmp_path / "bad.jsonl").write_text('{"text": "fine"}\n{"txt": "oops"}\n')
    code, err = cli(capsys, "prepare", str(tmp_path / "bad.jsonl"), "--out", str(tmp_path / "out"))
    assert code == 2 and "bad.jsonl:2: expected a JSON object with a 'text' field" in err
    code, err = cli(capsys, "prepare", str(tmp_path / "missing"), "--out", str(tmp_path / "out"))
    assert code == 2 and "no such file or directory" in err


def test_plan_cli_jsonl(capsys):
    import json

    assert main(["plan", "tiny-slw", "--jsonl"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    rows, summary = lines[:-1], lines[-1]["summary"]
    # seqlen_t = 8 + 56 * t / 8 rounded down to a multiple of 8: 8, 8 (15), 22 -> 16, 29 -> 24, ...
    assert [r["seqlen"] for r in rows[:5]] == [8, 8, 16, 24, 36 - 36 % 8]
    assert rows[-1]["seqlen"] == 64
    assert summary["steps"] == len(rows) and summary["tokens"] == rows[-1]["tokens"] >= 8000


@pytest.mark.slow
def test_plan_reproduces_the_papers_step_counts(capsys):
    """Table 7: at batch 4K, the baseline takes 37.5K steps and SLW 30K takes 52.5K steps to 157B tokens."""
    assert main(["plan", "gpt2-117m-bsz4k-baseline", "--every", "100000"]) == 0
    assert "total: 37,500 steps" in capsys.readouterr().out
    assert main(["plan", "gpt2-117m-bsz4k-slw", "--every", "100000"]) == 0
    assert "total: 52,501 steps" in capsys.readouterr().out  # the paper rounds to 52.5K


@pytest.mark.parametrize(
    "overrides, message",
    [
        # Section 5.1: every length a multiple of 8; a start between two is refused, not rounded.
        (
            ["curriculum.seqlen_start=12"],
            r"curriculum.seqlen_start \(12\) must be a multiple of curriculum.multiple_of \(8\): use 8 or 16",
        ),
        (["curriculum.kind=shortformer", "curriculum.seqlen_start=20"], "use 16 or 24"),
        # A stage trains at exactly its length: no silent rounding or clamping up to seqlen_start.
        (["curriculum.pacing=discrete", "curriculum.stages=[[3, 12], [6, 56]]"], "stage length 12 must be a multiple"),
        (
            ["curriculum.pacing=discrete", "curriculum.seqlen_start=32", "curriculum.stages=[[3, 16]]"],
            ">= curriculum.seqlen_start",
        ),
        (["curriculum.pacing=discrete", "curriculum.stages=[[3, 128]]"], "exceeds curriculum.seqlen_end"),
        # bsz_warmup grows in whole micro-batches: a start of 6 with micro-batches of 4 would train 4.
        (
            ["curriculum.kind=bsz_warmup", "curriculum.batch_size_start=6", "curriculum.batch_warmup_tokens=1000"],
            r"curriculum.batch_size_start \(6\) must be a multiple of train.micro_batch_size \(4\)",
        ),
    ],
)
def test_lengths_and_batches_off_their_multiples_are_refused(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(PACKAGED_CONFIGS / "tiny-slw.yaml", overrides)


def test_plan_footer_counts_steps_as_its_rows_do(capsys):
    assert main(["plan", "tiny-slw", "--every", "1"]) == 0
    out = capsys.readouterr().out.splitlines()
    rows = [line.split() for line in out[1:-1]]
    first_full = next(int(r[0]) for r in rows if int(r[1]) == 64)
    assert first_full == 9  # row 8 trains at 56, row 9 at 64
    assert out[-1].endswith(f"full length from step {first_full}")


# --- non-finite and out-of-range values (issue 15, point 6) --------------------------------------

BASE = ["train.max_tokens=1000"]


@pytest.mark.parametrize(
    "override, field",
    [
        ("train.lr=.inf", "train.lr"),
        ("train.lr=.nan", "train.lr"),
        ("train.lr=inf", "train.lr"),  # a string YAML does not read as a float; coerce does
        ("train.min_lr=-.inf", "train.min_lr"),
        ("train.grad_clip=.nan", "train.grad_clip"),
        ("train.grad_clip=.inf", "train.grad_clip"),
        ("train.adam_eps=.nan", "train.adam_eps"),
        ("train.adam_beta1=.nan", "train.adam_beta1"),
        ("train.weight_decay=.nan", "train.weight_decay"),
        ("train.weight_decay=-1", "train.weight_decay"),
        ("model.dropout=.nan", "model.dropout"),
        ("curriculum.root_degree=.nan", "curriculum.root_degree"),
        ("curriculum.root_degree=.inf", "curriculum.root_degree"),
        ("run.seed=1180591620717411303424", "run.seed"),  # 2**70
        ("run.seed=4294967296", "run.seed"),  # 2**32
        ("run.seed=-1", "run.seed"),
        ("train.max_tokens=.inf", "train.max_tokens"),
        ("train.max_steps=1e400", "train.max_steps"),
    ],
)
def test_non_finite_and_out_of_range_values_are_one_line_errors_naming_the_field(override, field, capsys):
    extra = ["curriculum.kind=slw", "curriculum.pacing=root", "curriculum.duration=5"] if "root" in override else []
    with pytest.raises(ConfigError) as e:
        load_config(None, [*BASE, *extra, override])
    assert str(e.value).startswith(f"{field}:") and "\n" not in str(e.value)
    assert main(["plan", *BASE, *extra, override]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and field in err and "Traceback" not in err


def test_the_edges_of_the_ranges_are_accepted():
    cfg = load_config(None, [*BASE, "run.seed=4294967295", "train.weight_decay=0", "train.grad_clip=0"])
    assert (cfg.run.seed, cfg.train.weight_decay, cfg.train.grad_clip) == (2**32 - 1, 0.0, 0.0)
    assert load_config(None, [*BASE, "run.seed=0"]).run.seed == 0
