"""Curricula as pure functions (paper, Section 4, and the related methods of Section 5.1).

A curriculum is made of axes that combine: the length of a step (`SeqlenSchedule`: SLW's pacing,
Shortformer's stages), its batch size (`BatchSchedule`: GPT-3's batch-size warmup), how short rows
are cut (`truncate`), and room for an attention window. `Curriculum.at(step, tokens)` composes them
into one `StepSpec`. A batch is drawn as full-length sequences of `seqlen_end + 1` tokens, indexed
once, and truncated to the step's length (the paper's lightweight truncation: no re-indexing per
length). Nothing here imports yaml or torch.

Only this package names a curriculum's kinds and axis values (`tests/test_layering.py` checks it);
other modules ask its objects (`Curriculum.varies_length`, the pacing's type) instead.
"""

from seqwarm.curriculum.axes import BatchAxis, LengthAxis, batch_size_warmup, truncate
from seqwarm.curriculum.config import CurriculumConfig, slw_overrides
from seqwarm.curriculum.pacing import (
    Linear,
    Root,
    Stages,
    discrete_pacing,
    linear_pacing,
    root_pacing,
    round_seqlen,
)
from seqwarm.curriculum.plan import Curriculum, StepSpec
from seqwarm.curriculum.schedules import BatchSchedule, SeqlenSchedule

__all__ = [
    "BatchAxis",
    "BatchSchedule",
    "Curriculum",
    "CurriculumConfig",
    "LengthAxis",
    "Linear",
    "Root",
    "SeqlenSchedule",
    "Stages",
    "StepSpec",
    "batch_size_warmup",
    "discrete_pacing",
    "linear_pacing",
    "root_pacing",
    "round_seqlen",
    "slw_overrides",
    "truncate",
]
