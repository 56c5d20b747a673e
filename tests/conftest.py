"""Shared fixtures: a small prepared corpus made from deterministic English-like text."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

# A fixed thread count for the whole suite, this process and the ones it starts. Without it, runs whose config leaves
# train.num_threads unset would take seqwarm's load-dependent default (seqwarm.runtime.default_num_threads), and two
# runs a test compares (a resume against an uninterrupted run) could use different thread counts on a busy machine,
# so different summation orders: a failure only under load. torch's own default is what the suite always ran with;
# tests/test_runtime_threads.py tests the default itself.
os.environ.setdefault("OMP_NUM_THREADS", str(torch.get_num_threads()))

from seqwarm.config import PACKAGED_CONFIGS, load_config
from seqwarm.data.prepare import prepare

WORDS = (
    "the of and to in a is that for it as was with be by on not he this are or his from at which but have an they "
    "you were her she there been one all we their has would when if so no will more about can time said could them "
    "model sequence length warmup training loss batch learning rate stable spike variance adam token step river "
    "mountain city garden winter summer letter story king queen ship house road light night morning evening"
).split()


def synthetic_text(seed: int, n_docs: int = 40, words_per_doc: int = 400) -> list[str]:
    rng = np.random.default_rng(seed)
    docs = []
    for _ in range(n_docs):
        words = rng.choice(WORDS, size=words_per_doc)
        sentences = [" ".join(words[i : i + 12]).capitalize() + "." for i in range(0, len(words), 12)]
        paragraphs = [" ".join(sentences[i : i + 5]) for i in range(0, len(sentences), 5)]
        docs.append("\n\n".join(paragraphs))
    return docs


@pytest.fixture(scope="session")
def corpus_dir(tmp_path_factory):
    """A prepared corpus of ~85K train tokens (synthetic text; real text is covered by test_builtin)."""
    src = tmp_path_factory.mktemp("src")
    for i, doc in enumerate(synthetic_text(0)):
        (src / f"doc{i:03d}.txt").write_text(doc)
    return prepare(
        [str(src)], tmp_path_factory.mktemp("data") / "prepared", val_fraction=0.05, test_fraction=0.05, progress=False
    )


@pytest.fixture
def tiny_cfg(corpus_dir, tmp_path):
    """A factory: the shipped tiny-slw config on the test corpus, in a fresh run directory."""

    def make(*overrides: str, name: str = "tiny-slw"):
        return load_config(
            PACKAGED_CONFIGS / f"{name}.yaml",  # not relative to the working directory
            [f"data.path={corpus_dir}", f"run.dir={tmp_path / 'run'}", "train.num_threads=1", *overrides],
        )

    return make
