"""``python -m zoo.eval run=<run id or checkpoint> [overrides]``: test a trained run again, on
other test sets, and record the result beside the run's own record.

    python -m zoo.eval run=20261123-182418-96aa1347 'task.eval_lengths=[20,40,80,160]'
    python -m zoo.eval run=runs/.../best.ckpt task.num_kv_pairs=8    # another task setting
    python -m zoo.eval run=<id> task.num_test=5000 trainer.accelerator=gpu

The run is found by its id, or by the checkpoint its record names, among the records under
``runs/`` and ``results/`` (``results_dir=DIR`` to look elsewhere). Its record gives the config;
its kept checkpoint gives the weights: only runs trained with ``keep_checkpoint=true`` have one,
and a run without is named in a one-line error.

Only what an evaluation may change is taken, each override checked before any work (one line
naming it, exit code 2, as ``zoo.train``'s validation pass): the test sets' sizes
(``task.eval_lengths``, ``task.num_test``, ``task.eval_batch_size``), the task's own knobs
but ``vocab_size`` (another variant, another number of pairs: the test distribution), and
where it runs (``trainer.accelerator``, ``trainer.precision``, ``threads``). The model, its
training and the seed (which drew the test split) stay as trained; asking to change them is
refused by name.

The eval record (``kind: eval``) goes to ``<dir>/evals/<task>/<layer>/<eval id>.json``, where
``<dir>`` holds the run's record, written atomically like a run record (``zoo.record``). It
names the run (``evaluates``: run id, config key, record, checkpoint), the overrides, and its
metrics under the names a run's test pass gives them (``test/<m>@len=<L>``, ...). Where a task
knob was overridden, every slice name starts with it (``test/acc@num_kv_pairs=8,len=128``;
``variant`` in the record), so figures of another distribution never pass for the run's own.
The leaderboard joins eval records to their run's row (``zoo.selection``).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from omegaconf import OmegaConf

import tasks
from .config import DATA_KEYS, split_task_config
from .labels import label
from .record import (checkpoint_path, config_key, device_info, git_sha, kept_checkpoint,
                     load_records, new_run_id, package_versions, write_record)
from .validate import ConfigError, _show, check

RESULTS_DIRS = ("runs", "results")
EVALS = "evals"  # eval records live under <results dir>/evals/, apart from the run records
SIZES = ("eval_lengths", "num_test", "eval_batch_size")  # the test sets, not their distribution
EXECUTION = ("trainer.accelerator", "trainer.precision", "threads")
ALLOWED = (f"task.eval_lengths, task.num_test, task.eval_batch_size, the task's knobs but "
           f"vocab_size, {', '.join(EXECUTION)}")


class ArgumentError(ConfigError):
    """An argument that is no ``key=value`` at all."""

    def __init__(self, message: str) -> None:
        ValueError.__init__(self, message)
        self.knob, self.value, self.allowed = message.split(":", 1)[0], None, message


def refusal(key: str) -> str | None:
    """Why ``key`` may not change in an evaluation (None where it may, as far as the key alone
    tells: task knobs are checked against the run's task)."""
    group = key.split(".", 1)[0]
    if key in EXECUTION or key in (f"task.{k}" for k in SIZES):
        return None
    if key == "task.vocab_size" or group in ("model", "layer", "arch"):
        return "changes the model, which an evaluation keeps as trained"
    if key in ("task", "task.name"):
        return "is the task the run trained on (its knobs may change)"
    if key.startswith("task.") and key[5:] in DATA_KEYS:
        return "sizes the training data; an evaluation trains nothing"
    if group == "task":
        return None
    if key == "seed":
        return "is the run's seed (it trained the model and drew the test split)"
    return "changes the training, which an evaluation keeps as it was"


def parse(argv: Sequence[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``key=value`` arguments -> (this command's options: run, results_dir; overrides), the
    values parsed as Hydra's command line parses them (``[20,40]`` a list, ``1e-3`` a float)."""
    options: dict[str, Any] = {}
    overrides: dict[str, Any] = {}
    for arg in argv:
        key, eq, _ = arg.partition("=")
        if not eq or not key or not key.replace(".", "").replace("_", "").isalnum():
            raise ArgumentError(f"{arg}: expected key=value, e.g. run=<run id> or "
                                f"'task.eval_lengths=[20,40]'")
        value = OmegaConf.to_container(OmegaConf.from_dotlist([arg]))
        for part in key.split("."):
            value = value[part]
        if key in ("run", "results_dir"):
            options[key] = str(value)
            continue
        why = refusal(key)
        if why:
            raise ConfigError(key, value, f"{why}; zoo.eval takes {ALLOWED}")
        overrides[key] = value
    if "run" not in options:
        raise ConfigError("run", None, "give the run to evaluate: run=<run id or checkpoint>")
    return options, overrides


def find_run(run: str, dirs: Sequence[str]) -> tuple[Path, dict[str, Any]]:
    """The results directory holding the training record of ``run`` (an id, or the path of
    the checkpoint its record names) and that record; ConfigError naming ``run`` otherwise."""
    as_file = Path(run).expanduser()
    by_path = as_file.suffix in (".ckpt", ".pt", ".pth") or os.sep in run
    where = ", ".join(f"{d}/" for d in dirs)
    for d in dirs:
        if not Path(d).is_dir():
            continue
        for rec in load_records(d)[0]:
            if by_path:
                kept = checkpoint_path(rec)
                hit = kept is not None and Path(kept).expanduser().resolve() == as_file.resolve()
            else:
                hit = rec["run_id"] == run
            if not hit:
                continue
            if rec.get("kind") == "eval":
                raise ConfigError("run", run, f"is an eval record (of run "
                                  f"{(rec.get('evaluates') or {}).get('run_id')}); give the "
                                  f"training run")
            return Path(d), rec
    if by_path:
        raise ConfigError("run", run, f"no run record under {where} names this checkpoint "
                          f"(give the run id, or results_dir=<where its record is>)")
    raise ConfigError("run", run, f"no run record with this id under {where} (results_dir=DIR "
                      f"looks elsewhere)")


def _set(cfg: dict[str, Any], key: str, value: Any) -> None:
    *path, last = key.split(".")
    node = cfg
    for part in path:
        node = node.setdefault(part, {})
    node[last] = value


def eval_config(record: dict[str, Any], overrides: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """The run's config with the overrides applied, checked as ``zoo.train`` checks a config;
    and the variant tag (``num_kv_pairs=8``: the task knobs overridden, '' for none)."""
    import copy

    cfg = copy.deepcopy(record["config"])
    name = cfg["task"]["name"]
    knobs = tasks.knobs(name)
    tag = []
    for key, value in sorted(overrides.items()):
        knob = key[5:] if key.startswith("task.") else None
        if knob is not None and knob not in SIZES:
            if knob not in knobs:
                raise ConfigError(key, value, f"is not a knob of {name}; its knobs: "
                                  f"{', '.join(k for k in knobs if k != 'vocab_size')}")
            if value == cfg["task"].get(knob):
                continue  # the run's own setting: no other distribution
            tag.append(f"{knob}={_show(value)}")
        _set(cfg, key, value)
    # the run started from it once; evaluating needs only the run's own weights
    check({k: v for k, v in cfg.items() if k != "ckpt_path"})
    trained, now = (tasks.build(name, **split_task_config(c["task"])[1]).io
                    for c in (record["config"], cfg))
    if trained != now:  # a continuous task's dimension sizes the model's linear maps
        knob = next(k for k in sorted(overrides) if k.startswith("task."))
        raise ConfigError(knob, overrides[knob], f"changes what the model reads or writes "
                          f"({now} against the trained {trained}), which an evaluation keeps "
                          f"as trained")
    return cfg, ",".join(tag)


def tagged(metrics: dict[str, float], tag: str) -> dict[str, float]:
    """Slice names with the variant in front: ``test/acc`` -> ``test/acc@<tag>``,
    ``test/acc@len=64`` -> ``test/acc@<tag>,len=64``."""
    if not tag:
        return dict(metrics)
    out = {}
    for key, v in metrics.items():
        name, _, where = key.partition("@")
        out[f"{name}@{tag}" + (f",{where}" if where else "")] = v
    return out


def evaluate(cfg: dict[str, Any], checkpoint: Path) -> dict[str, float]:
    """The test metrics of the checkpoint's weights on the test sets ``cfg`` describes, as a
    training run's test pass computes them (teacher-forced, and free-running where the task is
    generative)."""
    import lightning as L
    import torch

    from .data import TaskDataModule
    from .model import checkpoint_weights, model_kwargs
    from .module import ZooModule
    from .train import _quiet

    _quiet()
    if cfg.get("threads"):
        torch.set_num_threads(cfg["threads"])
    name, knobs, sizes = split_task_config(cfg["task"])
    task = tasks.build(name, **knobs)
    # fresh: no training split is drawn (an evaluation trains nothing)
    dm = TaskDataModule(task, seed=cfg["seed"], **{**sizes, "fresh": True})
    module = ZooModule(model_kwargs(cfg, **task.io), cfg["optim"], eval_names=dm.eval_names,
                       metrics=task.metrics)
    module.model.load_state_dict(checkpoint_weights(checkpoint))
    trainer = L.Trainer(accelerator=cfg["trainer"]["accelerator"], devices=1,
                        precision=cfg["trainer"]["precision"], logger=False,
                        enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False)
    trainer.test(module, datamodule=dm, verbose=False)
    return {k: float(v) for k, v in sorted(module.metrics.items()) if k.startswith("test/")}


def run(argv: Sequence[str]) -> tuple[dict[str, Any], Path]:
    """Check, evaluate and record; returns the eval record and where it was written."""
    started, sha = time.time(), git_sha()
    options, overrides = parse(argv)
    dirs = [options["results_dir"]] if "results_dir" in options else list(RESULTS_DIRS)
    root, record = find_run(options["run"], dirs)
    try:
        checkpoint = kept_checkpoint(record)
    except LookupError as e:
        raise ConfigError("run", options["run"], str(e)) from None
    cfg, tag = eval_config(record, overrides)
    metrics = tagged(evaluate(cfg, checkpoint), tag)
    out = {
        "schema_version": 1,
        "kind": "eval",
        "run_id": new_run_id(),
        "status": "completed",
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "git_sha": sha,
        "task": record["task"],
        "layer": record["layer"],
        "label": label(cfg),
        "config": cfg,
        "seed": record["seed"],
        "evaluates": {"run_id": record["run_id"],
                      "config_key": record.get("config_key") or config_key(record["config"]),
                      "record": f"{record['task']}/{record['layer']}/{record['run_id']}.json",
                      "checkpoint": str(checkpoint)},
        "overrides": dict(sorted(overrides.items())),
        "variant": tag or None,
        "metrics": metrics,
        "wall_time_s": time.time() - started,
        "device": device_info(),
        "packages": package_versions(),
    }
    return out, write_record(root / EVALS, out)


def summary(record: dict[str, Any]) -> list[str]:
    """One line per test set: its metrics (the task's, then free-running ``gen_``)."""
    slices: dict[str, dict[str, float]] = {}
    for key, v in record["metrics"].items():
        name, _, where = key.partition("@")
        if where:
            slices.setdefault(where, {})[name.split("/", 1)[1]] = v
    return [f"  {where}: " + "  ".join(f"{m} {v:.4f}" for m, v in sorted(
        ms.items(), key=lambda kv: (kv[0].startswith("gen_"), kv[0]))) for where, ms in
        slices.items()]


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if argv else 2
    try:
        record, path = run(argv)
    except ConfigError as e:
        if os.environ.get("ZOO_DEBUG"):
            raise
        print(f"error: {e}  (ZOO_DEBUG=1 shows the traceback)", file=sys.stderr)
        return 2
    print(f"eval {record['run_id']} of run {record['evaluates']['run_id']}"
          + (f" ({record['variant']})" if record["variant"] else "") + f": record {path}")
    print("\n".join(summary(record)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
