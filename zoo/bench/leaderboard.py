"""``python -m zoo.bench leaderboard``: ``zoo.leaderboard`` over 1,000 synthetic records, plots
included, and its ``--check``."""

from __future__ import annotations

import os

import torch

from .timing import best_of


def bench_leaderboard(records: int = 1000) -> list[str]:
    """``python -m zoo.leaderboard`` over ``records`` synthetic run records (5 tasks x 8 mixers
    x lr and seed grids, with per-length metrics and ESS), plots included, and ``--check``."""
    import tempfile
    from .. import leaderboard
    from ..record import SCHEMA_VERSION, write_record

    g = torch.Generator().manual_seed(0)
    mixers = ["attention", "swa", "ssa", "cat", "linear_attn", "gla", "phalanx", "mamba"]
    with tempfile.TemporaryDirectory() as d:
        for i in range(records):
            task, layer = f"task{i % 5}", mixers[(i // 5) % 8]
            acc = float(torch.rand((), generator=g))
            metrics = {"val/acc": acc, "test/acc": acc, "test/exact_match": acc / 2,
                       **{f"test/acc@len={L}": acc / (k + 1) for k, L in enumerate((64, 128))}}
            cfg = {"task": {"name": task, "seq_len": 64}, "layer": {"name": layer},
                   "model": {"d_model": 64, "n_layers": 2}, "optim": {"lr": [1e-3, 3e-3][i % 2]},
                   "seed": i, "suite": "bench"}
            write_record(d, {"schema_version": SCHEMA_VERSION, "run_id": f"r{i:05d}",
                             "status": "completed", "time": "t", "task": task, "layer": layer,
                             "config": cfg, "seed": i, "metrics": metrics, "params": 1000 + i,
                             "state_size": 64 * (1 + i % 8), "throughput_tokens_per_s": 1.0,
                             "wall_time_s": 1.0, "ess": {"layers": {"0": {
                                 "tolerance": 1.0 + acc, "heads": 1}}}})
        out = os.path.join(d, "site", "leaderboard.md")
        os.makedirs(os.path.dirname(out))
        build = best_of(lambda: leaderboard.main(["--results", d, "--out", out]), 1)
        check = best_of(lambda: leaderboard.main(["--results", d, "--out", out, "--check"]), 1)
        size = os.path.getsize(out)
    return ["| records | build with plots (s) | --check (s) | leaderboard.md bytes |",
            "|---|---|---|---|", f"| {records:,} | {build:.2f} | {check:.2f} | {size:,} |"]
