"""Run records: one immutable JSON file per run under ``results/<task>/<layer>/<run_id>.json``.

Written atomically (a temp file in the same directory, fsync, then ``os.link`` to the final
name, which fails where a record exists), so a crash or a parallel sweep worker never leaves a
half-written or clobbered record.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import subprocess
import tempfile
import time
import uuid
from importlib import metadata
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1
REQUIRED = ("schema_version", "run_id", "status", "time", "task", "layer", "config", "seed",
            "metrics")
PACKAGES = ("torch", "lightning", "hydra-core", "einops", "torchmetrics")
# Top-level config keys that say where and how a run is executed, not what it computes: they
# are left out of a run's identity (``config_key``) and of the hyper-parameters selected over.
BOOKKEEPING = ("out_dir", "results_dir", "progress_refresh_rate", "logger", "callbacks", "resume",
               "checkpoint_dir", "threads", "suite", "keep_checkpoint", "lr_from", "extend",
               "lr_edge")


def new_run_id() -> str:
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}"


def git_sha() -> str | None:
    """Commit of the source tree this code runs from, with ``-dirty`` if it has local changes."""
    here = Path(__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True,
                             text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=here, capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return sha + ("-dirty" if dirty else "")


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_info() -> dict[str, Any]:
    import torch  # here, not at the top: reading records (the leaderboard) needs no torch

    info: dict[str, Any] = {"platform": platform.platform(), "processor": cpu_name(),
                            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads()}
    if torch.cuda.is_available():
        info["cuda"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return info


def package_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


# Knobs added after records existed, each with the value at which it changes nothing: a config
# holding one at that value has the identity it had before the knob existed (a sweep resumed
# by newer code skips what older code finished, and two-stage selection sees both).
NEUTRAL = {("ckpt_path",): None, ("model", "loops"): 1, ("model", "norm"): "rms"}


def without_neutral(config: dict[str, Any]) -> dict[str, Any]:
    """``config`` without the ``NEUTRAL`` knobs that sit at their neutral value."""
    out = dict(config)
    for path, plain in NEUTRAL.items():
        parent = out
        for part in path[:-1]:
            child = parent.get(part)
            if not isinstance(child, dict):
                break
            parent[part] = child = dict(child)
            parent = child
        else:
            v = parent.get(path[-1], ...)
            if v is not ... and v == plain and type(v) is type(plain):
                del parent[path[-1]]
    return out


def config_key(config: dict[str, Any]) -> str:
    """A run's identity: a hash of its resolved config without the bookkeeping keys and the
    knobs at their neutral values (the seed is part of it). Two runs with the same key compute
    the same thing."""
    core = {k: v for k, v in without_neutral(config).items() if k not in BOOKKEEPING}
    text = json.dumps(core, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def find_finished(results_dir: str | Path, task: str, layer: str,
                  key: str) -> dict[str, Any] | None:
    """The record of a finished run (completed or failed) with this config key, if any."""
    for path in sorted((Path(results_dir) / task / layer).glob("*.json")):
        try:
            rec = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            continue
        if isinstance(rec, dict) and isinstance(rec.get("config"), dict) and rec.get(
                "status") in ("completed", "failed") and (
                rec.get("config_key") or config_key(rec["config"])) == key:
            return rec
    return None


def record_path(results_dir: str | Path, record: dict[str, Any]) -> Path:
    return Path(results_dir) / record["task"] / record["layer"] / f"{record['run_id']}.json"


def strict(value: Any, where: str = "", found: dict[str, str] | None = None) -> Any:
    """``value`` with every non-finite float replaced by None (JSON has no NaN or Infinity);
    each replacement's path and original value go into ``found``."""
    if isinstance(value, float) and not math.isfinite(value):
        if found is not None:
            found[where] = repr(value)
        return None
    if isinstance(value, dict):
        return {k: strict(v, f"{where}.{k}" if where else str(k), found) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict(v, f"{where}[{i}]", found) for i, v in enumerate(value)]
    return value


def write_record(results_dir: str | Path, record: dict[str, Any]) -> Path:
    """Atomically write a record; refuses to overwrite an existing one (records are immutable).
    Strict JSON: a non-finite number is written as null and listed, with its value, under
    ``non_finite`` (e.g. ``{"metrics.val/loss": "nan"}``)."""
    missing = [k for k in REQUIRED if k not in record]
    if missing:
        raise ValueError(f"record is missing {missing}")
    path = record_path(results_dir, record)
    path.parent.mkdir(parents=True, exist_ok=True)
    found: dict[str, str] = {}
    record = strict(record, found=found)
    if found:
        record["non_finite"] = found
    text = json.dumps(record, indent=1, sort_keys=True, default=str, allow_nan=False) + "\n"
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.link(tmp, path)  # fails if the record exists, unlike os.replace
    finally:
        os.unlink(tmp)
    return path


def load_records(results_dir: str | Path) -> tuple[list[dict[str, Any]], list[str]]:
    """Every valid training-run record under ``results_dir``, and a note for each file that is
    not a record; eval records (``kind: eval``, written by ``zoo.eval``) are left out."""
    records, problems = [], []
    for path in sorted(Path(results_dir).rglob("*.json")):
        try:
            rec = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            problems.append(f"{path}: unreadable ({type(e).__name__})")
            continue
        if not isinstance(rec, dict) or any(k not in rec for k in REQUIRED):
            problems.append(f"{path}: not a run record")
            continue
        if rec["schema_version"] != SCHEMA_VERSION:
            problems.append(f"{path}: schema_version {rec['schema_version']} is not {SCHEMA_VERSION}")
            continue
        if rec.get("kind") == "eval":
            continue
        records.append(rec)
    return records, problems


def checkpoint_path(record: dict[str, Any]) -> str | None:
    """The checkpoint a run record names (``checkpoint.path``; ``best_checkpoint`` in records
    made before that field), whether or not the file is there."""
    ckpt = record.get("checkpoint")
    return (ckpt.get("path") if isinstance(ckpt, dict) else None) or record.get("best_checkpoint")


def kept_checkpoint(record: dict[str, Any]) -> Path:
    """The checkpoint a run record says it kept; LookupError saying why there is none."""
    run = record.get("run_id")
    ckpt = record.get("checkpoint")
    if isinstance(ckpt, dict) and not ckpt.get("kept"):
        raise LookupError(f"run {run} kept no checkpoint (its record says checkpoint.kept="
                          f"false: they are removed once the record is written); train it "
                          f"again with keep_checkpoint=true")
    path = checkpoint_path(record)
    if not path:
        raise LookupError(f"run {run}'s record names no checkpoint; train it again with "
                          f"keep_checkpoint=true")
    if not Path(path).is_file():
        older = "" if isinstance(ckpt, dict) else (
            " (records made before keep_checkpoint never kept theirs)")
        raise LookupError(f"run {run}'s checkpoint {path} is missing{older}; train it again "
                          f"with keep_checkpoint=true")
    return Path(path)
