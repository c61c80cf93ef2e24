"""A run's files outside its record: the lock on its config key (``exclusive``), its
checkpoints (``last_checkpoint``, ``resume_point``, ``drop_checkpoints``) and the directories it
leaves (``prune_empty``, ``discard_run_dir``)."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
from pathlib import Path
from typing import Any, Iterator

log = logging.getLogger("zoo.train")


@contextlib.contextmanager
def exclusive(path: Path) -> Iterator[str | None]:
    """Hold an advisory lock on ``path`` for the block; yields None when held, else the
    holder's note (``pid@host``). The kernel drops the lock when its process dies, so a killed
    run never leaves a stale lock."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            return
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}@{os.uname().nodename}\n".encode(), 0)
        try:
            yield None
        finally:
            path.unlink(missing_ok=True)  # still held: a newcomer locks a fresh file
    finally:
        os.close(fd)


LAST = "last.ckpt"


def last_checkpoint(ckpt_dir: Path) -> Any:
    """A Lightning callback writing ``ckpt_dir/last.ckpt`` after every validation of ``fit``
    (to a temporary name, then renamed: a kill mid-write leaves the previous one whole), the
    point a killed run resumes from. Lightning's own ``save_last`` writes it only when the
    monitored metric improved, so a run on a plateau, killed, redid every step since its last
    improvement (a frontier run at d 128 lost 17 minutes twice that way)."""
    from lightning.pytorch.callbacks import Checkpoint
    from lightning.pytorch.trainer.states import TrainerFn

    class LastCheckpoint(Checkpoint):  # a Checkpoint: Lightning runs it after ModelCheckpoint
        def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
            if trainer.state.fn != TrainerFn.FITTING or trainer.sanity_checking:
                return
            tmp = Path(ckpt_dir) / f".{LAST}.tmp"
            trainer.save_checkpoint(tmp)
            if trainer.is_global_zero:
                os.replace(tmp, Path(ckpt_dir) / LAST)

    return LastCheckpoint()


def resume_point(ckpt_dir: Path) -> tuple[str | None, int]:
    """``last.ckpt`` of an interrupted run and its step, or (None, 0) when there is none or it
    cannot be read (a kill while it was being written): then the run starts afresh."""
    import torch

    last = ckpt_dir / LAST
    if not last.exists():
        return None, 0
    try:
        state = torch.load(last, map_location="cpu", weights_only=False)
        return str(last), int(state["global_step"])
    except Exception as e:  # noqa: BLE001 - any unreadable checkpoint means start over
        log.warning("ignoring unreadable checkpoint %s (%s): starting afresh", last, e)
        return None, 0


def drop_checkpoints(ckpt_dir: Path, keep_best: bool) -> None:
    """Once the record is written the resume checkpoint has done its job; the best one stays
    only where asked (``keep_checkpoint=true``)."""
    for name in (LAST, f".{LAST}.tmp", *(() if keep_best else ("best.ckpt",))):
        (ckpt_dir / name).unlink(missing_ok=True)


def prune_empty(path: Path, stop: Path) -> None:
    """Remove ``path`` and its parents up to ``stop`` (included) while they are empty."""
    path, stop = path.resolve(), stop.resolve()
    for d in (path, *path.parents):
        if d != stop and stop not in d.parents:
            break
        try:
            d.rmdir()
        except OSError:
            break
        if d == stop:
            break


def discard_run_dir() -> None:
    """Remove the directory Hydra made for a run that never started, and the parents it made
    for it that are now empty (``outputs/<task>/<layer>/``)."""
    from hydra.core.hydra_config import HydraConfig

    try:
        hc = HydraConfig.get()
        out, top = Path(hc.runtime.output_dir).resolve(), Path(hc.runtime.cwd).resolve()
    except (ValueError, AttributeError):
        return
    shutil.rmtree(out, ignore_errors=True)
    if top in out.parents:
        prune_empty(out.parent, top / out.relative_to(top).parts[0])
