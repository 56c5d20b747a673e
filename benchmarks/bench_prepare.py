"""`seqwarm prepare`'s throughput and memory against the tokenizer's own limit, per input format (issue 13).

    python benchmarks/bench_prepare.py [--mb 1000] [--formats jsonl,zst,parquet,txt] [--workers 1,2] [--out DIR]
    python benchmarks/bench_prepare.py --loader      # the step time the loader's background prefetch saves

A corpus of `--mb` MB of generated English-like text (documents of 200-2,000 words drawn from a
fixed 2,000-word vocabulary, seeded) is written once per format. Then, in the same run:

- raw: GPT-2's tiktoken `encode_ordinary_batch` on the documents already in memory, with one thread
  per core (tiktoken's own parallelism), on a 20 MB sample of the corpus: the tokenizer's limit,
  per wall second and per CPU second, measured again right before each prepare run; and, as a
  stricter limit, tiktoken's `encode_to_numpy` on one thread per core, which `prepare` itself uses
  (no Python list per document: faster than the batch API);
- for each format and worker count: `python -m seqwarm prepare` in a child process, its wall time
  (both passes, from the files to the published shards, interpreter start and imports included),
  tokens/s, its CPU seconds (the child and its workers), both as ratios to raw, and the peak RSS
  summed over the child and its worker processes (sampled from /proc every 50 ms). On a busy
  machine the wall-clock ratio follows the load; the CPU-second ratio is the cost per token.

The outputs of every worker count are checked to be byte-identical. Wall times depend on what
else the machine runs; record the CPU with the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def generate(mb: float, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    letters = np.array(list("etaoinshrdlcumwfgypbvkjxqz"))
    weights = np.linspace(2.0, 0.1, len(letters))
    vocab = ["".join(rng.choice(letters, size=rng.integers(1, 10), p=weights / weights.sum())) for _ in range(2000)]
    zipf = 1 / np.arange(1, len(vocab) + 1)
    zipf /= zipf.sum()
    docs, size = [], 0
    while size < mb * 1e6:
        words = rng.choice(vocab, size=int(rng.integers(200, 2000)), p=zipf)
        sentences = [" ".join(words[i : i + 14]).capitalize() + "." for i in range(0, len(words), 14)]
        text = "\n\n".join(" ".join(sentences[i : i + 6]) for i in range(0, len(sentences), 6))
        docs.append(text)
        size += len(text)
    return docs


def write(docs: list[str], fmt: str, root: Path) -> Path:
    if fmt == "txt":
        d = root / "txt"
        d.mkdir()
        for i, t in enumerate(docs):
            (d / f"{i:07d}.txt").write_text(t)
        return d
    if fmt in ("jsonl", "zst"):
        lines = "".join(json.dumps({"text": t}) + "\n" for t in docs).encode()
        if fmt == "jsonl":
            (root / "c.jsonl").write_bytes(lines)
            return root / "c.jsonl"
        import zstandard

        (root / "c.jsonl.zst").write_bytes(zstandard.ZstdCompressor(level=3).compress(lines))
        return root / "c.jsonl.zst"
    if fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.table({"text": docs}), root / "c.parquet", row_group_size=4096)
        return root / "c.parquet"
    raise SystemExit(f"unknown format {fmt}")


def raw_throughput(docs: list[str], sample_mb: float = 20, arrays: bool = False) -> tuple[float, float]:
    """Tokens per wall second and per CPU second of tiktoken's batch encoding, one thread per core
    (with `arrays`, of its buffer API, as `GPT2Tokenizer.encode_ordinary_arrays` runs it)."""
    from seqwarm.tokenizer import gpt2

    sample, size = [], 0
    for t in docs:
        sample.append(t)
        size += len(t)
        if size >= sample_mb * 1e6:
            break
    tok = gpt2()
    tok.encode_ordinary_batch(sample[:10])  # the encoding built before the clock starts
    start = time.perf_counter()
    cpu = time.process_time()  # all of this process's threads
    encode = tok.encode_ordinary_arrays if arrays else tok.encode_ordinary_batch
    n = sum(len(ids) for i in range(0, len(sample), 256) for ids in encode(sample[i : i + 256]))
    return n / (time.perf_counter() - start), n / (time.process_time() - cpu)


def tree_rss(pid: int) -> int:
    """Resident bytes of `pid` and all its descendants, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
                ppid = int(stat.rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        todo += children.get(p, [])
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            pass
    return total


def run_prepare(inp: Path, out: Path, workers: int) -> tuple[float, float, int]:
    """Wall seconds, CPU seconds (the child and its workers) and peak RSS of one `seqwarm prepare`."""
    cmd = [sys.executable, "-m", "seqwarm", "prepare", str(inp), "--out", str(out), "--workers", str(workers)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    start, cpu0 = time.perf_counter(), _children_cpu()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    peak, done = 0, threading.Event()

    def sample():
        nonlocal peak
        while not done.is_set():
            peak = max(peak, tree_rss(proc.pid))
            time.sleep(0.05)

    sampler = threading.Thread(target=sample)
    sampler.start()
    _, err = proc.communicate()
    wall = time.perf_counter() - start
    done.set()
    sampler.join()
    if proc.returncode:
        raise SystemExit(f"prepare failed: {err.strip().splitlines()[-1]}")
    return wall, _children_cpu() - cpu0, peak


def _children_cpu() -> float:
    import resource

    r = resource.getrusage(resource.RUSAGE_CHILDREN)  # reaped children and their reaped workers
    return r.ru_utime + r.ru_stime


def bench_prepare(args) -> None:
    root = Path(args.out or tempfile.mkdtemp(prefix="bench-prepare-"))
    root.mkdir(parents=True, exist_ok=True)
    docs = generate(args.mb)
    chars = sum(len(t) for t in docs)
    print(f"corpus: {len(docs):,} documents, {chars / 1e6:.1f} MB of text; {os.cpu_count()} cores", flush=True)
    raw, raw_cpu = raw_throughput(docs)
    print(
        f"raw tokenizer (tiktoken encode_ordinary_batch, {os.cpu_count()} threads): {raw:,.0f} tokens/s, "
        f"{raw_cpu:,.0f} tokens per CPU-second",
        flush=True,
    )
    for fmt in args.formats.split(","):
        src = root / f"src-{fmt}"
        shutil.rmtree(src, ignore_errors=True)
        src.mkdir()
        inp = write(docs, fmt, src)
        disk = sum(p.stat().st_size for p in src.rglob("*") if p.is_file())
        outputs = {}
        for w in [int(x) for x in args.workers.split(",")]:
            out = root / f"out-{fmt}-{w}"
            shutil.rmtree(out, ignore_errors=True)
            raw, raw_cpu = raw_throughput(docs)  # again before each run: the machine's load drifts
            fast, _ = raw_throughput(docs, arrays=True)
            wall, cpu, peak = run_prepare(inp, out, w)
            meta = json.loads((out / "meta.json").read_text())
            tokens = sum(s["tokens"] for s in meta["splits"].values())
            outputs[w] = {s: v["sha256"] for s, v in meta["splits"].items()}
            print(
                f"{fmt:<8} {disk / 1e6:7.1f} MB  workers {w}  {wall:7.1f} s  {tokens / wall:>10,.0f} tokens/s  "
                f"ratio {tokens / wall / raw:.2f}  CPU {cpu:6.1f} s  {tokens / cpu:>10,.0f} tokens/CPU-s  "
                f"ratio {tokens / cpu / raw_cpu:.2f}  peak RSS {peak / 2**20:,.0f} MiB  (raw {raw:,.0f} tokens/s; "
                f"against encode_to_numpy's {fast:,.0f}: {tokens / wall / fast:.2f})",
                flush=True,
            )
            shutil.rmtree(out) if w != min(outputs) else None
        assert len({json.dumps(v, sort_keys=True) for v in outputs.values()}) == 1, f"{fmt}: outputs differ"
        print(f"{fmt}: identical split sha256 for workers {sorted(outputs)}", flush=True)
        shutil.rmtree(src)
    if not args.out:
        shutil.rmtree(root, ignore_errors=True)


def bench_loader(steps: int = 40) -> None:
    """A tiny GPT's training steps with the loader inline and prefetched, alternating step by step
    (so that the machine's load hits both alike): the time `next_batch` takes in the step, and the
    whole step's median."""
    import torch

    from seqwarm.data.format import SequenceIndex
    from seqwarm.data.loader import TrainLoader
    from seqwarm.model import GPT, GPTConfig

    torch.manual_seed(0)
    vocab = 2048
    tokens = np.random.default_rng(0).integers(0, vocab, size=20_000_000, dtype=np.uint16)
    model = GPT(GPTConfig(n_layer=2, n_head=4, d_model=128, max_seqlen=256, vocab_size=vocab))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    B, L = 16, 256
    loaders = {mode: TrainLoader(SequenceIndex(tokens, L), seed=1) for mode in ("inline", "prefetched")}
    data = {mode: [] for mode in loaders}
    step_s = {mode: [] for mode in loaders}
    for _ in range(steps):
        for mode, loader in loaders.items():
            start = time.perf_counter()
            batch = loader.next_batch(B, L)
            data[mode].append(time.perf_counter() - start)
            if mode == "prefetched":
                loader.prefetch(B, L)
            (model(batch.inputs, batch.targets)[0] / B).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            step_s[mode].append(time.perf_counter() - start)
    for loader in loaders.values():
        loader.close()
    print(f"loader: batch {B} x {L}, tiny GPT (2 layers, 128 wide, {vocab} ids), {torch.get_num_threads()} threads")
    for mode in loaders:
        print(
            f"  {mode:<10}  next_batch median {np.median(data[mode][5:]) * 1e3:6.2f} ms   "
            f"step median {np.median(step_s[mode][5:]) * 1e3:7.1f} ms"
        )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mb", type=float, default=1000, help="MB of text per format (default 1000)")
    p.add_argument("--formats", default="jsonl,zst,parquet,txt")
    p.add_argument("--workers", default="1,2")
    p.add_argument("--out", help="keep the corpora and outputs here (default: a temporary directory)")
    p.add_argument("--loader", action="store_true", help="measure the loader's prefetch instead")
    args = p.parse_args()
    bench_loader() if args.loader else bench_prepare(args)


if __name__ == "__main__":
    main()
