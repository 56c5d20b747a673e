"""The model a config trains: its options resolved, `vocab_size: auto` included, without opening the data.

Above both the config and the data layer: the model's shape is the config's, its vocabulary (with
`model.vocab_size: auto`) the prepared corpus's.
"""

from __future__ import annotations

import json
from pathlib import Path

from seqwarm.config import Config
from seqwarm.data.builtin.names import builtin_data_dir, builtin_tokenizer
from seqwarm.data.format import data_vocab_size
from seqwarm.model import GPTConfig


def model_config(cfg: Config) -> GPTConfig:
    """The model `cfg` would train, without opening the data: `vocab_size: auto` read from the
    prepared corpus's meta.json when it is there, N for a `builtin-bpe<N>` not yet prepared, GPT-2's
    otherwise (`builtin` is GPT-2's)."""
    data_vocab = None
    builtin = builtin_tokenizer(cfg.data.path)
    meta = (builtin_data_dir(cfg.data.path) if builtin else Path(cfg.data.path)) / "meta.json"
    if cfg.model.vocab_size == "auto" and builtin and builtin.startswith("bpe:") and not meta.is_file():
        data_vocab = int(builtin.removeprefix("bpe:"))  # what its BPE will have once prepared
    elif cfg.model.vocab_size == "auto" and builtin != "gpt2" and meta.is_file():
        try:
            data_vocab = data_vocab_size(json.loads(meta.read_text()))
        except (OSError, ValueError, KeyError, TypeError):
            pass  # an unreadable meta.json is open_data's error to report, when training starts
    return cfg.model.gpt(data_vocab)
