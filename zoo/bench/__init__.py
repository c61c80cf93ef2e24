"""``python -m zoo.bench``: benchmarks, printed as markdown tables headed by the machine.

    python -m zoo.bench gen        # task generation: seconds for 100k training examples
    python -m zoo.bench mixers     # every sequence mixer: forward+backward tokens/s, peak memory
    python -m zoo.bench step       # a training step of the recall frontier's model, per mixer
    python -m zoo.bench generate   # recurrent step over N tokens: speed and state growth
    python -m zoo.bench moe        # MoE against the dense MLP of the same active parameters
    python -m zoo.bench ess --lengths 1024  # ESS at every position of a 2-layer attention model
    python -m zoo.bench leaderboard # zoo.leaderboard over 1,000 records, plots included
    python -m zoo.bench mixers --lengths 64 128     # or --quick: a smoke run in seconds

Speed lives here, never in test assertions. Committed tables sit in ``benchmarks/``.

A module per suite (``zoo/bench/<suite>.py``, its ``bench_<suite>`` returns the table's
rows); ``timing`` holds what they share (best-of timing, peak memory, the allocator setting
that ``--os-malloc`` leaves off: see its docstring); this file is the command line.
"""

from __future__ import annotations

import argparse
import inspect
from typing import Callable

from . import ess, gen, generate, leaderboard, mixers, moe, step
from .timing import keep_freed_memory, machine_line


SUITES: dict[str, Callable[..., list[str]]] = {
    "gen": gen.bench_gen, "mixers": mixers.bench_mixers, "step": step.bench_step,
    "generate": generate.bench_generate, "moe": moe.bench_moe, "ess": ess.bench_ess,
    "leaderboard": leaderboard.bench_leaderboard}
QUICK = {"lengths": [64, 256], "batch": 2, "repeats": 1, "naive": ["gla:256", "phalanx:256"],
         "tokens": 128}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    # choices= would reject an empty list (argparse checks [] against them), so check here
    ap.add_argument("suite", nargs="*", help=f"any of {', '.join(SUITES)} (default: all)")
    ap.add_argument("--quick", action="store_true", help="tiny settings: a smoke run in seconds")
    ap.add_argument("--lengths", type=int, nargs="+", help="mixers, ess: sequence lengths")
    ap.add_argument("--d-model", type=int, help="mixers, step, generate, ess: model width")
    ap.add_argument("--batch", type=int, help="mixers, generate: batch size")
    ap.add_argument("--names", nargs="+",
                    help="mixers, step, generate: only these mixers; gen: tasks")
    ap.add_argument("--repeats", type=int, help="mixers, step: timed repeats (best is kept)")
    ap.add_argument("--budget", type=float, help="mixers: seconds per step beyond which a "
                                                  "mixer's longer lengths are skipped")
    ap.add_argument("--naive", nargs="*", help="mixers: NAME:T pairs timing the loop reference "
                                               "against the fast path")
    ap.add_argument("--no-memory", dest="memory", action="store_false", default=None,
                    help="mixers: skip the peak-memory pass")
    ap.add_argument("--tokens", type=int, help="generate: tokens to step through")
    ap.add_argument("--device", help="mixers, step, generate: torch device (default cpu)")
    ap.add_argument("--os-malloc", action="store_true",
                    help="leave glibc's allocator as it is (see the module docstring)")
    args = ap.parse_args(argv)
    unknown = [x for x in args.suite if x not in SUITES]
    if unknown:
        ap.error(f"unknown suite(s) {', '.join(unknown)}; choose from {', '.join(SUITES)}")
    given = {k: v for k, v in vars(args).items()
             if v is not None and k not in ("suite", "quick", "os_malloc")}
    opts = {**(QUICK if args.quick else {}), **given}
    kept = not args.os_malloc and keep_freed_memory()
    print(machine_line("; malloc keeps freed memory (mallopt)" if kept else "; default malloc"))
    for suite in args.suite or list(SUITES):
        fn = SUITES[suite]
        accepted = inspect.signature(fn).parameters
        print(f"\n### {suite}\n")
        print("\n".join(fn(**{k: v for k, v in opts.items() if k in accepted})))
    return 0
