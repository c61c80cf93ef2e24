"""``python -m zoo.bench mixers``: every sequence mixer's forward+backward throughput and peak
memory over the lengths, how its time scales with T, and the loop reference against the fast
path, the whole layer and its recurrence kernel alone (found through the contract: what
``forward`` calls and ``reference`` does not)."""

from __future__ import annotations

import functools
import inspect
import os
import sys
import time
from typing import Any, Callable, Sequence

import torch

import layers
from .timing import MIB, best_of, measure


def _layer_calls(module: torch.nn.Module, method: str, x: torch.Tensor
                 ) -> dict[Callable[..., Any], tuple[float, tuple, dict]]:
    """The functions of the ``layers`` package that ``module.<method>(x)`` calls directly (from
    the module defining that method), each with the wall seconds and arguments of its call."""
    home = sys.modules[getattr(type(module), method).__module__]
    found = {name: f for name, f in vars(home).items()
             if inspect.isfunction(f) and f.__module__.split(".")[0] == "layers"}
    calls: dict[Callable[..., Any], tuple[float, tuple, dict]] = {}

    def recorded(f: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(f)
        def call(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            out = f(*args, **kwargs)
            calls[f] = (time.perf_counter() - start, args, kwargs)
            return out
        return call

    try:
        for name, f in found.items():
            setattr(home, name, recorded(f))
        with torch.no_grad():
            getattr(module, method)(x)
    finally:
        for name, f in found.items():
            setattr(home, name, f)
    return calls


def _kernel_pair(module: torch.nn.Module, x: torch.Tensor
                 ) -> tuple[tuple[Callable[..., Any], tuple, dict], ...] | None:
    """The recurrence kernel of ``module`` on its own, found through the contract rather than
    by name: the costliest ``layers`` function that ``forward`` calls and ``reference`` does
    not, against the costliest one ``reference`` calls and ``forward`` does not (gla:
    ``chunked_linear_attention`` and ``naive_recurrence``; phalanx: ``swr`` and
    ``swr_reference``), each with the arguments the layer gave it on ``x``. None where the two
    paths share their functions (attention's). It isolates the chunked form's speed-up from
    the projections around it."""
    fast, ref = _layer_calls(module, "forward", x), _layer_calls(module, "reference", x)
    fast_only = [(t, f, a, k) for f, (t, a, k) in fast.items() if f not in ref]
    ref_only = [(t, f, a, k) for f, (t, a, k) in ref.items() if f not in fast]
    if not fast_only or not ref_only:
        return None
    return tuple(max(found, key=lambda c: c[0])[1:] for found in (fast_only, ref_only))


def _time_kernel(fn: Callable[..., Any], args: tuple, kwargs: dict, repeats: int) -> float:
    """Best wall seconds of ``fn(*args, **kwargs)`` forward+backward (gradients for every
    floating-point tensor argument), after a warm-up; a tuple result's first element is the
    output (the kernels return ``(output, state)``)."""
    args = tuple(a.detach().requires_grad_() if torch.is_tensor(a) and a.is_floating_point()
                 else a for a in args)
    inputs = [a for a in (*args, *kwargs.values()) if torch.is_tensor(a) and a.requires_grad]

    def output() -> torch.Tensor:
        out = fn(*args, **kwargs)
        return out[0] if isinstance(out, tuple) else out

    grad = torch.randn_like(output())

    def run() -> None:
        torch.autograd.grad(output(), inputs, grad, allow_unused=True)
        if grad.is_cuda:
            torch.cuda.synchronize(grad.device)
    run()
    return best_of(run, repeats)


def _memory_limit(device: torch.device) -> int:
    """Half the machine's RAM (or the GPU's memory): lengths predicted to need more are skipped
    rather than left to the out-of-memory killer."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory // 2
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2


def bench_mixers(lengths: Sequence[int] = (256, 1024, 4096, 16384), d_model: int = 128,
                 batch: int = 8, names: Sequence[str] | None = None, repeats: int = 2,
                 budget: float = 60.0, naive: Sequence[str] | None = None,
                 memory: bool = True, device: str = "cpu") -> list[str]:
    """Forward+backward throughput and peak memory of every sequence mixer (default options)
    over ``lengths``. A mixer's next length is skipped when, scaled linearly in T from the
    last one, it would take more than ``budget`` seconds a step or more than half the memory.
    Then the loop reference against the fast path for each ``name:T`` in ``naive`` (default:
    every mixer measured, at T = 1,024)."""
    dev = torch.device(device)
    limit = _memory_limit(dev)
    rows = [f"d_model={d_model}, batch={batch}, default options, best of {repeats}; "
            f"skip beyond {budget:g} s/step or {limit / 2**30:.0f} GiB (linear extrapolation).", "",
            "| mixer | T | tokens/s (fwd+bwd) | ms / step | peak MiB |", "|---|---|---|---|---|"]
    times: dict[str, dict[int, float]] = {}
    for name in names or layers.names():
        torch.manual_seed(0)
        module = layers.build(name, d_model).to(dev)
        last: tuple[int, float, int | None] | None = None  # T, seconds, peak bytes
        for T in sorted(lengths):
            if last is not None:
                scale = T / last[0]
                if last[1] * scale > budget or (last[2] or 0) * scale > limit:
                    rows.append(f"| {name} | {T:,} | skipped: predicted over budget | | |")
                    continue
            try:
                secs, peak = measure(module, d_model, batch, T, repeats, memory, dev)
            except RuntimeError as e:  # torch's allocators raise this when memory runs out
                if "memory" not in str(e).lower():
                    raise
                rows.append(f"| {name} | {T:,} | out of memory | | |")
                last = (T, float("inf"), None)
                continue
            last = (T, secs, peak)
            times.setdefault(name, {})[T] = secs
            rows.append(f"| {name} | {T:,} | {batch * T / secs:,.0f} | {secs * 1e3:,.1f} "
                        f"| {'n/a' if peak is None else f'{peak / MIB:,.1f}'} |")
    rows += _scaling_rows(times)
    if naive is None:
        naive = [f"{name}:1024" for name in names or layers.names()]
    if naive:
        rows += ["", "Loop reference (fp32, the tests' oracle) against the fast path, fwd+bwd: "
                 "the whole layer (`forward` / `reference`), and its recurrence kernel alone "
                 "(the `layers` function only `forward` calls / the one only `reference` calls, "
                 "on the arguments the layer gave them).", "",
                 "| mixer | T | part | fast / reference | reference ms | fast ms | speed-up |",
                 "|---|---|---|---|---|---|---|"]
    for spec in naive:
        name, T = spec.split(":")[0], int(spec.split(":")[1])
        torch.manual_seed(0)
        module = layers.build(name, d_model).to(dev)
        ref, _ = measure(module, d_model, batch, T, 1, False, dev, reference=True)
        fast, _ = measure(module, d_model, batch, T, repeats, False, dev)
        pairs = [("layer", "forward / reference", ref, fast)]
        x = torch.randn(batch, T, d_model, generator=torch.Generator().manual_seed(0)).to(dev)
        kernel = _kernel_pair(module, x)
        if kernel is not None:
            (fast_fn, *fast_call), (ref_fn, *ref_call) = kernel
            pairs.append(("kernel", f"`{fast_fn.__name__}` / `{ref_fn.__name__}`",
                          _time_kernel(ref_fn, *ref_call, 1),
                          _time_kernel(fast_fn, *fast_call, repeats)))
        rows += [f"| {name} | {T:,} | {part} | {fns} | {r * 1e3:,.1f} | {f * 1e3:,.1f} "
                 f"| {r / f:,.1f}x |" for part, fns, r, f in pairs]
    return rows


def _scaling_rows(times: dict[str, dict[int, float]], base: int = 1024) -> list[str]:
    """time(T) / time(base) for every mixer measured at ``base`` and a longer T: about
    T / base for a linear-time mixer, (T / base)^2 for a quadratic one."""
    longer = sorted({T for by_T in times.values() for T in by_T if T > base})
    if not longer or not any(base in by_T for by_T in times.values()):
        return []
    rows = ["", f"Scaling: time(T) / time({base:,}) (linear: T / {base:,}).", "",
            "| mixer | " + " | ".join(f"{T:,}" for T in longer) + " |",
            "|---|" + "---|" * len(longer)]
    for name, by_T in times.items():
        if base in by_T:
            cells = [f"{by_T[T] / by_T[base]:,.1f}" if T in by_T else "" for T in longer]
            rows.append(f"| {name} | " + " | ".join(cells) + " |")
    return rows
