"""`seqwarm eval`: zero-shot evaluation as the paper reports it (Tables 2 and 6).

The paper judges its models by zero-shot WikiText-103 perplexity and LAMBADA last-word accuracy,
computed with Megatron-LM's evaluation (`tasks/zeroshot_gpt`); this module follows that code.

- `val`, `test`: perplexity on the held-out splits of the run's data, in full-length sequences
  (`curriculum.seqlen_end`, the length the run validates at), every token scored once.
- `wikitext`: one text tokenized whole and scored in sliding windows of the model's context that
  overlap (Megatron's `--overlapping-eval`): each window scores only its last `stride` tokens, so
  every token is scored exactly once and with at least `window - stride` tokens of left context.
  Reported per token and per word of the original text (Megatron's "adjusted" perplexity). The
  builtin text is the held-out Wikipedia sample of the builtin corpus; `--wikitext` takes the real
  WikiText-103 test file, whose tokenization markup is undone first (`wikitext_detokenize`).
- `lambada`: strict last-word accuracy: the greedy prediction must reproduce every token of the
  target word given the passage (Megatron's `--strict-lambada`). The builtin items are cut from a
  held-out novel (`lambada_style_items`) and are called LAMBADA-style everywhere, because they are
  not human-filtered like LAMBADA; `--lambada` takes the real LAMBADA test jsonl.

Design choices are explained in docs/EVALUATION.md.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from seqwarm import __version__
from seqwarm.data.format import TokenData
from seqwarm.data.loader import SequenceIndex
from seqwarm.loss import IGNORE_INDEX
from seqwarm.data.prepare import ensure_builtin, read_documents
from seqwarm.errors import ConfigError, DataError
from seqwarm.model import GPT
from seqwarm.runtime import keep_freed_memory
from seqwarm.tokenizer import EOT_ID, gpt2_encoding
from seqwarm.trained import Trained, open_trained

TASKS = ("val", "test", "wikitext", "lambada")
EVAL_FILE = "eval.json"  # written into the run (or checkpoint) directory; `seqwarm report` reads it
FORMAT = "seqwarm-eval-v1"
# Megatron-LM's zero-shot script evaluates WikiText-103 with `--overlapping-eval 32`.
MEGATRON_STRIDE = 32
# The builtin LAMBADA-style items (DATA.md): a passage of at least 40 words whose last word, the
# target, has at least 3 letters.
MIN_PASSAGE_WORDS = 40
MIN_TARGET_LETTERS = 3


@dataclass
class TaskResult:
    """One task's outcome, as printed and as stored in eval.json."""

    task: str
    dataset: str  # what was evaluated, in words ("LAMBADA-style ..." for the builtin cloze set)
    metrics: dict[str, float]
    counts: dict[str, int]  # tokens / words / items behind the metrics
    source: str | None = None  # the file read, and its sha256
    sha256: str | None = None
    settings: dict = field(default_factory=dict)
    seconds: float = 0.0


# --- scoring -------------------------------------------------------------------------------------


@torch.inference_mode()
def score_targets(
    model: GPT, inputs: torch.Tensor, targets: torch.Tensor, *, greedy: bool = False, chunk: int = 1024
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Negative log-likelihood of every target that is not IGNORE_INDEX (row-major), and with
    `greedy` whether the argmax prediction there is the target.

    inputs, targets (B, T). Only the scored positions go through the output layer, a chunk of them
    at a time: a window of a sliding evaluation scores a few of its positions, a LAMBADA item only
    its target word, and the full logits (B, T, 50257) of a batch would dwarf the model.
    """
    hidden = model.hidden(inputs)  # (B, T, C)
    keep = targets != IGNORE_INDEX
    h, y = hidden[keep], targets[keep]  # (n, C), (n,)
    weight = model.wte.weight[: model.cfg.vocab_size]  # tied output layer; padding rows never predicted
    nll, hit = [torch.zeros(0, device=h.device)], [torch.zeros(0, dtype=torch.bool, device=h.device)]
    for start in range(0, len(y), chunk):
        logits = (h[start : start + chunk] @ weight.T).float()  # (c, V)
        target = y[start : start + chunk]
        nll.append(F.cross_entropy(logits, target, reduction="none"))
        if greedy:
            hit.append(logits.argmax(dim=-1) == target)
    return torch.cat(nll), torch.cat(hit) if greedy else None


def sliding_windows(n_tokens: int, window: int, stride: int) -> list[tuple[int, int, int]]:
    """(start, end, scored) of each window over a text of n_tokens tokens.

    A window feeds tokens[start:end] and predicts tokens[start + 1 : end + 1]; it scores only its
    last `scored` predictions. As in Megatron-LM's `_LMDataset`, the first window scores all its
    tokens and each later one moves `stride` tokens on and scores the new ones, so every token
    after the first is scored exactly once (the first has nothing to be predicted from). Unlike
    Megatron, whose last window starts on the stride grid and is padded, the last window here ends
    at the last token, which gives the text's final tokens the full context.
    """
    last = n_tokens - 1  # index of the last token, the last prediction target
    if last < 1:
        return []
    end = min(window, last)
    windows = [(0, end, end)]
    while end < last:
        new_end = min(end + stride, last)
        windows.append((new_end - window, new_end, new_end - end))
        end = new_end
    return windows


def window_nll(
    model: GPT, tokens: np.ndarray, *, stride: int, batch_size: int, device: torch.device, progress: bool, desc: str
) -> tuple[float, int]:
    """Total NLL and number of scored tokens of one text under overlapping sliding windows."""
    window = model.cfg.max_seqlen
    windows = sliding_windows(len(tokens), window, stride)
    total, count = 0.0, 0
    for i in tqdm(range(0, len(windows), batch_size), desc=desc, unit="batch", disable=not progress, leave=False):
        group = windows[i : i + batch_size]
        # All windows have the model's full length, except a lone first one of a short text.
        inputs = torch.from_numpy(np.stack([tokens[s:e] for s, e, _ in group]).astype(np.int64))
        targets = torch.from_numpy(np.stack([tokens[s + 1 : e + 1] for s, e, _ in group]).astype(np.int64))
        for row, (s, e, scored) in enumerate(group):
            targets[row, : e - s - scored] = IGNORE_INDEX  # already scored by an earlier window
        nll, _ = score_targets(model, inputs.to(device), targets.to(device))
        total += nll.double().sum().item()
        count += len(nll)
    return total, count


def split_nll(model: GPT, index: SequenceIndex, *, batch_size: int, device: torch.device, progress: bool, desc: str) -> tuple[float, int]:
    """Total NLL and token count over all full-length sequences of a split (the training validation's layout)."""
    total, count = 0.0, 0
    for i in tqdm(range(0, len(index), batch_size), desc=desc, unit="batch", disable=not progress, leave=False):
        rows = index.rows(range(i, min(i + batch_size, len(index)))).to(device)
        nll, _ = score_targets(model, rows[:, :-1], rows[:, 1:])
        total += nll.double().sum().item()
        count += len(nll)
    return total, count


def lambada_hits(
    model: GPT, items: Sequence[tuple[list[int], list[int]]], *, batch_size: int, device: torch.device, progress: bool, desc: str
) -> tuple[list[bool], float, int]:
    """Strict greedy hits of (context, target) token lists, the target words' total NLL and token count.

    An item counts only when the argmax at every target position is that target token, as in
    Megatron-LM's LAMBADA evaluation. A context longer than the model's window keeps its last
    tokens. Items are batched by length and padded on the right, which a causal model never sees.
    """
    window = model.cfg.max_seqlen
    seqs = []
    for context, target in items:
        context = context[max(0, len(context) + len(target) - 1 - window) :]
        seqs.append((context + target, len(target)))
    order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i][0]))
    hits = [False] * len(seqs)
    total, count = 0.0, 0
    for i in tqdm(range(0, len(order), batch_size), desc=desc, unit="batch", disable=not progress, leave=False):
        group = order[i : i + batch_size]
        width = max(len(seqs[j][0]) for j in group) - 1
        inputs = torch.full((len(group), width), EOT_ID, dtype=torch.long)
        targets = torch.full((len(group), width), IGNORE_INDEX, dtype=torch.long)
        for row, j in enumerate(group):
            ids, n_target = seqs[j]
            n = len(ids) - 1
            inputs[row, :n] = torch.tensor(ids[:-1])
            targets[row, n - n_target : n] = torch.tensor(ids[-n_target:])
        nll, hit = score_targets(model, inputs.to(device), targets.to(device), greedy=True)
        per_row = (targets != IGNORE_INDEX).sum(dim=1).tolist()  # scored targets come row-major
        for j, row_hits in zip(group, hit.cpu().split(per_row)):
            hits[j] = bool(row_hits.all())
        total += nll.double().sum().item()
        count += len(nll)
    return hits, total, count


def safe_exp(x: float) -> float:
    return math.exp(x) if x < 709 else math.inf


# --- texts ---------------------------------------------------------------------------------------

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


def lambada_split(text: str) -> tuple[str, str]:
    """(context, target word) as Megatron-LM's strict LAMBADA: the target is the last whitespace-separated word."""
    words = text.split()
    if len(words) < 2:
        raise ValueError("a passage needs a context and a last word")
    target = words[-1]
    return text[: text.rfind(target)].strip(), target


def lambada_tokens(text: str) -> tuple[list[int], list[int]]:
    """Context and target token ids; the target is encoded with its leading space, as it follows the context."""
    context, target = lambada_split(text)
    enc = gpt2_encoding()
    return enc.encode_ordinary(context), enc.encode_ordinary(" " + target)


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


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 24):
            h.update(chunk)
    return h.hexdigest()


def read_texts(path: Path) -> list[str]:
    """The `text` of each line of a JSONL file (DataError naming the line when one is malformed)."""
    return [doc.text for doc in read_documents([str(path)])]


def builtin_heldout(name: str, progress: bool) -> Path:
    """A held-out text of the builtin corpus (`heldout/<name>.jsonl`), preparing the corpus on first use."""
    data = ensure_builtin(progress)
    meta = json.loads((data / "meta.json").read_text())
    return data / meta["heldout"][name]


# --- tasks ---------------------------------------------------------------------------------------


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
        original = _read_text(path)
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


def load_lambada(path: Path, builtin: bool) -> Cloze:
    if builtin:
        texts = [item for doc in read_texts(path) for item in lambada_style_items(doc)]
        dataset = "LAMBADA-style (builtin, cut from a held-out novel; not real LAMBADA)"
    else:
        texts = read_texts(path)
        dataset = f"LAMBADA: {path.name}"
    items = []
    for i, text in enumerate(texts, 1):
        try:
            items.append(lambada_tokens(text))
        except ValueError as e:
            raise DataError(f"{path}: item {i}: {e}") from None
    if not items:
        raise DataError(f"{path}: no LAMBADA items")
    return Cloze(path, dataset, items)


@dataclass
class Plan:
    """Everything the chosen tasks need, checked and read before any evaluation starts."""

    trained: Trained
    tasks: list[str]
    device: torch.device
    batch_size: int
    stride: int
    progress: bool
    data: TokenData | None = None  # val/test
    splits: dict[str, SequenceIndex] = field(default_factory=dict)  # full-length sequences of val/test
    wikitext: Text | None = None
    lambada: Cloze | None = None


def eval_split(model: GPT, plan: Plan, split: str) -> TaskResult:
    index = plan.splits[split]
    total, count = split_nll(model, index, batch_size=plan.batch_size, device=plan.device, progress=plan.progress, desc=split)
    info = plan.data.meta["splits"][split]
    return TaskResult(
        task=split,
        dataset=f"{split} split of {plan.data.path}",
        metrics={"ppl": safe_exp(total / count), "loss": total / count},
        counts={"tokens": count},
        source=str(plan.data.path / info["file"]),
        sha256=info["sha256"],
        settings={"seqlen": index.seqlen},
    )


def eval_wikitext(model: GPT, plan: Plan) -> TaskResult:
    wiki = plan.wikitext
    tokens = np.asarray(gpt2_encoding().encode_ordinary(wiki.text), dtype=np.int64)  # the whole text at once
    words = word_count(wiki.original)
    total, count = window_nll(
        model, tokens, stride=plan.stride, batch_size=plan.batch_size, device=plan.device, progress=plan.progress, desc="wikitext"
    )
    return TaskResult(
        task="wikitext",
        dataset=wiki.dataset,
        # Megatron-LM: ppl = exp(NLL / (tokens - 1)); adjusted = exp(NLL / (words - 1)), since the
        # first token (and so the first word) is never predicted.
        metrics={"ppl": safe_exp(total / count), "word_ppl": safe_exp(total / (words - 1)), "loss": total / count},
        counts={"tokens": len(tokens), "scored_tokens": count, "words": words},
        source=str(wiki.source),
        sha256=file_sha256(wiki.source),
        settings={"window": model.cfg.max_seqlen, "stride": plan.stride, "detokenized": wiki.detokenized},
    )


def eval_lambada(model: GPT, plan: Plan) -> TaskResult:
    cloze = plan.lambada
    hits, total, count = lambada_hits(
        model, cloze.items, batch_size=plan.batch_size, device=plan.device, progress=plan.progress, desc="lambada"
    )
    return TaskResult(
        task="lambada",
        dataset=cloze.dataset,
        metrics={"acc": sum(hits) / len(hits), "target_ppl": safe_exp(total / count)},
        counts={"items": len(hits), "correct": sum(hits), "target_tokens": count},
        source=str(cloze.source),
        sha256=file_sha256(cloze.source),
        settings={"strict": True, "window": model.cfg.max_seqlen},
    )


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise DataError(f"{path}: not UTF-8 text") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror})") from None


# --- the command ---------------------------------------------------------------------------------


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device: cuda requested but no CUDA device is available")
    return torch.device(name)


def plan_eval(
    path: str | Path,
    tasks: Sequence[str],
    *,
    data: str | None = None,
    wikitext: str | None = None,
    lambada: str | None = None,
    stride: int = MEGATRON_STRIDE,
    batch_size: int = 8,
    device: str = "auto",
    progress: bool = True,
) -> Plan:
    """Check the inputs of `seqwarm eval` before any work: every mistake fails here, naming the file or option."""
    trained = open_trained(path)
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise ConfigError(f"--tasks: unknown task {', '.join(unknown)} (choose from {', '.join(TASKS)})")
    if batch_size <= 0:
        raise ConfigError(f"--batch-size: must be positive, got {batch_size}")
    if not 0 < stride <= trained.gpt.max_seqlen:
        raise ConfigError(f"--stride: must be between 1 and the model's context ({trained.gpt.max_seqlen}), got {stride}")
    plan = Plan(trained, list(tasks), resolve_device(device), batch_size, stride, progress)
    for option, value in (("--wikitext", wikitext), ("--lambada", lambada)):
        if value is not None and not Path(value).is_file():
            raise DataError(f"{option}: {value}: no such file")
    if "wikitext" in tasks:
        path = builtin_heldout("wikipedia", progress) if wikitext is None else Path(wikitext)
        plan.wikitext = load_wikitext(path, builtin=wikitext is None)
    if "lambada" in tasks:
        path = builtin_heldout("narrative", progress) if lambada is None else Path(lambada)
        plan.lambada = load_lambada(path, builtin=lambada is None)
        longest = max(len(target) for _, target in plan.lambada.items)
        if longest >= trained.gpt.max_seqlen:
            raise DataError(f"{path}: a target word of {longest} tokens leaves no context in the model's window of {trained.gpt.max_seqlen}")
    if {"val", "test"} & set(tasks):
        cfg = trained.config()
        if data is None and cfg is None:
            raise DataError(f"{trained.checkpoint}: not inside a run directory with config.yaml; give --data DIR for val/test")
        data = data or cfg.data.path
        directory = ensure_builtin(progress) if data == "builtin" else data
        plan.data = TokenData(directory, verify="size", vocab_size=trained.gpt.vocab_size)
        # The run validates at curriculum.seqlen_end, its "full length" (Section 4's seqlen_e).
        seqlen = min(cfg.curriculum.seqlen_end, trained.gpt.max_seqlen) if cfg else trained.gpt.max_seqlen
        plan.splits = {split: plan.data.sequences(split, seqlen) for split in ("val", "test") if split in tasks}
    return plan


def run_eval(plan: Plan) -> list[TaskResult]:
    if plan.device.type == "cpu":
        keep_freed_memory()  # every batch allocates ~50 MB chunks of logits again: keep them (1.7x faster)
    model = plan.trained.model(plan.device)
    results = []
    for task in plan.tasks:
        start = time.perf_counter()
        if task in ("val", "test"):
            result = eval_split(model, plan, task)
        elif task == "wikitext":
            result = eval_wikitext(model, plan)
        else:
            result = eval_lambada(model, plan)
        result.seconds = time.perf_counter() - start
        results.append(result)
    return results


def main_eval(
    path: str | Path,
    tasks: Sequence[str] | None = None,
    *,
    lm_eval_tasks: Sequence[str] = (),
    lm_eval_limit: int | None = None,
    json_out: str | Path | None = None,
    **options,
) -> tuple[list[TaskResult], dict, Path]:
    """`seqwarm eval`: check everything, evaluate, merge into the eval JSON. Returns (results, document, its path).

    Without --tasks, the builtin tasks run unless only lm-eval tasks were asked for.
    """
    if tasks is None:
        tasks = [] if lm_eval_tasks else list(TASKS)
    plan = plan_eval(path, tasks, **options)
    task_manager = None
    if lm_eval_tasks:
        from seqwarm.hf import lm_eval_precheck

        task_manager = lm_eval_precheck(list(lm_eval_tasks))
    out = Path(json_out) if json_out else default_json_path(path, plan.trained)
    results = run_eval(plan)
    if lm_eval_tasks:
        from seqwarm.hf import run_lm_eval

        results += run_lm_eval(
            plan.trained, list(lm_eval_tasks), task_manager, device=plan.device, batch_size=plan.batch_size, limit=lm_eval_limit
        )
    doc = results_json(plan.trained, results, plan.device, read_eval(out))
    write_json(out, doc)
    return results, doc, out


def default_json_path(path: str | Path, trained: Trained) -> Path:
    """RUN_DIR/eval.json for a run directory (what `seqwarm report` reads), CHECKPOINT_DIR/eval.json for a checkpoint."""
    if Path(path).resolve() == trained.checkpoint.resolve():
        return trained.checkpoint / EVAL_FILE
    return Path(path) / EVAL_FILE


def results_json(trained: Trained, results: list[TaskResult], device: torch.device, previous: dict | None = None) -> dict:
    """The eval JSON. Results of an earlier `seqwarm eval` of the same checkpoint are kept for the
    tasks not evaluated again, so tasks can be run one at a time."""
    doc = {
        "format": FORMAT,
        "seqwarm": __version__,
        "checkpoint": trained.describe(),
        "model": asdict(trained.gpt),
        "device": str(device),
        "results": {},
    }
    if previous and previous.get("checkpoint") == doc["checkpoint"]:
        doc["results"] = dict(previous.get("results", {}))
    doc["results"] |= {r.task: asdict(r) for r in results}
    return doc


def read_eval(path: Path) -> dict | None:
    """An eval JSON written by `seqwarm eval`, or None when it is missing or not one."""
    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return doc if isinstance(doc, dict) and doc.get("format") == FORMAT else None


def write_json(path: Path, doc: dict) -> None:
    """Atomically (a temporary file renamed into place), so a crash never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(doc, indent=2) + "\n")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


METRIC_NAMES = {
    "ppl": "perplexity per token",
    "word_ppl": "perplexity per word (adjusted)",
    "loss": "loss (nats per token)",
    "acc": "accuracy (strict)",
    "target_ppl": "target-word perplexity per token",
}


def metric_label(task: str, metric: str) -> str:
    """seqwarm's metrics in words; lm-eval's under their own names (its `acc` means what each task defines)."""
    return metric if task.startswith("lm-eval/") else METRIC_NAMES.get(metric, metric)


def format_value(value: float) -> str:
    return f"{value:.4f}" if abs(value) < 100 else f"{value:,.2f}"


def format_table(results: Sequence[TaskResult | dict]) -> str:
    """An aligned text table: task, dataset, metric, value, and the counts behind it."""
    rows = [("task", "dataset", "metric", "value", "n")]
    for r in results:
        r = asdict(r) if isinstance(r, TaskResult) else r
        counts = ", ".join(f"{v:,} {k.replace('_', ' ')}" for k, v in r["counts"].items())
        for i, (name, value) in enumerate(r["metrics"].items()):
            first = i == 0
            cells = (r["task"], r["dataset"]) if first else ("", "")
            rows.append((*cells, metric_label(r["task"], name), format_value(value), counts if first else ""))
    widths = [max(len(row[c]) for row in rows) for c in range(5)]
    lines = [
        "  ".join(cell.rjust(w) if c == 3 else cell.ljust(w) for c, (cell, w) in enumerate(zip(row, widths))).rstrip()
        for row in rows
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
