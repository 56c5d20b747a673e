"""Curricula as pure functions (paper, Section 4, and the related methods of Section 5.1).

A curriculum is made of axes that combine: the length of a step (`SeqlenSchedule`: SLW's pacing,
Shortformer's stages), its batch size (`BatchSchedule`: GPT-3's batch-size warmup; the tokens-matched
control), how short rows are made (`truncate`, or `melt` at constant tokens per step) and an attention
window (`WindowSchedule`); closed-loop pacing (`AdaptiveController`) is the one stateful part. `Curriculum.at(step, tokens)` composes them
into one `StepSpec`. A batch is drawn as full-length sequences of `seqlen_end + 1` tokens, indexed
once, and truncated to the step's length (the paper's lightweight truncation: no re-indexing per
length). Nothing here imports yaml or torch.

Only this package names a curriculum's kinds and axis values (`tests/test_layering.py` checks it);
other modules ask its objects (`Curriculum.varies_length`, the pacing's type) instead.
"""

from seqwarm.curriculum.adaptive import Adaptive, AdaptiveController
from seqwarm.curriculum.axes import BatchAxis, LengthAxis, WindowAxis, batch_size_warmup, matched_batch, truncate
from seqwarm.curriculum.config import CurriculumConfig, slw_overrides
from seqwarm.curriculum.pacing import (
    Cosine,
    Linear,
    Root,
    Sine,
    Stages,
    discrete_pacing,
    linear_pacing,
    root_pacing,
    round_seqlen,
)
from seqwarm.curriculum.packing import melt, melt_seqlen
from seqwarm.curriculum.plan import Curriculum, StepSpec
from seqwarm.curriculum.schedules import BatchSchedule, SeqlenSchedule, WindowSchedule

__all__ = [
    "Adaptive",
    "AdaptiveController",
    "BatchAxis",
    "BatchSchedule",
    "Curriculum",
    "Cosine",
    "CurriculumConfig",
    "LengthAxis",
    "Linear",
    "Root",
    "SeqlenSchedule",
    "Sine",
    "Stages",
    "StepSpec",
    "WindowAxis",
    "WindowSchedule",
    "batch_size_warmup",
    "discrete_pacing",
    "linear_pacing",
    "matched_batch",
    "melt",
    "melt_seqlen",
    "root_pacing",
    "round_seqlen",
    "slw_overrides",
    "truncate",
]
