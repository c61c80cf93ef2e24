"""Mamba's S6 scan compiled from C for the CPU (``csrc/selective_scan.c``): the computation of
``_selective_scan._SelectiveScan`` (same layout, fp32; ``_CompiledScan``), forward and
backward, a loop per batch row over the ``[d_state, D_in]`` state, vectorised over the
channels, threads splitting the batch rows (results bit-identical for any number of threads);
and the short convolution before it, ``_shortconv._CausalConv``'s computation
(``_CompiledConv``; ``_shortconv.CausalConv`` dispatches to it).

Built lazily, at the first call that can use it: ``$ZOO_CC`` (default ``cc``) compiles the
source into ``$ZOO_KERNEL_CACHE`` (default ``$XDG_CACHE_HOME/zoo/kernels``, or
``~/.cache/zoo/kernels``) under a name hashing the source, the compiler and its flags (about a
second; written to a temporary name and renamed, so jobs that build at once do not collide),
then loads it with ctypes: no torch headers, no build step at install. ``library()`` is None
where that fails (no compiler, ``ZOO_CC=none``, a failed build or load), with one warning
naming why; ``selective_scan`` then runs the pure-torch scan.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch


SOURCE = Path(__file__).parent / "csrc" / "selective_scan.c"
# No -ffast-math: under gcc 12 it links crtfastmath.o even into a shared object, which sets
# flush-to-zero for the whole process at load. Of its parts: -fno-trapping-math lets the exp's
# clamps vectorise, -ffinite-math-only -fno-signed-zeros make them min/max instructions (with
# them a NaN in the inputs no longer has a defined result); no reassociation, so the sums are
# in the order the source gives. The ISA flags are added only where the build machine has them
# (and hashed).
FLAGS = ["-O3", "-fopenmp-simd", "-fno-trapping-math", "-fno-math-errno", "-ffinite-math-only",
         "-fno-signed-zeros", "-fPIC", "-shared", "-pthread"]
# The steps between the states the forward keeps for the backward: a segment's states and
# decays, 2 * SEGMENT_FLOATS floats, stay in a core's L2 cache.
SEGMENT_FLOATS = 2 ** 14


def _isa_flags() -> list[str]:
    """The vector extensions of the build machine's CPU (x86 Linux) gcc may use: AVX-512
    (512-bit vectors), else AVX2 and FMA, else none (SSE2)."""
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return []
    if {"avx512f", "avx512dq", "avx512vl", "avx2", "fma"} <= flags:
        return ["-mavx2", "-mfma", "-mavx512f", "-mavx512dq", "-mavx512vl",
                "-mprefer-vector-width=512"]
    return ["-mavx2", "-mfma"] if {"avx2", "fma"} <= flags else []


def _openmp_flags() -> list[str]:
    """``-fopenmp`` where torch runs its parallel ops on libgomp (loaded in this process): the
    library then needs ``libgomp.so.1``, which the loader resolves to that same loaded copy, so
    the scan's threads are torch's own OpenMP workers. Elsewhere (Intel OpenMP, no OpenMP, no
    ``/proc``) none, and the scan starts pthreads."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return []
    return ["-fopenmp"] if "libgomp" in maps else []


def _cache_dir() -> Path:
    if os.environ.get("ZOO_KERNEL_CACHE"):
        return Path(os.environ["ZOO_KERNEL_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "zoo" / "kernels"


def _build() -> Path:
    """The shared object, compiled now unless the cache has it; raises with the reason. With
    OpenMP where ``_openmp_flags`` asks for it and the compiler can, else with pthreads."""
    cc = os.environ.get("ZOO_CC", "cc")
    if cc.strip().lower() in ("", "none", "0", "off"):
        raise RuntimeError(f"ZOO_CC={cc!r} turns the compiled scan off")
    omp = _openmp_flags()
    try:
        return _compile(cc, FLAGS + _isa_flags() + omp)
    except RuntimeError:
        if not omp:
            raise
        return _compile(cc, FLAGS + _isa_flags())


def _compile(cc: str, flags: list[str]) -> Path:
    """``SOURCE`` compiled by ``cc`` with ``flags`` into the cache, under a name hashing all
    three (unless it is there already)."""
    key = hashlib.sha256(b"\0".join([SOURCE.read_bytes(), cc.encode(), " ".join(flags).encode()]))
    target = _cache_dir() / f"selective_scan-{key.hexdigest()[:16]}.so"
    if target.exists():
        return target
    if shutil.which(cc) is None:
        raise RuntimeError(f"no C compiler {cc!r} on PATH (set ZOO_CC to one)")
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".build-", suffix=".so")
    os.close(fd)
    try:
        done = subprocess.run([cc, *flags, str(SOURCE), "-o", tmp], capture_output=True,
                              text=True, timeout=120)
        if done.returncode != 0:
            raise RuntimeError(f"{cc} failed ({done.returncode}): {done.stderr.strip()[-500:]}")
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


@functools.lru_cache(maxsize=None)
def library() -> ctypes.CDLL | None:
    """The compiled scan, built and loaded at the first call; None (warning once, with the
    reason) where it cannot be."""
    try:
        lib = ctypes.CDLL(str(_build()))
    except Exception as e:  # noqa: BLE001  (any failure means the pure-torch scan)
        warnings.warn(f"mamba: the compiled CPU scan is unavailable, using the pure-torch scan "
                      f"({e})", RuntimeWarning, stacklevel=2)
        return None
    p, i64 = ctypes.c_void_p, ctypes.c_longlong
    lib.s6_forward.argtypes = [p] * 11 + [i64] * 5 + [ctypes.c_int]
    lib.s6_backward.argtypes = [p] * 20 + [i64] * 5 + [ctypes.c_int]
    lib.conv_forward.argtypes = [p] * 5 + [i64] * 8 + [ctypes.c_int]
    lib.conv_backward.argtypes = [p] * 9 + [i64] * 8 + [ctypes.c_int]
    lib.xent_sums.argtypes = [p] * 3 + [i64] * 2 + [ctypes.c_int]
    lib.xent_grad.argtypes = [p] * 3 + [ctypes.c_float, p] + [i64] * 2 + [ctypes.c_int]
    for f in (lib.s6_forward, lib.s6_backward, lib.conv_forward, lib.conv_backward,
              lib.xent_sums, lib.xent_grad):
        f.restype = ctypes.c_int
    return lib


def usable(*tensors: torch.Tensor) -> bool:
    """Whether the compiled scan can run on these tensors: all on the CPU and it builds."""
    return all(t.device.type == "cpu" for t in tensors) and library() is not None


def _ptr(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


class _CompiledScan(torch.autograd.Function):
    """``_SelectiveScan``'s signature and results (u, delta ``[T, B, Di]``, A_t ``[N, Di]``,
    B, C ``[T, B, N]``, D ``[Di]`` -> y ``[T, B, Di]``, fp32 CPU tensors), computed by the C
    scan; as mamba-ssm's ``selective_scan_fn`` has them, ``z`` (``[T, B, Di]`` or None): the
    output gated, ``y * silu(z)``, and ``softplus``: the scan's delta is ``softplus(delta)``.
    Autograd keeps the inputs, the state entering every ``K``-th step and, with ``z``, the
    output before the gate, with ``softplus``, the delta it took."""

    @staticmethod
    def forward(ctx: Any, u: torch.Tensor, delta: torch.Tensor, A_t: torch.Tensor,
                Bm: torch.Tensor, Cm: torch.Tensor, D: torch.Tensor,
                z: torch.Tensor | None = None, softplus: bool = False) -> torch.Tensor:
        u, delta, A_t, Bm, Cm, D = (t.float().contiguous() for t in (u, delta, A_t, Bm, Cm, D))
        z = None if z is None else z.float().contiguous()
        (T, B, Di), N = u.shape, A_t.shape[0]
        K = max(1, min(T, SEGMENT_FLOATS // (N * Di)))
        y = torch.empty_like(u)
        keep = any(ctx.needs_input_grad)
        starts = u.new_empty(-(-T // K), B, N, Di) if keep else None
        ysave = torch.empty_like(u) if keep and z is not None else None
        dsave = torch.empty_like(u) if softplus else None
        if T * B:
            _check(library().s6_forward(
                *map(_ptr, (u, delta, A_t, Bm, Cm, D, z, y, ysave, dsave, starts)),
                T, B, Di, N, K, torch.get_num_threads()))
        ctx.K = K
        ctx.save_for_backward(u, delta, dsave, A_t, Bm, Cm, D, z, ysave, starts)
        return y

    @staticmethod
    def backward(ctx: Any, gy: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        u, delta, dsave, A_t, Bm, Cm, D, z, ysave, starts = ctx.saved_tensors
        # the delta the scan took, and its input where that was softplus(input)
        delta, draw = (delta, None) if dsave is None else (dsave, delta)
        (T, B, Di), N = u.shape, A_t.shape[0]
        gy = gy.float().contiguous()
        gu, gdelta, gB, gC = (torch.empty_like(t) for t in (u, delta, Bm, Cm))
        gA, gD = torch.zeros_like(A_t), torch.zeros_like(D)
        gz = None if z is None else torch.empty_like(z)
        if T * B:
            gA_b, gD_b = u.new_empty(B, N, Di), u.new_empty(B, Di)  # per-row sums, then over b
            _check(library().s6_backward(
                *map(_ptr, (u, delta, draw, A_t, Bm, Cm, D, z, ysave, starts, gy, gu, gdelta,
                            gA, gB, gC, gD, gz, gA_b, gD_b)),
                T, B, Di, N, ctx.K, torch.get_num_threads()))
        return gu, gdelta, gA, gB, gC, gD, gz, None


def _layout_of(u: torch.Tensor) -> tuple[int, int, int, bool]:
    """``[T, B, C]`` and whether u's rows are batch-major in memory (a transposed
    ``[B, T, C]``): the outputs take that layout, as ``_CausalConv``'s do."""
    T, B, C = u.shape
    return T, B, C, u.stride(1) > u.stride(0) and T > 1


def _empty(T: int, B: int, C: int, batch_major: bool) -> torch.Tensor:
    """An uninitialised ``[T, B, C]``, contiguous in ``[B, T, C]`` order if ``batch_major``."""
    return torch.empty(B, T, C).transpose(0, 1) if batch_major else torch.empty(T, B, C)


def _as_layout(g: torch.Tensor, batch_major: bool) -> torch.Tensor:
    """``g [T, B, C]`` with its memory in the given order (copied only where it is not)."""
    return g.transpose(0, 1).contiguous().transpose(0, 1) if batch_major else g.contiguous()


class _CompiledConv(torch.autograd.Function):
    """``_shortconv._CausalConv`` in C: the taps' products in the order it adds them, the
    taps' and bias' gradients summed per batch row, then over rows in a fixed order."""

    @staticmethod
    def forward(ctx: Any, u: torch.Tensor, w: torch.Tensor,
                b: torch.Tensor | None) -> torch.Tensor:
        (T, B, C, batch_major), k = _layout_of(u), w.shape[1]
        wt = w.t().contiguous()  # [k, C]: a tap's weights contiguous
        pre, y = _empty(T, B, C, batch_major), _empty(T, B, C, batch_major)
        if T * B:
            _check(library().conv_forward(*map(_ptr, (u, wt, b, pre, y)), T, B, C, k,
                                          u.stride(0), u.stride(1), y.stride(0), y.stride(1),
                                          torch.get_num_threads()))
        ctx.has_bias, ctx.batch_major = b is not None, batch_major
        ctx.save_for_backward(u, wt, pre)
        return y

    @staticmethod
    def backward(ctx: Any, gy: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        u, wt, pre = ctx.saved_tensors
        (T, B, C), k = u.shape, wt.shape[0]
        gy = _as_layout(gy.float(), ctx.batch_major)
        gu, gwt = _empty(T, B, C, ctx.batch_major), torch.zeros(k, C)
        gb = torch.zeros(C) if ctx.has_bias else None
        if T * B:
            scratch = torch.empty(B, k, C), torch.empty(B, C)  # per-row sums, then over rows
            _check(library().conv_backward(*map(_ptr, (u, wt, pre, gy, gu, gwt, gb, *scratch)),
                                           T, B, C, k, u.stride(0), u.stride(1), gu.stride(0),
                                           gu.stride(1), torch.get_num_threads()))
        return gu, gwt.t(), gb


def _check(status: int, what: str = "mamba: the compiled CPU scan") -> None:
    """A C function's status: 0, or -1 where it could not allocate its buffers."""
    if status != 0:
        raise MemoryError(f"{what} could not allocate its buffers")
