"""What a run is, before it trains: the resolved config it records and hashes into its key
(``run_config``, ``identity``: a starting checkpoint counts by its contents), and what a run
of a two-stage sweep takes from earlier records (stage 2's learning rate, ``selected_lr``;
the shorter run an extension replaces, ``extended_run``; whether a rate beyond stage 1's grid
trains, ``beyond_edge``). ``zoo.train`` calls these before
it takes the lock on the key; a resumed sweep finds its finished runs by that key
(``zoo.record.config_key``)."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from .labels import layer_defaults
from .record import without_neutral
from .validate import ConfigError

log = logging.getLogger("zoo.train")


def run_config(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config a run records and hashes into its key, without the knobs newer than
    the first records that sit at their neutral value (``record.NEUTRAL``: no ``ckpt_path``,
    an unlooped, RMS-normed model), so configs and keys are what they were before those
    knobs existed.

    A hybrid's mixers other than ``layer`` take their options from their own
    ``configs/layer/<name>.yaml`` (what ``layer=<name>`` would give them), overridden by
    ``model.mixer_options[<name>]``, and the record holds them all: ``[gla, attention]`` is the
    zoo's gla and the zoo's attention, and the record says so."""
    cfg_dict = without_neutral(OmegaConf.to_container(cfg, resolve=True))
    model, layer = cfg_dict.get("model"), cfg_dict.get("layer")
    if isinstance(model, dict) and isinstance(layer, dict):
        pattern = model.get("pattern") or []
        pattern = [pattern] if isinstance(pattern, str) else pattern
        given = model.get("mixer_options") or {}
        for name in dict.fromkeys(p for p in pattern if p != layer.get("name")):
            defaults = layer_defaults(name) if isinstance(name, str) else None
            if defaults is not None:
                given[name] = {**defaults, **(given.get(name) or {})}
        if given:
            model["mixer_options"] = given
    return cfg_dict


def start_point(cfg_dict: dict[str, Any]) -> dict[str, str] | None:
    """The starting checkpoint (``ckpt_path``, made absolute in ``cfg_dict``) and its sha256."""
    if cfg_dict.get("ckpt_path") is None:
        return None
    path = Path(cfg_dict["ckpt_path"]).expanduser().resolve()
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    cfg_dict["ckpt_path"] = str(path)
    return {"path": str(path), "sha256": digest.hexdigest()}


def identity(cfg_dict: dict[str, Any], start: dict[str, str] | None) -> dict[str, Any]:
    """What a run's config key hashes: its config, with a starting checkpoint named by its
    contents rather than its path."""
    return cfg_dict if start is None else {**cfg_dict, "ckpt_path": f"sha256:{start['sha256']}"}


def monitor(cfg_dict: dict[str, Any], knobs: dict[str, Any]) -> tuple[str, str]:
    """The validation metric a run selects on (without ``val/``) and its mode."""
    import tasks

    es = cfg_dict["early_stopping"]
    if es["monitor"]:
        return es["monitor"].split("/", 1)[1], es["mode"]
    return tasks.build(cfg_dict["task"]["name"], **knobs).monitor


def extended_run(cfg_dict: dict[str, Any], knobs: dict[str, Any]) -> dict[str, Any] | None:
    """``extend=true``: the shorter run of this config and seed this run replaces (it stopped
    at its cap while still improving; ``zoo.two_stage.to_extend``), for the record, or None
    (said in the log) when there is none: the run is skipped."""
    from .two_stage import ladder_root_steps, to_extend

    prev, why = to_extend(cfg_dict, cfg_dict["results_dir"], monitor(cfg_dict, knobs)[1])
    log.info("%s", why if prev else f"skipping: {why}")
    if prev is None:
        return None
    return {"run_id": prev["run_id"], "max_steps": prev["config"]["trainer"]["max_steps"],
            "root_max_steps": ladder_root_steps(prev), "reason": why}


def beyond_edge(cfg_dict: dict[str, Any], knobs: dict[str, Any]) -> str | None:
    """``lr_edge=true``: why this stage-1 run's rate trains (the next step beyond the edge of
    its suite's grid where the best rate sits unsolved, ``zoo.two_stage.edge_rate``), for the
    record, or None when it does not (the run is skipped); said in the log either way."""
    from .two_stage import edge_rate

    trains, why = edge_rate(cfg_dict, cfg_dict["results_dir"], *monitor(cfg_dict, knobs))
    log.info("%s", why if trains else f"skipping: {why}")
    return why if trains else None


@dataclass(frozen=True)
class Origin:
    """How a run began, as its record says: the checkpoint it started from (``started_from``),
    stage 2's rate and its evidence (``lr_selection``), the shorter run it extends
    (``extends``), why a rate beyond stage 1's grid trains (``lr_edge``)."""
    started_from: dict[str, str] | None = None
    lr_selection: dict[str, Any] | None = None
    extends: dict[str, Any] | None = None
    lr_edge: str | None = None


def selected_lr(cfg_dict: dict[str, Any], knobs: dict[str, Any]) -> dict[str, Any]:
    """Stage 2 of a two-stage sweep: set ``optim.lr`` to the rate stage ``lr_from`` chose on
    validation for this config (``zoo.two_stage``); returns the evidence for the record."""
    from .two_stage import select_lr

    metric, mode = monitor(cfg_dict, knobs)
    try:
        lr, evidence = select_lr(cfg_dict, cfg_dict["results_dir"], cfg_dict["lr_from"],
                                 metric, mode)
    except LookupError as e:
        raise ConfigError("lr_from", cfg_dict["lr_from"], str(e)) from None
    cfg_dict["optim"]["lr"] = lr
    log.info("learning rate %g, selected on stage %s's validation", lr, cfg_dict["lr_from"])
    return evidence
