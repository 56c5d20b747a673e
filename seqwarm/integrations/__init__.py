"""SLW for training loops that are not seqwarm's (docs/INTEGRATIONS.md).

- `seqwarm.integrations.loop`: `SequenceLengthWarmup`, for a plain PyTorch loop (torch only).
- `seqwarm.integrations.hf`: `SLWTrainer`, for Hugging Face's `transformers.Trainer` (imports transformers,
  so it is not imported here).
- `seqwarm.integrations.lightning`: `SLWCallback` and `SLWModuleMixin`, for PyTorch Lightning's `Trainer`
  (imports lightning, so it is not imported here either).
"""

from seqwarm.integrations.loop import SequenceLengthWarmup, TokenLRScheduler

__all__ = ["SequenceLengthWarmup", "TokenLRScheduler"]
