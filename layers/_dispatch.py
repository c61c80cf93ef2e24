"""Kernel dispatch and the small helpers every path of the recurrent family shares.

- ``optional_import``, ``kernel_module``: an accelerated kernel's module (fla, mamba-ssm, the
  zoo's Triton kernels) only where it should run, imported lazily at the first forward that
  could use it, never at import, so ``layers`` imports on a machine without them;
- ``kernels_on_cpu``: the tests' switch that sends CPU tensors to those kernels too, where
  Triton's interpreter runs them (``TRITON_INTERPRET=1``);
- ``call_time_major``: fla's ``[B, T, H, d]`` calling convention across its releases;
- ``fp32``: a region with autocast off, so a recurrence stays in fp32 under bf16/fp16;
- ``pad_time``: zero-padding the time axis to a multiple of a chunk or block.
"""

from __future__ import annotations

import functools
import importlib
import inspect
from contextlib import contextmanager
from types import ModuleType
from typing import Any, Callable, Iterator

import torch
import torch.nn.functional as F


@functools.lru_cache(maxsize=None)
def optional_import(name: str) -> ModuleType | None:
    """``importlib.import_module(name)``, or None when it (or a dependency) is missing.
    Called lazily, at the first forward that could use the kernel, never at import."""
    try:
        return importlib.import_module(name)
    except Exception:  # noqa: BLE001  (a broken CUDA install raises more than ImportError)
        return None


_ON_CPU = False  # kernels_on_cpu() turns it on


@contextmanager
def kernels_on_cpu() -> Iterator[None]:
    """Within the block, ``kernel_module`` dispatches CPU tensors too, so a test runs the
    layers' own accelerated path on a machine without a GPU: Triton kernels (fla's, Phalanx's)
    then run in Triton's interpreter, which ``TRITON_INTERPRET=1`` selects when the kernel's
    module is first imported. For tests only: compiled Triton kernels fail on CPU tensors."""
    global _ON_CPU
    before, _ON_CPU = _ON_CPU, True
    try:
        yield
    finally:
        _ON_CPU = before


def kernel_module(name: str, x: torch.Tensor, enabled: bool = True) -> ModuleType | None:
    """The accelerated-kernel module ``name`` if it should be used for ``x``: only when
    enabled, ``x`` lives on CUDA (or ``kernels_on_cpu`` is on) and the package imports."""
    if not (enabled and (x.is_cuda or _ON_CPU)):
        return None
    return optional_import(name)


def call_time_major(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Call an fla kernel on ``[B, T, H, d]`` tensors: fla releases before 2025 default to
    ``head_first=True`` (``[B, H, T, d]``); later ones dropped the argument."""
    if "head_first" in inspect.signature(fn).parameters:
        kwargs["head_first"] = False
    return fn(*args, **kwargs)


@contextmanager
def fp32(x: torch.Tensor) -> Iterator[None]:
    """Disable autocast so the recurrence stays in fp32 under bf16/fp16 autocast."""
    with torch.autocast(device_type=x.device.type, enabled=False):
        yield


def pad_time(x: torch.Tensor, multiple: int, dim: int = -2) -> torch.Tensor:
    """Zero-pad ``x`` at the end of ``dim`` to a multiple of ``multiple``."""
    extra = -x.shape[dim] % multiple
    if extra == 0:
        return x
    dim = dim % x.ndim
    pad = [0, 0] * (x.ndim - 1 - dim) + [0, extra]
    return F.pad(x, pad)
