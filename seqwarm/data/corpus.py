"""The corpus a config names: `data.path`, or `builtin` (the embedded English corpus, prepared on first use)."""

from __future__ import annotations

from seqwarm.config import Config
from seqwarm.data.builtin.corpus import ensure_builtin
from seqwarm.data.format import TokenData


def open_data(cfg: Config, progress: bool = True) -> TokenData:
    """The prepared corpus `cfg` trains on, checked against its meta.json and the model's vocabulary."""
    path = ensure_builtin(progress) if cfg.data.path == "builtin" else cfg.data.path
    return TokenData(path, verify=cfg.data.verify, vocab_size=cfg.model.gpt().vocab_size)
