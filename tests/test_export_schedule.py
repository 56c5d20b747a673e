"""`seqwarm export-schedule`: each framework's settings for shipped configs, the frameworks' length rules
against hand-computed cases, the `--table` ranges, and the CLI's one-line errors."""

import json
import shutil
import subprocess
import sys
import types

import pytest
import yaml

from seqwarm import export_schedule as es
from seqwarm.cli import main
from seqwarm.config import load_config
from seqwarm.curriculum import SeqlenSchedule
from seqwarm.errors import ConfigError
from seqwarm.plan import plan_steps


def metric_of(block: dict) -> dict:
    return block["data_efficiency"]["data_sampling"]["curriculum_learning"]["curriculum_metrics"]["seqlen_truncate"]


# --- the frameworks' length rules, by hand -------------------------------------------------------------


def test_deepspeed_fixed_linear_by_hand():
    kw = dict(min_difficulty=8, max_difficulty=64, total_curriculum_step=8, difficulty_step=8)
    # t = 1: floor(8 + 56 / 8) = 15 -> 8; t = 2: 22 -> 16; t = 8: 64.
    assert [es.deepspeed_fixed_root(t, **kw) for t in (1, 2, 8, 9)] == [8, 16, 64, 64]
    # A max that is not a multiple of the step: 60 -> 56 at t = T; the unclamped 66.5 at t = 9 floors to 64,
    # which the clamp brings to 60.
    kw60 = kw | dict(max_difficulty=60)
    assert [es.deepspeed_fixed_root(t, **kw60) for t in (8, 9)] == [56, 60]


def test_deepspeed_floor_at_min_is_the_0_19_8_change():
    kw = dict(min_difficulty=8, max_difficulty=64, total_curriculum_step=100, difficulty_step=16)
    # floor(8.56) = 8, less 8 mod 16 = 0: a zero length before 0.19.8, the first multiple >= 8 (16) since.
    assert es.deepspeed_fixed_root(1, **kw, floor_at_min=False) == 0
    assert es.deepspeed_fixed_root(1, **kw) == 16


def test_deepspeed_fixed_root_by_hand():
    kw = dict(min_difficulty=8, max_difficulty=1032, total_curriculum_step=100, difficulty_step=8, root_degree=2.0)
    assert es.deepspeed_fixed_root(25, **kw) == 520  # 8 + 1024 * sqrt(0.25) = 520, a multiple of 8


def test_deepspeed_discrete_and_the_update_stop():
    kw = dict(difficulty=[16, 32, 64], max_step=[5, 10])
    assert [es.deepspeed_fixed_discrete(t, **kw) for t in (1, 5, 6, 10, 11)] == [16, 16, 32, 32, 64]
    # update_difficulty stops once max_difficulty is reached: a later, shorter stage is never used.
    shrinking = {
        "min_difficulty": 32,
        "max_difficulty": 64,
        "schedule_type": "fixed_discrete",
        "schedule_config": {"difficulty": [64, 32, 64], "max_step": [2, 4]},
    }
    assert es.deepspeed_lengths(shrinking, 6) == [64] * 6


def test_composer_staircase_by_hand():
    kw = dict(min_seq_length=8, max_seq_length=64, step_size=8, warmup_batches=20)
    # K = 56 // 8 = 7 increments, one every 20 // 7 = 2 batches: full length at batch 14, not 20.
    assert [es.composer_seqlen(b, **kw) for b in (0, 1, 2, 13, 14, 100)] == [8, 8, 16, 56, 64, 64]
    with pytest.raises(ConfigError, match="curriculum.duration"):
        es.composer_seqlen(0, **kw | dict(warmup_batches=6))  # 6 // 7 = 0: Composer divides by zero
    with pytest.raises(ConfigError, match="curriculum.duration"):
        es.composer_seqlen(0, **kw | dict(max_seq_length=12))  # no whole increment


def test_olmo_rules_by_hand():
    kw = dict(min_sequence_length=8, max_sequence_length=64, warmup_steps=8)
    # Truncating: 8 + 56 * step / 8 floored to the multiple; full length after the warmup.
    assert [es.olmo_truncated_seqlen(s, **kw, keep_multiple_of=8) for s in (1, 2, 8, 9)] == [8, 16, 64, 64]
    # Its default multiple of 128 floors every length below 128 to 0.
    assert es.olmo_truncated_seqlen(4, **kw, keep_multiple_of=128) == 0
    # Splitting: 8 x 2 ** floor(log2(raw // 8)); raw = 15, 22, 29, 36, 57, 64.
    assert [es.olmo_split_seqlen(s, **kw) for s in (1, 2, 3, 4, 7, 8)] == [8, 16, 16, 32, 32, 64]


def test_differences_are_runs_of_equal_pairs():
    assert es.differences([8, 8, 16, 16, 24], [8, 16, 16, 24, 24]) == [(1, 1, 8, 16), (3, 3, 16, 24)]
    assert es.differences([8, 8, 8, 16], [16, 16, 16, 16]) == [(0, 2, 8, 16)]
    assert es.differences([8, 16], [8, 16]) == []


# --- the exports of shipped configs --------------------------------------------------------------------


def test_run_steps_is_the_plans_count():
    cfg = load_config("tiny-slw")
    assert es.run_steps(cfg) == sum(1 for _ in plan_steps(cfg)) == 20
    kept = load_config("tiny-slw", ["curriculum.drop_tail=false"])
    assert es.run_steps(kept) == sum(1 for _ in plan_steps(kept))


def test_deepspeed_block_for_gpt2_117m():
    block = es.export(load_config("gpt2-117m-bsz4k-slw"), "deepspeed").settings
    assert "curriculum_learning" not in block  # the legacy top-level key deepspeed 0.19.8 refuses
    sampling = block["data_efficiency"]["data_sampling"]
    assert block["data_efficiency"]["enabled"] and sampling["enabled"] and sampling["curriculum_learning"]["enabled"]
    m = metric_of(block)
    assert (m["difficulty_type"], m["clustering_type"]) == ("value", "single_cluster")
    assert (m["min_difficulty"], m["max_difficulty"], m["schedule_type"]) == (8, 1024, "fixed_linear")
    assert m["schedule_config"] == {"total_curriculum_step": 30000, "difficulty_step": 8}


def test_deepspeed_is_one_step_ahead_on_tiny_slw():
    cfg = load_config("tiny-slw")
    exp = es.export(cfg, "deepspeed")
    ours = [SeqlenSchedule(cfg.curriculum)(s) for s in range(20)]
    theirs = exp.variants[0].lengths(20)
    # Its step t = s + 1 is seqwarm's next step: 8 + 56 * (s + 1) / 8 rounded down to 8.
    assert theirs[:9] == [8, 16, 24, 32, 40, 48, 56, 64, 64] and theirs[:-1] == ours[1:]


def test_discrete_schedules_are_exact_in_deepspeed():
    cfg = load_config(
        "tiny-slw", ["curriculum.kind=shortformer", "curriculum.seqlen_start=16", "curriculum.duration=5"]
    )
    m = metric_of(es.export(cfg, "deepspeed").settings)
    assert m["schedule_type"] == "fixed_discrete"
    assert m["schedule_config"] == {"difficulty": [16, 64], "max_step": [5]}
    n = es.run_steps(cfg)
    assert es.deepspeed_lengths(m, n) == [SeqlenSchedule(cfg.curriculum)(s) for s in range(n)]
    assert "0 of" in es.table_text(cfg, es.export(cfg, "deepspeed"))


def test_megatron_flags_for_gpt2_117m():
    exp = es.export(load_config("gpt2-117m-bsz4k-slw"), "megatron-deepspeed")
    flags = exp.settings["flags"]
    for flag in (
        "--train-tokens 157286400000",
        "--lr-decay-tokens 157286400000",
        "--lr-warmup-iters 3000",
        "--lr-decay-style cosine",
        "--global-batch-size 4096",
        "--seq-length 1024",
        "--data-efficiency-curriculum-learning",
    ):
        assert flag in flags
    # DeepSpeed's lengths run one step ahead, so the tokens arrive one iteration before seqwarm's 52,501.
    assert "--train-iters 52500" in flags
    assert metric_of(exp.settings["ds_config.json"])["max_difficulty"] == 1024


def test_megatron_baseline_has_no_curriculum():
    exp = es.export(load_config("tiny-baseline"), "megatron-deepspeed")
    assert "--data-efficiency-curriculum-learning" not in exp.settings["flags"] and not exp.variants
    assert f"--train-iters {es.run_steps(load_config('tiny-baseline'))}" in exp.settings["flags"]


@pytest.mark.parametrize("name, steps, duration", [("tiny-slw", 20, 8), ("gpt2-117m-bsz4k-slw", 52501, 30000)])
def test_composer_arguments(name, steps, duration):
    exp = es.export(load_config(name), "composer")
    args = exp.settings["SeqLengthWarmup"]
    assert exp.settings["Trainer"] == {"max_duration": f"{steps}ba"}
    assert int(steps * args["duration"]) == duration  # Composer's own warmup count is T exactly
    assert (args["min_seq_length"], args["step_size"], args["truncate"]) == (8, 8, True)


def test_olmo_core_settings_for_gpt2_117m():
    exp = es.export(load_config("gpt2-117m-bsz4k-slw"), "olmo-core")
    assert exp.settings["SequenceLengthSchedulerCallback"] == {
        "min_sequence_length": 8,
        "warmup_steps": 30000,
        "truncate": True,
        "keep_multiple_of": 8,
    }
    assert exp.settings["NumpyFSLDataset"] == {"sequence_length": 1024}
    assert exp.settings["Trainer"] == {"max_duration": {"value": 52501, "unit": "steps"}}


@pytest.mark.parametrize(
    "framework, overrides, message",
    [
        ("composer", ["curriculum.pacing=root"], "curriculum.pacing"),
        ("composer", ["curriculum.duration=4"], "curriculum.duration"),  # 4 batches < 7 increments
        ("composer", ["curriculum.duration=100"], "curriculum.duration"),  # longer than the run
        ("olmo-core", ["curriculum.seqlen_start=24"], "curriculum.seqlen_end"),  # 64 / 24: no power of 2
        ("deepspeed", ["curriculum.kind=none"], "curriculum.kind"),
        (
            "megatron-deepspeed",
            ["curriculum.kind=bsz_warmup", "curriculum.batch_size_start=4", "curriculum.batch_warmup_tokens=1000"],
            "curriculum.kind",
        ),
    ],
)
def test_what_a_framework_cannot_take_is_refused(framework, overrides, message):
    with pytest.raises(ConfigError, match=message):
        es.export(load_config("tiny-slw", overrides), framework)


# --- the command line -----------------------------------------------------------------------------------


def test_table_lists_the_differing_steps(capsys):
    assert main(["export-schedule", "tiny-slw", "--to", "composer", "--table"]) == 0
    out = capsys.readouterr().out
    # Composer: K = 7 increments, one every 8 // 7 = 1 batch: 8 x (b + 1) from batch 1, seqwarm's one step later.
    assert out.splitlines()[0].startswith("composer: 7 of 20 steps")
    rows = [line.split() for line in out.splitlines()[2:]]
    assert rows == [[str(s), str(8 * s), str(8 * s + 8)] for s in range(1, 8)]


def test_table_merges_equal_pairs_into_ranges(capsys):
    assert main(["export-schedule", "tiny-slw", "--to", "olmo-core", "--table"]) == 0
    out = capsys.readouterr().out
    # keep_multiple_of=128 (OLMo-core's default) floors steps 0 and 1 (both 8 in seqwarm) to 0: one row.
    assert ["0-1", "8", "0"] in [line.split() for line in out.splitlines()]


# --- the output, parsed as its framework reads it (issue 27: `> ds.json` must be JSON) ----------------------


def export_cli(capsys, *argv) -> tuple[str, str]:
    assert main(["export-schedule", *argv]) == 0
    out = capsys.readouterr()
    return out.out, out.err


@pytest.mark.parametrize("name", ["tiny-slw", "gpt2-117m-bsz4k-slw"])
@pytest.mark.parametrize("framework", ["deepspeed", "composer"])
def test_json_output_is_json_and_notes_go_to_stderr(framework, name, capsys, tmp_path):
    out, err = export_cli(capsys, name, "--to", framework)
    exp = es.export(load_config(name), framework)
    assert json.loads(out) == exp.settings
    assert exp.notes and err == "".join(f"note: {n}\n" for n in exp.notes)
    # --out: the same document in a file (YAML for a .yaml name), nothing on stdout
    for path, parse in ((tmp_path / "s.json", json.loads), (tmp_path / "s.yaml", yaml.safe_load)):
        out, err = export_cli(capsys, name, "--to", framework, "--out", str(path))
        assert out == "" and f"wrote {path}" in err and parse(path.read_text()) == exp.settings


def fake_olmo_core(monkeypatch) -> dict:
    """Stand-ins for the two OLMo-core names the exported Python imports, recording what it builds."""
    made: dict = {}

    class Duration:
        @staticmethod
        def steps(n):
            made["max_duration"] = ("steps", n)
            return made["max_duration"]

    def callback(**kwargs):
        made["callback"] = kwargs
        return kwargs

    train = types.ModuleType("olmo_core.train")
    train.Duration = Duration
    callbacks = types.ModuleType("olmo_core.train.callbacks")
    callbacks.SequenceLengthSchedulerCallback = callback
    for name, module in (("olmo_core", types.ModuleType("olmo_core")), ("olmo_core.train", train)):
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.setitem(sys.modules, "olmo_core.train.callbacks", callbacks)
    return made


@pytest.mark.parametrize("name", ["tiny-slw", "gpt2-117m-bsz4k-slw"])
def test_olmo_core_output_is_python_that_builds_the_settings(name, capsys, monkeypatch):
    out, err = export_cli(capsys, name, "--to", "olmo-core")
    compile(out, "olmo_settings.py", "exec")  # a SyntaxError fails here
    made, namespace = fake_olmo_core(monkeypatch), {}
    exec(out, namespace)
    settings = es.export(load_config(name), "olmo-core").settings
    assert made["callback"] == settings["SequenceLengthSchedulerCallback"]
    assert made["max_duration"] == ("steps", settings["Trainer"]["max_duration"]["value"])
    assert namespace["SEQUENCE_LENGTH"] == settings["NumpyFSLDataset"]["sequence_length"]
    assert "note: " in err and "note" not in out.replace("Notes on", "")


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
@pytest.mark.parametrize("name", ["tiny-slw", "tiny-baseline"])
def test_megatron_output_is_bash_that_writes_ds_config_and_the_arguments(name, capsys, tmp_path):
    out, err = export_cli(capsys, name, "train.max_tokens=4000", "--to", "megatron-deepspeed")
    script = tmp_path / "megatron.sh"
    script.write_text(out)
    r = subprocess.run(
        ["bash", "-euc", f'. {script}; printf "%s\\n" "${{SEQWARM_ARGS[@]}}"'],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    settings = es.export(load_config(name, ["train.max_tokens=4000"]), "megatron-deepspeed").settings
    assert r.stdout.split() == " ".join(settings["flags"]).split()
    assert "4000" in r.stdout.split()[r.stdout.split().index("--train-tokens") + 1]
    if "ds_config.json" in settings:
        assert json.loads((tmp_path / "ds_config.json").read_text()) == settings["ds_config.json"]
    else:
        assert not (tmp_path / "ds_config.json").exists()
    assert "note: " in err


def test_out_is_checked_before_any_work(capsys, tmp_path):
    assert main(["export-schedule", "tiny-slw", "--to", "deepspeed", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "--out" in err and "is a directory" in err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["export-schedule", "tiny-slw"], "--to is required"),
        (["export-schedule", "tiny-slw", "--to", "fairseq"], "--to: unknown framework"),
        (["export-schedule", "--to", "deepspeed"], "give a CONFIG"),
        (["export-schedule", "tiny-slw", "curriculum.pacing=root", "--to", "composer"], "curriculum.pacing"),
        (["export-schedule", "no-such-config", "--to", "deepspeed"], "no such config"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and message in err


# --- DeepSpeed's own parser and scheduler, where deepspeed is installed ----------------------------------


@pytest.mark.parametrize(
    "name, overrides",
    [
        ("tiny-slw", []),
        ("gpt2-117m-bsz4k-slw", []),
        ("tiny-slw", ["curriculum.pacing=root"]),
        ("tiny-slw", ["curriculum.kind=shortformer", "curriculum.seqlen_start=16", "curriculum.duration=5"]),
    ],
)
def test_deepspeed_accepts_the_block_and_its_scheduler_gives_the_table_lengths(name, overrides):
    pytest.importorskip("deepspeed")
    from deepspeed.runtime.config import DeepSpeedConfig
    from deepspeed.runtime.data_pipeline.curriculum_scheduler import CurriculumScheduler

    cfg = load_config(name, overrides)
    block = es.export(cfg, "deepspeed").settings
    parsed = DeepSpeedConfig({"train_batch_size": cfg.train.global_batch_size, **block})
    metric = metric_of({"data_efficiency": parsed.data_efficiency_config})
    scheduler = CurriculumScheduler(metric)
    n = min(es.run_steps(cfg), 32000)
    # The sampler's curriculum step is 1 on the first batch (DeepSpeedDataSampler.get_next_global_batch).
    assert [scheduler.update_difficulty(s + 1) for s in range(n)] == es.deepspeed_lengths(metric_of(block), n)
