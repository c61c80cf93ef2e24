"""``python -m zoo.train layer=<mixer> task=<task> [overrides]``: train one model, test the
checkpoint chosen on validation, write one run record.

Everything is validated (layer name and options, task knobs, model shape) before any data is
generated or any step is taken. A non-finite loss stops the run, which is recorded as failed.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any, Sequence

import hydra
import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint, TQDMProgressBar
from omegaconf import DictConfig, OmegaConf

import layers
import tasks
from .data import TaskDataModule, split_task_config
from .ess import ess_summary, slice_summaries
from .model import model_kwargs
from .module import ZooModule
from .record import (config_key, device_info, find_finished, git_sha, new_run_id,
                     package_versions, write_record)

log = logging.getLogger("zoo.train")


def _callbacks(cfg: DictConfig, es: dict[str, Any],
               ckpt_dir: Path) -> tuple[list[Callback], ModelCheckpoint]:
    ckpt = ModelCheckpoint(dirpath=ckpt_dir, monitor=es["monitor"], mode=es["mode"],
                           save_top_k=1, filename="best", save_last=bool(cfg.get("resume")))
    cbs: list[Callback] = [
        EarlyStopping(monitor=es["monitor"], mode=es["mode"], patience=es["patience"],
                      stopping_threshold=es.get("stopping_threshold"), check_finite=True),
        ckpt,
    ]
    if cfg.trainer.get("enable_progress_bar", True):
        cbs.append(TQDMProgressBar(refresh_rate=cfg.get("progress_refresh_rate", 10)))
    return cbs, ckpt


def _resume_point(ckpt_dir: Path) -> tuple[str | None, int]:
    """``last.ckpt`` of an interrupted run and its step, or (None, 0) when there is none or it
    cannot be read (a kill while it was being written): then the run starts afresh."""
    last = ckpt_dir / "last.ckpt"
    if not last.exists():
        return None, 0
    try:
        state = torch.load(last, map_location="cpu", weights_only=False)
        return str(last), int(state["global_step"])
    except Exception as e:  # noqa: BLE001 - any unreadable checkpoint means start over
        log.warning("ignoring unreadable checkpoint %s (%s): starting afresh", last, e)
        return None, 0


def run(cfg: DictConfig, callbacks: Sequence[Callback] = ()) -> dict[str, Any]:
    """Train, test and record one run; returns the record written.

    With ``resume=true`` (the leaderboard presets set it) a run whose record already exists is
    skipped (that record is returned) and an interrupted one continues from its last
    checkpoint, kept under ``checkpoint_dir/<task>/<layer>/<config key>/``: restarting a killed
    sweep redoes nothing that finished.
    """
    started, sha = time.time(), git_sha()  # the code as it was when the run began
    torch.set_float32_matmul_precision("high")
    threads = cfg.get("threads")
    if threads is not None:
        if not isinstance(threads, int) or isinstance(threads, bool) or threads < 1:
            raise ValueError(f"threads must be a positive int or null (torch's default), "
                             f"got {threads!r}")
        torch.set_num_threads(threads)
    cfg_dict = OmegaConf.to_container(cfg, resolve=True)
    layer_name = cfg.layer.name
    task_name, knobs, sizes = split_task_config(cfg_dict["task"])
    key = config_key(cfg_dict)

    # Validate everything before any work: bad knobs fail here, naming themselves.
    task = tasks.build(task_name, **knobs)
    mkw = model_kwargs(cfg_dict, task.vocab_size)
    ZooModule(mkw, cfg_dict["optim"])  # builds the model once to check its options
    dm = TaskDataModule(task, seed=cfg.seed, **sizes)
    es = cfg_dict["early_stopping"]
    if not es["monitor"]:  # the task's own selection metric, recorded as resolved
        es["monitor"], es["mode"] = f"val/{task.monitor[0]}", task.monitor[1]

    resume_from, resumed_step = None, 0
    if cfg.get("resume"):
        done = find_finished(cfg.results_dir, task_name, layer_name, key)
        if done is not None:
            log.info("skipping: this config finished as run %s (%s)", done["run_id"],
                     done["status"])
            return done
        ckpt_dir = Path(cfg.checkpoint_dir) / task_name / layer_name / key
        resume_from, resumed_step = _resume_point(ckpt_dir)
    else:
        ckpt_dir = Path(cfg.out_dir) / "checkpoints"

    L.seed_everything(cfg.seed, workers=True, verbose=False)
    module = ZooModule(mkw, cfg_dict["optim"], eval_names=dm.eval_names, metrics=task.metrics)
    out_dir = Path(cfg.out_dir)
    cbs, ckpt = _callbacks(cfg, es, ckpt_dir)
    logger = hydra.utils.instantiate(cfg.logger) if cfg.get("logger") else False
    trainer = L.Trainer(**cfg_dict["trainer"], callbacks=[*cbs, *callbacks], logger=logger,
                        default_root_dir=str(out_dir))
    dm.check_world_size(trainer.world_size)
    if resume_from:
        log.info("resuming from %s (step %d)", resume_from, resumed_step)
    trainer.fit(module, datamodule=dm, ckpt_path=resume_from)

    status = "failed" if module.failure else "completed"
    ess = None
    if status == "completed":
        best = ckpt.best_model_path or None
        trainer.test(module, datamodule=dm, ckpt_path=best, verbose=False)
        # ESS of the tested weights on a few test-split sequences (cheap; see zoo.ess)
        sequences = tasks.make_split(task, 8, cfg.seed, "test")[0].to(module.device)
        ess = ess_summary(module.model, sequences)
        if dm.eval_variants:  # e.g. state_size's kv=<k> slices, each on its own inputs
            ess["slices"] = slice_summaries(module.model, dm.eval_variants, cfg.seed)

    record = {
        "schema_version": 1,
        "run_id": new_run_id(),
        "status": status,
        "error": module.failure,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "git_sha": sha,
        "task": task_name,
        "layer": layer_name,
        "config": cfg_dict,
        "config_key": key,
        "resumed_from_step": resumed_step,
        "seed": cfg.seed,
        "params": module.model.num_params(),
        "params_non_embedding": module.model.num_params(non_embedding=True),
        "state_size": module.model.state_size(task.seq_len),
        "ess": ess,
        "metrics": {k: float(v) for k, v in sorted(module.metrics.items())},
        "steps": trainer.global_step,
        "layer_stats": module.layer_stats,
        "best_checkpoint": ckpt.best_model_path or None,
        "leakage": dm.leakage,
        "throughput_tokens_per_s": module.train_throughput,
        "wall_time_s": time.time() - started,
        "device": device_info(),
        "packages": package_versions(),
    }
    if trainer.is_global_zero:
        path = write_record(cfg.results_dir, record)
        headline = f"test/{task.metrics[0]}"
        log.info("%s run %s: %s %s, record %s", status, record["run_id"], headline,
                 record["metrics"].get(headline), path)
    return record


@hydra.main(version_base="1.3", config_path="../configs", config_name="train")
def main(cfg: DictConfig) -> float | None:
    record = run(cfg)
    if record["status"] != "completed":
        raise SystemExit(f"run failed: {record['error']}")
    return record["metrics"].get("val/acc")


if __name__ == "__main__":
    os.environ.setdefault("HYDRA_FULL_ERROR", "0")
    main()
