"""The default CPU threads (issue 27): the cores other processes leave free, never more than torch's own default or
this process's share, never fewer than 1; an explicit train.num_threads or OMP_NUM_THREADS wins."""

import pytest
import torch

from seqwarm import runtime


@pytest.fixture
def torch_threads(monkeypatch):
    before = torch.get_num_threads()
    monkeypatch.setattr(runtime, "_TORCH_DEFAULT_THREADS", 64)  # a big machine's default: the cap is not in play
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize(
    "cores, load, local, threads",
    [
        (2, 0.0, 1, 2),  # idle: every core
        (2, 0.4, 1, 2),  # a core busy less than half the time counts as free
        (2, 1.0, 1, 1),  # one busy loop: one thread
        (2, 2.1, 1, 1),  # the load ~2: one thread, not two spinning against the neighbours
        (2, 8.0, 1, 1),  # never below 1
        (16, 3.0, 1, 13),
        (16, 0.0, 4, 4),  # torchrun with 4 processes on the machine: a quarter each
        (16, 14.0, 4, 2),
    ],
)
def test_default_threads_leave_busy_cores_alone(torch_threads, cores, load, local, threads):
    assert runtime.default_num_threads(cores, load, local) == threads


def test_default_threads_never_exceed_torchs_own_default(monkeypatch):
    monkeypatch.setattr(runtime, "_TORCH_DEFAULT_THREADS", 2)  # e.g. 2 physical cores with SMT: 4 logical CPUs
    assert runtime.default_num_threads(4, 0.0) == 2


def test_other_load_excludes_this_process_and_takes_the_smaller_reading(monkeypatch, tmp_path):
    monkeypatch.setattr(runtime.os, "getloadavg", lambda: (2.0, 2.0, 2.0))  # e.g. this process's own last minute
    real_open, now = open, tmp_path / "loadavg"

    def fake_open(path, *a, **k):
        return real_open(now if path == "/proc/loadavg" else path, *a, **k)

    monkeypatch.setattr("builtins.open", fake_open)
    now.write_text("2.00 2.00 2.00 1/300 1234\n")  # only this process runnable now
    assert runtime.other_load(samples=3, interval_s=0) == 0
    now.write_text("0.50 0.50 0.50 4/300 1234\n")  # three others runnable at this instant, a bursty neighbour
    monkeypatch.setattr(runtime.os, "getloadavg", lambda: (0.5, 0.5, 0.5))
    assert runtime.other_load(samples=3, interval_s=0) == 0.5


def test_explicit_threads_and_omp_num_threads_win(torch_threads, monkeypatch):
    monkeypatch.setattr(runtime, "other_load", lambda: 0.0)
    monkeypatch.setattr(runtime, "usable_cores", lambda: 2)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert runtime.set_cpu_threads(None) == 2
    assert runtime.set_cpu_threads(1) == 1
    monkeypatch.setattr(runtime, "other_load", lambda: 1.0)
    assert runtime.set_cpu_threads(None) == 1 and runtime.threads_text() == "1 thread of 2 cores"
    torch.set_num_threads(2)
    monkeypatch.setenv("OMP_NUM_THREADS", "2")  # the user's (or torchrun's) choice is left alone
    assert runtime.set_cpu_threads(None) == 2 and runtime.threads_text() == "2 threads"


def test_usable_cores_is_the_affinity_mask():
    import os

    if hasattr(os, "sched_getaffinity"):
        assert runtime.usable_cores() == len(os.sched_getaffinity(0)) >= 1
