"""Tests of the sequence order (seqwarm.data.order): the bookkeeping of which segments each step trains on."""

import json

import numpy as np
import pytest

from seqwarm.data.format import SequenceIndex
from seqwarm.data.loader import TrainLoader
from seqwarm.data.order import SequenceOrder
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


def test_checkpoint_state_of_earlier_versions_resumes_identically():
    """Segments pinned from the loader before the order moved out of it: old checkpoints continue the same way."""
    order = SequenceOrder(N, L, seed=11, drop_tail=False)
    for seqlen in (16, 8, 8, 8):
        order.next_segments(5, seqlen)
    assert order.state_dict() == {
        "seed": 11,
        "consumed": 15,
        "tail_starts": [1272, 24, 1336, 504, 536],
        "tail_lengths": [8, 8, 8, 8, 8],
    }
    expected = [
        ([1272, 24, 1336, 504, 536], [8, 8, 8, 8, 8]),
        ([832, 1088, 160, 1312, 1344], [16, 16, 16, 16, 16]),
        ([864, 448, 928, 784, 1280], [16, 16, 16, 16, 16]),
    ]
    for seqlen, (starts, served) in zip((8, 16, 16), expected):
        s, v = order.next_segments(5, seqlen)
        assert s.tolist() == starts and v.tolist() == served
    # Across the end of an epoch, tails first.
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
