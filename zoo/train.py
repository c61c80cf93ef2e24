"""``python -m zoo.train layer=<mixer> task=<task> [overrides]``: train one model, test the
checkpoint chosen on validation, write one run record.

Order of work: the config is validated (``zoo.validate``: every knob of every group, one line
naming the bad one, exit code 2) before Lightning is imported and before anything is made;
then the run takes a lock on its config key, so an identical run started alongside it skips
instead of training twice; then it trains, tests the best checkpoint once, writes its record
(strict JSON, atomically) and removes the checkpoints it was not asked to keep. A non-finite
loss stops the run, which is recorded as failed.

``ckpt_path=<file>`` starts from a checkpoint's weights (fine-tuning, another task or length
with the same model): a fresh optimiser and schedule, one validation at step 0 (the curve opens
with the starting weights' score on this run's data), then training as usual. It is part of
the run's identity: the config key hashes the file's contents (sha256) in place of its path, so
the same weights under another path are the same run and other weights under the same path
another; the record's ``started_from`` gives the path and the hash.
"""

from __future__ import annotations

import os

# Before torch loads its OpenMP runtime (libgomp reads this once, at load): a thread waiting at
# a barrier spins 1,000 iterations, not libgomp's default 300,000, before it sleeps. Two runs
# sharing 2 cores with torch's default threads then each took 15.5 s instead of 92 s (one
# alone: 11.6 s, against 10.4 s with full spinning; 150 steps of the default run, 2026-11-23).
os.environ.setdefault("GOMP_SPINCOUNT", "1000")

import logging
import sys
import time
import uuid
import warnings
from pathlib import Path
from typing import Any, Sequence

import hydra
from omegaconf import DictConfig, OmegaConf

from .config import split_task_config
from .identity import (Origin, beyond_edge, extended_run, identity, run_config, selected_lr,
                       start_point)
from .labels import label
from .record import (config_key, device_info, find_finished, git_sha, new_run_id,
                     package_versions, write_record)
from .run_files import (discard_run_dir, drop_checkpoints, exclusive, last_checkpoint,
                        prune_empty, resume_point)
from .validate import ConfigError, check

log = logging.getLogger("zoo.train")
# The commit of the code this process imported (a sweep's workers import it once and keep it,
# whatever the tree holds later): what a record names as its code.
CODE_SHA = git_sha()

# The run directory's suffix (configs/train.yaml): two runs started in the same second get
# two directories. Cached, so every read of the directory within a run agrees.
OmegaConf.register_new_resolver("zoo_uid", lambda: uuid.uuid4().hex[:6], use_cache=True,
                                replace=True)

STOP_REASONS = ("solved", "plateau", "max_steps", "non_finite")
# Environment variables under which a process is a non-zero rank of a data-parallel run.
RANK_VARS = ("RANK", "LOCAL_RANK", "SLURM_PROCID", "NODE_RANK")


def _quiet() -> None:
    """Keep third-party tips, device banners and deprecation notices out of a run's output."""
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero",
                 "lightning.pytorch.accelerators.cuda"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
    warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=r".*Checkpoint directory .* exists and is not empty.*")
    # a non-finite loss skips its step by returning None: recorded as the run's failure
    warnings.filterwarnings("ignore", message=r".*`training_step` returned `None`.*")


def _is_rank_zero() -> bool:
    return all(int(os.environ.get(v, "0") or 0) == 0 for v in RANK_VARS)


def stop_reason(failure: str | None, curve: list[list[float]], mode: str,
                threshold: float | None, steps: int, max_steps: int) -> str:
    """Why training ended: ``solved`` (the monitored validation metric passed the early-stopping
    threshold), ``max_steps`` (the budget ran out), ``plateau`` (early stopping: no improvement
    for ``patience`` validations) or ``non_finite`` (the loss or the metric diverged)."""
    values = [v for _, v in curve]
    if failure or any(v is None or v != v or abs(v) == float("inf") for v in values):
        return "non_finite"
    if threshold is not None and values:
        best = max(values) if mode == "max" else min(values)
        if (best > threshold) if mode == "max" else (best < threshold):  # as EarlyStopping
            return "solved"
    return "max_steps" if steps >= max_steps else "plateau"


def _callbacks(cfg: DictConfig, es: dict[str, Any], ckpt_dir: Path) -> tuple[list, Any]:
    """The run's own callbacks (the best checkpoint, which the test and the record use; early
    stopping, which ``stop_reason`` reads; the progress bar), then those the ``callbacks``
    group adds (``configs/callbacks``: ``callbacks=lr_monitor``), in the order of their names.
    Returns them and the checkpoint callback."""
    from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

    from .progress import StepProgressBar

    ckpt = ModelCheckpoint(dirpath=ckpt_dir, monitor=es["monitor"], mode=es["mode"],
                           save_top_k=1, filename="best", enable_version_counter=False)
    cbs: list = [
        EarlyStopping(monitor=es["monitor"], mode=es["mode"], patience=es["patience"],
                      stopping_threshold=es.get("stopping_threshold"), check_finite=True),
        ckpt,
        *([last_checkpoint(ckpt_dir)] if cfg.get("resume") else []),  # resume's point
    ]
    if cfg.trainer.get("enable_progress_bar", True):
        cbs.append(StepProgressBar(refresh_rate=cfg.get("progress_refresh_rate", 10)))
    extra = cfg.get("callbacks") or {}
    cbs += [hydra.utils.instantiate(extra[name]) for name in sorted(extra)]
    return cbs, ckpt


def run(cfg: DictConfig, callbacks: Sequence[Any] = ()) -> dict[str, Any]:
    """Validate, train, test and record one run; returns the record written (or, when the run
    is skipped, the finished record it found or ``{"status": "skipped", ...}``).

    With ``resume=true`` (the leaderboard presets set it) a run whose record already exists is
    skipped and an interrupted one continues from its last checkpoint, kept under
    ``checkpoint_dir/<task>/<layer>/<config key>/``: restarting a killed sweep redoes nothing
    that finished. Either way, a run whose identical config is running now skips.
    """
    started, sha = time.time(), CODE_SHA
    if git_sha() != sha:  # a long-lived sweep worker: the tree moved since it imported the code
        log.warning("the source tree is at %s but this process runs the code of %s (imported "
                    "earlier): recording %s", git_sha(), sha, sha)
    cfg_dict = run_config(cfg)
    check(cfg_dict)  # every knob, before any import of Lightning and before any work
    from .ess import settings as ess_settings

    ess_settings(cfg_dict.get("ess"))  # the end-of-run ESS's knobs (zoo.ess), likewise
    start = start_point(cfg_dict)
    _quiet()

    import torch

    threads = cfg.get("threads")
    if threads is not None:
        torch.set_num_threads(threads)
    torch.set_float32_matmul_precision("high")
    task_name, knobs, _ = split_task_config(cfg_dict["task"])
    selection = selected_lr(cfg_dict, knobs) if cfg_dict.get("lr_from") else None
    extends = edge = None
    if cfg_dict.get("extend"):
        extends = extended_run(cfg_dict, knobs)
        if extends is None:
            return {"status": "skipped", "reason": "nothing to extend"}
    if cfg_dict.get("lr_edge"):
        edge = beyond_edge(cfg_dict, knobs)
        if edge is None:
            return {"status": "skipped", "reason": "not the next rate beyond an unsolved edge"}
    origin = Origin(start, selection, extends, edge)
    key = config_key(identity(cfg_dict, start))
    keyed_dir = Path(cfg.checkpoint_dir) / task_name / cfg.layer.name / key
    if not _is_rank_zero():  # rank 0 holds the lock for the whole data-parallel run
        return _train(cfg, cfg_dict, key, keyed_dir, started, sha, callbacks, origin)
    try:
        with exclusive(keyed_dir / "lock") as holder:
            return _locked(cfg, cfg_dict, key, keyed_dir, holder, started, sha, callbacks,
                           origin)
    finally:
        prune_empty(keyed_dir, Path(cfg.checkpoint_dir))


def _locked(cfg: DictConfig, cfg_dict: dict[str, Any], key: str, keyed_dir: Path,
            holder: str | None, started: float, sha: str | None, callbacks: Sequence[Any],
            origin: Origin) -> dict[str, Any]:
    """The part of ``run`` under the config's lock (``holder`` names another owner)."""
    task_name = cfg_dict["task"]["name"]
    if holder is not None:
        log.warning("skipping: an identical run (config key %s) is running now (%s)", key, holder)
        return {"status": "skipped", "config_key": key, "running": holder}
    if cfg.get("resume"):
        done = find_finished(cfg.results_dir, task_name, cfg.layer.name, key)
        if done is not None:
            log.info("skipping: this config finished as run %s (%s)", done["run_id"],
                     done["status"])
            return done
    return _train(cfg, cfg_dict, key, keyed_dir, started, sha, callbacks, origin)


def _train(cfg: DictConfig, cfg_dict: dict[str, Any], key: str, keyed_dir: Path,
           started: float, sha: str | None, callbacks: Sequence[Any],
           origin: Origin = Origin()) -> dict[str, Any]:
    import lightning as L

    import tasks

    from .data import TaskDataModule
    from .ess import run_ess
    from .model import checkpoint_weights, model_kwargs
    from .module import ZooModule

    layer_name = cfg.layer.name
    task_name, knobs, sizes = split_task_config(cfg_dict["task"])
    task = tasks.build(task_name, **knobs)
    mkw = model_kwargs(cfg_dict, **task.io)
    dm = TaskDataModule(task, seed=cfg.seed, **sizes)
    es = cfg_dict["early_stopping"]
    if not es["monitor"]:  # the task's own selection metric, recorded as resolved
        es["monitor"], es["mode"] = f"val/{task.monitor[0]}", task.monitor[1]
        if not task.threshold_applies:  # an error with no solved level: budget or plateau
            es["stopping_threshold"] = None

    resume_from, resumed_step = None, 0
    if cfg.get("resume"):
        ckpt_dir = keyed_dir
        resume_from, resumed_step = resume_point(ckpt_dir)
    else:
        ckpt_dir = Path(cfg.out_dir) / "checkpoints"

    L.seed_everything(cfg.seed, workers=True, verbose=False)
    module = ZooModule(mkw, cfg_dict["optim"], eval_names=dm.eval_names, metrics=task.metrics)
    module.wall_started = started
    start = origin.started_from
    start_weights = start is not None and not resume_from  # a resume has its own weights
    if start_weights:
        module.model.load_state_dict(checkpoint_weights(start["path"]))
    cbs, ckpt = _callbacks(cfg, es, ckpt_dir)
    logger = hydra.utils.instantiate(cfg.logger) if cfg.get("logger") else False
    trainer = L.Trainer(**cfg_dict["trainer"], callbacks=[*cbs, *callbacks], logger=logger,
                        default_root_dir=str(cfg.out_dir))
    dm.check_world_size(trainer.world_size)
    if resume_from:
        log.info("resuming from %s (step %d)", resume_from, resumed_step)
    if start_weights:
        log.info("starting from the weights of %s", start["path"])
        trainer.validate(module, datamodule=dm, verbose=False)  # the curve's step 0
    trainer.fit(module, datamodule=dm, ckpt_path=resume_from)

    status = "failed" if module.failure else "completed"
    steps = trainer.global_step if module.steps_done is None else module.steps_done
    ess = None
    best = ckpt.best_model_path or None
    if status == "completed":
        trainer.test(module, datamodule=dm, ckpt_path=best, verbose=False)
        # ESS of the tested weights on a few test-split sequences (bounded: zoo.ess.DEFAULTS)
        ess = run_ess(module.model, task, dm.eval_variants, cfg.seed, cfg_dict.get("ess"))

    metric = es["monitor"].split("/", 1)[1]
    curve = [[step, m.get(metric)] for step, m in module.val_history]
    keep = bool(cfg.get("keep_checkpoint")) and status == "completed" and best is not None
    record = {
        "schema_version": 1,
        "run_id": new_run_id(),
        "status": status,
        "error": module.failure,
        "stop_reason": stop_reason(module.failure, curve, es["mode"],
                                   es.get("stopping_threshold"), steps, cfg.trainer.max_steps),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "git_sha": sha,
        "task": task_name,
        "layer": layer_name,
        "label": label(cfg_dict),
        "config": cfg_dict,
        "config_key": key,
        "resumed_from_step": resumed_step,
        "started_from": start,
        "lr_selection": origin.lr_selection,
        "extends": origin.extends,
        "lr_edge": origin.lr_edge,
        "seed": cfg.seed,
        "params": module.model.num_params(),
        "params_non_embedding": module.model.num_params(non_embedding=True),
        "state_size": module.model.state_size(task.seq_len),
        "state_size_prev": module.model.state_size(task.seq_len - 1),
        "ess": ess,
        "metrics": {k: float(v) for k, v in sorted(module.metrics.items())},
        "val_curve": curve,
        "steps": steps,
        "examples_seen": module.train_examples,
        "layer_stats": module.layer_stats,
        "best_checkpoint": best if keep else None,
        "checkpoint": {"kept": keep, "path": best if keep else None},
        "leakage": dm.leakage,
        "throughput_tokens_per_s": module.train_throughput,
        "wall_time_s": module.wall_s,
        "device": device_info(),
        "packages": package_versions(),
    }
    if trainer.is_global_zero:
        path = write_record(cfg.results_dir, record)
        drop_checkpoints(ckpt_dir, keep_best=keep)
        headline = f"test/{task.metrics[0]}"
        log.info("%s run %s (%s, %d steps): %s %s, record %s", status, record["run_id"],
                 record["stop_reason"], record["steps"], headline,
                 record["metrics"].get(headline), path)
    return record


@hydra.main(version_base="1.3", config_path="../configs", config_name="train")
def main(cfg: DictConfig) -> float | None:
    try:
        record = run(cfg)
    except ConfigError as e:
        discard_run_dir()
        if os.environ.get("ZOO_DEBUG"):
            raise
        print(f"error: {e}  (ZOO_DEBUG=1 shows the traceback)", file=sys.stderr)
        raise SystemExit(2) from None
    if record["status"] == "skipped":
        return None
    if record["status"] != "completed":
        raise SystemExit(f"run failed: {record['error']}")
    return record["metrics"].get("val/acc")


if __name__ == "__main__":
    os.environ.setdefault("HYDRA_FULL_ERROR", "0")
    main()
