"""What the suites share: wall time (best of a few calls), peak tensor memory, one
forward+backward of a module, the machine line that heads every table, and the allocator
setting.

Peak memory is the high-water mark of tensor bytes allocated during one forward+backward
beyond what was alive before it (parameters and the input are not counted; activations, saved
tensors, temporaries and gradients are). On CUDA it comes from the caching allocator's
statistics; on CPU from the allocation and free events that
``torch.profiler(profile_memory=True)`` records, replayed in time order (a separate, untimed
pass). It counts torch tensors only, not the Python heap or allocator slack.

Allocator: on glibc, ``zoo.bench.main`` first asks malloc to keep freed memory for reuse
(``keep_freed_memory``). By default glibc serves every block above 32 MiB with a fresh
``mmap`` and unmaps it on free, so at 16,384 tokens each large temporary is page-faulted and
zeroed by the kernel again on every step: that cost grows with T faster than the arithmetic
and made linear mixers look superlinear (gla, one thread, a loaded machine: 4.50 s per step
at 16,384 by default against 3.91 s with ``keep_freed_memory``). PyTorch's CPU tuning guide
recommends an allocator that reuses memory (jemalloc, tcmalloc) for the same reason.
``--os-malloc`` measures glibc's default instead.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import itertools
import platform
import time
from typing import Callable

import torch

from ..record import device_info

MIB = 2 ** 20


def keep_freed_memory() -> bool:
    """Make glibc's malloc serve large blocks from the heap and keep what is freed there
    (``mallopt(M_MMAP_MAX, 0)``, ``mallopt(M_TRIM_THRESHOLD, 2 GiB)``), so a tensor freed by
    one step is reused by the next without page faults. Returns False where it cannot (not
    glibc), leaving the allocator as it was."""
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
    return bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, 2 ** 31 - 1))


def machine_line(malloc: str = "") -> str:
    d = device_info()
    gpu = f", GPU: {', '.join(d['cuda'])}" if d.get("cuda") else ", no GPU"
    return (f"Machine: {d['processor'] or platform.machine()}, {d['cpu_count']} cores, "
            f"torch {torch.__version__} ({d['torch_threads']} threads){gpu}{malloc}")


def best_of(fn: Callable[[], object], repeats: int = 3) -> float:
    """Best wall time of ``repeats`` calls, in seconds."""
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def peak_memory_bytes(fn: Callable[[], object], device: torch.device) -> int | None:
    """Peak bytes of tensors allocated while ``fn`` runs, above those alive before it
    (see the module docstring); None where the profiler cannot say."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - base
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    try:  # kineto's raw events: one per allocation (+bytes) and free (-bytes)
        events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                        if e.name() == "[memory]")
    except AttributeError:
        return None
    return max(itertools.accumulate(b for _, b in events), default=0)


def train_step(fn: Callable[[torch.Tensor], torch.Tensor], module: torch.nn.Module,
                x: torch.Tensor, grad: torch.Tensor) -> Callable[[], None]:
    """One forward+backward of ``fn`` (the mixer's forward or its reference); grads are freed
    first, so every call allocates the same."""
    def run() -> None:
        module.zero_grad(set_to_none=True)
        x.grad = None
        fn(x).backward(grad)
        if x.is_cuda:
            torch.cuda.synchronize(x.device)
    return run


def measure(module: torch.nn.Module, d_model: int, batch: int, T: int, repeats: int,
             memory: bool, device: torch.device, reference: bool = False
             ) -> tuple[float, int | None]:
    """Best wall seconds of one forward+backward over ``[batch, T, d_model]`` after an untimed
    warm-up, and its peak memory (None when not measured)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, T, d_model, generator=g).to(device).requires_grad_()
    grad = torch.randn(batch, T, d_model, generator=g).to(device)
    step = train_step(module.reference if reference else module, module, x, grad)
    peak = peak_memory_bytes(step, device) if memory else step()  # doubles as the warm-up
    return best_of(step, repeats), peak
