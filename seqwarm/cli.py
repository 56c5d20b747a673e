"""The `seqwarm` command line: prepare, train, plan, export-schedule, report, eval, export, import-hf, demo, sweep, tune.

Errors a user can fix (`SeqwarmError`) print as one line and exit with code 2. A training run stopped
by SIGINT or SIGTERM (after writing a checkpoint) prints one line and exits with 130 or 143
(`seqwarm.interrupt`).
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import sys
from pathlib import Path

from seqwarm.errors import ConfigError, SeqwarmError

ONE_LINE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOTDIR, errno.EISDIR}


def split_config_args(items: list[str]) -> tuple[str | None, list[str]]:
    """`CONFIG key=value ...` -> (CONFIG or None, overrides)."""
    if items and "=" not in items[0]:
        from seqwarm.config import resolve_config  # here, not at the top: `prepare` and its workers need no torch

        return str(resolve_config(items[0])), items[1:]
    return None, items


def cmd_prepare(args) -> None:
    from seqwarm.data.builtin.corpus import ensure_builtin, prepare_builtin
    from seqwarm.data.builtin.names import builtin_data_dir, builtin_name
    from seqwarm.data.prepare import PrepareOptions, choose_tokenizer, prepare

    if args.corpus and args.inputs:
        raise SeqwarmError("prepare: give either --corpus builtin or input files, not both")
    inputs = args.inputs or ["builtin"]
    if inputs != ["builtin"] and args.out is None:
        raise SeqwarmError("prepare: --out DIR is required for your own text files")
    # The builtin corpus goes to the cache under its data.path name: builtin, builtin-bpe<N>.
    name = builtin_name(args.tokenizer) if inputs == ["builtin"] and args.out is None else None
    if inputs == ["builtin"] and args.out is None and name is None:
        raise SeqwarmError(
            f"prepare: --tokenizer {args.tokenizer}: the cache holds the builtin corpus with gpt2 or bpe:N only; "
            "give --out DIR for the builtin corpus with a tokenizer.json"
        )
    tokenizer = choose_tokenizer(args.tokenizer)  # a bad spec or tokenizer.json fails before any reading
    out = Path(args.out) if args.out else builtin_data_dir(name)
    if name is not None and not args.force:
        path = ensure_builtin(progress=True, name=name)
    else:
        options = PrepareOptions(
            val_fraction=args.val_fraction,
            test_fraction=args.test_fraction,
            tokenizer=tokenizer,
            workers=args.workers,
            shard_tokens=args.shard_tokens,
            buffer_mb=args.buffer_mb,
            force=args.force,
            progress=True,
        )
        if inputs == ["builtin"]:
            path = prepare_builtin(out, options)
        else:
            path = prepare(inputs, out, options, append=args.append, text_field=args.text_field)
    meta = json.loads((path / "meta.json").read_text())
    counts = ", ".join(f"{k} {v['tokens']:,}" for k, v in meta["splits"].items())
    tokenizer = "" if meta["tokenizer"] == "gpt2" else f"tokenizer {meta['tokenizer']} ({meta['vocab_size']:,} ids), "
    where = f" (data.path: {name})" if name else ""
    print(f"prepared {path}{where}: {tokenizer}tokens {counts}")


def cmd_train(args) -> None:
    from seqwarm.lifecycle import main_train

    config, overrides = split_config_args(args.items)
    if config is None and args.resume is None:
        raise ConfigError("train: give a CONFIG file (or --resume RUN_DIR)")
    summary = main_train(config, overrides, resume=args.resume, force=args.force)
    if _rank() != 0:  # under torchrun every process returns the summary; one prints it
        return
    ppl = summary["final_val_ppl"]
    print(
        f"done: {summary['steps']:,} steps, {summary['tokens']:,} tokens, {summary['wall_s']:.0f} s"
        + (f", val ppl {ppl:.2f}" if ppl is not None else "")
        + f" -> {summary['run_dir']}"
    )


def cmd_plan(args) -> None:
    from seqwarm.config import load_config
    from seqwarm.plan import print_plan

    config, overrides = split_config_args(args.items)
    print_plan(load_config(config, overrides), every=args.every, jsonl=args.jsonl)


def cmd_export_schedule(args) -> None:
    from seqwarm.config import load_config
    from seqwarm.export_schedule import FRAMEWORKS, export, notes_text, settings_text, table_text
    from seqwarm.files import atomic_write, check_writable

    if args.to is None:
        raise ConfigError(f"export-schedule: --to is required ({', '.join(FRAMEWORKS)})")
    config, overrides = split_config_args(args.items)
    if config is None:
        raise ConfigError("export-schedule: give a CONFIG file or the name of a shipped config")
    if args.out is not None:
        check_writable(args.out, "--out", directory=False)
    cfg = load_config(config, overrides)
    exp = export(cfg, args.to)
    yaml_out = args.out is not None and Path(args.out).suffix in (".yaml", ".yml")
    text = table_text(cfg, exp) if args.table else settings_text(exp, yaml_out=yaml_out)
    # Only the document on stdout or in --out, so `> file` gives a file the framework reads; the notes on stderr.
    if args.out is None:
        print(text, end="")
    else:
        atomic_write(args.out, text)
        print(f"wrote {args.out}", file=sys.stderr)
    if not args.table:
        print(notes_text(exp), end="", file=sys.stderr)


def cmd_demo(args) -> None:
    from seqwarm.demo import run_demo

    run_demo(Path(args.out), force=args.force, overrides=args.overrides, jobs=args.jobs)


def cmd_report(args) -> None:
    from seqwarm.external_logs import parse_map
    from seqwarm.report import write_report

    key_map = parse_map(args.map or [])  # a bad --map fails before any input is read
    path = write_report([Path(p) for p in args.runs], Path(args.out), key_map)
    print(f"report: {path}")


def _comma_list(value: str | None) -> list[str] | None:
    return None if value is None else [v.strip() for v in value.split(",") if v.strip()]


def cmd_eval(args) -> None:
    from seqwarm.eval.results import format_table
    from seqwarm.eval.runner import main_eval

    options = {k: v for k, v in (("stride", args.stride), ("batch_size", args.batch_size)) if v is not None}
    results, doc, out = main_eval(
        args.path,
        _comma_list(args.tasks),
        lm_eval_tasks=_comma_list(args.lm_eval) or (),
        lm_eval_limit=args.lm_eval_limit,
        json_out=args.json,
        data=args.data,
        wikitext=args.wikitext,
        lambada=args.lambada,
        device=args.device,
        progress=not args.no_progress,
        **options,
    )
    ck = doc["checkpoint"]
    print(f"{ck['path']}: step {ck['step']:,}, {ck['tokens']:,} tokens trained; evaluated on {doc['device']}")
    print(format_table(results))
    print(f"results: {out}")


def cmd_export(args) -> None:
    from seqwarm.hf import export_hf

    out = export_hf(args.path, args.hf, force=args.force)
    (arch,) = json.loads((out / "config.json").read_text())["architectures"]
    print(f"exported {out}: transformers {arch} (safetensors) + its tokenizer")


def cmd_import_hf(args) -> None:
    from seqwarm.hf import import_hf

    config, overrides = split_config_args(args.items)
    out = import_hf(args.hf_dir, args.out, config, overrides, force=args.force)
    print(f"imported {args.hf_dir} -> {out} (step-0 checkpoint); train it with: seqwarm train --resume {out}")


def cmd_sweep(args) -> None:
    from seqwarm.lifecycle import train
    from seqwarm.sweep.runner import main_sweep

    target, overrides = split_config_args(args.items)
    report = main_sweep(
        target,
        overrides,
        args.grid,
        args.out,
        train_fn=train,
        report_only=args.report_only,
        prune_checkpoints=args.prune_checkpoints,
        progress=not args.no_progress,
        shard=args.shard,
    )
    print(f"sweep report: {report}")


def _rank() -> int:
    """This process's rank under torchrun (0 otherwise)."""
    try:
        return int(os.environ.get("RANK", 0))
    except ValueError:
        return 0


def cmd_tune(args) -> None:
    from seqwarm.lifecycle import train
    from seqwarm.tune.runner import main_tune

    config, items = split_config_args(args.items)
    result, out = main_tune(
        config, items, train_fn=train, out=args.out, budget_steps=args.budget_steps, progress=not args.no_progress
    )
    if not result.recommended:
        print(f"tune: no recommendation ({'; '.join(result.notes)})")
    else:
        verified = "" if result.duration_verified else " (not verified)"
        print(f"recommended: seqlen_s = {result.seqlen_start}, T = {result.duration}{verified}")
        for note in result.notes:
            print(f"  note: {note}")
    print(f"tune report: {out / 'tune.md'}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="seqwarm", description="GPT pre-training with Sequence Length Warmup.")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("prepare", help="tokenize a corpus into memory-mapped train/val/test splits")
    s.add_argument(
        "inputs",
        nargs="*",
        help="text, JSONL (.gz/.zst), Parquet files, saved datasets, directories or globs (default: the builtin corpus)",
    )
    s.add_argument("--corpus", choices=["builtin"], help="the embedded English corpus (default when no inputs)")
    s.add_argument("--out", help="output directory (default for builtin: the seqwarm cache)")
    s.add_argument("--val-fraction", type=float, default=0.01)
    s.add_argument("--test-fraction", type=float, default=0.01)
    s.add_argument("--force", action="store_true", help="replace an existing output directory")
    s.add_argument("--append", action="store_true", help="add the inputs to an existing prepared directory")
    s.add_argument("--text-field", default="text", help="the JSONL key or Parquet column holding the text")
    s.add_argument("--workers", type=int, default=None, help="tokenizing processes (default: the machine's cores)")
    s.add_argument("--shard-tokens", type=int, default=1 << 27, help="tokens per shard file (default 134,217,728)")
    s.add_argument("--buffer-mb", type=float, default=64, help="text held in memory at once, in MB (default 64)")
    s.add_argument(
        "--tokenizer",
        default="gpt2",
        metavar="gpt2|bpe:N|PATH",
        help="gpt2 (default), a byte-level BPE of N tokens trained on the train split, or a tokenizer.json",
    )
    s.set_defaults(func=cmd_prepare)

    s = sub.add_parser("train", help="train a model: seqwarm train CONFIG [section.key=value ...]")
    s.add_argument("items", nargs="*", metavar="CONFIG [KEY=VALUE ...]")
    s.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its latest checkpoint")
    s.add_argument("--force", action="store_true", help="replace an existing run directory")
    s.set_defaults(func=cmd_train)

    s = sub.add_parser("plan", help="print the SLW/LR/token schedule of a config without training")
    s.add_argument("items", nargs="*", metavar="CONFIG [KEY=VALUE ...]")
    s.add_argument("--every", type=int, help="print every k-th step (default: about 40 rows; 1 with --jsonl)")
    s.add_argument("--jsonl", action="store_true", help="one JSON object per step, then a summary object")
    s.set_defaults(func=cmd_plan)

    s = sub.add_parser(
        "export-schedule",
        help="print the settings that reproduce a config's SLW schedule in DeepSpeed, Megatron-DeepSpeed, Composer or OLMo-core",
        description="seqwarm export-schedule CONFIG [section.field=value ...] --to FRAMEWORK [--table] (docs/EXPORT.md)",
    )
    s.add_argument("items", nargs="*", metavar="CONFIG [KEY=VALUE ...]")
    s.add_argument("--to", metavar="|".join(("deepspeed", "megatron-deepspeed", "composer", "olmo-core")))
    s.add_argument(
        "--table", action="store_true", help="list the steps where the framework trains at another length than seqwarm"
    )
    s.add_argument(
        "--out",
        metavar="FILE",
        help="write the settings to FILE instead of stdout (JSON, or YAML for a .yaml/.yml FILE, for deepspeed and "
        "composer; bash for megatron-deepspeed; Python for olmo-core); notes always go to stderr",
    )
    s.set_defaults(func=cmd_export_schedule)

    from seqwarm import study_arms as arms  # plain data: the demo's description quotes the study's settings

    s = sub.add_parser(
        "demo",
        help="Study 2's headline, one seed: the proxy GPT at the aggressive LR 3e-2 as baseline, SLW and QK-norm "
        "(the study's arms, context 128, 100 steps), with attention instruments; prints their table and which "
        "instrument explains the failure, draws loss and layer 0's attention logit and entropy",
        description="Trains Study 2's baseline, slw and qk-norm arms (docs/STUDY2.md; the overrides of "
        f"seqwarm/study_arms.py, context 128, LR {arms.CONFIRM_LR['c128']:g}, seed {arms.CONFIRM_SEEDS['c128'][0]}, "
        f"{arms.STEPS} steps) on the builtin corpus, instruments on at "
        "every step. Prints final val loss, steps to leave the unigram plateau, max loss ratio, layer 0's max "
        "attention logit and min entropy, the collapse step, and a reading line computed from the runs; writes "
        "OUT/demo.png and a stability report. One seed: docs/RESULTS.md's Study 2 has the confirmed answer.",
    )
    s.add_argument("--out", default="runs/demo", help="directory for the three runs (default: runs/demo)")
    s.add_argument("--force", action="store_true", help="replace earlier demo runs in --out")
    s.add_argument(
        "--jobs",
        type=int,
        help="runs trained at once, one thread each (default: all 3 when 2 or more CPU cores are free, else 1; "
        "1: one after another)",
    )
    s.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="applied to all three runs after the study's overrides (then they are no longer the study's runs), "
        "e.g. train.max_tokens=204800 for 50 steps",
    )
    s.set_defaults(func=cmd_demo)

    s = sub.add_parser("report", help="Table 1/Table 3 stability tables and figures comparing runs")
    s.add_argument(
        "runs",
        nargs="+",
        metavar="RUN_DIR|LOG",
        help="seqwarm run directories, or other trainers' logs: TensorBoard event directories, trainer_state.json, .csv, .jsonl",
    )
    s.add_argument("--out", required=True, help="directory for report.md, CSV tables and PNG figures (replaced)")
    s.add_argument(
        "--map",
        action="append",
        metavar="KEY=LOG_KEY,...",
        help="where a foreign log keeps seqwarm's metrics, e.g. loss=train/loss,step=global_step,adam/var_max=v_max "
        "(default: seqwarm's names, then Hugging Face Trainer's)",
    )
    s.set_defaults(func=cmd_report)

    s = sub.add_parser(
        "eval",
        help="zero-shot evaluation: held-out perplexity, WikiText-style perplexity, strict LAMBADA(-style) accuracy",
        description="Evaluate a run's latest checkpoint (or a checkpoint directory); method: docs/EVALUATION.md",
    )
    s.add_argument("path", metavar="RUN_DIR|CHECKPOINT_DIR")
    s.add_argument(
        "--tasks",
        help="comma-separated, from val,test,wikitext,lambada (default: val,test,lambada, under a minute for the demo's "
        "model on 2 cores; wikitext too when --wikitext is given; none with --lm-eval). wikitext is opt-in because "
        "its stride-32 windows are slow: about 40 min for the demo's model on 2 cores (a larger --stride is faster)",
    )
    s.add_argument(
        "--wikitext",
        metavar="PATH",
        help="a WikiText-103 test file (detokenized) or a JSONL of texts (default: the builtin Wikipedia sample)",
    )
    s.add_argument(
        "--lambada",
        metavar="PATH",
        help='the LAMBADA test JSONL ({"text": ...} lines) (default: builtin LAMBADA-style items)',
    )
    s.add_argument("--data", metavar="DIR", help="prepared data for val/test (default: the run's data.path)")
    s.add_argument(
        "--stride", type=int, help="tokens each sliding window scores (default: 32, Megatron-LM's --overlapping-eval)"
    )
    s.add_argument("--batch-size", type=int, help="sequences per forward pass (default: 8)")
    s.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    s.add_argument(
        "--json", metavar="OUT", help="results file (default: RUN_DIR/eval.json, or CHECKPOINT_DIR/eval.json)"
    )
    s.add_argument(
        "--lm-eval",
        metavar="TASKS",
        help="also run these lm-evaluation-harness tasks (needs seqwarm[lm-eval] and the tasks' data)",
    )
    s.add_argument("--lm-eval-limit", type=int, metavar="N", help="at most N examples per lm-eval task (a quick check)")
    s.add_argument("--no-progress", action="store_true", help="no progress bars")
    s.set_defaults(func=cmd_eval)

    s = sub.add_parser(
        "export", help="write a run's checkpoint as a Hugging Face model directory (GPT-2, Llama or Qwen3)"
    )
    s.add_argument("path", metavar="RUN_DIR|CHECKPOINT_DIR")
    s.add_argument(
        "--hf", required=True, metavar="OUT_DIR", help="directory for config.json, model.safetensors and the tokenizer"
    )
    s.add_argument("--force", action="store_true", help="replace a non-empty OUT_DIR")
    s.set_defaults(func=cmd_export)

    s = sub.add_parser(
        "import-hf",
        help="make a run that continues training a Hugging Face GPT-2, Llama or Qwen3 checkpoint",
        description="seqwarm import-hf HF_DIR --out RUN_DIR [CONFIG] [section.field=value ...]; then seqwarm train --resume RUN_DIR",
    )
    s.add_argument(
        "hf_dir", metavar="HF_DIR", help="a local GPT-2, Llama or Qwen3 directory (config.json + safetensors)"
    )
    s.add_argument(
        "items",
        nargs="*",
        metavar="CONFIG [KEY=VALUE ...]",
        help="training config for the run (the model section comes from HF_DIR)",
    )
    s.add_argument("--out", required=True, metavar="RUN_DIR")
    s.add_argument("--force", action="store_true", help="replace a non-empty RUN_DIR")
    s.set_defaults(func=cmd_import_hf)

    s = sub.add_parser(
        "sweep",
        help="train a grid of runs (resumable) and write the grid report (Table 5 style, LR sensitivity)",
        description="seqwarm sweep CONFIG|SWEEP_FILE [section.field=value ...] --grid 'train.lr=[1e-3,2e-3]' ...",
    )
    s.add_argument("items", nargs="*", metavar="CONFIG|SWEEP_FILE [KEY=VALUE ...]")
    s.add_argument(
        "--grid", action="append", default=[], metavar="KEY=[V1,V2,...]", help="an axis of the grid (repeatable)"
    )
    s.add_argument(
        "--out", help="directory of the runs and the report (default: the sweep file's out, or runs/sweep-CONFIG)"
    )
    s.add_argument("--report-only", action="store_true", help="write the report from the runs on disk; train nothing")
    s.add_argument("--prune-checkpoints", action="store_true", help="delete a run's checkpoints once it has finished")
    s.add_argument("--no-progress", action="store_true", help="no per-run progress bars")
    s.add_argument(
        "--shard",
        metavar="I/N",
        help="train only every N-th run from the I-th: run N of these side by side (cores, machines) on one --out",
    )
    s.set_defaults(func=cmd_sweep)

    s = sub.add_parser(
        "tune",
        help="choose SLW's seqlen_s and T from short probe runs (the paper's low-cost tuning strategy, Section 4)",
        description="seqwarm tune CONFIG [section.field=value ...] [tune.setting=value ...] (settings: docs/TUNING.md)",
    )
    s.add_argument("items", nargs="*", metavar="CONFIG [KEY=VALUE ...]")
    s.add_argument("--budget-steps", type=int, metavar="N", help="cap on the probes' total steps (default: none)")
    s.add_argument("--out", help="directory of the probes and the report (default: runs/tune-CONFIG)")
    s.add_argument("--no-progress", action="store_true", help="no per-probe progress bars")
    s.set_defaults(func=cmd_tune)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # Overrides may come after options (`train CONFIG --force a.b=1`): argparse leaves those over. So
    # does a CONFIG after an option that follows another positional (`import-hf HF_DIR --out RUN CONFIG`).
    args, extra = parser.parse_known_args(argv)
    if extra:
        target = args.items if hasattr(args, "items") else getattr(args, "overrides", None)
        config_first = target == [] and hasattr(args, "hf_dir") and not extra[0].startswith("-")
        if target is None or any("=" not in e or e.startswith("-") for e in extra[int(config_first) :]):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        target.extend(extra)
    # Under torchrun, a rank other than 0 names itself: its error may be its own (a file missing on its node).
    who = f"[rank {_rank()}] " if _rank() else ""
    from seqwarm.interrupt import Interrupted

    try:
        args.func(args)
    except Interrupted as e:
        print(f"seqwarm: {who}{e}", file=sys.stderr)
        return e.exit_code
    except SeqwarmError as e:
        print(f"seqwarm: error: {who}{e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `seqwarm plan ... | head`: the reader has what it wanted
        sys.stderr.close()
        return 0
    except OSError as e:
        # The environment, not seqwarm: a full disk or quota, a read-only or forbidden directory, a file
        # where a directory belongs. One line naming the file; whatever was being saved stays the old one.
        if e.errno not in ONE_LINE_ERRNOS:
            raise
        where = f"{e.filename}: " if e.filename else ""
        print(f"seqwarm: error: {who}{where}{e.strerror or os.strerror(e.errno)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("seqwarm: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
