"""The validation pass ``zoo.train`` runs before it imports Lightning or makes anything: every
knob of every config group is checked for type, range and consistency, and the first bad one is
reported in one line that names it, its value and what is allowed (``ConfigError``).

It needs torch (the mixers and the task are built once to let them check their own options)
but not Lightning, so a bad command fails in about two seconds instead of after the import,
the data and the training.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path
from typing import Any, Callable, Iterable

import layers
import tasks
from .config import split_task_config

PRECISIONS = ("32-true", "32", "64-true", "64", "bf16-mixed", "bf16-true", "16-mixed",
              "16-true")
ACCELERATORS = ("cpu", "gpu", "cuda", "auto")
MODES = ("min", "max")
# Packages a logger needs beyond Lightning, so that a missing one fails here and not after the
# data is made.
LOGGER_PACKAGES = {"TensorBoardLogger": ("tensorboard", "tensorboardX"), "WandbLogger": ("wandb",)}


class ConfigError(ValueError):
    """A bad knob: ``zoo.train`` prints it as one line and exits with code 2."""

    def __init__(self, knob: str, value: Any, allowed: str) -> None:
        self.knob, self.value, self.allowed = knob, value, allowed
        super().__init__(f"{knob}={_show(value)}: {allowed}")


def _show(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_show(v) for v in value) + "]"
    return "null" if value is None else str(value)


def _get(cfg: dict[str, Any], knob: str) -> Any:
    node: Any = cfg
    for part in knob.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def is_number(v: Any) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool)) and math.isfinite(v)


def check_int(cfg: dict[str, Any], knob: str, lo: int | None = None, *,
              none_ok: bool = False, also: Iterable[int] = ()) -> None:
    """``knob`` is an int >= ``lo`` (or one of ``also``, or null where allowed)."""
    v = _get(cfg, knob)
    if (v is None and none_ok) or (is_int(v) and v in tuple(also)):
        return
    if not is_int(v) or (lo is not None and v < lo):
        extra = "".join(f" or {a}" for a in also) + (" or null" if none_ok else "")
        bound = f" >= {lo}" if lo is not None else ""
        raise ConfigError(knob, v, f"must be an int{bound}{extra}")


def check_number(cfg: dict[str, Any], knob: str, lo: float | None = None,
                 hi: float | None = None, *, lo_open: bool = False, hi_open: bool = False,
                 none_ok: bool = False) -> None:
    """``knob`` is a finite number in the interval given (or null where allowed)."""
    v = _get(cfg, knob)
    if v is None and none_ok:
        return
    ok = is_number(v)
    if ok and lo is not None:
        ok = v > lo if lo_open else v >= lo
    if ok and hi is not None:
        ok = v < hi if hi_open else v <= hi
    if not ok:
        bounds = [f"{'>' if lo_open else '>='} {lo}"] if lo is not None else []
        bounds += [f"{'<' if hi_open else '<='} {hi}"] if hi is not None else []
        raise ConfigError(knob, v, "must be a finite number" + (" " + " and ".join(bounds)
                          if bounds else "") + (" or null" if none_ok else ""))


def check_choice(cfg: dict[str, Any], knob: str, choices: Iterable[Any]) -> None:
    v, choices = _get(cfg, knob), tuple(choices)
    if v not in choices or isinstance(v, bool) != any(isinstance(c, bool) for c in choices):
        raise ConfigError(knob, v, f"must be one of {', '.join(_show(c) for c in choices)}")


def check_bool(cfg: dict[str, Any], knob: str) -> None:
    v = _get(cfg, knob)
    if not isinstance(v, bool):
        raise ConfigError(knob, v, "must be true or false")


def check_dir(cfg: dict[str, Any], knob: str) -> None:
    """A directory the run will create or write into: no part of the path may be a file."""
    v = _get(cfg, knob)
    if not isinstance(v, str) or not v:
        raise ConfigError(knob, v, "must be a directory path")
    p = Path(v).expanduser()
    for q in (p, *p.parents):
        if q.exists():
            if not q.is_dir():
                raise ConfigError(knob, v, f"must be a directory path, but {q} is a file")
            return


def check_like(knob: str, value: Any, default: Any) -> None:
    """An option's value has the type of its default (ints stay ints: ``8192.5`` is not a
    vocabulary size); options whose default is null are left to their owner to check."""
    if default is None:
        return
    if isinstance(default, bool):
        ok, want = isinstance(value, bool), "true or false"
    elif is_int(default):
        ok, want = is_int(value), "an int"
    elif isinstance(default, float):
        ok, want = is_number(value), "a finite number"
    elif isinstance(default, str):
        ok, want = isinstance(value, str) or value is None, "a string"
        # a string default may stand for a computed value ("auto") that also takes a number
        ok = ok or is_number(value)
    elif isinstance(default, (tuple, list)):
        ok, want = isinstance(value, (tuple, list)), "a list"
    else:
        return
    if not ok:
        raise ConfigError(knob, value, f"must be {want} (default {_show(default)})")


class GroupError(ConfigError):
    """A check a task or mixer made itself: its message already names the knob."""

    def __init__(self, group: str, message: str) -> None:
        ValueError.__init__(self, f"{group}: {message}")
        self.knob, self.value, self.allowed = group, None, message


def _owned(group: str, build: Callable[[], Any]) -> Any:
    """Run a constructor that checks its own options; its error says which group it came from."""
    try:
        return build()
    except ConfigError:
        raise
    except (ValueError, TypeError) as e:
        raise GroupError(group, str(e)) from None


def check(cfg: dict[str, Any]) -> None:
    """Raise ``ConfigError`` for the first bad knob of a resolved training config."""
    _check_run(cfg)
    _check_optim(cfg)
    _check_trainer(cfg)
    task = _check_task(cfg)
    _check_model(cfg, task)
    _check_early_stopping(cfg, task)
    _check_logger(cfg)
    _check_callbacks(cfg)


def _check_run(cfg: dict[str, Any]) -> None:
    check_int(cfg, "seed", 0)
    check_int(cfg, "threads", 1, none_ok=True)
    for knob in ("resume", "keep_checkpoint", "extend", "lr_edge"):
        if knob in cfg:
            check_bool(cfg, knob)
    check_int(cfg, "progress_refresh_rate", 1)
    for knob in ("results_dir", "checkpoint_dir", "out_dir"):
        if knob in cfg:
            check_dir(cfg, knob)
    for knob in ("suite", "lr_from"):
        name = cfg.get(knob)
        if name is not None and (not isinstance(name, str) or not name):
            raise ConfigError(knob, name, "must be a suite name or null")
    if cfg.get("lr_edge") and cfg.get("lr_from") is not None:
        raise ConfigError("lr_edge", True, "widens a first stage's grid: lr_from must be null")
    path = cfg.get("ckpt_path")
    if path is not None:
        if not isinstance(path, str) or not path:
            raise ConfigError("ckpt_path", path, "must be a checkpoint file or null")
        where = Path(path).expanduser()
        if not where.is_file():
            raise ConfigError("ckpt_path", path, "is a directory, not a checkpoint file"
                              if where.exists() else "no such checkpoint file")


def _check_optim(cfg: dict[str, Any]) -> None:
    check_number(cfg, "optim.lr", 0, lo_open=True)
    check_number(cfg, "optim.weight_decay", 0)
    check_number(cfg, "optim.eps", 0, lo_open=True)
    check_number(cfg, "optim.warmup_fraction", 0, 1, hi_open=True)
    check_number(cfg, "optim.min_lr_ratio", 0, 1)
    betas = _get(cfg, "optim.betas")
    if not (isinstance(betas, (list, tuple)) and len(betas) == 2
            and all(is_number(b) and 0 <= b < 1 for b in betas)):
        raise ConfigError("optim.betas", betas, "must be two numbers in [0, 1)")


def _check_trainer(cfg: dict[str, Any]) -> None:
    check_int(cfg, "trainer.max_steps", 1)
    check_int(cfg, "trainer.max_epochs", 1, also=(-1,))
    check_int(cfg, "trainer.val_check_interval", 1)
    check_int(cfg, "trainer.check_val_every_n_epoch", 1, none_ok=True)
    check_number(cfg, "trainer.gradient_clip_val", 0, none_ok=True)
    check_int(cfg, "trainer.log_every_n_steps", 1)
    check_int(cfg, "trainer.num_sanity_val_steps", 0, also=(-1,))
    check_choice(cfg, "trainer.precision", PRECISIONS)
    check_choice(cfg, "trainer.accelerator", ACCELERATORS)
    devices = _get(cfg, "trainer.devices")
    if not (devices == "auto" or (is_int(devices) and devices >= 1)
            or (isinstance(devices, list) and devices and all(is_int(d) for d in devices))):
        raise ConfigError("trainer.devices", devices, "must be an int >= 1, a list of ids or auto")
    if _get(cfg, "trainer.accelerator") in ("gpu", "cuda"):
        import torch
        if not torch.cuda.is_available():
            raise ConfigError("trainer.accelerator", _get(cfg, "trainer.accelerator"),
                              "no CUDA device is visible; use trainer=cpu")
    if _get(cfg, "trainer.val_check_interval") > _get(cfg, "trainer.max_steps"):
        raise ConfigError("trainer.val_check_interval", _get(cfg, "trainer.val_check_interval"),
                          f"must be <= trainer.max_steps={_get(cfg, 'trainer.max_steps')} "
                          f"(no validation would run, so nothing could be selected)")


def _check_task(cfg: dict[str, Any]) -> tasks.Task:
    tcfg = cfg.get("task")
    if not isinstance(tcfg, dict) or tcfg.get("name") not in tasks.names():
        name = tcfg.get("name") if isinstance(tcfg, dict) else tcfg
        raise ConfigError("task", name, f"must be one of {', '.join(tasks.names())}")
    name, knobs, sizes = split_task_config(tcfg)
    defaults, nullable = tasks.knobs(name), tasks.nullable(name)
    for k, v in knobs.items():
        # unknown knobs: tasks.build names them with the valid list
        if k in defaults and not (v is None and k in nullable):
            check_like(f"task.{k}", v, defaults[k])
    for k in ("num_train", "num_val", "num_test", "batch_size"):
        if k in sizes:
            check_int(cfg, f"task.{k}", 1)
    if "eval_batch_size" in sizes:
        check_int(cfg, "task.eval_batch_size", 1, none_ok=True)
    if "fresh" in sizes:
        check_bool(cfg, "task.fresh")
    task = _owned("task", lambda: tasks.build(name, **knobs))
    lengths = sizes.get("eval_lengths")
    if lengths is not None:
        if not (isinstance(lengths, list) and lengths and all(is_int(x) for x in lengths)):
            raise ConfigError("task.eval_lengths", lengths, "must be a non-empty list of ints "
                              "or null")
        for length in lengths:
            try:
                task.at_length(length)
            except ValueError as e:
                raise ConfigError("task.eval_lengths", lengths,
                                  f"length {length} is not a valid {name} length ({e})") from None
    return task


def eval_tasks(cfg: dict[str, Any], task: tasks.Task) -> list[tasks.Task]:
    """Every task the run tests on: the training length, each eval length, each variant."""
    lengths = _get(cfg, "task.eval_lengths") or []
    return [task, *(task.at_length(n) for n in lengths), *task.eval_variants().values()]


def _check_model(cfg: dict[str, Any], task: tasks.Task) -> None:
    from .model import NORMS, Backbone, model_kwargs  # torch, not Lightning

    check_int(cfg, "model.d_model", 1)
    check_int(cfg, "model.n_layers", 1)
    check_int(cfg, "model.max_positions", 0)
    if _get(cfg, "model.loops") is not None:
        check_int(cfg, "model.loops", 1)
    if _get(cfg, "model.norm") is not None:
        check_choice(cfg, "model.norm", NORMS)
    layer = cfg.get("layer") or {}
    name = layer.get("name")
    if name not in layers.names():
        raise ConfigError("layer", name, f"must be one of {', '.join(layers.names())}")
    options = layers.options(name)
    for k, v in layer.items():
        if k == "name":
            continue
        if k in options:
            check_like(f"layer.{k}", v, options[k])
    opts = {k: v for k, v in layer.items() if k != "name"}
    _owned("layer", lambda: layers.build(name, _get(cfg, "model.d_model"), **opts))
    pattern = _get(cfg, "model.pattern")
    if pattern is not None:
        if isinstance(pattern, str):
            pattern = [pattern]
        if not isinstance(pattern, list) or not pattern:
            raise ConfigError("model.pattern", pattern, "must be a non-empty list of sequence "
                              "mixers or null (the layer in every block)")
        for p in pattern:
            if p not in layers.names():
                raise ConfigError("model.pattern", pattern, f"{p!r} is not a sequence mixer; "
                                  f"known: {', '.join(layers.names())}")
        if name not in pattern:
            raise ConfigError("model.pattern", pattern,
                              f"does not use layer={name}: choose layer=<one of the pattern> "
                              f"(the record is filed and its options taken from it)")
        n_layers = _get(cfg, "model.n_layers")
        if n_layers % len(pattern):
            # a partial repeat would drop mixers or change the ratio the pattern states
            raise ConfigError("model.n_layers", n_layers,
                              f"must be a multiple of the length of model.pattern="
                              f"{_show(pattern)} ({len(pattern)}), so the pattern repeats whole")
    _check_mixer_options(cfg, pattern or [name])
    channel = _get(cfg, "model.channel")
    if channel not in layers.names("channel"):
        raise ConfigError("model.channel", channel,
                          f"must be one of {', '.join(layers.names('channel'))}")
    max_pos = _get(cfg, "model.max_positions")
    if max_pos:
        longest = max(t.seq_len for t in eval_tasks(cfg, task))
        if longest > max_pos:
            raise ConfigError("model.max_positions", max_pos,
                              f"must be >= the longest sequence the run tests on ({longest}, "
                              f"from task.seq_len and task.eval_lengths)")
    model = _owned("model", lambda: Backbone(**model_kwargs(cfg, **task.io)))
    _check_start(cfg, model)


def _mapping(cfg: dict[str, Any], knob: str, what: str) -> dict[str, Any]:
    """The mapping at ``knob`` ({} when absent or null); ConfigError if it is not one."""
    value = _get(cfg, knob)
    if value is not None and not isinstance(value, dict):
        raise ConfigError(knob, value, f"must map {what}")
    return value or {}


def _check_mixer_options(cfg: dict[str, Any], pattern: list[str]) -> None:
    """``model.mixer_options``: options for mixers of the pattern, each checked as ``layer``'s
    are (a hybrid's other mixers are built from them)."""
    given = _mapping(cfg, "model.mixer_options", "mixers of model.pattern to their options")
    for mixer, opts in given.items():
        knob = f"model.mixer_options.{mixer}"
        if mixer not in pattern:
            raise ConfigError(knob, opts, f"{mixer} is not in the model's pattern "
                              f"{_show(pattern)}: give options only for its mixers")
        if not isinstance(opts, dict):
            raise ConfigError(knob, opts, "must be a mapping of option to value")
        options = layers.options(mixer)
        for k, v in opts.items():
            if k in options:
                check_like(f"{knob}.{k}", v, options[k])
        _owned(knob, lambda: layers.build(mixer, _get(cfg, "model.d_model"), **opts))


def _check_start(cfg: dict[str, Any], model: Any) -> None:
    """A starting checkpoint (``ckpt_path``) holds weights of exactly this model."""
    from .model import checkpoint_weights, weights_mismatch

    path = cfg.get("ckpt_path")
    if path is None:
        return
    try:
        weights = checkpoint_weights(Path(path).expanduser())
    except Exception as e:  # noqa: BLE001 - whatever the file is, it cannot start this run
        raise ConfigError("ckpt_path", path, f"cannot be read as a checkpoint ({e})") from None
    why = weights_mismatch(model, weights)
    if why:
        raise ConfigError("ckpt_path", path, f"does not fit this model: {why} (the model "
                          f"options must be the checkpoint's; the task may differ)")


def _check_early_stopping(cfg: dict[str, Any], task: tasks.Task) -> None:
    monitor = _get(cfg, "early_stopping.monitor")
    allowed = [f"val/{m}" for m in task.metrics]
    if monitor is not None and monitor not in allowed:
        raise ConfigError("early_stopping.monitor", monitor,
                          f"must be null (the task's own, val/{task.monitor[0]}) or one of "
                          f"{', '.join(allowed)}")
    check_choice(cfg, "early_stopping.mode", MODES)
    check_int(cfg, "early_stopping.patience", 1)
    check_number(cfg, "early_stopping.stopping_threshold", none_ok=True)


def _check_logger(cfg: dict[str, Any]) -> None:
    logger = cfg.get("logger")
    if not logger:
        return
    target = str(logger.get("_target_", "")) if isinstance(logger, dict) else ""
    needs = LOGGER_PACKAGES.get(target.rsplit(".", 1)[-1], ())
    if needs and not any(importlib.util.find_spec(p) for p in needs):
        raise ConfigError("logger", target.rsplit(".", 1)[-1],
                          f"needs `pip install {needs[0]}`; or use logger=csv (the default)")


def _check_callbacks(cfg: dict[str, Any]) -> None:
    """``callbacks`` (configs/callbacks): a mapping of names to configs that each name a
    class (``_target_``) of an installed package."""
    extra = _mapping(cfg, "callbacks", "names to callback configs (configs/callbacks, e.g. "
                     "callbacks=lr_monitor)")
    for name, spec in extra.items():
        target = spec.get("_target_") if isinstance(spec, dict) else None
        if not isinstance(target, str) or "." not in target:
            raise ConfigError(f"callbacks.{name}", spec, "must be a mapping with _target_: "
                              "<module>.<Callback class>")
        if importlib.util.find_spec(target.split(".")[0]) is None:
            raise ConfigError(f"callbacks.{name}._target_", target,
                              f"needs `pip install {target.split('.')[0]}`")
