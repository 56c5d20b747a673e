"""Tests of the sequence order (seqwarm.data.order): the bookkeeping of which segments each step trains on."""

import json

import numpy as np
import pytest

from seqwarm.data.format import SequenceIndex
from seqwarm.data.loader import TrainLoader
from seqwarm.data.order import POOL_BATCHES, SequenceOrder
from seqwarm.errors import DataError

N, L = 97, 16  # sequences, full length
SEQLENS = (8, 8, 16, 8, 4, 16, 12, 16, 16, 8)


def test_state_round_trip_mid_epoch_with_tails():
    a = SequenceOrder(N, L, seed=4, drop_tail=False)
    for seqlen in (16, 8, 4):
        a.next_segments(6, seqlen)
    state = json.loads(json.dumps(a.state_dict()))  # as state.json stores it
    assert set(state) == {"seed", "consumed", "tail_starts", "tail_lengths"}
    assert 0 < state["consumed"] < N and state["tail_starts"], "mid-epoch, with tails pending"
    b = SequenceOrder(N, L, seed=4, drop_tail=False)
    b.load_state_dict(state)
    assert b.state_dict() == a.state_dict()
    for seqlen in SEQLENS * 3:  # past the end of the epoch
        (sa, va), (sb, vb) = a.next_segments(6, seqlen), b.next_segments(6, seqlen)
        assert np.array_equal(sa, sb) and np.array_equal(va, vb)
    assert a.consumed > N and a.state_dict() == b.state_dict()


def test_drop_tail_order_is_pinned():
    """drop_tail: true (the paper's) draws the segments earlier versions drew: old runs resume and plans hold."""
    order = SequenceOrder(N, L, seed=11, drop_tail=True)
    expected = [
        ([512, 1248, 640, 1024, 960], 16),
        ([912, 656, 720, 560, 752], 8),
        ([1264, 16, 1328, 496, 528], 8),
        ([832, 1088, 160, 1312, 1344], 8),
        ([864, 448, 928, 784, 1280], 4),
    ]
    for starts, seqlen in expected:
        s, v = order.next_segments(5, seqlen)
        assert s.tolist() == starts and v.tolist() == [seqlen] * 5
    assert order.state_dict() == {"seed": 11, "consumed": 25, "tail_starts": [], "tail_lengths": []}
    order.load_state_dict({"seed": 11, "consumed": 95, "tail_starts": [], "tail_lengths": []})
    s, v = order.next_segments(5, 4)  # across the end of an epoch
    assert s.tolist() == [416, 1408, 528, 688, 944] and v.tolist() == [4] * 5


def test_keep_tail_order_is_pinned():
    """drop_tail: false mixes the tails into the stream (docs/DESIGN.md); these are its segments since 0.2."""
    order = SequenceOrder(N, L, seed=11, drop_tail=False)
    expected = [
        (16, [512, 1248, 640, 1024, 960], [16] * 5),
        (8, [912, 656, 720, 560, 752], [8] * 5),  # 5 tails of 8 pending, 2 of them taken next
        (8, [664, 728, 1264, 16, 1328], [8] * 5),
        (8, [920, 760, 496, 528, 832], [8] * 5),
    ]
    for seqlen, starts, served in expected:
        s, v = order.next_segments(5, seqlen)
        assert s.tolist() == starts and v.tolist() == served
    assert order.state_dict() == {
        "seed": 11,
        "consumed": 16,
        "tail_starts": [568, 1272, 24, 1336, 504, 536, 840],
        "tail_lengths": [8] * 7,
    }


def test_checkpoint_state_of_earlier_versions_resumes_identically():
    """A drop_tail: false checkpoint of 0.1 (all tails of the last batch pending) continues under the new mixing.

    The state has the same fields, so it loads; its tails are served exactly once, a share per step.
    """
    order = SequenceOrder(N, L, seed=11, drop_tail=False)
    order.load_state_dict(  # what 0.1 saved after steps of length 16, 8, 8, 8 at batch 5
        {"seed": 11, "consumed": 15, "tail_starts": [1272, 24, 1336, 504, 536], "tail_lengths": [8, 8, 8, 8, 8]}
    )
    expected = [  # the 8 pending tails (5 old, 3 of the first step) are all served once, 2 per step
        (8, [24, 536, 832, 1088, 160], [8] * 5),
        (16, [1336, 168, 1312, 1344, 864], [8, 8, 16, 16, 16]),
        (16, [1272, 840, 448, 928, 784], [8, 8, 16, 16, 16]),
        (16, [504, 1096, 1280, 848, 576], [8, 8, 16, 16, 16]),
    ]
    for seqlen, starts, served in expected:
        s, v = order.next_segments(5, seqlen)
        assert s.tolist() == starts and v.tolist() == served
    assert order.state_dict() == {"seed": 11, "consumed": 27, "tail_starts": [], "tail_lengths": []}
    # Across the end of an epoch: a pool of at most half a batch is taken whole, as 0.1 did.
    order.load_state_dict({"seed": 11, "consumed": 95, "tail_starts": [1000, 40], "tail_lengths": [3, 8]})
    s, v = order.next_segments(5, 4)
    assert s.tolist() == [1000, 40, 416, 1408, 528] and v.tolist() == [3, 4, 4, 4, 4]
    assert order.state_dict() == {
        "seed": 11,
        "consumed": 98,
        "tail_starts": [44, 420, 1412, 532],
        "tail_lengths": [4, 12, 12, 12],
    }


@pytest.mark.parametrize("drop_tail", [True, False])
def test_loader_serves_the_orders_segments(drop_tail):
    tokens = np.arange(N * L + 1, dtype=np.int64)  # token value = corpus position
    loader = TrainLoader(SequenceIndex(tokens, L), seed=9, drop_tail=drop_tail)
    order = SequenceOrder(N, L, seed=9, drop_tail=drop_tail)
    for seqlen in SEQLENS * 2:
        batch = loader.next_batch(6, seqlen)
        starts, served = order.next_segments(6, seqlen)
        assert np.array_equal(batch.starts, starts) and np.array_equal(batch.served, served)
        assert batch.tokens == served.sum()
        for row, (start, n) in enumerate(zip(starts, served)):
            assert batch.inputs[row, :n].tolist() == list(range(start, start + n))
    assert loader.state_dict() == order.state_dict()


def test_every_epoch_is_a_permutation_even_across_a_batch():
    order = SequenceOrder(N, L, seed=2)
    starts = np.concatenate([order.next_segments(10, L)[0] for _ in range(2 * N // 10 + 1)])  # batches straddle epochs
    for epoch in (starts[:N], starts[N : 2 * N]):
        assert sorted(epoch.tolist()) == [i * L for i in range(N)]
    assert not np.array_equal(starts[:N], starts[N : 2 * N])


def test_drop_tail_keeps_no_queue():
    order = SequenceOrder(N, L, seed=0, drop_tail=True)
    _, served = order.next_segments(4, 8)
    assert served.tolist() == [8] * 4 and order.state_dict()["tail_starts"] == []
    assert order.consumed == 4


def test_load_rejects_another_seed():
    state = SequenceOrder(N, L, seed=1).state_dict()
    with pytest.raises(DataError, match="run.seed 2 differs from the checkpoint's data order seed 1"):
        SequenceOrder(N, L, seed=2).load_state_dict(state)


def serve_and_check(order: SequenceOrder, batch_size: int, seqlen: int, counts: np.ndarray, drawn: np.ndarray) -> None:
    """One step of a drop_tail: false order, checked against the tail-mixing rule; counts every served target."""
    full, pending, before = order.seqlen, len(order.tail_starts), order.consumed
    starts, served = order.next_segments(batch_size, seqlen)
    assert len(starts) == batch_size and (served >= 1).all() and (served <= seqlen).all()
    fresh = starts % full == 0  # a tail starts inside its sequence
    assert fresh.sum() == order.consumed - before
    taken, half = batch_size - int(fresh.sum()), max(1, batch_size // 2)
    assert min(pending, half) <= taken <= min(pending, batch_size), "at least half a batch of tails drains per step"
    if pending + batch_size - half <= POOL_BATCHES * batch_size:
        assert taken == min(pending, half), "at most half the batch is tails while the pool has room"
    assert len(order.tail_starts) <= max(POOL_BATCHES * batch_size, pending), "the pool stays bounded"
    np.add.at(drawn, starts[fresh] // full, 1)
    for start, n in zip(starts, served):
        counts[start + 1 : start + n + 1] += 1


@pytest.mark.parametrize("seed", range(6))
def test_keep_tail_serves_every_token_exactly_once_over_epochs(seed):
    """Random lengths and batch sizes over several epochs, then full length until the pool drains."""
    rng = np.random.default_rng(seed)
    n, full = int(rng.integers(5, 80)), int(rng.integers(2, 48))
    order = SequenceOrder(n, full, seed=seed, drop_tail=False)
    counts, drawn = np.zeros(n * full + 1, dtype=np.int64), np.zeros(n, dtype=np.int64)
    largest = 0
    for _ in range(400):
        batch_size = int(rng.integers(1, 25))
        largest = max(largest, batch_size)
        serve_and_check(order, batch_size, int(rng.integers(1, full + 1)), counts, drawn)
        assert len(order.tail_starts) <= POOL_BATCHES * largest
    assert drawn.sum() > 2 * n, "several epochs"
    for _ in range(POOL_BATCHES * largest):
        if not len(order.tail_starts):
            break
        serve_and_check(order, largest, full, counts, drawn)
    assert len(order.tail_starts) == 0, "at full length the pool drains"
    assert drawn.max() - drawn.min() <= 1, "each epoch draws every sequence once"
    assert counts[0] == 0 and np.array_equal(counts[1:], np.repeat(drawn, full)), "every target once per draw"


def test_keep_tail_batches_mix_tails_from_many_sequences():
    """During SLW's warmup a batch is not the previous batch's tails: rows continue few of its sequences."""
    B, full, T = 64, 256, 400
    order = SequenceOrder(10**6, full, seed=3, drop_tail=False)
    previous, continued, window, distinct = set(), [], [], []
    for step in range(300):
        starts, _ = order.next_segments(B, max(8, (8 + (full - 8) * step // T) // 8 * 8))
        sequences = set((starts // full).tolist())
        continued.append(len(sequences & previous) / B)
        previous, window = sequences, (window + [sequences])[-10:]
        distinct.append(len(set().union(*window)))
        assert len(order.tail_starts) <= POOL_BATCHES * B
    # Tails-first (0.1) gave 0.69 and windows of 10 steps with only B sequences; a random share of a
    # pool of 8 batches continues about 1 row in 8 and cycles through several batches' sequences.
    assert np.mean(continued[1:]) < 0.15
    assert min(distinct[9:]) >= 4 * B


def test_resume_mid_run_with_a_full_pool_equals_uninterrupted():
    rng = np.random.default_rng(0)
    a = SequenceOrder(300, 128, seed=5, drop_tail=False)
    for _ in range(40):
        a.next_segments(16, 8)
    state = json.loads(json.dumps(a.state_dict()))
    assert len(state["tail_starts"]) > 16 and 0 < state["consumed"] < 300, "mid-epoch, the pool past one batch"
    b = SequenceOrder(300, 128, seed=5, drop_tail=False)
    b.load_state_dict(state)
    for _ in range(300):  # past the end of the epoch
        batch_size, seqlen = int(rng.integers(8, 24)), int(rng.integers(1, 129))
        (sa, va), (sb, vb) = a.next_segments(batch_size, seqlen), b.next_segments(batch_size, seqlen)
        assert np.array_equal(sa, sb) and np.array_equal(va, vb)
    assert a.consumed > 300 and a.state_dict() == b.state_dict()


def test_plan_equals_the_loaders_segments_when_tails_are_kept():
    """`seqwarm plan` (an order over no corpus) predicts the tokens of every step of a real, small corpus."""
    from seqwarm.config import PACKAGED_CONFIGS, load_config
    from seqwarm.plan import plan_steps

    overrides = ["curriculum.drop_tail=false", "curriculum.duration=60", "train.max_tokens=40000"]
    cfg = load_config(PACKAGED_CONFIGS / "tiny-slw.yaml", overrides)
    full = cfg.curriculum.seqlen_end
    tokens = np.arange(37 * full + 1, dtype=np.int64)  # 37 sequences: the run wraps several epochs
    loader = TrainLoader(SequenceIndex(tokens, full), seed=cfg.run.seed, drop_tail=False)
    total, pool = 0, 0
    planned = list(plan_steps(cfg))
    for row in planned:
        batch = loader.next_batch(row["batch_size"], row["seqlen"])
        total += batch.tokens
        pool = max(pool, len(loader.order.tail_starts))
        assert total == row["tokens"]
    assert loader.order.consumed > 3 * 37 and pool > cfg.train.global_batch_size, "epochs wrapped, pool past a batch"
