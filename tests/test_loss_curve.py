"""A pinned 20-step loss curve of the shipped tiny-slw config on the test corpus.

Any change to the initialisation, the data order, the pacing, the LR schedule, the order of the
optimizer's operations or the loss normalisation moves this curve, and this test says so. The
numbers are exact on one machine; across CPUs the matmul kernels sum in another order, so losses
and gradient norms are compared to a relative 1e-3 (a real change moves them by percents), and the
schedule (length, tokens, LR) exactly.

Refresh, after a change that is meant to move the curve (say why in the commit message):

    SEQWARM_REFRESH_LOSS_CURVE=1 python -m pytest tests/test_loss_curve.py
"""

import json
import os
from pathlib import Path

import pytest

from seqwarm.lifecycle import train
from seqwarm.metrics import read_metrics, train_rows

CURVE = Path(__file__).parent / "data" / "tiny_slw_loss_curve.json"
EXACT = ("step", "seqlen", "batch_size", "tokens")
CLOSE = ("loss", "grad_norm")


def test_tiny_slw_loss_curve_is_pinned(tiny_cfg):
    cfg = tiny_cfg("eval.every_tokens=null")
    train(cfg, progress=False)
    rows = [
        {k: r[k] for k in (*EXACT, "lr", *CLOSE)} for r in train_rows(read_metrics(Path(cfg.run.dir) / "metrics.jsonl"))
    ]
    assert len(rows) == 20
    if os.environ.get("SEQWARM_REFRESH_LOSS_CURVE"):
        CURVE.write_text(json.dumps(rows, indent=1) + "\n")
        pytest.skip(f"refreshed {CURVE}")
    pinned = json.loads(CURVE.read_text())
    assert [{k: r[k] for k in EXACT} for r in rows] == [{k: r[k] for k in EXACT} for r in pinned]
    assert [r["lr"] for r in rows] == pytest.approx([r["lr"] for r in pinned], rel=1e-12)
    for key in CLOSE:
        assert [r[key] for r in rows] == pytest.approx([r[key] for r in pinned], rel=1e-3), key
