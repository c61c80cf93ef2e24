"""``python -m zoo.bench step``: one training step of the recall frontier's model per mixer."""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch

import layers
import tasks
from layers.xent import cross_entropy
from .timing import best_of


def _config(rel: str) -> dict[str, Any]:
    """A file of ``configs/`` as a dict."""
    from omegaconf import OmegaConf

    from ..labels import CONFIG_DIR
    return OmegaConf.to_container(OmegaConf.load(CONFIG_DIR / rel))


def frontier_setting() -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """The recall frontier's training setting, as its configs give it (so the two cannot drift):
    the task's knobs and data sizes (``configs/experiment/frontier/_common.yaml`` over the task
    file it selects) and its model options."""
    from ..config import split_task_config

    exp = _config("experiment/frontier/_common.yaml")
    task = next(d["override /task"] for d in exp["defaults"]
                if isinstance(d, dict) and "override /task" in d)
    _, knobs, sizes = split_task_config({**_config(f"task/{task}.yaml"), **exp["task"]})
    return {"name": task, **knobs}, sizes, exp["model"]


def _train_step(model: torch.nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor,
                y: torch.Tensor, sel: torch.Tensor, dev: torch.device) -> Callable[[], None]:
    """One training step as ``zoo.module`` takes it: the head at the supervised positions only,
    its cross-entropy (``layers.xent``), backward, the optimiser's step."""
    def step() -> None:
        opt.zero_grad(set_to_none=True)
        logits = model.head(model.hidden(x)[sel])
        cross_entropy(logits.float(), y[sel]).backward()
        opt.step()
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
    return step


def bench_step(names: Sequence[str] | None = None, d_model: int = 64, repeats: int = 10,
               device: str = "cpu", base: str = "attention") -> list[str]:
    """One training step of the recall frontier per mixer, where its sweeps spend their time:
    a ``Backbone`` with the frontier's model options (2 layers, no channel mixer) and the
    mixer's ``configs/layer`` options, one batch of its task (MQAR, vocabulary 8,192, T = 64,
    batch 64), forward, cross-entropy at the supervised positions, backward, AdamW step (the
    optimiser settings of ``configs/optim/adamw.yaml``). Three warm-up steps each, then
    ``repeats`` rounds of one step of every mixer in turn; the best of its rounds, and each
    mixer's time over ``base``'s, measured in the same run."""
    from ..labels import layer_defaults
    from ..model import Backbone, param_groups

    task_cfg, sizes, model_cfg = frontier_setting()
    task = tasks.build(**task_cfg)
    dev = torch.device(device)
    x, y = (t.to(dev) for t in task.generate(sizes["batch_size"], torch.Generator().manual_seed(0)))
    sel = y != tasks.IGNORE
    optim = _config("optim/adamw.yaml")
    knobs = ", ".join(f"{k}={v}" for k, v in sorted(task_cfg.items()) if k != "name")
    rows = [f"{task_cfg['name']} ({knobs}), batch {sizes['batch_size']}, d_model={d_model}, "
            f"model {model_cfg}; best of {repeats} steps after 3 warm-up steps, the mixers "
            "interleaved (one step of each per round).", "",
            f"| mixer | ms / step | / {base} |", "|---|---|---|"]
    names = list(names or layers.names())
    steps = {}
    for name in ([base] if base not in names else []) + names:
        torch.manual_seed(0)
        model = Backbone(task.vocab_size, d_model=d_model, pattern=name,
                         mixer_options={name: layer_defaults(name) or {}}, **model_cfg).to(dev)
        opt = torch.optim.AdamW(param_groups(model, optim["weight_decay"]), lr=optim["lr"],
                                betas=tuple(optim["betas"]), eps=optim["eps"])
        steps[name] = _train_step(model, opt, x, y, sel, dev)
        for _ in range(3):
            steps[name]()
    # Interleaved: each round times one step of every mixer, so a slow spell of the machine
    # (another tenant, a core taken away for seconds) falls on all of them, not on one mixer's
    # whole series; then the best of the rounds.
    times = {name: float("inf") for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            times[name] = min(times[name], best_of(step, 1))
    rows += [f"| {name} | {times[name] * 1e3:,.1f} | {times[name] / times[base]:.2f} |"
             for name in names]
    return rows
