"""Kill, interrupt and corrupt tiny training runs; count what seqwarm survives and detects (docs/RELIABILITY.md).

    python benchmarks/reliability_probe.py                  # 20 kill -9, 5 SIGTERM, every corruption kind
    python benchmarks/reliability_probe.py --kills 50 --seed 1

1. Kills: one run of tiny-slw (16 steps, a checkpoint every 4) is trained as a `seqwarm train` process
   that gets `kill -9` at a random moment (after a random number of logged steps plus a random
   delay, so some kills land inside a checkpoint save), then `--resume`d, again and again until it
   finishes. Survived: the final weights equal those of an uninterrupted run bit for bit, each step is
   in metrics.jsonl exactly once, and no temporary directory is left in checkpoints/.
2. SIGTERM: the same, with SIGTERM: exit code 143, one line on stderr, a checkpoint of the step it
   stopped at, and a resume to the same final weights.
3. Corruptions: a copy of a finished run's latest checkpoint is damaged in one of many ways (a byte
   flipped at a random offset of each file, each file truncated, emptied or deleted, state.json's
   numbers edited, a NaN written into a weight with a manifest that agrees, an empty step directory);
   detected: `read_checkpoint(verify=True)` refuses it. Then, for one damage of each file, `seqwarm
   train --resume` must fall back to the checkpoint before and finish with the uninterrupted weights.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from seqwarm import checkpoint as ckpt  # noqa: E402
from seqwarm.data.prepare import prepare  # noqa: E402
from seqwarm.metrics import read_metrics  # noqa: E402

STEPS = 16
COMMON = [
    "train.num_threads=1",
    f"train.max_steps={STEPS}",
    "train.max_tokens=100000",
    "train.lr_decay_tokens=8000",
    "checkpoint.every_steps=4",
    "eval.every_tokens=null",
]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def corpus(root: Path) -> Path:
    rng = np.random.default_rng(0)
    words = "the of and to in a is that for it as was with be by on not he this are or his model sequence".split()
    src = root / "src"
    src.mkdir()
    for i in range(40):
        (src / f"doc{i}.txt").write_text(" ".join(rng.choice(words, size=400)) + ".\n")
    return prepare([str(src)], root / "data", val_fraction=0.05, test_fraction=0.05, progress=False)


def seqwarm(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "seqwarm", "train", *args], stderr=subprocess.PIPE, text=True, env=ENV
    )


def final_weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(run / "checkpoints" / f"step-{STEPS:08d}" / "model.safetensors")


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def steps_once(run: Path) -> bool:
    return [r["step"] for r in read_metrics(run / "metrics.jsonl") if "loss" in r] == list(range(1, STEPS + 1))


def leftovers(run: Path) -> list[str]:
    root = run / "checkpoints"
    return [p.name for p in root.iterdir() if p.name.startswith(".")] if root.is_dir() else []


def logged_steps(run: Path) -> int:
    rows = [r for r in read_metrics(run / "metrics.jsonl") if "loss" in r] if (run / "metrics.jsonl").exists() else []
    return rows[-1]["step"] if rows else 0


def interrupt_until_done(run: Path, data: Path, sig: int, times: int, rng: random.Random) -> dict:
    """Train `run`, sending `sig` `times` times at random moments (resuming after each), then to the end."""
    counts = {"signals": 0, "during_save": 0, "clean_exits": 0, "left_tmp": 0}
    for _ in range(times):
        resume = run.exists() and ckpt.latest_checkpoint(run) is not None
        args = ["--resume", str(run)] if resume else ["tiny-slw", f"data.path={data}", f"run.dir={run}", *COMMON]
        if not resume and run.exists():
            args.append("--force")
        proc = seqwarm(*args)
        target = logged_steps(run) + rng.randint(1, 5)
        while logged_steps(run) < target and proc.poll() is None:
            time.sleep(0.01)
        time.sleep(rng.uniform(0, 0.3))  # somewhere inside a step, an eval or a save
        if proc.poll() is not None:  # finished before the signal
            proc.communicate()
            break
        saving = any(".tmp-" in n for n in leftovers(run))
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=300)
        counts["signals"] += 1
        counts["during_save"] += saving
        if sig == signal.SIGTERM:
            lines = err.strip().splitlines()
            ok = proc.returncode == 143 and len(lines) == 1 and "stopped after step" in lines[0]
            stopped = int(lines[0].split("after step ")[1].split()[0]) if ok else -1
            ok = ok and ckpt.latest_checkpoint(run).name == f"step-{stopped:08d}"
            counts["clean_exits"] += ok
            if not ok:  # say why, for the record
                counts.setdefault("other_exits", []).append(f"rc {proc.returncode}: {' | '.join(lines)[-200:]}")
        counts["left_tmp"] += bool([n for n in leftovers(run) if ".tmp-" in n])
    proc = seqwarm("--resume", str(run)) if ckpt.latest_checkpoint(run) else None
    if proc:
        proc.communicate(timeout=600)
    return counts


def damages(path: Path, rng: random.Random) -> list[tuple[str, callable]]:
    """(name, function damaging a checkpoint directory) for every kind of damage tried."""

    def flip(name):
        def f(d):
            data = bytearray((d / name).read_bytes())
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
            (d / name).write_bytes(bytes(data))

        return f

    def truncate(name):
        return lambda d: (d / name).write_bytes((d / name).read_bytes()[: (d / name).stat().st_size // 2])

    def empty(name):
        return lambda d: (d / name).write_bytes(b"")

    def delete(name):
        return lambda d: (d / name).unlink()

    def edit_state(key):
        def f(d):
            state = json.loads((d / "state.json").read_text())
            state["clock"][key] += 1
            (d / "state.json").write_text(json.dumps(state, indent=2))

        return f

    def nan_weight(d):
        w = load_file(d / "model.safetensors")
        k = sorted(w)[rng.randrange(len(w))]
        w[k].view(-1)[rng.randrange(w[k].numel())] = float("nan")
        save_file(w, d / "model.safetensors")
        ckpt.write_manifest(d)  # a manifest that agrees: only the finiteness check can tell

    def hollow(d):
        for p in d.iterdir():
            p.unlink()

    files = [*ckpt.FILES, ckpt.MANIFEST]
    kinds = []
    for name in files:
        kinds += [(f"flip {name} #{i}", flip(name)) for i in range(3)]
        kinds += [
            (f"truncate {name}", truncate(name)),
            (f"empty {name}", empty(name)),
            (f"delete {name}", delete(name)),
        ]
    kinds += [("edit state.json step", edit_state("step")), ("edit state.json tokens", edit_state("tokens"))]
    kinds += [(f"NaN weight #{i}", nan_weight) for i in range(3)]
    kinds += [("empty step directory", hollow)]
    return kinds


def corruptions(finished: Path, data: Path, rng: random.Random, reference: dict, work: Path) -> dict:
    from seqwarm.checkpoint import read_checkpoint
    from seqwarm.errors import SeqwarmError

    latest = ckpt.latest_checkpoint(finished)
    detected, tried, missed = 0, 0, []
    for name, damage in damages(latest, rng):
        d = work / "c" / latest.name
        shutil.rmtree(work / "c", ignore_errors=True)
        shutil.copytree(latest, d)
        damage(d)
        tried += 1
        if not any(d.iterdir()):  # an empty step directory is not a checkpoint: skipped by the listing
            detected += ckpt.list_checkpoints(work / "c") == []
            continue
        try:
            read_checkpoint(d, verify=True)
            missed.append(name)
        except SeqwarmError:
            detected += 1
    # end to end: the resume falls back and finishes with the uninterrupted weights
    fallbacks, exact = 0, 0
    for name in ("model.safetensors", "optimizer.safetensors", "rng.safetensors", "state.json"):
        run = work / f"fb-{name}"
        shutil.copytree(finished, run)
        (run / "summary.json").unlink()
        flip(run / "checkpoints" / latest.name / name, rng)
        proc = seqwarm("--resume", str(run))
        _, err = proc.communicate(timeout=600)
        fallbacks += proc.returncode == 0 and "the newest checkpoint that passes verification" in err
        exact += proc.returncode == 0 and same(final_weights(run), reference) and steps_once(run)
    return {"tried": tried, "detected": detected, "missed": missed, "fallback_resumes": fallbacks, "exact": exact}


def flip(file: Path, rng: random.Random) -> None:
    data = bytearray(file.read_bytes())
    data[rng.randrange(len(data))] ^= 0x10
    file.write_bytes(bytes(data))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--kills", type=int, default=20)
    p.add_argument("--terms", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        data = corpus(work)
        ref = work / "ref"
        proc = seqwarm("tiny-slw", f"data.path={data}", f"run.dir={ref}", *COMMON)
        proc.communicate(timeout=600)
        reference = final_weights(ref)
        result = {}
        for label, sig, wanted in (("kill -9", signal.SIGKILL, args.kills), ("SIGTERM", signal.SIGTERM, args.terms)):
            total = {"runs": 0, "runs_survived": 0, "signals": 0, "signals_in_survived_runs": 0}
            while total["signals"] < wanted:  # a run takes signals until it finishes; then a new run
                run = work / f"{label.replace(' ', '')}-{total['runs']}"
                counts = interrupt_until_done(run, data, sig, wanted - total["signals"], rng)
                ok = same(final_weights(run), reference) and steps_once(run) and not leftovers(run)
                total["runs"] += 1
                total["runs_survived"] += ok
                total["signals_in_survived_runs"] += counts["signals"] if ok else 0
                for k, v in counts.items():
                    total[k] = total.get(k, [] if isinstance(v, list) else 0) + v
                print(label, run.name, counts, "survived" if ok else "FAILED", flush=True)
            result[label] = total
        result["corruptions"] = corruptions(ref, data, rng, reference, work)
        print("corruptions", result["corruptions"], flush=True)
        print(json.dumps(result))


if __name__ == "__main__":
    main()
