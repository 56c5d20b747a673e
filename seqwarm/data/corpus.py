"""The corpus a config names: `data.path`, or `builtin` (the embedded English corpus, prepared on first use)."""

from __future__ import annotations

from pathlib import Path

from seqwarm.config import Config
from seqwarm.data.builtin.corpus import ensure_builtin
from seqwarm.data.builtin.names import builtin_tokenizer
from seqwarm.data.format import TokenData
from seqwarm.errors import DataError
from seqwarm.tokenizer import VOCAB_SIZE, Tokenizer, gpt2, load_tokenizer


def open_data(cfg: Config, progress: bool = True) -> TokenData:
    """The prepared corpus `cfg` trains on, checked against its meta.json and the model's vocabulary.

    With `model.vocab_size: auto` the model's vocabulary is the data's tokenizer's, so the check
    only catches a meta.json that disagrees with its own tokens; build the model with
    `cfg.model.gpt(data.vocab_size)`.
    """
    data = TokenData(data_directory(cfg.data.path, progress), verify=cfg.data.verify)
    data.check_vocab(cfg.model.resolve_vocab_size(data.vocab_size))
    return data


def data_directory(data_path: str | Path, progress: bool = True) -> Path:
    """The prepared directory of `data.path`: itself, or the cache's builtin corpus of that name
    (`builtin`, `builtin-bpe<N>`), prepared on first use."""
    if builtin_tokenizer(data_path) is None:
        return Path(data_path)
    return ensure_builtin(progress, name=str(data_path))


def data_tokenizer(data_path: str | Path) -> Tokenizer:
    """The tokenizer of `data.path` (`builtin` is GPT-2's: no need to prepare it to know that)."""
    if builtin_tokenizer(data_path) == "gpt2":
        return gpt2()
    return load_tokenizer(data_directory(data_path))


def trained_tokenizer(vocab_size: int, data_path: str | Path | None, where: str | Path) -> Tokenizer:
    """The tokenizer a model of `vocab_size` tokens was trained with: that of its data `data_path`
    (`eval --data`, else the run's `data.path`), used by `eval`'s text tasks and `export --hf`.

    A model with GPT-2's vocabulary whose data is gone or unknown (`where`, a checkpoint outside a
    run directory) is taken to be GPT-2's, as before seqwarm had other tokenizers; any other
    vocabulary needs its data directory.
    """
    path = None if data_path is None else str(data_path)
    if path is None or (builtin_tokenizer(path) is None and not (Path(path) / "meta.json").is_file()):
        if vocab_size == VOCAB_SIZE:
            return gpt2()
        place = f"{path}: not a prepared directory" if path else f"{where}: not inside a run directory"
        raise DataError(
            f"{place}; give --data DIR, the corpus the model was trained on, for its tokenizer "
            f"(a vocabulary of {vocab_size}, not GPT-2's)"
        )
    tok = data_tokenizer(path)
    if tok.vocab_size != vocab_size:
        raise DataError(
            f"{path}: tokenizer {tok.name} has {tok.vocab_size} tokens, the model {vocab_size}; "
            "give --data DIR, the corpus the model was trained on"
        )
    return tok
