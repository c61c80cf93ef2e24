"""Mamba's S6 selective scan (Gu and Dao 2023, arXiv 2312.00752), pure torch, for ``mamba``:

    h_t = exp(delta_t A) * h_{t-1} + delta_t B_t u_t,    y_t = C_t . h_t + D u_t

per channel, a loop over time with a hand-written backward that keeps only the states at
chunk boundaries (``selective_scan``, ``_SelectiveScan``); ``selective_scan(compiled=True)``
runs the same scan compiled from C on CPU tensors (``_cscan``). It computes in fp32 with
autocast disabled. Its reference is ``_recurrence.naive_recurrence`` with one head per channel.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from ._cscan import _CompiledScan, usable
from ._dispatch import fp32

# selective_scan: each op works on about SCAN_BUFFER floats of state (a step's [B, N, Di], or
# several small ones), so its operands stay in a core's L2 cache; ops over [4, 64, 16, 128]
# (2 MiB) took 2.5x longer per element than over one step. The backward restarts from a state
# kept every MIN_SCAN_CHUNK steps at least, so those stay <= 1/8 of all T states (at the
# frontier's shape 8 was 5% faster than 4 and 2: fewer kept states to write, and the
# backward's segment buffers still small).
SCAN_BUFFER = 2 ** 17
MIN_SCAN_CHUNK = 8


def _scan_steps(slice_floats: int, chunk_size: int) -> int:
    """How many steps ``_SelectiveScan`` processes per op: the largest divisor of
    ``chunk_size`` whose state holds at most ``SCAN_BUFFER`` floats (one step at least)."""
    bound = max(1, SCAN_BUFFER // slice_floats)
    return max(L for L in range(1, min(chunk_size, bound) + 1) if chunk_size % L == 0)


class _SelectiveScan(torch.autograd.Function):
    """``selective_scan`` on time-major tensors: u, delta ``[T, B, Di]``, A_t ``[N, Di]``
    (A transposed), B, C ``[T, B, N]``, D ``[Di]`` -> y ``[T, B, Di]``; ``chunk_size``: the
    steps between kept states.

    The unit of work is a step's state ``[B, N, Di]`` (or ``L`` steps of it, ``L`` from
    ``_scan_steps``): each op reads and writes a few such slices, so they stay in cache, and
    no ``[T, B, N, Di]`` tensor is ever formed. Forward: ``h_t = exp(delta_t A) h_{t-1} +
    B_t (delta_t u_t)`` in place, ``y_t = C_t . h_t``; it keeps the state entering every
    ``chunk_size``-th step. Backward, segment by segment from the end: the segment's states
    again from its kept state, then the adjoint ``g_t = C_t gy_t + p_{t+1}``,
    ``p_t = exp(delta_t A) g_t`` (``g_t = dL/dh_t``), and from them per step
    ``R_t = p_t h_{t-1}``, the gradient of the log decay ``delta_t A``:
    ``dL/ddelta_t = sum_n A R_t + u_t sum_n B_t g_t``, ``dL/dA = sum_(t, b) delta_t R_t``.
    Memory: ``T / chunk_size`` states plus a few segment-sized buffers. Every view the loops
    use is made once, before them: at one step per op, indexing cost as much as the ops.
    """

    @staticmethod
    def forward(ctx: Any, u: torch.Tensor, delta: torch.Tensor, A_t: torch.Tensor,
                Bm: torch.Tensor, Cm: torch.Tensor, D: torch.Tensor,
                chunk_size: int) -> torch.Tensor:
        (T, B, Di), N, K = u.shape, A_t.shape[0], chunk_size
        L = _scan_steps(B * N * Di, K)
        u, delta, Bm, Cm = (t.contiguous() for t in (u, delta, Bm, Cm))  # for the views
        du = delta * u
        y = torch.empty_like(u)
        dA, H = u.new_empty(L * B, N, Di), u.new_empty(L * B, N, Di)  # L steps' [B, N, Di]
        keep = any(ctx.needs_input_grad)
        starts = u.new_empty(-(-T // K) if keep else 1, B, N, Di)  # the state entering each segment
        h = starts[0].zero_()
        Bs, dus = Bm[..., None].unbind(0), du[:, :, None, :].unbind(0)  # [B, N, 1], [B, 1, Di]
        dAs, Hs = dA.split(B), H.split(B)
        chunks = list(zip(*(_steps(t, L) for t in (delta, Cm, y))))
        for c, (d_c, C_c, y_c) in enumerate(chunks):
            t0, n = c * L, d_c.shape[0] // B
            if t0 % K == 0 and t0 and keep:
                h = starts[t0 // K].copy_(h)
            torch.mul(d_c, A_t, out=dA[:n * B]).exp_()
            for j in range(n):
                h = torch.mul(h, dAs[j], out=Hs[j]).addcmul_(Bs[t0 + j], dus[t0 + j])
            torch.bmm(C_c, H[:n * B], out=y_c)
        ctx.chunk_size = K
        ctx.save_for_backward(u, delta, du, A_t, Bm, Cm, D, starts)
        return y.addcmul_(u, D)

    @staticmethod
    def backward(ctx: Any, gy: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        u, delta, du, A_t, Bm, Cm, D, starts = ctx.saved_tensors
        (T, B, Di), N, K = u.shape, A_t.shape[0], ctx.chunk_size
        L = _scan_steps(B * N * Di, K)
        with fp32(gy):
            gy = gy.to(u.dtype).contiguous()
            gdu, gdelta = torch.empty_like(u), torch.empty_like(u)  # gdu: dL/d(delta u)
            gB, gC = torch.empty_like(Bm), torch.empty_like(Cm)
            # a segment's states (entering each step, then after the last) and decays
            H, dA = u.new_empty((K + 1) * B, N, Di), u.new_empty(K * B, N, Di)
            G, P = u.new_empty(L * B, N, Di), u.new_empty(L * B, N, Di)
            gA = u.new_zeros(L * B, N, Di)  # summed over T and B at the end
            p = u.new_zeros(B, N, Di)  # p_{t+1} past the last step
            Bs, dus = Bm[..., None].unbind(0), du[:, :, None, :].unbind(0)
            Cs, gys = Cm[..., None].unbind(0), gy[:, :, None, :].unbind(0)
            Hs, dAs, Gs, Ps = H.split(B), dA.split(B), G.split(B), P.split(B)
            # a chunk's slots in the segment buffers: decays, states before and after each step
            slots = list(zip(dA.split(L * B), H[:-B].split(L * B), H[B:].split(L * B)))
            chunks = list(zip(*(_steps(t, L) for t in (delta, gy, gC, Bm, gdu, du, gB))))
            gds = gdelta.view(T * B, Di).split(L * B)
            per_segment = K // L
            for i in reversed(range(starts.shape[0])):
                c0 = i * per_segment
                seg = range(c0, min(c0 + per_segment, len(chunks)))
                Hs[0].copy_(starts[i])
                for c in seg:  # the segment's states again
                    d_c, j0, k0 = chunks[c][0], (c - c0) * L, c0 * L  # k0: the segment's start
                    torch.mul(d_c, A_t, out=slots[c - c0][0][:d_c.shape[0]]).exp_()
                    for j in range(j0, j0 + d_c.shape[0] // B):
                        torch.mul(Hs[j], dAs[j], out=Hs[j + 1]).addcmul_(Bs[k0 + j], dus[k0 + j])
                for c in reversed(seg):
                    d_c, gy_c, gC_c, B_c, gdu_c, du_c, gB_c = chunks[c]
                    _, H_before, H_after = slots[c - c0]
                    t0, j0, nB = c * L, (c - c0) * L, d_c.shape[0]
                    torch.bmm(gy_c, H_after[:nB].transpose(-1, -2), out=gC_c)
                    for j in reversed(range(nB // B)):
                        torch.addcmul(p, Cs[t0 + j], gys[t0 + j], out=Gs[j])  # g_t
                        p = torch.mul(Gs[j], dAs[j0 + j], out=Ps[j])  # P[0] carries on to t0 - 1
                    torch.bmm(B_c, G[:nB], out=gdu_c)
                    torch.bmm(du_c, G[:nB].transpose(-1, -2), out=gB_c)
                    R = torch.mul(P[:nB], H_before[:nB], out=G[:nB])  # dL/d(delta_t A)
                    gA[:nB].addcmul_(R, d_c)
                    torch.sum(R.mul_(A_t), -2, out=gds[c])
            gdelta.addcmul_(gdu, u)
            gD = (gy * u).sum((0, 1))
            return gdu.mul_(delta).addcmul_(gy, D), gdelta, gA.sum(0), gB, gC, gD, None


def _steps(x: torch.Tensor, L: int) -> tuple[torch.Tensor, ...]:
    """``[T, B, d]`` as chunks of L steps ``[L * B, 1, d]``, views for ``bmm`` and broadcasting."""
    return x.view(-1, 1, x.shape[-1]).split(L * x.shape[1])


def selective_scan(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
                   C: torch.Tensor, D: torch.Tensor, *, chunk_size: int | None = None,
                   z: torch.Tensor | None = None, delta_softplus: bool = False,
                   time_major: bool = False, compiled: bool = False) -> torch.Tensor:
    """Mamba's S6 scan: per channel d, ``h_t = exp(delta_t A_d) * h_{t-1} + delta_t B_t u_t``
    (h in R^N), ``y_t = C_t . h_t + D_d u_t``.

    u, delta ``[B, T, Di]``; A ``[Di, N]``; B, C ``[B, T, N]``; D ``[Di]`` -> y ``[B, T, Di]``,
    in fp32 (``time_major``: u, delta, B, C and y ``[T, B, .]``, which spares the copies to
    and from the scan's own layout). A loop over time with a hand-written backward
    (``_SelectiveScan``), as mamba-ssm's CUDA kernel does it: memory
    ``O(B T Di + (T / chunk_size) B Di N)``, never ``O(B T Di N)``. Results do not depend on
    ``chunk_size``, the steps between the states the backward restarts from; by default
    ``MIN_SCAN_CHUNK``, or more where a step's state is smaller than ``SCAN_BUFFER`` floats.
    As mamba-ssm's ``selective_scan_fn`` has them: ``z`` (u's shape, or None): the output
    gated, ``y * silu(z)``; ``delta_softplus``: the scan's delta is ``softplus(delta)``.
    ``compiled``: on CPU tensors, the same scan (gate and softplus included) compiled from C
    (``_cscan``, built at the first call; it sizes its own segments) where it builds, else this
    one.
    """
    Bsz, Di, N = (u.shape[1] if time_major else u.shape[0]), *A.shape
    if chunk_size is None:
        chunk_size = max(MIN_SCAN_CHUNK, SCAN_BUFFER // (Bsz * Di * N))
    with fp32(u):
        # time-major [T, B, .]: each step's state slice is contiguous
        layout = (lambda t: t) if time_major else (lambda t: t.transpose(0, 1))
        u, delta, B, C = (layout(t.float()).contiguous() for t in (u, delta, B, C))
        A_t, D = A.float().t().contiguous(), D.float()
        z = None if z is None else layout(z.float()).contiguous()
        if compiled and usable(u, delta, A_t, B, C, D):
            return layout(_CompiledScan.apply(u, delta, A_t, B, C, D, z, delta_softplus))
        delta = F.softplus(delta) if delta_softplus else delta
        y = _SelectiveScan.apply(u, delta, A_t, B, C, D, chunk_size)
        return layout(y if z is None else y * F.silu(z))
