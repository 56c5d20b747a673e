"""`seqwarm eval --lm-eval TASKS`: any lm-evaluation-harness task, on the checkpoint exported to Hugging Face.

This is how the paper's 11 GPT-3 zero-shot tasks (Tables 4, 7-9) can be run. The checkpoint is
exported to a temporary transformers directory (GPT-2, Llama or Qwen3: `seqwarm.hf.export_hf`) and handed to
lm-eval's `hf` model in fp32; lm-eval runs offline, and every task's data is checked to be in the
local cache before any evaluation (`lm_eval_precheck`). lm-eval is an optional dependency
(`pip install 'seqwarm[lm-eval]'`), imported only here.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch

from seqwarm.errors import SeqwarmError, first_line
from seqwarm.eval.results import TaskResult
from seqwarm.hf import export_hf, require_transformers
from seqwarm.saved import SavedModel

LM_EVAL_HINT = "pip install 'seqwarm[lm-eval]'"


def _lm_eval_offline():
    """lm_eval, imported with the Hugging Face Hub and datasets in offline mode.

    A task's dataset that is not in the local cache then fails at once, instead of a download
    attempt that hangs on a machine without network. The variables are read when `datasets` and
    `huggingface_hub` are imported, hence set first; the module constants are also set in case
    they were imported earlier in this process.
    """
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        import lm_eval
        from lm_eval import tasks as lm_tasks
    except ImportError:
        raise SeqwarmError(f"--lm-eval needs lm-evaluation-harness, which is not installed: {LM_EVAL_HINT}") from None
    for module, name in (("datasets.config", "HF_DATASETS_OFFLINE"), ("huggingface_hub.constants", "HF_HUB_OFFLINE")):
        try:
            setattr(__import__(module, fromlist=[name]), name, True)
        except ImportError:
            pass
    return lm_eval, lm_tasks


def lm_eval_precheck(tasks: list[str]):
    """Check that lm-eval and transformers are installed, the tasks exist and their data is on this
    machine, before any evaluation. Returns the lm-eval TaskManager to evaluate with."""
    _, lm_tasks = _lm_eval_offline()
    require_transformers()  # lm-eval's "hf" model reads the exported directory
    manager = lm_tasks.TaskManager()
    unknown = [t for t in tasks if t not in manager.all_tasks]
    if unknown:
        raise SeqwarmError(f"--lm-eval: unknown lm-eval task {', '.join(unknown)} (list them with `lm-eval ls tasks`)")
    for task in tasks:
        try:
            lm_tasks.get_task_dict([task], manager)  # loads the task's dataset: offline, the local cache only
        except Exception as e:  # lm-eval and datasets raise many kinds; the cause is named below
            if _is_missing_data(e):
                raise SeqwarmError(
                    f"--lm-eval {task}: its dataset is not on this machine and seqwarm evaluates offline "
                    f"({type(e).__name__}: {first_line(e)}); download it once where the Hugging Face Hub is reachable "
                    f"(e.g. `lm-eval run --model hf --model_args pretrained=gpt2 --tasks {task} --limit 1`) into the "
                    "same HF_HOME / HF_DATASETS_CACHE"
                ) from None
            raise SeqwarmError(
                f"--lm-eval {task}: lm-eval cannot load the task ({type(e).__name__}: {first_line(e)})"
            ) from None
    return manager


def _is_missing_data(e: BaseException) -> bool:
    """Whether an exception from loading a task's dataset means "not cached and offline"."""
    text = f"{type(e).__name__} {e}".lower()
    return isinstance(e, (ConnectionError, FileNotFoundError)) or any(
        word in text for word in ("offline", "notfound", "not found", "couldn't reach", "connection", "hub")
    )


def run_lm_eval(
    saved: SavedModel, tasks: list[str], manager, *, device: torch.device, batch_size: int, limit: int | None = None
) -> list[TaskResult]:
    """lm-eval's HF model on the exported checkpoint; one TaskResult per task lm-eval reports."""
    lm_eval, _ = _lm_eval_offline()
    with tempfile.TemporaryDirectory(prefix="seqwarm-lm-eval-") as tmp:
        exported = export_hf(saved, Path(tmp) / "hf")
        output = lm_eval.simple_evaluate(
            model="hf",
            model_args=f"pretrained={exported},dtype=float32",
            tasks=tasks,
            task_manager=manager,
            device=str(device),
            batch_size=batch_size,
            limit=limit,
        )
    return harness_results(output, version=getattr(lm_eval, "__version__", ""), limit=limit, batch_size=batch_size)


def harness_results(output: dict, *, version: str, limit: int | None, batch_size: int) -> list[TaskResult]:
    """`simple_evaluate`'s output as TaskResults named `lm-eval/TASK`, with the metrics of lm-eval's default filter."""
    samples = output.get("n-samples", {})
    results = []
    for task, values in output["results"].items():
        metrics = {  # "acc,none" -> "acc": the metric under lm-eval's default (no) filter
            key.replace(",none", ""): float(v)
            for key, v in values.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and key != "sample_len"
        }
        n = samples.get(task, {}).get("effective", values.get("sample_len"))
        results.append(
            TaskResult(
                task=f"lm-eval/{task}",
                dataset=f"lm-evaluation-harness {version}: {task}".strip(),
                metrics=metrics,
                counts={"items": int(n)} if n is not None else {},
                settings={"limit": limit, "batch_size": batch_size},
            )
        )
    return results
