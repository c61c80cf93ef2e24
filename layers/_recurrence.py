"""The chunked linear-recurrence family (``linear_attn``, ``gla``, ``mamba2``, the operators of
``mamba``): diagonal-decay linear recurrences

    S_t = Diag(exp(g_t)) S_{t-1} + k_t^T v_t,    o_t = q_t S_t        (S in R^{dk x dv})

(``g`` is a log decay <= 0; no decay is linear attention; ``dv = 1`` with per-channel heads is
an S6 scan). What lives here:

- ``naive_recurrence``: the obvious loop over time in fp32, the reference every fast path is
  tested against (and, on one token with a state, the recurrent ``step``);
- ``chunked_linear_attention``: the chunked form, linear in ``T``, in log space (Yang et al.
  2023, arXiv 2312.06635, sec. 4); it divides by a cumulative decay only where that stays
  within fp32's range, and otherwise forms every ratio as ``exp`` of a log difference <= 0;
- ``causal_operator``: the same kernel on identity values, i.e. the materialised ``[T, T]``
  mixing matrix a layer applies;
- ``carry``: the sequential chunk-to-chunk pass the chunked form ends with;
- ``decay_matrix``: the in-chunk decay ratios, formed in log space.

Every kernel computes in fp32 with autocast disabled, whatever the input dtype. Mamba's S6
scan is in ``_selective_scan``; kernel dispatch in ``_dispatch``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from ._dispatch import fp32, pad_time

# Sub-chunk inside which vector-gate decays are formed pairwise (see _intra_vector).
SUB_CHUNK = 16
# A chunk whose total log decay stays above -FACTORISE_BELOW in every channel may use the
# factorised scores (Q * b)(K / b)^T: then 1 / b <= exp(60), well inside fp32's exp(88).
FACTORISE_BELOW = 60.0
# chunked_ssd halves a chunk that decays past exp(-FACTORISE_BELOW) down to this many tokens.
SSD_MIN_CHUNK = 8
# chunked_linear_attention runs sequences longer than this many tokens segment by segment,
# carrying the state: each segment's [C, C] scores and temporaries stay cache-sized, which on
# CPU keeps the time linear in T (at 16384 tokens, in one piece, it was 1.6x slower).
SEGMENT = 2048


def decay_matrix(logb: torch.Tensor) -> torch.Tensor:
    """``[..., C] -> [..., C, C]``: ``exp(logb_i - logb_j)`` for ``j <= i``, 0 above.
    ``logb`` is a cumulative sum of log decays, so every kept exponent is <= 0 and nothing
    overflows; the mask is applied to the exponent (``-inf``), so no ``inf * 0``."""
    C = logb.shape[-1]
    causal = torch.ones(C, C, dtype=torch.bool, device=logb.device).tril()
    diff = logb[..., :, None] - logb[..., None, :]  # [..., C, C]
    return diff.masked_fill(~causal, float("-inf")).exp()


def carry(decay: torch.Tensor | None, local: torch.Tensor, initial: torch.Tensor | None = None,
          dim: int = -3) -> tuple[torch.Tensor, torch.Tensor]:
    """The chunk-to-chunk pass ``S_n = decay_n * S_{n-1} + local_n`` over chunk axis ``dim``.

    ``local``: each chunk's own terminal state (from a zero start); ``decay``: the chunk's total
    decay, broadcastable to ``local`` (None: no decay). Returns the state *entering* each chunk
    (same shape as ``local``) and the final state. A sequential loop over ``T / C`` chunks.
    """
    locals_ = local.unbind(dim)
    decays = decay.unbind(dim) if decay is not None else [None] * len(locals_)
    S = torch.zeros_like(locals_[0]) if initial is None else initial.to(local.dtype)
    entering = []
    for d_n, l_n in zip(decays, locals_):
        entering.append(S)
        S = l_n + (S if d_n is None else d_n * S)
    return torch.stack(entering, dim), S


def naive_recurrence(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                     log_g: torch.Tensor | None = None, initial_state: torch.Tensor | None = None,
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference loop over time, in fp32.

    q, k ``[..., T, dk]``; v ``[..., T, dv]``; log_g None, ``[..., T, 1]`` (scalar gate) or
    ``[..., T, dk]`` (vector gate). Returns o ``[..., T, dv]`` and the final S ``[..., dk, dv]``.
    """
    with fp32(q):
        q, k, v = q.float(), k.float(), v.float()
        S = q.new_zeros(*q.shape[:-2], q.shape[-1], v.shape[-1])  # [..., dk, dv]
        if initial_state is not None:
            S = initial_state.float()
        # unbind, not t-indexing: each index's backward would allocate a full [..., T, d] grad
        gs = [None] * q.shape[-2] if log_g is None else log_g.float().exp().unbind(-2)
        outs = []
        for q_t, k_t, v_t, g_t in zip(q.unbind(-2), k.unbind(-2), v.unbind(-2), gs):
            if g_t is not None:
                S = g_t[..., None] * S
            S = S + k_t[..., None] * v_t[..., None, :]  # k_t^T v_t
            outs.append((q_t[..., None] * S).sum(-2))  # q_t S_t  [..., dv]
        return torch.stack(outs, -2), S


def _intra_vector(q: torch.Tensor, k: torch.Tensor, logb: torch.Tensor, sub: int) -> torch.Tensor:
    """Intra-chunk scores ``A_ij = sum_d q_id k_jd exp(logb_id - logb_jd)`` (``j <= i``) for a
    vector gate, without forming ``Q * b`` and ``K / b`` (which overflow under strong decay).

    q, k, logb: ``[..., C, dk]`` (logb cumulative from the chunk start). Two levels, as in fla:
    inside a sub-chunk of ``sub`` tokens the decays are formed pairwise (``[sub, sub, dk]``);
    between sub-chunks ``a > b`` the decay factorises through ``r_a``, logb just before
    sub-chunk ``a``: ``(q_i exp(logb_i - r_a)) . (k_j exp(r_a - logb_j))``, both factors <= 1.
    Returns A ``[..., C, C]`` (exact zeros above the diagonal).
    """
    C, dk = q.shape[-2:]
    S = C // sub
    qs, ks, ls = (t.unflatten(-2, (S, sub)) for t in (q, k, logb))  # [..., S, sub, dk]
    P = decay_matrix(ls.transpose(-1, -2))  # [..., S, dk, sub, sub]
    A_diag = torch.einsum("...id,...jd,...dij->...ij", qs, ks, P)  # [..., S, sub, sub]
    eye = torch.eye(S, dtype=q.dtype, device=q.device)[:, None, :, None]  # [S, 1, S, 1]
    A = A_diag[..., :, :, None, :] * eye  # [..., S, sub, S, sub] block diagonal
    if S > 1:
        r = F.pad(ls[..., :-1, -1, :], (0, 0, 1, 0))  # [..., S, dk] logb before each sub-chunk
        q_r = qs * (ls - r[..., None, :]).exp()  # [..., S, sub, dk]
        j = torch.arange(C, device=q.device)
        earlier = j[None, :] < (torch.arange(S, device=q.device) * sub)[:, None]  # [S, C]
        expo = r[..., :, None, :] - logb[..., None, :, :]  # [..., S, C, dk]
        k_r = k[..., None, :, :] * expo.masked_fill(~earlier[..., None], float("-inf")).exp()
        A = A + (q_r @ k_r.transpose(-1, -2)).unflatten(-1, (S, sub))  # [..., S, sub, S, sub]
    return A.flatten(-4, -3).flatten(-2, -1)  # [..., C, C]


def chunked_linear_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                             log_g: torch.Tensor | None = None, *, chunk_size: int = 64,
                             initial_state: torch.Tensor | None = None,
                             factorise_below: float = FACTORISE_BELOW, segment: int = SEGMENT,
                             ) -> tuple[torch.Tensor, torch.Tensor]:
    """The chunked form of ``naive_recurrence`` (same arguments and results), linear in T.

    With ``b_t`` the decay accumulated from the chunk start (``logb = cumsum(log_g)``):
        O      = (Q * b) S_prev + A V,       A_ij = q_i . (b_i / b_j * k_j)  for j <= i
        S_next = Diag(gamma) S_prev + (K * gamma / b)^T V,    gamma = b_last
    No decay: A = (Q K^T) * M. With a gate (scalar or vector), when no chunk decays by more
    than ``exp(-factorise_below)`` in any channel, the one matmul ``(Q * b)(K / b)^T`` (exact:
    its factors stay in fp32's range), in ``_FactorisedChunks`` with its own backward;
    otherwise scalar gate: A = (Q K^T) * decay_matrix(logb), vector gate: ``_intra_vector``,
    where every ratio is ``exp`` of a non-positive log difference. ``factorise_below=0``
    always takes the latter. Longer than ``segment`` tokens (rounded to
    whole chunks), the sequence is processed segment by segment, the state carried between.
    """
    seg = max(1, segment // chunk_size) * chunk_size
    if q.shape[-2] > seg:
        # split, not slicing: a slice's backward would allocate a full-length gradient
        gates = [None] * -(-q.shape[-2] // seg) if log_g is None else log_g.split(seg, -2)
        outs, S = [], initial_state
        for q_s, k_s, v_s, g_s in zip(q.split(seg, -2), k.split(seg, -2), v.split(seg, -2), gates):
            o, S = _chunked(q_s, k_s, v_s, g_s, chunk_size, S, factorise_below)
            outs.append(o)
        return torch.cat(outs, -2), S
    return _chunked(q, k, v, log_g, chunk_size, initial_state, factorise_below)


def _chunked(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, log_g: torch.Tensor | None,
             chunk_size: int, initial_state: torch.Tensor | None, factorise_below: float,
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """``chunked_linear_attention`` on one segment."""
    with fp32(q):
        T, C = q.shape[-2], chunk_size
        # zero tail: no effect on S; contiguous once, or every matmul copies a strided operand
        q, k, v = (pad_time(t.float(), C).contiguous() for t in (q, k, v))
        q, k, v = (t.unflatten(-2, (-1, C)) for t in (q, k, v))  # [..., N, C, d]
        if log_g is None:
            mask = torch.ones(C, C, dtype=torch.bool, device=q.device).tril()
            A = (q @ k.transpose(-1, -2)).masked_fill(~mask, 0.0)  # [..., N, C, C]
            q_in, k_out, gamma = q, k, None
        else:
            log_g = pad_time(log_g.float(), C).unflatten(-2, (-1, C))  # [..., N, C, 1|dk]
            if log_g.sum(-2).min() >= -factorise_below:
                S0 = None if initial_state is None else initial_state.float()
                o, S_last = _FactorisedChunks.apply(q, k, v, log_g, S0)
                return o.flatten(-3, -2)[..., :T, :], S_last
            logb = log_g.cumsum(-2)  # decay accumulated from the chunk start
            q_in = q * logb.exp()  # decay from the chunk start, <= 1
            if logb.shape[-1] == 1:
                A = (q @ k.transpose(-1, -2)) * decay_matrix(logb[..., 0])
            else:
                A = _intra_vector(q, k, logb, SUB_CHUNK if C % SUB_CHUNK == 0 else C)
            k_out = k * (logb[..., -1:, :] - logb).exp()  # decay to the chunk end, <= 1
            gamma = logb[..., -1, :, None].exp()  # [..., N, 1|dk, 1]
        local = k_out.transpose(-1, -2) @ v  # [..., N, dk, dv] each chunk's own state
        S_in, S_last = carry(gamma, local, initial_state)  # [..., N, dk, dv]
        o = A @ v + q_in @ S_in  # [..., N, C, dv]
        return o.flatten(-3, -2)[..., :T, :], S_last


class _FactorisedChunks(torch.autograd.Function):
    """The chunked form with factorised intra-chunk scores and a hand-written backward, for
    gated recurrences whose every chunk decays by at most ``exp(-factorise_below)``.

    Per chunk (inputs ``[..., N, C, d]``; log decays ``log_g`` ``[..., N, C, 1|dk]``,
    ``logb = cumsum(log_g)`` from the chunk start; ``gamma = exp(logb_last)``)::

        Qb = q * exp(logb),  Kb = k * exp(-logb),  Kg = Kb * gamma
        A = tril(Qb Kb^T),   O = A V + Qb S_in,   S_next = gamma * S_in + Kg^T V

    Backward, with ``D_n = dL/dS_in`` of chunk n run backwards through the chunks
    (``D_n = Qb_n^T dO_n + gamma_n * D_{n+1}``, ``D_N = dL/dS_last``) and ``D'_n = D_{n+1}``::

        dV = A^T dO + Kg D',   dA = tril(dO V^T),   dQb = dA Kb + dO S_in^T,
        dKb = dA^T Qb,         dKg = V D'^T,        dgamma = sum_v(S_in * D')
        dq = dQb e^logb;  dk = dKb e^-logb + dKg gamma e^-logb;
        dlogb = dQb Qb - dKb Kb - dKg Kg  (+ sum_C(dKg Kg) + dgamma gamma at the last step)
        dlog_g = reverse cumsum of dlogb

    Autograd through the same matmuls recorded a dozen elementwise intermediates and copied
    the masked scores; this saves the factors, the scores and the chunk-entry states once.
    """

    @staticmethod
    def forward(ctx: Any, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, log_g: torch.Tensor,
                S0: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        eb = log_g.cumsum(-2).exp_()  # decay from the chunk start, <= 1
        ieb = eb.reciprocal()  # <= exp(factorise_below): finite
        gamma = eb[..., -1:, :]  # [..., N, 1, 1|dk]
        Qb, Kb = q * eb, k * ieb
        Kg = Kb * gamma  # decay to the chunk end, <= 1
        local = Kg.transpose(-1, -2) @ v  # [..., N, dk, dv] each chunk's own state
        S_in, S_last = carry(gamma.transpose(-1, -2), local, S0)  # [..., N, dk, dv]
        A = (Qb @ Kb.transpose(-1, -2)).tril_()  # [..., N, C, C]
        o = _matmul_add(Qb @ S_in, A, v)
        ctx.has_S0 = S0 is not None
        ctx.save_for_backward(v, eb, ieb, S_in, Qb, Kb, Kg, A)
        return o, S_last

    @staticmethod
    def backward(ctx: Any, dO: torch.Tensor, dS_last: torch.Tensor
                 ) -> tuple[torch.Tensor | None, ...]:
        v, eb, ieb, S_in, Qb, Kb, Kg, A = ctx.saved_tensors
        gamma = eb[..., -1:, :]
        dO = dO.contiguous()  # once, rather than in each of the four matmuls that read it
        # D'_n = dL/dS_next of chunk n: the state gradient carried back through the chunks
        U = Qb.transpose(-1, -2) @ dO  # [..., N, dk, dv]
        Dn, dS0 = carry(gamma.transpose(-1, -2).flip(-3), U.flip(-3), dS_last)
        Dn = Dn.flip(-3)
        dA = (dO @ v.transpose(-1, -2)).tril_()  # [..., N, C, C]
        dV = _matmul_add(Kg @ Dn, A.transpose(-1, -2), dO)
        dQb = _matmul_add(dO @ S_in.transpose(-1, -2), dA, Kb)
        dKb = dA.transpose(-1, -2) @ Qb
        dKg = v @ Dn.transpose(-1, -2)  # [..., N, C, dk]
        dq = dQb * eb
        dk = torch.addcmul(dKb, dKg, gamma).mul_(ieb)
        dKg.mul_(Kg)
        tail = dKg.sum(-2, keepdim=True) + (S_in * Dn).sum(-1)[..., None, :] * gamma
        dlogb = dQb.mul_(Qb).sub_(dKb.mul_(Kb)).sub_(dKg)
        dlogb[..., -1:, :] += tail  # through gamma: [..., N, 1, dk]
        dlogb = dlogb.sum_to_size(eb.shape)
        # logb = cumsum(log_g): dlog_g is the reverse cumsum, x_t + sum_all - cumsum_t
        dlog_g = dlogb.cumsum(-2).neg_().add_(dlogb).add_(dlogb.sum(-2, keepdim=True))
        return dq, dk, dV, dlog_g, dS0 if ctx.has_S0 else None


def _matmul_add(acc: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``acc + a @ b`` for ``[..., m, n]`` batches, in one ``baddbmm`` (no extra pass)."""
    out = torch.baddbmm(acc.reshape(-1, *acc.shape[-2:]), a.reshape(-1, *a.shape[-2:]),
                        b.reshape(-1, *b.shape[-2:]))
    return out.view(acc.shape)


def chunked_ssd(C: torch.Tensor, B: torch.Tensor, x: torch.Tensor, dt: torch.Tensor,
                log_a: torch.Tensor, *, chunk_size: int = 64,
                initial_state: torch.Tensor | None = None,
                factorise_below: float = FACTORISE_BELOW,
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Mamba-2's SSD with one group (B and C shared by the heads), chunked, linear in T:

        h_t = exp(log_a_t) h_{t-1} + B_t^T (dt_t x_t),    y_t = C_t h_t      per head

    C, B ``[b, T, N]``; x ``[b, T, H, P]``; dt, log_a ``[b, T, H]`` (log decays <= 0);
    initial_state ``[b, H, N, P]``. Returns y ``[b, T, H, P]`` and the final state
    ``[b, H, N, P]``. Per head it is ``naive_recurrence`` with ``q = C``, ``k = dt B``,
    ``v = x``; here the heads share their matrix products. With ``e_t = exp(cumsum(log_a))``
    from the chunk start, when no chunk of any head decays by more than
    ``exp(-factorise_below)``, inside a chunk (SSD's ``C B^T * L`` with ``L`` factorised)

        Y = e * (tril(C B^T) (X / e) + C S_in),    X = dt x,
        S_next = gamma S_in + B^T (X gamma / e),   gamma = e_last

    where ``tril(C B^T)`` ``[C, C]`` is one per chunk for all heads, and the heads' ``X / e``
    sit side by side as the ``H * P`` columns of one product. Where a chunk decays further,
    the chunks are halved (down to ``SSD_MIN_CHUNK`` tokens) until none does: the same
    result, blocked finer. Past that (per-step decays beyond about ``exp(-60 / 8)``) it is
    ``chunked_linear_attention`` per head, every ratio ``exp`` of a log difference.
    """
    b, T, H, P = x.shape
    with fp32(C):
        C, B, x, dt, log_a = (t.float() for t in (C, B, x, dt, log_a))
        L = chunk_size

        def too_strong(L: int) -> bool:
            return bool(pad_time(log_a, L).unflatten(1, (-1, L)).sum(2).min() < -factorise_below)
        while too_strong(L) and L % 2 == 0 and L // 2 >= SSD_MIN_CHUNK:
            L //= 2
        if too_strong(L):
            q = C[:, None].expand(b, H, T, C.shape[-1])
            k = dt.transpose(1, 2)[..., None] * B[:, None]  # [b, H, T, N]
            y, S = chunked_linear_attention(
                q, k, x.transpose(1, 2), log_a.transpose(1, 2)[..., None],
                chunk_size=chunk_size, initial_state=initial_state,
                factorise_below=factorise_below)
            return y.transpose(1, 2), S
        # [b, Nc, L, .] chunks; zero padding: no input, no decay
        C, B, dt, log_a, x = (pad_time(t, L, 1).unflatten(1, (-1, L))
                              for t in (C, B, dt, log_a, x))  # x [b, Nc, L, H, P]
        cum = log_a.cumsum(2)  # [b, Nc, L, H]
        S0 = None if initial_state is None else initial_state.float().transpose(1, 2)
        y, S_last = _SSDChunks.apply(C, B, x, dt * (-cum).exp(), cum.exp(), S0)
        return y.flatten(1, 2)[:, :T], S_last.transpose(1, 2)


class _SSDChunks(torch.autograd.Function):
    """``chunked_ssd``'s factorised chunks with a hand-written backward: C, B ``[b, Nc, L, N]``,
    x ``[b, Nc, L, H, P]``, ``w = dt / e`` and ``e`` ``[b, Nc, L, H]`` (``e`` the decay from
    the chunk start, ``gamma = e_last``), S0 ``[b, N, H, P]`` or None::

        Xs = w x,   local = gamma B^T Xs,   S_in: S_next = gamma S_in + local  (``carry``)
        Y = tril(C B^T) Xs + C S_in,   y = e Y

    Backward: ``dY = e dy``, ``de = sum_P(dy Y)``, ``dXs = tril(C B^T)^T dY + B (gamma dS')``,
    ``dscores = tril(dY Xs^T)``, ``dC = dY S_in^T + dscores B``,
    ``dB = dscores^T C + Xs (gamma dS')^T``, ``dx = w dXs``, ``dw = sum_P(x dXs)``, with
    ``dS'`` carried back through the chunks from ``dS_in = C^T dY``. The heads sit side by
    side in the ``H * P`` columns of every product; autograd's version copied the broadcast
    products and their gradients several times over."""

    @staticmethod
    def forward(ctx: Any, C: torch.Tensor, B: torch.Tensor, x: torch.Tensor, w: torch.Tensor,
                e: torch.Tensor, S0: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        b, Nc, L, H, P = x.shape
        xs = (x * w[..., None]).flatten(-2)  # [b, Nc, L, HP]
        gamma = e[:, :, -1, :, None]  # [b, Nc, H, 1]
        Bx = (B.transpose(-1, -2) @ xs).unflatten(-1, (H, P))  # [b, Nc, N, H, P]
        S_in, S_last = carry(gamma[:, :, None], Bx * gamma[:, :, None], S0, dim=1)
        scores = (C @ B.transpose(-1, -2)).tril_()  # [b, Nc, L, L]
        Y = _matmul_add(C @ S_in.flatten(-2), scores, xs).unflatten(-1, (H, P))
        ctx.has_S0 = S0 is not None
        ctx.save_for_backward(C, B, x, w, e, xs, Bx, S_in, scores, Y)
        return Y * e[..., None], S_last

    @staticmethod
    def backward(ctx: Any, dy: torch.Tensor, dS_last: torch.Tensor
                 ) -> tuple[torch.Tensor | None, ...]:
        C, B, x, w, e, xs, Bx, S_in, scores, Y = ctx.saved_tensors
        b, Nc, L, H, P = x.shape
        gamma = e[:, :, -1, :, None]  # [b, Nc, H, 1]
        de = (dy * Y).sum(-1)  # [b, Nc, L, H]
        dY = (dy * e[..., None]).flatten(-2)  # [b, Nc, L, HP]
        dS_in = (C.transpose(-1, -2) @ dY).unflatten(-1, (H, P))  # [b, Nc, N, H, P]
        # the carry backwards: dS' of chunk n is dL/dS_next, from the chunks after it
        g = gamma[:, :, None].flip(1)
        dS_next, dS0 = carry(g, dS_in.flip(1), dS_last, dim=1)  # [b, Nc, N, H, P], flipped
        dS_next = dS_next.flip(1)
        dgamma = ((S_in + Bx) * dS_next).sum((2, 4))  # [b, Nc, H] through gamma S_in, gamma Bx
        dlocal = (dS_next * gamma[:, :, None]).flatten(-2)  # d(B^T Xs)  [b, Nc, N, HP]
        dscores = (dY @ xs.transpose(-1, -2)).tril_()  # [b, Nc, L, L]
        dxs = _matmul_add(B @ dlocal, scores.transpose(-1, -2), dY).unflatten(-1, (H, P))
        dC = _matmul_add(dY @ S_in.flatten(-2).transpose(-1, -2), dscores, B)
        dB = _matmul_add(xs @ dlocal.transpose(-1, -2), dscores.transpose(-1, -2), C)
        dw = (dxs * x).sum(-1)
        de[:, :, -1] += dgamma
        return dC, dB, dxs * w[..., None], dw, de, dS0 if ctx.has_S0 else None


def causal_operator(q: torch.Tensor, k: torch.Tensor, log_g: torch.Tensor | None = None, *,
                    chunk_size: int = 64) -> torch.Tensor:
    """The materialised mixing matrix ``[..., T, T]`` of ``chunked_linear_attention``:
    row i holds the weights on v_0..v_i. It is that kernel run on identity values, so it is
    stable wherever the kernel is and ``operator @ v`` equals its output up to rounding."""
    T = q.shape[-2]
    eye = torch.eye(T, device=q.device, dtype=torch.float32).expand(*q.shape[:-2], T, T)
    return chunked_linear_attention(q, k, eye, log_g, chunk_size=chunk_size)[0]
