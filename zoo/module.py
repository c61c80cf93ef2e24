"""The LightningModule: loss on supervised positions only, AdamW with per-parameter groups,
linear warmup then cosine decay (stepped every optimiser step), micro-averaged metrics.

Two optional task hooks shape the scoring, asked of the task that made a split's batches (the
datamodule's ``task`` for validation, ``eval_tasks[name]`` for each test set), so the model
needs no task-specific branch (tasks/copying.py has both):

- ``subsets(targets) -> {name: mask}``: supervised positions also scored on their own, as
  ``<name>_acc`` and ``<name>_exact_match``;
- ``generative`` (true): each row is one example whose supervised positions are one answer
  continuing its prompt. The test pass then also scores the model free-running: it reads the
  row up to the first supervised position, writes as many tokens as the answer has by greedy
  ``Backbone.generate``, and those are scored as ``gen_acc``, ``gen_exact_match`` and
  ``gen_<subset>_...``, beside the teacher-forced figures.

A continuous task (``tasks.ContinuousTask``: batches of real ``inputs``, ``targets`` and a
``mask``) names its loss and its metrics itself: the module asks it for the training loss at
the masked positions, for summed counts of each batch (``counts``; summed over batches and
DDP ranks like the token counts) and for the metrics of those sums (``rates``). On the test
sets it also scores the task's reference estimators on the same prompts (``baselines``:
``<name>_<metric>``) and keeps the task's slices of a test set (``<m>@n=<i>``: the error at
each number of in-context examples), reported as ``test/<m>@n=<i>`` for the trained length
and ``test/<m>@n=<i>,len=<L>`` for each evaluation length.

Every count, token or continuous, is summed in a ``zoo.metrics.Sums`` (a torchmetrics
``Metric``) per split: over the split's batches, then over DDP ranks at the epoch's end.
"""

from __future__ import annotations

import math
import time
from typing import Any

import lightning as L
import torch

import tasks
from .metrics import Sums
from .model import Backbone, param_groups
from layers.xent import cross_entropy


# Summed over batches (and DDP ranks) before any metric is computed: micro averages. Subsets
# and free-running generation count the same under their prefix (``string_correct``, ...).
COUNTS = ("correct", "total", "exact", "examples", "nll")


def warmup_cosine(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """LR multiplier: linear warmup over ``warmup`` steps, cosine to ``min_ratio`` at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


class ZooModule(L.LightningModule):
    def __init__(self, model: dict[str, Any], optim: dict[str, Any],
                 eval_names: list[str] | None = None,
                 metrics: tuple[str, ...] = tasks.Task.metrics) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.model = Backbone(**model)
        self.optim = dict(optim)
        self.eval_names = list(eval_names or [])  # test sets in dataloader order
        self.report = tuple(metrics)  # what the task reports, its headline first
        self.failure: str | None = None
        self.steps_done: int | None = None  # optimiser steps that updated weights, on failure
        self.layer_stats: dict[str, float] = {}  # of the last training step
        self.metrics: dict[str, float] = {}
        # The counts of each split being scored ("val", "test<i>"), summed over its batches.
        # Kept out of the module tree: precision's dtype casts must not reach the float64 sums.
        self._counts: dict[str, Sums] = {}
        self._train_tokens = 0
        self.train_examples = 0
        self._train_seconds = 0.0
        self._t0 = 0.0
        # Carried across a resume in the checkpoint (on_save_checkpoint): every validation's
        # metrics as (step, {metric: value}), and the wall seconds of the parts before this one.
        self.val_history: list[tuple[int, dict[str, float]]] = []
        self.wall_before = 0.0
        self.wall_started = time.time()

    def _forward(self, batch: tuple[torch.Tensor, ...],
                 task: Any = None) -> tuple[torch.Tensor, ...]:
        if self.model.continuous:
            x, y, mask = batch
            out = self.model.head(self.model.hidden(x)[mask]).float()  # [M, d_out]: masked only
            return _continuous(task).loss(out, y[mask]), out, y
        x, y = batch
        sel = y != tasks.IGNORE
        logits = self.model.head(self.model.hidden(x)[sel])  # [M, V]: supervised positions only
        loss = cross_entropy(logits.float(), y[sel])  # F.cross_entropy's, compiled on the CPU
        return loss, logits, y

    def training_step(self, batch: tuple[torch.Tensor, ...], batch_idx: int):
        loss, _, _ = self._forward(batch, self._task())
        aux = self.model.aux_losses()
        total = loss + sum(aux.values()) if aux else loss
        if not torch.isfinite(total):
            # global_step counts the optimiser steps taken; this batch's would be the next
            self.failure = (f"non-finite loss ({total.item()}) on the batch of step "
                            f"{self.global_step + 1}, after {self.global_step} optimiser steps")
            # Lightning still counts this batch's (skipped) step in global_step
            self.steps_done = self.global_step
            self.trainer.should_stop = True
            return None  # skips the optimiser step
        self.log("train/loss", loss, prog_bar=True)
        for k, v in aux.items():
            self.log(f"train/{k}", v)
        self.layer_stats = self.model.stats()
        for k, v in self.layer_stats.items():
            self.log(f"train/{k}", v)
        return total

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        self._t0 = time.perf_counter()

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        self._train_seconds += time.perf_counter() - self._t0
        self._train_tokens += batch[0].shape[0] * batch[0].shape[1]  # positions, not floats
        self.train_examples += len(batch[0])

    @property
    def train_throughput(self) -> float:
        """Training tokens per second (optimiser steps included, evaluation excluded)."""
        return self._train_tokens / self._train_seconds if self._train_seconds else 0.0

    def _task(self, dataloader_idx: int | None = None) -> Any:
        """The task that made the batches of validation (None) or of a test set."""
        dm = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        if dataloader_idx is None:
            return getattr(dm, "task", None)
        return (getattr(dm, "eval_tasks", None) or {}).get(self.eval_names[dataloader_idx])

    def _accumulate(self, key: str, batch: tuple[torch.Tensor, ...],
                    task: Any = None, free_running: bool = False) -> None:
        loss, logits, y = self._forward(batch, task)
        if self.model.continuous:
            self._add(key, _continuous_counts(task, batch, logits, test=free_running))
            return
        c = _scored(tasks.predictions_at(y, logits.argmax(-1)), y, task)
        c["nll"] = float(loss) * c["total"]  # summed, so the mean is over every token
        if free_running and getattr(task, "generative", False):
            c.update(_scored(self._generated(*batch), y, task, "gen_"))
        self._add(key, c)

    def _add(self, key: str, counts: dict[str, float]) -> None:
        if key not in self._counts:
            self._counts[key] = Sums().to(self.device)
        self._counts[key].update(counts)

    def _generated(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Free-running greedy predictions ``[N, T]`` at the supervised positions (IGNORE
        elsewhere): each row's answer generated from the tokens before it, rows grouped by
        where their answer starts and how long it is."""
        sel = y != tasks.IGNORE
        size = sel.sum(1)
        first = sel.long().argmax(1)  # the first supervised position (0 where none)
        preds = torch.full_like(y, tasks.IGNORE)
        for p, a in torch.stack([first, size], 1)[size > 0].unique(dim=0).tolist():
            rows = ((first == p) & (size == a)).nonzero()[:, 0]
            if not sel[rows, p:p + a].all():
                raise ValueError("a generative task's supervised positions must be one "
                                 "contiguous answer per row")
            out = self.model.generate(x[rows, :p + 1], a)  # [r, p + 1 + a]
            preds[rows, p:p + a] = out[:, p + 1:].to(preds.dtype)
        return preds

    def _finish(self, key: str, task: Any = None) -> dict[str, float]:
        if key not in self._counts:  # no batch: the token counts at zero (none if continuous)
            self._add(key, {} if self.model.continuous else dict.fromkeys(COUNTS, 0.0))
        summed = self._counts.pop(key).compute()  # summed over DDP ranks
        if self.model.continuous:
            return _continuous(task).rates(summed) if summed else {}
        rates = tasks.rates({k: summed[k] for k in COUNTS})
        out = {k: rates[k] for k in self.report if k in rates}
        for prefix in sorted(k[:-len("correct")] for k in summed if k.endswith("correct")):
            if prefix:
                part = tasks.rates({k: summed[prefix + k] for k in COUNTS if k != "nll"})
                out.update({prefix + k: v for k, v in part.items()})
        return out

    def validation_step(self, batch: tuple[torch.Tensor, ...], batch_idx: int) -> None:
        # free-running generation is scored on the test sets only: validation stays one pass
        self._accumulate("val", batch, self._task())

    def on_validation_epoch_end(self) -> None:
        out = self._finish("val", self._task())
        for k, v in out.items():
            self.log(f"val/{k}", v, prog_bar=(k == self.report[0]), sync_dist=False)
            self.metrics[f"val/{k}"] = v
        if not self.trainer.sanity_checking:
            self.val_history.append((self.global_step, dict(out)))

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["zoo"] = {"val_history": self.val_history, "wall_s": self.wall_s,
                             "train_tokens": self._train_tokens,
                             "train_examples": self.train_examples,
                             "train_seconds": self._train_seconds}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self._trainer is None or self.trainer.state.fn != "fit":
            return  # testing the best checkpoint restores weights, not the run's history
        state = checkpoint.get("zoo") or {}
        self.val_history = [(int(s), dict(m)) for s, m in state.get("val_history", [])]
        self.wall_before = float(state.get("wall_s", 0.0))
        self._train_tokens = int(state.get("train_tokens", 0))
        self.train_examples = int(state.get("train_examples", 0))
        self._train_seconds = float(state.get("train_seconds", 0.0))

    @property
    def wall_s(self) -> float:
        """Wall seconds of the run over all its parts (a resumed run adds the killed one's)."""
        return self.wall_before + time.time() - self.wall_started

    def test_step(self, batch: tuple[torch.Tensor, ...], batch_idx: int,
                  dataloader_idx: int = 0) -> None:
        self._accumulate(f"test{dataloader_idx}", batch, self._task(dataloader_idx),
                         free_running=True)

    def on_test_epoch_end(self) -> None:
        for i, name in enumerate(self.eval_names):
            out = self._finish(f"test{i}", self._task(i))
            for k, v in out.items():
                metric, _, where = k.partition("@")  # a task's own slice goes first: n=3,len=40
                self.metrics[f"test/{metric}@{where + ',' if where else ''}{name}"] = v
                if i == 0:  # the training length is listed first
                    self.metrics[f"test/{k}"] = v
        for k, v in self.metrics.items():
            if k.startswith("test/"):
                self.log(k, v, add_dataloader_idx=False)

    def configure_optimizers(self) -> dict[str, Any]:
        o = self.optim
        opt = torch.optim.AdamW(param_groups(self.model, o["weight_decay"]), lr=o["lr"],
                                betas=tuple(o.get("betas", (0.9, 0.98))), eps=o.get("eps", 1e-8))
        total = int(self.trainer.estimated_stepping_batches)
        warmup = max(1, int(o.get("warmup_fraction", 0.05) * total))
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: warmup_cosine(s, warmup, total, o.get("min_lr_ratio", 0.0)))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def _scored(preds: torch.Tensor, y: torch.Tensor, task: Any,
            prefix: str = "") -> dict[str, float]:
    """Accuracy counts of ``preds`` against ``y``, and of each subset the task names
    (``subsets``), keyed ``<prefix>[<subset>_]<count>``."""
    out = {prefix + k: v for k, v in tasks.accuracy_counts(preds, y).items()}
    subsets = getattr(task, "subsets", None)
    for name, keep in (subsets(y) if subsets is not None else {}).items():
        part = torch.where(keep, y, tasks.IGNORE)
        counts = tasks.accuracy_counts(preds, part)
        out.update({f"{prefix}{name}_{k}": v for k, v in counts.items()})
    return out


def _continuous(task: Any) -> "tasks.ContinuousTask":
    """The task that scores a batch of real vectors (it names the loss and the metrics)."""
    if not getattr(task, "continuous", False):
        raise RuntimeError("a model of real inputs (d_in) is scored by its continuous task; "
                           "none was found on the datamodule")
    return task


def _continuous_counts(task: Any, batch: tuple[torch.Tensor, ...], out: torch.Tensor,
                       test: bool) -> dict[str, float]:
    """The task's counts of the model's outputs ``out [M, d_out]`` (at the mask); on a test
    set also per slice, and those of each baseline on the same prompts (``<name>_<count>``)."""
    x, y, mask = batch
    task = _continuous(task)
    pred = torch.zeros(y.shape, dtype=torch.float32, device=y.device)
    pred[mask] = out.detach().float()
    counts = task.counts(pred, y, mask, slices=test)
    if test:
        for name, base in task.baselines(x, mask).items():
            counts.update(task.counts(base, y, mask, prefix=f"{name}_", slices=True))
    return counts
