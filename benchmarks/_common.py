"""What the benchmarks share: the synthetic corpus, the machine's description, the sgemm peak and
torch.compile's counters. Imported by the scripts next to it (`benchmarks/` is on `sys.path` when
one of them runs; tests put it there).
"""

from __future__ import annotations

import copy
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch

import seqwarm
from seqwarm.data.format import TokenData
from seqwarm.data.prepare import prepare

# The synthetic corpus's vocabulary, space-separated (make_corpus splits it).
WORDS = (
    "the of and to in a is that for it as was with be by on not he this are or his from at which but have an they "
    "you were her she there been one all we their has would when if so no will more about can time said could them "
    "model sequence length warmup training loss batch learning rate stable spike variance adam token step river "
    "mountain city garden winter summer letter story king queen ship house road light night morning evening"
)


def make_corpus(root: Path, *, docs: int = 200, words_per_doc: int = 1500, seed: int = 0) -> Path:
    """~330K train tokens of random words in paragraphs (at 200 docs), prepared into root/prepared.

    Enough full-length sequences for gpt2-117m (1025 tokens each) and a val split of a few of them,
    which `build` requires. Paragraph breaks matter: `prepare` splits val/test off by paragraph chunks.
    """
    src = root / "text"
    src.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for i in range(docs):
        words = rng.choice(WORDS.split(), size=words_per_doc)
        sentences = [" ".join(words[j : j + 12]).capitalize() + "." for j in range(0, len(words), 12)]
        paragraphs = [" ".join(sentences[j : j + 5]) for j in range(0, len(sentences), 5)]
        (src / f"doc{i:03d}.txt").write_text("\n\n".join(paragraphs))
    return prepare([str(src)], root / "prepared", val_fraction=0.02, test_fraction=0.01, progress=False)


def with_vocab(data: TokenData, vocab_size: int | None) -> TokenData:
    """The same corpus seen through a smaller vocabulary: every id taken modulo `vocab_size`, in memory.

    The compute of a step depends on the vocabulary's size, not on which ids the tokens are, so a
    shape with the proxy's 1,024 or an 8,192-token vocabulary trains on the GPT-2-tokenized corpus
    remapped, instead of a BPE trained for each size. `build` reads `vocab_size`, `eot_id` and the
    splits, the only fields replaced. None: the corpus as it is.
    """
    if vocab_size is None or vocab_size == data.vocab_size:
        return data
    view = copy.copy(data)
    view.splits = {name: (np.asarray(a) % vocab_size).astype(a.dtype) for name, a in data.splits.items()}
    view.vocab_size = vocab_size
    view.eot_id = data.eot_id % vocab_size
    return view


def cpu_info() -> tuple[str, list[str]]:
    """(model name, the matmul-relevant ISA flags) from /proc/cpuinfo; ("unknown", []) elsewhere."""
    cpu, flags = "unknown", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and cpu == "unknown":
                cpu = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(value.split())
    except OSError:
        pass
    return cpu, sorted(f for f in flags if f.startswith(("amx", "avx512_bf16", "avx512f", "avx2")))


def machine_info() -> dict:
    cpu, isa = cpu_info()
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "seqwarm": seqwarm.__version__,
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "isa": isa,
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "libc": " ".join(platform.libc_ver()),
        # Other processes on the cores slow every measurement down; the load average shows them.
        "loadavg": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        # Any of these would change what is being measured.
        "env": {k: v for k, v in os.environ.items() if k.startswith(("OMP_", "MKL_", "MALLOC_", "GLIBC_TUNABLES"))},
    }


def print_header(title: str, info: dict) -> None:
    """The machine and software a run of a benchmark measured, as its output's first lines."""
    threads = f"{info['torch_threads']} threads ({info['torch_interop_threads']} interop)"
    print(title)
    print(f"  date            {info['date']}")
    print(f"  cpu             {info['cpu']}, {info['cpu_count']} logical cores ({' '.join(info['isa'])})")
    print(f"  torch           {info['torch']}, {threads}")
    print(f"  python / numpy  {info['python']} / {info['numpy']}, {info['libc']}, seqwarm {info['seqwarm']}")
    print(f"  environment     {info['env'] or 'no OMP_/MKL_/MALLOC_ variables set'}")
    print(f"  load average    {info['loadavg']} (1, 5, 15 min) before starting")
    print()


DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def precision_name(dtype: torch.dtype | None) -> str:
    """fp32 for None (no autocast), else the name of the autocast dtype."""
    return "fp32" if dtype is None else {v: k for k, v in DTYPES.items()}[dtype]


def sgemm_peak(precision: str, *, n: int = 2048, reps: int = 5, device: str = "cpu") -> float:
    """Median GFLOP/s of an n x n by n x n matmul in `precision` (fp32, bf16, fp16), after one untimed rep.

    The yardstick for "share of the peak": measured in the same process, on the same thread count
    and at the same moment as the training it is compared with, so a slow CPU, a missing bf16 unit
    or a busy machine lowers both alike. The median, not the best, for the same reason.
    """
    dtype = DTYPES[precision]
    gen = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, generator=gen, device=device).to(dtype)
    b = torch.randn(n, n, generator=gen, device=device).to(dtype)
    times = []
    for i in range(reps + 1):
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        a @ b
        if device == "cuda":
            torch.cuda.synchronize()
        if i:
            times.append(time.perf_counter() - t0)
    return 2 * n**3 / statistics.median(times) / 1e9


def dynamo_counts() -> dict[str, int]:
    """torch.compile's running totals: frames compiled (`frames`) and graphs built (`graphs`).

    A compiled function compiles one frame on its first call and one more at each recompile (a
    guard failed: a new shape, dtype or autocast state), so the difference of `frames` over a run,
    minus its first compile, is that run's recompile count.
    """
    from torch._dynamo.utils import counters

    return {"frames": int(counters["frames"]["ok"]), "graphs": int(counters["stats"]["unique_graphs"])}
