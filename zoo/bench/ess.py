"""``python -m zoo.bench ess``: ``layers.ess`` at every position of a 2-layer attention model,
its time and its error against a float64 SVD."""

from __future__ import annotations

import os
import time
from typing import Sequence

import torch


def bench_ess(lengths: Sequence[int] = (1024,), d_model: int = 128, samples: int = 5) -> list[str]:
    """``layers.ess`` at every position, head and layer of a fresh 2-layer attention model
    (4 heads, full rank: the worst case) on one random sequence, wall and CPU seconds (on a
    shared machine wall time depends on the load, noted above the table), and its largest
    error against a float64 SVD of ``H_i`` at ``samples`` positions, relative to each
    ``s_max``."""
    from layers import ess as E
    from ..ess import mixer_inputs
    from ..model import Backbone

    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    rows = [f"d_model={d_model}, 2 layers of attention (4 heads), 1 sequence; "
            f"load average (1, 5, 15 min) at the start: {load}.", "",
            "| T | seconds (all positions, heads, layers) | CPU seconds | "
            "max error vs SVD (rel. s_max) |", "|---|---|---|---|"]
    for T in lengths:
        torch.manual_seed(0)
        model = Backbone(64, d_model=d_model, n_layers=2, pattern="attention",
                         mixer_options={"attention": {"num_heads": 4}}).eval()
        tokens = torch.randint(0, 64, (1, T), generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            ops = [b.mixer.operator(x) for b, x in zip(model.blocks, mixer_inputs(model, tokens))]
        start, cpu = time.perf_counter(), time.process_time()
        for op in ops:
            E.ess(op)
        secs, cpu = time.perf_counter() - start, time.process_time() - cpu
        sampled = torch.linspace(1, T - 1, samples).round().long().unique().tolist()
        err = 0.0
        for op in ops:
            _, s = E.singular_values(op, sampled)
            for j, i in enumerate(sampled):
                ref = torch.linalg.svdvals(op.double()[..., i:, :i])  # [B, H, min(i, T - i)]
                diff = (s[..., j, : ref.shape[-1]] - ref).abs().amax(-1) / ref[..., 0]
                err = max(err, float(diff.max()))
        rows.append(f"| {T:,} | {secs:.2f} | {cpu:.2f} | {err:.1e} |")
    return rows
