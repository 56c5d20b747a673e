"""seqwarm: stable, efficient GPT pre-training with Sequence Length Warmup (Li et al., NeurIPS 2022)."""

__version__ = "0.1.0"
