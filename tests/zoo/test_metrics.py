"""zoo.metrics.Sums: the counts every metric is computed from, summed over batches exactly as
Python floats would be, and over DDP ranks (two gloo processes on CPU)."""

import math

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from zoo.metrics import Sums

BATCHES = [{"correct": 3, "total": 7, "nll": 0.1 * 7},
           {"correct": 1, "total": 5, "nll": 2.3 * 5, "string_correct": 1, "string_total": 2},
           {"sse@n=1": 1e-17, "correct": 0, "total": 4, "nll": math.pi}]


def python_sums(batches):
    out = {}
    for counts in batches:
        for k, v in counts.items():
            out[k] = out.get(k, 0.0) + v
    return out


def test_sums_are_python_float_sums_bit_for_bit_and_names_may_arrive_late():
    s = Sums()
    for counts in BATCHES:
        s.update(counts)
    got = s.compute()
    assert list(got) == sorted(python_sums(BATCHES))
    assert got == python_sums(BATCHES)  # float equality: the same additions in float64
    s.reset()
    assert s.names == [] and s.sums.numel() == 0
    s.update({"total": 2})
    assert s.compute() == {"total": 2.0}


def _rank(rank: int, init: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    s = Sums()
    for counts in BATCHES[rank::2]:  # rank 0: batches 0 and 2, rank 1: batch 1 ...
        s.update(counts)
    s.update(dict.fromkeys(python_sums(BATCHES), 0.0))  # ... every rank counts every name
    torch.save(s.compute(), f"{out}.{rank}")
    dist.destroy_process_group()


@pytest.mark.slow
def test_sums_add_over_ddp_ranks(tmp_path):
    out = str(tmp_path / "sums")
    mp.spawn(_rank, args=(f"file://{tmp_path / 'init'}", out), nprocs=2)
    expected = python_sums(BATCHES)
    for rank in range(2):
        got = torch.load(f"{out}.{rank}")
        assert got.keys() == expected.keys()
        for k, v in expected.items():
            assert math.isclose(got[k], v, rel_tol=1e-15, abs_tol=1e-300), k
