"""Torch-free helpers over a resolved run config (``record["config"]``): the architecture's
label, the leaderboard's row and hyper-parameter keys, a task setting in words.

``label(config)`` names the architecture (everything in ``layer`` and ``model`` but the width
``model.d_model``, which is a column of its own) in a short, deterministic form:

    attention   swa(16)   ssa(pos)   ssa(pos+tok+val)   gla+conv4   mamba
    gla(num_heads=2)+conv4   phalanx:attention 1:1   gla:attention 3:1 x4
    attention ch=moe(num_experts=16,top_k=1)

- A mixer is its registry name, then in parentheses its options that differ from its
  ``configs/layer/<name>.yaml``, as ``key=value`` sorted by key. An option a record lacks is
  the file's default (an option newer than the record: options are added with the old
  behaviour as default).
- Some options are always named, whatever the defaults file says, in the form the field uses:
  ``short_conv=k > 0`` as ``+conv<k>``; the window of ``swa`` first, bare: ``swa(16)``;
  ``ssa``'s temperatures as ``pos`` (the position temperature, always on) joined with ``tok``
  and ``val`` when ``token_temp`` / ``value_temp`` are on.
- A hybrid is named by its pattern: the repeating block of the layer sequence (``pattern``
  cycled over ``n_layers``) as mixers and counts, ``gla:attention 3:1``; a block whose mixers
  do not each form one run is listed, ``[gla,attention,gla,mamba]``. Each mixer shows its own
  options. A mixer other than ``layer`` takes them from ``model.mixer_options``, and an
  option not given there is the layer class's own default, which may differ from the file:
  it shows as ``key=class`` (``attention(window=class)``), and a mixer given no option at
  all as ``attention(class)``. The channel mixer's options likewise.
- A layer without a defaults file shows every option given.
- Model options that differ from ``configs/model/default.yaml``: ``x<n_layers>``,
  ``ch=<channel>(<options that differ from its defaults>)``, any other as ``key=value``
  (a looped model ``linear_attn x1 loops=3``, one without norms ``norm=none``).

Two configs whose architectures differ (in any option, at any width) get two labels.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

import configs
from omegaconf import OmegaConf

from .config import DATA_KEYS
from .record import BOOKKEEPING

CONFIG_DIR = Path(configs.__file__).resolve().parent
RUN_KEYS = ("seed", *BOOKKEEPING)
# model keys the label spells out itself (d_model is the width column)
MODEL_SHAPE = ("d_model", "n_layers", "pattern", "mixer_options", "channel", "channel_options")


@lru_cache(maxsize=None)
def _config_file(rel: str) -> dict[str, Any] | None:
    path = CONFIG_DIR / rel
    if not path.is_file():
        return None
    data = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    return data if isinstance(data, dict) else None


def layer_defaults(name: str) -> dict[str, Any] | None:
    """A sequence mixer's options in ``configs/layer/<name>.yaml``; None without that file."""
    data = _config_file(f"layer/{name}.yaml")
    if data is None or data.get("name") != name:
        return None
    return {k: v for k, v in data.items() if k not in ("name", "defaults", "model")}


def channel_defaults(name: str) -> dict[str, Any] | None:
    """A channel mixer's options, from the layer file that selects it (``layer/moe.yaml``)."""
    model = (_config_file(f"layer/{name}.yaml") or {}).get("model") or {}
    return dict(model.get("channel_options") or {}) if model.get("channel") == name else None


def model_defaults() -> dict[str, Any]:
    return dict(_config_file("model/default.yaml") or {})


def _fmt(v: Any) -> str:
    if isinstance(v, (bool, type(None), list, dict)):
        return json.dumps(v, sort_keys=True, separators=(",", ":"))
    return repr(v) if isinstance(v, float) else str(v)


def _options(given: dict[str, Any], defaults: dict[str, Any] | None,
             filled: bool = True) -> list[str]:
    """``key=value`` for the options that differ from ``defaults`` (all given, without).
    Unless ``filled`` (the config holds the defaults file's values where it omits one), an
    option of the file not given is the class's own: ``key=class``."""
    if defaults is None:
        return [f"{k}={_fmt(v)}" for k, v in sorted(given.items())]
    shown = {k: _fmt(v) for k, v in given.items() if k not in defaults or v != defaults[k]}
    if not filled:
        shown.update({k: "class" for k in defaults if k not in given})
    return [f"{k}={v}" for k, v in sorted(shown.items())]


def _ssa_form(opts: dict[str, Any]) -> list[str]:
    if "token_temp" not in opts and "value_temp" not in opts:
        return []
    temps = ["pos"] + ["tok"] * bool(opts.pop("token_temp", False)) \
        + ["val"] * bool(opts.pop("value_temp", False))
    return ["+".join(temps)]


# Options named whatever their default, in the form the field uses; each pops what it shows.
FORMS: dict[str, Callable[[dict[str, Any]], list[str]]] = {
    "swa": lambda opts: [_fmt(opts.pop("window"))] if "window" in opts else [],
    "ssa": _ssa_form,
}


def _mixer(name: str, given: dict[str, Any], primary: bool) -> str:
    """One mixer's words; ``primary``: the config's ``layer``, which Hydra fills from its
    defaults file (an option a record lacks is newer than the record: the file's default)."""
    defaults = layer_defaults(name)
    if not primary and not given and defaults:
        return f"{name}(class)"
    opts = {**(defaults or {}), **given} if primary else dict(given)
    conv = opts.pop("short_conv", 0) or 0
    shown = FORMS.get(name, lambda o: [])(opts)
    # what +conv and the forms showed is compared no further
    compared = None if defaults is None else {k: v for k, v in defaults.items()
                                              if k in opts or k not in given}
    shown += _options(opts, compared, primary)
    return name + (f"({','.join(shown)})" if shown else "") + (f"+conv{conv}" if conv else "")


def layer_sequence(config: dict[str, Any]) -> list[str]:
    """The sequence mixer of every block, in order (``pattern`` cycled over ``n_layers``)."""
    model, name = config.get("model") or {}, (config.get("layer") or {}).get("name")
    pattern = model.get("pattern") or [name]
    pattern = [pattern] if isinstance(pattern, str) else list(pattern)
    n = model.get("n_layers", model_defaults().get("n_layers"))
    return [pattern[i % len(pattern)] for i in range(n)] if isinstance(n, int) and n > 0 \
        else pattern


def _block(seq: list[str]) -> list[str]:
    """The shortest prefix whose repetition gives ``seq``."""
    return next(seq[:p] for p in range(1, len(seq) + 1)
                if all(m == seq[i % p] for i, m in enumerate(seq)))


def _parts(config: dict[str, Any]) -> dict[str, str]:
    """Each distinct sequence mixer of the stack, in order, and its words in the label."""
    layer = dict(config.get("layer") or {})
    primary = layer.pop("name", None)
    mixer_options = (config.get("model") or {}).get("mixer_options") or {}
    return {m: _mixer(m, {**(mixer_options.get(m) or {}), **(layer if m == primary else {})},
                      m == primary) for m in dict.fromkeys(layer_sequence(config))}


def mixers(config: dict[str, Any]) -> list[tuple[str, str, int]]:
    """Each distinct sequence mixer of the stack, in order: its registry name, its words in
    the label and how many blocks it fills, ``[("swa", "swa(16)", 6), ("attention",
    "attention", 2)]`` for ``swa(16):attention 3:1 x8``."""
    seq = layer_sequence(config)
    return [(m, words, seq.count(m)) for m, words in _parts(config).items()]


def label(config: dict[str, Any]) -> str:
    """The architecture of a resolved run config, in words (see the module docstring)."""
    model, mdef = config.get("model") or {}, model_defaults()
    block = _block(layer_sequence(config))
    parts = _parts(config)
    runs: list[list[Any]] = []
    for m in block:
        if runs and runs[-1][0] == m:
            runs[-1][1] += 1
        else:
            runs.append([m, 1])
    if len(parts) == 1:
        words = [parts[block[0]]]
    elif len(runs) == len(parts):
        words = [":".join(parts[m] for m, _ in runs), ":".join(str(c) for _, c in runs)]
    else:
        words = ["[" + ",".join(parts[m] for m in block) + "]"]
    n = model.get("n_layers", mdef.get("n_layers"))
    if n != mdef.get("n_layers"):
        words.append(f"x{n}")
    channel = model.get("channel", mdef.get("channel"))
    given = dict(model.get("channel_options") or {})
    cdef = channel_defaults(channel) if isinstance(channel, str) else None
    ch_opts = ["class"] if cdef and not given else _options(given, cdef, filled=False)
    if channel != mdef.get("channel") or ch_opts:
        words.append(f"ch={channel}" + (f"({','.join(ch_opts)})" if ch_opts else ""))
    words += [f"{k}={_fmt(v)}" for k, v in sorted(model.items())
              if k not in MODEL_SHAPE and (k not in mdef or v != mdef[k])]
    return " ".join(words)


def width(config: dict[str, Any]) -> int | None:
    return (config.get("model") or {}).get("d_model")


def canon(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def row_key(config: dict[str, Any]) -> str:
    """What defines a leaderboard row: the task setting, the architecture (its label), the
    width and the suite (runs of one setting in two suites, e.g. the tier and a longer study,
    are never pooled nor selected between)."""
    return canon({"task": config["task"], "arch": label(config), "d_model": width(config),
                  "suite": config.get("suite")})


def hp_key(config: dict[str, Any]) -> str:
    """Everything else that is not run bookkeeping: the hyper-parameters selected over."""
    return canon({k: v for k, v in config.items()
                  if k not in ("task", "layer", "model", *RUN_KEYS)})


def describe_task(task_cfg: dict[str, Any]) -> str:
    """A task setting's knobs (not its data sizes), ``key=value`` sorted."""
    skip = {"name", *DATA_KEYS}
    return " ".join(f"{k}={_fmt(v)}" for k, v in sorted(task_cfg.items()) if k not in skip)


def train_length(task_cfg: dict[str, Any]) -> int | None:
    """The length a task trains at, in the units of its ``len=`` test variants: string length
    for copying (``max_len``), the sequence length otherwise (tasks' ``Task.length``)."""
    return task_cfg.get("max_len", task_cfg.get("seq_len"))
