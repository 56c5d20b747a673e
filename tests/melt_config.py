"""The config the HF and Lightning melt tests share (not a test file): SLW with `curriculum.packing: melt` at a
test file's own settings, one micro-batch of `micro` rows and `accum` of them a step."""

from seqwarm.config import Config, load_config


def melted_slw_config(settings: dict, *, seqlen_end: int, max_tokens: int, micro: int, accum: int) -> Config:
    overrides = [f"curriculum.{k}={settings[k]}" for k in ("seqlen_start", "seqlen_end", "duration")]
    overrides += [f"train.{k}={settings[k]}" for k in ("lr", "min_lr", "warmup_steps")]
    return load_config(
        None,
        [
            "curriculum.length=slw",
            "curriculum.packing=melt",
            *overrides,
            f"model.max_seqlen={seqlen_end}",
            f"train.max_tokens={max_tokens}",
            f"train.global_batch_size={micro * accum}",
            f"train.micro_batch_size={micro}",
        ],
    )
