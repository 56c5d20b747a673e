import numpy as np
import pytest

from seqwarm.config import CurriculumConfig
from seqwarm.curriculum import SeqlenSchedule
from seqwarm.data.format import SequenceIndex, TokenData
from seqwarm.data.loader import TrainLoader
from seqwarm.data.order import permute
from seqwarm.loss import IGNORE_INDEX


@pytest.mark.parametrize("n", [1, 2, 3, 7, 100, 1000, 4097])
def test_permute_is_a_bijection(n):
    out = permute(np.arange(n), n, key=12345)
    assert sorted(out.tolist()) == list(range(n))


def test_permute_depends_on_key_and_is_shuffled():
    a, b = permute(np.arange(1000), 1000, 1), permute(np.arange(1000), 1000, 2)
    assert not np.array_equal(a, b)
    assert np.mean(a == np.arange(1000)) < 0.05


def make_loader(n_tokens=10_001, L=100, **kw):
    tokens = np.arange(n_tokens, dtype=np.int64)  # token value = corpus position, to check alignment
    return TrainLoader(SequenceIndex(tokens, L), **kw)


def test_each_epoch_visits_every_sequence_once_in_a_seeded_order():
    loader = make_loader(seed=7)
    n = len(loader.index)
    first = np.concatenate([loader.order.next_segments(10, 100)[0] for _ in range(n // 10)])
    second = np.concatenate([loader.order.next_segments(10, 100)[0] for _ in range(n // 10)])
    assert sorted(first.tolist()) == sorted(second.tolist()) == [i * 100 for i in range(n)]
    assert not np.array_equal(first, second)  # a new order per epoch
    again = make_loader(seed=7)
    assert np.array_equal(np.concatenate([again.order.next_segments(10, 100)[0] for _ in range(n // 10)]), first)


def test_batches_are_truncated_full_length_sequences():
    loader = make_loader(seed=0)
    batch = loader.next_batch(4, 24)
    assert batch.inputs.shape == batch.targets.shape == (4, 24)
    assert batch.tokens == 4 * 24
    for row, start in enumerate(batch.starts):
        assert start % 100 == 0  # indexed at full length, then truncated
        assert batch.inputs[row].tolist() == list(range(start, start + 24))
        assert batch.targets[row].tolist() == list(range(start + 1, start + 25))


def test_resume_from_state_dict_continues_identically():
    a = make_loader(seed=3, drop_tail=False)
    for seqlen in (8, 16, 24):
        a.next_batch(5, seqlen)
    b = make_loader(seed=3, drop_tail=False)
    b.load_state_dict(a.state_dict())
    for seqlen in (32, 40, 100, 100):
        x, y = a.next_batch(5, seqlen), b.next_batch(5, seqlen)
        assert np.array_equal(x.starts, y.starts) and np.array_equal(x.served, y.served)
        assert (x.inputs == y.inputs).all() and (x.targets == y.targets).all()


def test_keep_tail_serves_every_token_exactly_once():
    """drop_tail: false trains on every target token of the drawn sequences exactly once."""
    L, B, n_seq = 64, 6, 1000
    loader = make_loader(n_tokens=L * n_seq + 1, L=L, seed=1, drop_tail=False)
    schedule = SeqlenSchedule(CurriculumConfig(kind="slw", seqlen_start=8, seqlen_end=L, duration=40))
    counts = np.zeros(L * n_seq + 1, dtype=int)
    drawn = set()
    for step in range(60):  # warmup and beyond, well within one epoch
        batch = loader.next_batch(B, schedule(step))
        drawn |= {int(s) // L for s, n in zip(batch.starts, batch.served) if s % L == 0}
        for row in range(B):
            valid = batch.targets[row] != IGNORE_INDEX
            assert valid.sum() == batch.served[row]
            positions = batch.targets[row][valid].numpy()  # token value = its corpus position
            assert (batch.inputs[row][valid].numpy() + 1 == positions).all(), "targets aligned"
            counts[positions] += 1
    pending = np.zeros_like(counts)
    for start, n in zip(loader.order.tail_starts, loader.order.tail_lengths):
        pending[start + 1 : start + n + 1] += 1
    expected = np.zeros_like(counts)
    for i in drawn:
        expected[i * L + 1 : i * L + L + 1] = 1
    assert np.array_equal(counts + pending, expected), "each target of a drawn sequence served once or pending"
    assert loader.order.consumed == len(drawn) and pending.sum() < B * L


def test_keep_tail_pool_drains_and_every_target_is_trained_once_per_epoch():
    """Through the loader's rows, over several epochs: SLW's warmup, then full length until the tail pool is empty."""
    L, B, n_seq = 32, 8, 50
    loader = make_loader(n_tokens=L * n_seq + 1, L=L, seed=2, drop_tail=False)
    schedule = SeqlenSchedule(CurriculumConfig(kind="slw", seqlen_start=8, seqlen_end=L, duration=60))
    counts, drawn = np.zeros(L * n_seq + 1, dtype=int), np.zeros(n_seq, dtype=int)
    step, pool = 0, 0
    while step < 60 or len(loader.order.tail_starts):
        batch = loader.next_batch(B, schedule(step))
        step += 1
        pool = max(pool, len(loader.order.tail_starts))
        np.add.at(drawn, batch.starts[batch.starts % L == 0] // L, 1)
        valid = batch.targets != IGNORE_INDEX
        assert valid.sum() == batch.tokens
        # token value = its corpus position; add.at, since a batch across epochs may hold a sequence twice
        np.add.at(counts, batch.targets[valid].numpy(), 1)
        assert step < 200, "the pool drains once the pacing is at full length"
    assert drawn.sum() > 2 * n_seq and pool > B, "several epochs; more tails pending than one batch"
    assert counts[0] == 0 and np.array_equal(counts[1:], np.repeat(drawn, L))


def test_drop_tail_skips_truncated_tokens():
    loader = make_loader(seed=1, drop_tail=True)
    batch = loader.next_batch(4, 8)
    assert batch.tokens == 32 and len(loader.order.tail_starts) == 0


def test_token_data_rejects_corruption(corpus_dir, tmp_path):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(corpus_dir, bad)
    with open(bad / "train-000000.bin", "r+b") as f:
        f.seek(10)
        f.write(b"\x01\x02")
    with pytest.raises(Exception, match="sha256 does not match"):
        TokenData(bad)
    TokenData(bad, verify="size")  # size-only verification cannot see it, by design
