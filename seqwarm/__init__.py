"""seqwarm: stable, efficient GPT pre-training with Sequence Length Warmup (Li et al., NeurIPS 2022).

The method as a library, for any training loop (docs/API.md):

    from seqwarm import SeqlenSchedule, truncate
    schedule = SeqlenSchedule.linear(seqlen_start=8, seqlen_end=1024, duration=60_000)
    inputs, targets = truncate(rows, schedule(step))   # rows: (B, seqlen_end + 1) token ids

and seqwarm's own trainer: `train(load_config("gpt2-117m-bsz512-slw", ["data.path=..."]))`.
These names are a contract: they keep their meaning across releases (CHANGELOG.md).
"""

__version__ = "0.3.0"

# Imported lazily (PEP 562), so that `import seqwarm` (the CLI's first step) costs nothing until a
# name is used: most of these pull in torch.
_EXPORTS = {
    "SeqlenSchedule": "seqwarm.curriculum",
    "BatchSchedule": "seqwarm.curriculum",
    "truncate": "seqwarm.curriculum",
    "Clock": "seqwarm.schedule",
    "learning_rate": "seqwarm.schedule",
    "finished": "seqwarm.schedule",
    "LossRatio": "seqwarm.monitor",
    "adam_statistics": "seqwarm.monitor",
    "NonFiniteGuard": "seqwarm.monitor",
    "SequenceLengthWarmup": "seqwarm.integrations.loop",
    "GPT": "seqwarm.model",
    "GPTConfig": "seqwarm.model",
    "build_model": "seqwarm.model",
    "linear_cross_entropy": "seqwarm.loss",
    "IGNORE_INDEX": "seqwarm.loss",
    "Config": "seqwarm.config",
    "CurriculumConfig": "seqwarm.config",
    "TrainConfig": "seqwarm.config",
    "load_config": "seqwarm.config",
    "train": "seqwarm.lifecycle",
    "read_metrics": "seqwarm.metrics",
    "SeqwarmError": "seqwarm.errors",
}
__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str):
    if name in _EXPORTS:
        import importlib

        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value  # once imported, a plain attribute
        return value
    raise AttributeError(f"module 'seqwarm' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
