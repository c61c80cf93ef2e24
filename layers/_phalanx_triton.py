"""Triton kernels of Phalanx's block two-pass SWR (``phalanx.swr``), forward and backward, for
any recent NVIDIA GPU (the paper's own kernel targets one GPU generation).

Imported only through ``_dispatch.kernel_module`` when a forward runs on CUDA: this module imports
triton at its top, so it is never loaded on a CPU-only install. Under ``TRITON_INTERPRET=1``
the same kernels run on CPU tensors (the tests do that at tiny shapes, through
``_dispatch.kernels_on_cpu``).

One program per (row, block): no program waits on another.
- Forward: rerun the previous block's local recurrence from zero to get its end ``e`` (BL
  steps, cheaper than a second launch), then this block's ``h_r = a_r h_{r-1} + u_r`` with
  ``x_r = h_r + exp(cs_r) e`` (``cs`` the in-block cumulative log decay). Writes x and the
  block's own local end (for the backward).
- Backward (see ``phalanx._SWR`` for the derivation): the next block's reverse scan of gx
  gives the injection ``inj = a_{c+1,0} zc_{c+1,0}``; this block's reverse scan gives ``zc``
  and ``grad_u = zc + exp(cs_end - cs_r) inj``; the log decay's grad is
  ``a_r sum_ch x_{r-1} grad_u_r - exp(cs_end) sum_ch e inj`` with ``x_{-1} = e``.
Every decay product is ``exp`` of a non-positive log sum.
"""

from __future__ import annotations

from typing import Any

import torch
import triton
import triton.language as tl

from ._dispatch import fp32, pad_time


@triton.jit
def _local_end(la_ptr, u_ptr, offs, mask, C, BL: tl.constexpr, BLOCK_C: tl.constexpr):
    """The local recurrence of one block from zero: its last value ``[BLOCK_C]``."""
    h = tl.zeros([BLOCK_C], dtype=tl.float32)
    for r in tl.static_range(BL):
        a = tl.exp(tl.load(la_ptr + r))
        h = a * h + tl.load(u_ptr + r * C + offs, mask=mask, other=0.0)
    return h


@triton.jit
def _swr_fwd(la_ptr, u_ptr, x_ptr, end_ptr, NB, C, BL: tl.constexpr, BLOCK_C: tl.constexpr):
    row, blk = tl.program_id(0), tl.program_id(1)
    offs = tl.arange(0, BLOCK_C)
    mask = offs < C
    base = row * NB + blk  # this block's index among all rows' blocks
    e = tl.zeros([BLOCK_C], dtype=tl.float32)
    if blk > 0:
        e = _local_end(la_ptr + (base - 1) * BL, u_ptr + (base - 1) * BL * C, offs, mask, C,
                       BL, BLOCK_C)
    h = tl.zeros([BLOCK_C], dtype=tl.float32)
    cs = 0.0
    for r in tl.static_range(BL):
        la = tl.load(la_ptr + base * BL + r)
        cs += la
        h = tl.exp(la) * h + tl.load(u_ptr + (base * BL + r) * C + offs, mask=mask, other=0.0)
        tl.store(x_ptr + (base * BL + r) * C + offs, h + tl.exp(cs) * e, mask=mask)
    tl.store(end_ptr + base * C + offs, h, mask=mask)


@triton.jit
def _swr_bwd(la_ptr, x_ptr, end_ptr, gx_ptr, gla_ptr, gu_ptr, NB, C, BL: tl.constexpr,
             BLOCK_C: tl.constexpr):
    row, blk = tl.program_id(0), tl.program_id(1)
    offs = tl.arange(0, BLOCK_C)
    mask = offs < C
    base = row * NB + blk
    inj = tl.zeros([BLOCK_C], dtype=tl.float32)
    if blk < NB - 1:  # the next block's reverse scan down to its first token
        zc = tl.zeros([BLOCK_C], dtype=tl.float32)
        a_next = 0.0
        for i in tl.static_range(BL):
            r = BL - 1 - i
            zc = tl.load(gx_ptr + ((base + 1) * BL + r) * C + offs, mask=mask, other=0.0) \
                + a_next * zc
            a_next = tl.exp(tl.load(la_ptr + (base + 1) * BL + r))
        inj = a_next * zc
    e = tl.zeros([BLOCK_C], dtype=tl.float32)
    if blk > 0:
        e = tl.load(end_ptr + (base - 1) * C + offs, mask=mask, other=0.0)
    total = 0.0
    for r in tl.static_range(BL):
        total += tl.load(la_ptr + base * BL + r)
    e_inj = tl.exp(total) * tl.sum(e * inj, 0)  # Gamma sum_ch e inj
    zc = tl.zeros([BLOCK_C], dtype=tl.float32)
    a_next = 0.0
    after = 0.0  # sum of the log decays after position r in this block
    for i in tl.static_range(BL):
        r = BL - 1 - i
        la = tl.load(la_ptr + base * BL + r)
        zc = tl.load(gx_ptr + (base * BL + r) * C + offs, mask=mask, other=0.0) + a_next * zc
        z = zc + tl.exp(after) * inj
        tl.store(gu_ptr + (base * BL + r) * C + offs, z, mask=mask)
        if r > 0:
            prev = tl.load(x_ptr + (base * BL + r - 1) * C + offs, mask=mask, other=0.0)
        else:
            prev = e
        a_next = tl.exp(la)
        tl.store(gla_ptr + base * BL + r, a_next * tl.sum(prev * z, 0) - e_inj)
        after += la


class _SWRTriton(torch.autograd.Function):
    """la ``[R, NB, BL]``, u ``[R, NB, BL, c]`` (contiguous fp32) -> x ``[R, NB, BL, c]``."""

    @staticmethod
    def forward(ctx: Any, la: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        R, NB, BL, C = u.shape
        x = torch.empty_like(u)
        ends = u.new_empty(R, NB, C)  # each block's local end (without its carry)
        _swr_fwd[(R, NB)](la, u, x, ends, NB, C, BL=BL, BLOCK_C=triton.next_power_of_2(C))
        ctx.save_for_backward(la, x, ends)
        return x

    @staticmethod
    def backward(ctx: Any, gx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        la, x, ends = ctx.saved_tensors
        R, NB, BL, C = x.shape
        gx = gx.contiguous()
        gla, gu = torch.empty_like(la), torch.empty_like(x)
        _swr_bwd[(R, NB)](la, x, ends, gx, gla, gu, NB, C, BL=BL,
                          BLOCK_C=triton.next_power_of_2(C))
        return gla, gu


def swr(log_a: torch.Tensor, u: torch.Tensor, block: int = 16) -> torch.Tensor:
    """``phalanx.swr`` through the Triton kernels: log_a ``[..., T]``, u ``[..., T, c]`` ->
    x ``[..., T, c]`` in fp32."""
    with fp32(u):
        *lead, T, C = u.shape
        la = pad_time(log_a.float(), block, dim=-1).reshape(-1, T + -T % block)  # [R, T']
        ub = pad_time(u.float(), block).reshape(la.shape[0], -1, block, C)  # [R, NB, BL, c]
        x = _SWRTriton.apply(la.unflatten(-1, (-1, block)).contiguous(), ub.contiguous())
        return x.reshape(*lead, -1, C)[..., :T, :]
