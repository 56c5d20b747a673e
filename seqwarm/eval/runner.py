"""`seqwarm eval`: zero-shot evaluation as the paper reports it (Tables 2 and 6).

The paper judges its models by zero-shot WikiText-103 perplexity and LAMBADA last-word accuracy,
computed with Megatron-LM's evaluation (`tasks/zeroshot_gpt`); this package follows that code.

- `val`, `test`: perplexity on the held-out splits of the run's data, in full-length sequences
  (`curriculum.seqlen_end`, the length the run validates at), every token scored once.
- `wikitext`: one text tokenized whole and scored in sliding windows of the model's context that
  overlap (Megatron's `--overlapping-eval`): each window scores only its last `stride` tokens, so
  every token is scored exactly once and with at least `window - stride` tokens of left context.
  Reported per token and per word of the original text (Megatron's "adjusted" perplexity). The
  builtin text is the held-out Wikipedia sample of the builtin corpus; `--wikitext` takes the real
  WikiText-103 test file, whose tokenization markup is undone first (`texts.wikitext_detokenize`).
- `lambada`: strict last-word accuracy: the greedy prediction must reproduce every token of the
  target word given the passage (Megatron's `--strict-lambada`). The builtin items are cut from a
  held-out novel (`texts.lambada_style_items`) and are called LAMBADA-style everywhere, because
  they are not human-filtered like LAMBADA; `--lambada` takes the real LAMBADA test jsonl.

This module wires the package together: `plan_eval` checks every input and reads the texts,
`run_eval` scores the model (`scoring`), `main_eval` adds lm-eval's tasks (`harness`) and merges
the results into the eval JSON (`results`). Design choices are explained in docs/EVALUATION.md.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from seqwarm.data.corpus import data_directory, trained_tokenizer
from seqwarm.data.format import SequenceIndex, TokenData
from seqwarm.errors import ConfigError, DataError
from seqwarm.eval.results import TaskResult, default_json_path, read_eval, results_json, write_eval
from seqwarm.eval.scoring import lambada_hits, safe_exp, split_nll, window_nll
from seqwarm.eval.texts import Cloze, Text, builtin_heldout, load_lambada, load_wikitext, word_count
from seqwarm.files import check_writable, file_sha256
from seqwarm.model import GPT
from seqwarm.runtime import keep_freed_memory, resolve_device, set_cpu_threads
from seqwarm.saved import SavedModel, open_saved
from seqwarm.tokenizer import TOKENIZER_NAME, Tokenizer

TASKS = ("val", "test", "wikitext", "lambada")
# What `seqwarm eval RUN` runs: the tasks that take about a minute for the demo's model on 2 CPU cores. WikiText at
# Megatron's stride 32 scores the text in ~18,700 overlapping windows (for the builtin sample: 2,341 batches of 8, about
# 40 minutes for the demo's model on a 2-core AMD EPYC, issue 27), so it runs only when asked for: by --tasks, or by
# --wikitext naming a file.
DEFAULT_TASKS = ("val", "test", "lambada")
# Megatron-LM's zero-shot script evaluates WikiText-103 with `--overlapping-eval 32`.
MEGATRON_STRIDE = 32


@dataclass
class Plan:
    """Everything the chosen tasks need, checked and read before any evaluation starts."""

    saved: SavedModel
    tasks: list[str]
    device: torch.device
    batch_size: int
    stride: int
    progress: bool
    data: TokenData | None = None  # val/test
    splits: dict[str, SequenceIndex] = field(default_factory=dict)  # full-length sequences of val/test
    wikitext: Text | None = None
    lambada: Cloze | None = None
    tokenizer: Tokenizer | None = None  # wikitext/lambada: the run's data tokenizer


def eval_tokenizer(saved: SavedModel, data: str | None) -> Tokenizer:
    """The tokenizer the model was trained with: its data's (`--data`, else the run's `data.path`)."""
    cfg = saved.config()
    return trained_tokenizer(saved.gpt.vocab_size, data or (cfg.data.path if cfg else None), saved.checkpoint)


def plan_eval(
    path: str | Path,
    tasks: Sequence[str],
    *,
    data: str | None = None,
    wikitext: str | None = None,
    lambada: str | None = None,
    stride: int = MEGATRON_STRIDE,
    batch_size: int = 8,
    device: str = "auto",
    progress: bool = True,
) -> Plan:
    """Check the inputs of `seqwarm eval` before any work: every mistake fails here, naming the file or option."""
    saved = open_saved(path, doing="evaluating")
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise ConfigError(f"--tasks: unknown task {', '.join(unknown)} (choose from {', '.join(TASKS)})")
    if batch_size <= 0:
        raise ConfigError(f"--batch-size: must be positive, got {batch_size}")
    context = saved.gpt.max_seqlen
    if not 0 < stride <= context:
        raise ConfigError(f"--stride: must be between 1 and the model's context ({context}), got {stride}")
    plan = Plan(saved, list(tasks), resolve_device(device, option="--device"), batch_size, stride, progress)
    for option, value in (("--wikitext", wikitext), ("--lambada", lambada)):
        if value is not None and not Path(value).is_file():
            raise DataError(f"{option}: {value}: no such file")
    if {"wikitext", "lambada"} & set(tasks):
        plan.tokenizer = eval_tokenizer(saved, data)
    if "wikitext" in tasks:
        path = builtin_heldout("wikipedia", progress) if wikitext is None else Path(wikitext)
        plan.wikitext = load_wikitext(path, builtin=wikitext is None)
    if "lambada" in tasks:
        path = builtin_heldout("narrative", progress) if lambada is None else Path(lambada)
        plan.lambada = load_lambada(path, builtin=lambada is None, tokenizer=plan.tokenizer)
        longest = max(len(target) for _, target in plan.lambada.items)
        if longest >= context:
            raise DataError(
                f"{path}: a target word of {longest} tokens leaves no context in the model's window of {context}"
            )
    if {"val", "test"} & set(tasks):
        cfg = saved.config()
        if data is None and cfg is None:
            raise DataError(
                f"{saved.checkpoint}: not inside a run directory with config.yaml; give --data DIR for val/test"
            )
        data = data or cfg.data.path
        plan.data = TokenData(data_directory(data, progress), verify="size", vocab_size=saved.gpt.vocab_size)
        # The run validates at curriculum.seqlen_end, its "full length" (Section 4's seqlen_e).
        seqlen = min(cfg.curriculum.seqlen_end, context) if cfg else context
        plan.splits = {split: plan.data.sequences(split, seqlen) for split in ("val", "test") if split in tasks}
    return plan


def eval_split(model: GPT, plan: Plan, split: str) -> TaskResult:
    index = plan.splits[split]
    total, count = split_nll(
        model, index, batch_size=plan.batch_size, device=plan.device, progress=plan.progress, desc=split
    )
    info = plan.data.meta["splits"][split]
    return TaskResult(
        task=split,
        dataset=f"{split} split of {plan.data.path}",
        metrics={"ppl": safe_exp(total / count), "loss": total / count},
        counts={"tokens": count},
        source=str(plan.data.path / info.get("file", f"{split}-*.bin")),  # a sharded split: its shards
        sha256=info["sha256"],
        settings={"seqlen": index.seqlen},
    )


def eval_wikitext(model: GPT, plan: Plan) -> TaskResult:
    wiki = plan.wikitext
    tokens = np.asarray(plan.tokenizer.encode_ordinary(wiki.text), dtype=np.int64)  # the whole text at once
    words = word_count(wiki.original)
    total, count = window_nll(
        model,
        tokens,
        stride=plan.stride,
        batch_size=plan.batch_size,
        device=plan.device,
        progress=plan.progress,
        desc="wikitext",
    )
    return TaskResult(
        task="wikitext",
        dataset=wiki.dataset,
        # Megatron-LM: ppl = exp(NLL / (tokens - 1)); adjusted = exp(NLL / (words - 1)), since the
        # first token (and so the first word) is never predicted.
        metrics={"ppl": safe_exp(total / count), "word_ppl": safe_exp(total / (words - 1)), "loss": total / count},
        counts={"tokens": len(tokens), "scored_tokens": count, "words": words},
        source=str(wiki.source),
        sha256=file_sha256(wiki.source),
        settings={
            "window": model.cfg.max_seqlen,
            "stride": plan.stride,
            "detokenized": wiki.detokenized,
            **_tokenizer_setting(plan),
        },
    )


def eval_lambada(model: GPT, plan: Plan) -> TaskResult:
    cloze = plan.lambada
    hits, total, count = lambada_hits(
        model,
        cloze.items,
        batch_size=plan.batch_size,
        device=plan.device,
        progress=plan.progress,
        desc="lambada",
        pad_id=plan.tokenizer.eot_id,
    )
    return TaskResult(
        task="lambada",
        dataset=cloze.dataset,
        metrics={"acc": sum(hits) / len(hits), "target_ppl": safe_exp(total / count)},
        counts={"items": len(hits), "correct": sum(hits), "target_tokens": count},
        source=str(cloze.source),
        sha256=file_sha256(cloze.source),
        settings={"strict": True, "window": model.cfg.max_seqlen, **_tokenizer_setting(plan)},
    )


def _tokenizer_setting(plan: Plan) -> dict:
    """The text tasks name their tokenizer unless it is GPT-2's (what results before other tokenizers meant)."""
    name = plan.tokenizer.name
    return {} if name == TOKENIZER_NAME else {"tokenizer": name, "tokenizer_sha256": plan.tokenizer.sha256()}


def run_eval(plan: Plan) -> list[TaskResult]:
    """Load the model once and run the planned tasks in order, each timed."""
    if plan.device.type == "cpu":
        keep_freed_memory()  # every batch allocates ~50 MB chunks of logits again: keep them (1.7x faster)
        set_cpu_threads(None)  # as training: the cores other processes leave free, unless OMP_NUM_THREADS says
    model = plan.saved.model(plan.device)
    results = []
    for task in plan.tasks:
        start = time.perf_counter()
        if task in ("val", "test"):
            result = eval_split(model, plan, task)
        elif task == "wikitext":
            result = eval_wikitext(model, plan)
        else:
            result = eval_lambada(model, plan)
        result.seconds = time.perf_counter() - start
        results.append(result)
    return results


def default_tasks(lm_eval_tasks: Sequence[str] = (), wikitext: str | None = None) -> list[str]:
    """The tasks of `seqwarm eval` without --tasks: the quick ones, plus wikitext when its file was given."""
    if lm_eval_tasks:
        return []
    return [t for t in TASKS if t in DEFAULT_TASKS or (t == "wikitext" and wikitext is not None)]


def main_eval(
    path: str | Path,
    tasks: Sequence[str] | None = None,
    *,
    lm_eval_tasks: Sequence[str] = (),
    lm_eval_limit: int | None = None,
    json_out: str | Path | None = None,
    **options,
) -> tuple[list[TaskResult], dict, Path]:
    """`seqwarm eval`: check everything, evaluate, merge into the eval JSON. Returns (results, document, its path).

    Without --tasks: DEFAULT_TASKS (with wikitext when --wikitext names a file), none when lm-eval tasks were asked for.
    """
    if tasks is None:
        tasks = default_tasks(lm_eval_tasks, options.get("wikitext"))
    plan = plan_eval(path, tasks, **options)
    task_manager = None
    if lm_eval_tasks:
        from seqwarm.eval.harness import lm_eval_precheck  # lm-eval and transformers only when asked for

        task_manager = lm_eval_precheck(list(lm_eval_tasks))
    out = Path(json_out) if json_out else default_json_path(path, plan.saved.checkpoint)
    check_writable(out, "--json", directory=False)  # now, not after the whole evaluation has run
    results = run_eval(plan)
    if lm_eval_tasks:
        from seqwarm.eval.harness import run_lm_eval

        results += run_lm_eval(
            plan.saved,
            list(lm_eval_tasks),
            task_manager,
            device=plan.device,
            batch_size=plan.batch_size,
            limit=lm_eval_limit,
        )
    saved = plan.saved
    doc = results_json(saved.describe(), asdict(saved.gpt), str(plan.device), results, read_eval(out))
    write_eval(out, doc)
    return results, doc, out
