"""The `data.path` names of the builtin corpus and where their prepared copies live in the cache.

`builtin` is the corpus with GPT-2's tokenizer; `builtin-bpe<N>` the same text with a byte-level BPE
of N ids trained on its train split (`prepare --tokenizer bpe:N`), the small vocabulary that keeps
the proxy's compute in the Transformer body (docs/PROXY.md). Only names and paths here: `seqwarm
plan` reads them without importing any corpus code.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

BUILTIN_NAME = re.compile(r"builtin(?:-bpe([1-9][0-9]*))?")


def builtin_tokenizer(name: str | Path) -> str | None:
    """The tokenizer spec of a builtin `data.path` name (`builtin`: "gpt2", `builtin-bpe1024`:
    "bpe:1024"); None for anything else, a directory of `seqwarm prepare`."""
    match = BUILTIN_NAME.fullmatch(str(name))
    if match is None:
        return None
    return f"bpe:{match[1]}" if match[1] else "gpt2"


def builtin_name(tokenizer: str) -> str | None:
    """The `data.path` name of the builtin corpus prepared with the `--tokenizer` spec (the inverse
    of `builtin_tokenizer`); None for a tokenizer.json, which has no place in the cache."""
    name = "builtin" if tokenizer == "gpt2" else "builtin-" + tokenizer.replace(":", "")
    return name if builtin_tokenizer(name) == tokenizer else None


def cache_dir() -> Path:
    """Where seqwarm keeps downloaded sources and prepared corpora: $SEQWARM_CACHE or ~/.cache/seqwarm."""
    return Path(os.environ.get("SEQWARM_CACHE") or Path.home() / ".cache" / "seqwarm")


def builtin_data_dir(name: str = "builtin") -> Path:
    """Where the prepared builtin corpus `name` lives (what `data.path: <name>` trains on)."""
    if builtin_tokenizer(name) is None:
        raise ValueError(f"not a builtin corpus name: {name!r}")
    return cache_dir() / "data" / name
