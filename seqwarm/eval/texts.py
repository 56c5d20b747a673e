"""The texts of the zero-shot tasks: WikiText-style documents and LAMBADA(-style) cloze items.

Pure text functions (`wikitext_detokenize`, `word_count`, `lambada_split`, `lambada_style_items`)
follow Megatron-LM's `tasks/zeroshot_gpt`; the loaders read a task's input file (or the builtin
corpus's held-out texts, docs/DATA.md) and check it before any evaluation starts, raising a
DataError that names the file.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from seqwarm.data.builtin.corpus import ensure_builtin
from seqwarm.data.format import member_path
from seqwarm.data.prepare import read_documents
from seqwarm.errors import DataError
from seqwarm.tokenizer import Tokenizer, gpt2

# The builtin LAMBADA-style items (docs/DATA.md): a passage of at least 40 words whose last word,
# the target, has at least 3 letters.
MIN_PASSAGE_WORDS = 40
MIN_TARGET_LETTERS = 3

# --- WikiText ------------------------------------------------------------------------------------

# Megatron-LM's `wikitext_detokenizer` (tasks/zeroshot_gpt/detokenizer.py), also used by
# lm-evaluation-harness: WikiText-103 is word-tokenized ("3 @,@ 000", "it 's", "( a )"); a BPE
# model was trained on running text, so the markup is undone before tokenizing. Applied in order.
_WIKITEXT_REPLACE = (
    ("s '", "s'"),  # plural possessive
    (" @-@ ", "-"),  # number separators
    (" @,@ ", ","),
    (" @.@ ", "."),
    (" : ", ": "),  # punctuation
    (" ; ", "; "),
    (" . ", ". "),
    (" ! ", "! "),
    (" ? ", "? "),
    (" , ", ", "),
)
_WIKITEXT_BRACKETS = (  # spaces inside brackets and quotes
    (re.compile(r"\(\s*([^\)]*?)\s*\)"), r"(\1)"),
    (re.compile(r"\[\s*([^\]]*?)\s*\]"), r"[\1]"),
    (re.compile(r"{\s*([^}]*?)\s*}"), r"{\1}"),
    (re.compile(r"\"\s*([^\"]*?)\s*\""), r'"\1"'),
    (re.compile(r"'\s*([^']*?)\s*'"), r"'\1'"),
)
_WIKITEXT_MISC = (
    ("= = = =", "===="),  # section headings
    ("= = =", "==="),
    ("= =", "=="),
    (" \N{DEGREE SIGN} ", "\N{DEGREE SIGN}"),
    (" \n", "\n"),
    ("\n ", "\n"),
    (" N ", " 1 "),  # WikiText's number placeholder
    (" 's", "'s"),
)


def wikitext_detokenize(text: str) -> str:
    """Undo WikiText-103's tokenization (` @-@ `, ` , `, `( x )`, ...) as Megatron-LM does."""
    for old, new in _WIKITEXT_REPLACE:
        text = text.replace(old, new)
    for pattern, repl in _WIKITEXT_BRACKETS:
        text = pattern.sub(repl, text)
    for old, new in _WIKITEXT_MISC:
        text = text.replace(old, new)
    return text


def word_count(text: str) -> int:
    """The original text's length in words, as WikiText counts its tokens: words plus one per line end.

    On a WikiText-103 file, where every line ends in " \\n", this equals Megatron-LM's
    `len(text.strip().split(" "))`, the count behind its adjusted perplexity.
    """
    text = text.strip()
    return len(text.split()) + text.count("\n")


# --- LAMBADA -------------------------------------------------------------------------------------


def lambada_split(text: str) -> tuple[str, str]:
    """(context, target word) as Megatron-LM's strict LAMBADA: the target is the last whitespace-separated word."""
    words = text.split()
    if len(words) < 2:
        raise ValueError("a passage needs a context and a last word")
    target = words[-1]
    return text[: text.rfind(target)].strip(), target


def lambada_tokens(text: str, tokenizer: Tokenizer | None = None) -> tuple[list[int], list[int]]:
    """Context and target token ids (GPT-2's unless `tokenizer`); the target is encoded with its
    leading space, as it follows the context."""
    context, target = lambada_split(text)
    tok = tokenizer or gpt2()
    return tok.encode_ordinary(context), tok.encode_ordinary(" " + target)


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|(?<=[.!?]['\"])\s+")
# A sentence's last word: letters only, after a space, followed by the final . ! or ? and maybe quotes.
_LAST_WORD = re.compile(r"(?:^|\s)([A-Za-z]+)[.!?][^A-Za-z0-9\s]*$")


def lambada_style_items(
    text: str, *, min_words: int = MIN_PASSAGE_WORDS, min_letters: int = MIN_TARGET_LETTERS
) -> list[str]:
    """LAMBADA-style cloze passages from narrative text, in text order.

    Like LAMBADA (Paperno et al., 2016), an item is a run of whole sentences and its target is the
    last word of the last sentence; the passage is cut just after that word. Every sentence that
    ends in a word of at least `min_letters` letters gives one item, whose passage is the shortest
    run of sentences ending there with at least `min_words` words. Unlike LAMBADA, nothing checks
    that the word needs the broad context (LAMBADA kept the passages human readers could complete
    only with it), so these items are easier in some ways and noisier in others.
    """
    sentences = []
    for paragraph in re.split(r"\n\s*\n", text):
        paragraph = " ".join(paragraph.split())
        sentences += [s for s in _SENTENCE_END.split(paragraph) if s]
    items = []
    for i, sentence in enumerate(sentences):
        m = _LAST_WORD.search(sentence)
        if m is None or len(m.group(1)) < min_letters:
            continue
        start, words = i, len(sentence.split())
        while words < min_words and start > 0:
            start -= 1
            words += len(sentences[start].split())
        if words >= min_words:
            items.append(" ".join([*sentences[start:i], sentence[: m.end(1)]]))
    return items


# --- reading the inputs --------------------------------------------------------------------------


def read_texts(path: Path) -> list[str]:
    """The `text` of each line of a JSONL file (DataError naming the line when one is malformed)."""
    return [doc.text for doc in read_documents([str(path)])]


def read_text(path: Path) -> str:
    """A UTF-8 text file; DataError naming the file when it cannot be read."""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise DataError(f"{path}: not UTF-8 text") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror})") from None


def builtin_heldout(name: str, progress: bool) -> Path:
    """A held-out text of the builtin corpus (`heldout/<name>.jsonl`), preparing the corpus on first use."""
    data = ensure_builtin(progress)
    meta = json.loads((data / "meta.json").read_text())
    return member_path(data, meta["heldout"][name], f"{data / 'meta.json'}: heldout.{name}")


@dataclass
class Text:
    """A text for the wikitext task, read and checked before the evaluation starts."""

    source: Path
    dataset: str
    original: str  # as written: its words are counted
    text: str  # what is tokenized: detokenized for a WikiText-103 file
    detokenized: bool


def load_wikitext(path: Path, builtin: bool) -> Text:
    """A WikiText-103 file (word-tokenized, so its markup is undone before BPE), or a JSONL of plain
    documents joined by blank lines (the builtin Wikipedia sample, or the user's own)."""
    if path.suffix in (".jsonl", ".json"):
        docs = read_texts(path)
        text = "\n\n".join(doc.strip() for doc in docs)
        kind = "Wikipedia sample (builtin, held out)" if builtin else path.name
        loaded = Text(path, f"{kind}: {len(docs)} documents", text, text, False)
    else:
        original = read_text(path)
        loaded = Text(path, f"WikiText-103 format: {path.name}", original, wikitext_detokenize(original), True)
    if word_count(loaded.original) < 2:
        raise DataError(f"{path}: too short to evaluate (fewer than 2 words)")
    return loaded


@dataclass
class Cloze:
    """LAMBADA items as (context, target) token ids, read and checked before the evaluation starts."""

    source: Path
    dataset: str
    items: list[tuple[list[int], list[int]]]


def load_lambada(path: Path, builtin: bool, tokenizer: Tokenizer | None = None) -> Cloze:
    """The real LAMBADA test set (one passage per JSONL line), or the builtin items cut from a held-out
    novel, in the ids of `tokenizer` (the run's data tokenizer; GPT-2's by default)."""
    if builtin:
        texts = [item for doc in read_texts(path) for item in lambada_style_items(doc)]
        dataset = "LAMBADA-style (builtin, cut from a held-out novel; not real LAMBADA)"
    else:
        texts = read_texts(path)
        dataset = f"LAMBADA: {path.name}"
    items = []
    for i, text in enumerate(texts, 1):
        try:
            items.append(lambada_tokens(text, tokenizer))
        except ValueError as e:
            raise DataError(f"{path}: item {i}: {e}") from None
    if not items:
        raise DataError(f"{path}: no LAMBADA items")
    return Cloze(path, dataset, items)
