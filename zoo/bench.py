"""``python -m zoo.bench``: benchmarks, printed as markdown tables headed by the machine.

    python -m zoo.bench gen        # task generation: seconds for 100k training examples

Speed lives here, never in test assertions. Committed tables sit in ``benchmarks/``.
"""

from __future__ import annotations

import argparse
import platform
import time
from typing import Callable

import torch

import tasks
from .record import device_info


def machine_line() -> str:
    d = device_info()
    gpu = f", GPU: {', '.join(d['cuda'])}" if d.get("cuda") else ", no GPU"
    return (f"Machine: {d['processor'] or platform.machine()}, {d['cpu_count']} cores, "
            f"torch {torch.__version__} ({d['torch_threads']} threads){gpu}")


def best_of(fn: Callable[[], object], repeats: int = 3) -> float:
    """Best wall time of ``repeats`` calls, in seconds."""
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def bench_gen(n: int = 100_000) -> list[str]:
    rows = ["| task | setting | examples | seconds | examples/s |", "|---|---|---|---|---|"]
    for name in tasks.names():
        task = tasks.build(name)
        g = torch.Generator().manual_seed(0)
        secs = best_of(lambda: task.generate(n, g))
        knobs = " ".join(f"{k}={v}" for k, v in sorted(vars(task).items()))
        rows.append(f"| {name} | {knobs} | {n:,} | {secs:.3f} | {n / secs:,.0f} |")
    return rows


SUITES = {"gen": bench_gen}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("suite", nargs="*", default=list(SUITES), choices=list(SUITES))
    args = ap.parse_args(argv)
    print(machine_line())
    for suite in args.suite:
        print(f"\n### {suite}\n")
        print("\n".join(SUITES[suite]()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
