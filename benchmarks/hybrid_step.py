"""``python benchmarks/hybrid_step.py hybrid_lm``: what a hybrid sweep costs (issue 19).

For every architecture and setting of each experiment's own sweep (``zoo.sweeps``: exactly the
configs it would train), one training step of its model (forward, loss at the supervised
positions, backward, AdamW), the median of ``--rounds`` rounds that each time one step of
every config in turn, and one forward of an evaluation batch (``eval_batch_size``, 4
training batches by default); then each stage's cost in job-hours, every run taken to its
step cap (early stopping only shortens it):

    steps x step + (validations x batches per validation + test batches) x eval forward

on one thread per job (``threads=1``, as the sweeps run). ``--set`` adds overrides to every
config, e.g. ``--set task.max_files=200`` times an LM step without tokenising the whole
corpus (the step is the same). It prints a markdown table headed by the machine; with other work on the
machine the times are approximate. (A script rather than a ``zoo.bench`` suite while
``zoo/bench.py`` is being reorganised.)
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
from typing import Any

import torch

import tasks
from zoo.config import split_task_config
from zoo.labels import label
from zoo.model import Backbone, model_kwargs
from zoo.record import device_info
from zoo.sweeps import distinct_jobs, sweep_jobs


def resolved(overrides: list[str]) -> dict[str, Any]:
    from hydra import compose, initialize_config_dir
    from zoo.labels import CONFIG_DIR
    from zoo.train import run_config

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return run_config(compose("train", overrides=[*overrides, "out_dir=unused"]))


class Probe:
    """The model, optimiser and batches of a resolved config, ready to time."""

    def __init__(self, cfg: dict[str, Any]) -> None:
        name, knobs, sizes = split_task_config(cfg["task"])
        task = tasks.build(name, **knobs)
        torch.manual_seed(0)
        self.model = Backbone(**model_kwargs(cfg, **task.io))
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=cfg["optim"]["lr"])
        g = torch.Generator().manual_seed(0)
        self.batch = task.for_split("train").generate(sizes["batch_size"], g)
        eval_bs = sizes.get("eval_batch_size") or 4 * sizes["batch_size"]
        self.eval_batch = task.for_split("val").generate(eval_bs, g)
        self.info = {"label": label(cfg), "T": task.seq_len,
                     "params": sum(p.numel() for p in self.model.parameters())}
        self.steps: list[float] = []
        self.evals: list[float] = []

    def _loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        sel = y != tasks.IGNORE  # the head at supervised positions only, as ZooModule does
        return torch.nn.functional.cross_entropy(self.model.head(self.model.hidden(x)[sel]),
                                                 y[sel])

    def step(self) -> float:
        t = time.perf_counter()
        self.opt.zero_grad()
        self._loss(*self.batch).backward()
        self.opt.step()
        return time.perf_counter() - t

    def evaluate(self) -> float:
        self.model.eval()
        with torch.no_grad():
            t = time.perf_counter()
            self._loss(*self.eval_batch)
            out = time.perf_counter() - t
        self.model.train()
        return out


def measure(cfgs: list[dict[str, Any]], rounds: int = 3) -> list[dict[str, Any]]:
    """Seconds of a training step and of an evaluation batch's forward per config: a warm-up
    of each, then ``rounds`` rounds timing one step of every config in turn (so a change in
    the machine's load falls on all of them alike); the median over rounds."""
    probes = [Probe(c) for c in cfgs]
    for p in probes:
        p.step(), p.evaluate()
    for _ in range(rounds):
        for p in probes:
            p.steps.append(p.step())
            print(".", end="", file=sys.stderr, flush=True)
    for _ in range(2):
        for p in probes:
            p.evals.append(p.evaluate())
    print(file=sys.stderr)
    out = []
    for p in probes:
        step_s = statistics.median(p.steps)
        out.append({**p.info, "step_s": step_s, "range": (min(p.steps), max(p.steps)),
                    "tokens_per_s": p.batch[0].numel() / step_s, "eval_s": min(p.evals)})
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("experiments", nargs="+", help="stage-2 presets, e.g. hybrid_lm; their "
                                                   "stage 1 (lr_from) is costed too")
    ap.add_argument("--rounds", type=int, default=3,
                    help="timed steps per config, one per round (median)")
    ap.add_argument("--set", nargs="*", default=[], help="extra overrides for every config")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    d = device_info()
    print(f"Machine: {d['processor']}, {d['cpu_count']} cores, torch {torch.__version__}, "
          f"1 thread per job; load average at start {os.getloadavg()[0]:.1f}\n")
    for exp in args.experiments:
        first = resolved([f"experiment={exp}"]).get("lr_from")
        stages = [s for s in (f"{exp}_lr" if first else None, exp) if s]
        rows = measure([resolved(job) for job in distinct_jobs(exp, *args.set)], args.rounds)
        base = {r["T"]: r["step_s"] for r in rows if r["label"].split()[0] == "attention"}
        print(f"### experiment={exp}\n")
        print("| architecture | T | params | s / step | (range) | / attention | tokens/s | "
              "s / eval batch |")
        print("|---|---|---|---|---|---|---|---|")
        for r in rows:
            rel = f"{r['step_s'] / base[r['T']]:.2f}" if r["T"] in base else ""
            print(f"| {r['label']} | {r['T']} | {r['params']:,} | {r['step_s']:.3f} | "
                  f"{r['range'][0]:.2f}-{r['range'][1]:.2f} | {rel} | "
                  f"{r['tokens_per_s']:,.0f} | {r['eval_s']:.3f} |")
        print()
        by_arch = {(r["label"], r["T"]): r for r in rows}
        for stage in stages:
            total = 0.0
            jobs = sweep_jobs(stage, *args.set)
            for job in jobs:
                total += job_seconds(resolved(job), by_arch)
            print(f"- `experiment={stage}`: {len(jobs)} jobs, {total / 3600:.1f} job-hours at "
                  f"their step caps ({total / 7200:.1f} h as two jobs on two cores)")
        print()
    print(f"Load average at the end {os.getloadavg()[0]:.1f}.")
    return 0


def job_seconds(cfg: dict[str, Any], by_arch: dict[tuple[str, int], dict[str, Any]]) -> float:
    """A job's seconds at its step cap, from the measured step and evaluation batch of its
    architecture and length (the stage's budget and evaluation sizes are the job's own)."""
    r = by_arch[(label(cfg), cfg["task"]["seq_len"])]
    name, knobs, sizes = split_task_config(cfg["task"])
    task = tasks.build(name, **knobs)
    eval_bs = sizes.get("eval_batch_size") or 4 * sizes["batch_size"]
    tests = 1 + len(task.eval_variants()) + len(sizes.get("eval_lengths") or [])
    val_checks = cfg["trainer"]["max_steps"] // cfg["trainer"]["val_check_interval"]
    batches = (val_checks * math.ceil(sizes["num_val"] / eval_bs)
               + tests * math.ceil(sizes["num_test"] / eval_bs))
    return cfg["trainer"]["max_steps"] * r["step_s"] + batches * r["eval_s"]


if __name__ == "__main__":
    raise SystemExit(main())
