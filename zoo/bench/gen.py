"""``python -m zoo.bench gen``: task generation, seconds for 100k training examples per task."""

from __future__ import annotations

import os
import time
from typing import Sequence

import torch

import tasks


def bench_gen(n: int = 100_000, names: Sequence[str] | None = None) -> list[str]:
    """Seconds to generate ``n`` training examples per task (default knobs), wall and CPU,
    on one thread as ``tasks.make_split`` runs it. A task over a corpus (lm) loads it once,
    untimed."""
    rows = [f"Load average before: {os.getloadavg()[0]:.1f} (1 min).", "",
            "| task | setting | examples | seconds | CPU seconds | examples/s |",
            "|---|---|---|---|---|---|"]
    for name in names or tasks.names():
        task = tasks.build(name)
        g = torch.Generator().manual_seed(0)
        task.for_split("train").generate(1, g)  # loads lm's corpus; a no-op elsewhere
        wall, cpu = [], []
        for _ in range(3):  # best of 3, like best_of
            w, c = time.perf_counter(), time.process_time()
            with tasks.single_threaded():
                task.generate(n, g)
            wall.append(time.perf_counter() - w)
            cpu.append(time.process_time() - c)
        secs, cpu_secs = min(wall), min(cpu)
        knobs = " ".join(f"{k}={v}" for k, v in sorted(vars(task).items()))
        # three significant figures: a fast task's milliseconds never print as 0.000
        rows.append(f"| {name} | {knobs} | {n:,} | {secs:.3g} | {cpu_secs:.3g} "
                    f"| {n / secs:,.0f} |")
    return rows
