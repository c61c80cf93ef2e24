"""The delta rule, plain and gated, shared by ``deltanet`` and ``gated_deltanet``.

Per head, row vectors ``q_t, k_t in R^dk``, ``v_t in R^dv``, a scalar ``b_t`` and an optional
scalar decay ``a_t = exp(g_t)``, ``g_t <= 0`` (none: ``a_t = 1``), state ``S in R^{dk x dv}``:

    S_t = a_t (I - b_t k_t k_t^T) S_{t-1} + b_t k_t v_t^T,        o_t = q_t S_t

(the transpose of the papers' ``S_t = S_{t-1} a_t (I - b_t k_t k_t^T) + b_t v_t k_t^T``,
``o_t = S_t q_t``, in ``_recurrence``'s row convention). Written as an update by a "new value"
``u_t = b_t (v_t - a_t S_{t-1}^T k_t)``: ``S_t = a_t S_{t-1} + k_t u_t^T``, so given the
``u`` the delta rule is the scalar-gated linear recurrence of ``_recurrence``.

Chunked form (Yang et al. 2024, arXiv 2406.06484, sec. 3; the decay as in arXiv 2412.06464):
inside a chunk of ``C`` tokens entered with state ``S_0``, with ``G_t`` the decay accumulated
from the chunk start (``log G = cumsum g``) and ``G_t / G_s = exp(log G_t - log G_s)``,
the ``u`` solve one unit lower-triangular system (the UT transform: the product of the
chunk's rank-1 updates in WY form, so the chunk's work is matrix products)

    (I + A) U = b * V - (b G * K) S_0,      A_ts = b_t (k_t . k_s) G_t / G_s  for s < t
    U = U' - W S_0,    U' = (I + A)^-1 (b * V),    W = (I + A)^-1 (b G * K)

and then, with ``P_ts = (q_t . k_s) G_t / G_s`` for ``s <= t``,

    O      = P U' + (G * Q - P W) S_0
    S_next = (G_C I - (K G_C / G)^T W) S_0 + (K G_C / G)^T U'

The chunked form computes ``Tinv = (I + A)^-1`` for every chunk at once (a blocked
inverse: batched products down to 16 x 16 triangular solves), then carries the state through
the chunks with ``U = Tinv (b * V - (b G * K) S_0)`` and ``S_next = G_C S_0 + (K G_C / G)^T U``
(three products per chunk, batched over the heads); ``O = P U + (G * Q) S_0`` and the whole
backward (hand-written, ``_DeltaChunks``) are matrix products batched over the chunks.
Every decay ratio is ``exp`` of a log difference ``<= 0``: nothing overflows under strong
decay.

What lives here: ``naive_delta_rule`` (the reference loop, fp32), ``chunked_delta_rule`` (the
chunked form, linear in T) and ``delta_operator`` (the chunked form on identity values: the
materialised ``[T, T]`` map from v to o, exact because o is linear in v given q, k, b, g).
Every kernel computes in fp32 with autocast disabled, whatever the input dtype.
"""

from __future__ import annotations

from typing import Any

import torch

from ._dispatch import fp32, pad_time
from ._recurrence import _matmul_add, decay_matrix


def naive_delta_rule(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, beta: torch.Tensor,
                     log_g: torch.Tensor | None = None,
                     initial_state: torch.Tensor | None = None,
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference loop over time, in fp32.

    q, k ``[..., T, dk]``; v ``[..., T, dv]``; beta ``[..., T, 1]``; log_g None or
    ``[..., T, 1]`` (log decays <= 0); initial_state ``[..., dk, dv]``. Returns o
    ``[..., T, dv]`` and the final S ``[..., dk, dv]``.
    """
    with fp32(q):
        q, k, v, beta = q.float(), k.float(), v.float(), beta.float()
        S = q.new_zeros(*q.shape[:-2], q.shape[-1], v.shape[-1])  # [..., dk, dv]
        if initial_state is not None:
            S = initial_state.float()
        # unbind, not t-indexing: each index's backward would allocate a full [..., T, d] grad
        gs = [None] * q.shape[-2] if log_g is None else log_g.float().exp().unbind(-2)
        outs = []
        for q_t, k_t, v_t, b_t, a_t in zip(q.unbind(-2), k.unbind(-2), v.unbind(-2),
                                            beta.unbind(-2), gs):
            if a_t is not None:
                S = a_t[..., None] * S
            u_t = b_t * (v_t - (k_t[..., None] * S).sum(-2))  # b (v - S^T k)  [..., dv]
            S = S + k_t[..., None] * u_t[..., None, :]  # k u^T
            outs.append((q_t[..., None] * S).sum(-2))  # q S  [..., dv]
        return torch.stack(outs, -2), S


def chunked_delta_rule(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, beta: torch.Tensor,
                       log_g: torch.Tensor | None = None, *, chunk_size: int = 64,
                       initial_state: torch.Tensor | None = None,
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """The chunked form of ``naive_delta_rule`` (same arguments and results), linear in T.

    Each chunk's ``(I + A)^-1`` comes from one batched triangular solve
    (``torch.linalg.solve_triangular``, unit diagonal), ``U'`` and ``W`` from one product with
    it; then a loop over the ``T / chunk_size`` chunks carries the state (``u = U' - W S``,
    ``S <- G_C S + (K G_C / G)^T u``: two ``[C, dk] x [dk, dv]``-sized products per chunk,
    batched over the heads), and the outputs are batched products again (``_DeltaChunks``,
    with a hand-written backward). The zero-padded tail (``k = v = b = 0``, no decay) leaves
    the state unchanged.
    """
    with fp32(q):
        T, C, dk, dv = q.shape[-2], chunk_size, q.shape[-1], v.shape[-1]
        lead = q.shape[:-2]

        def chunks(t: torch.Tensor) -> torch.Tensor:  # [..., T, d] -> [batch, N, C, d]
            t = pad_time(t.float(), C).expand(*lead, -1, t.shape[-1])
            return t.reshape(-1, t.shape[-2] // C, C, t.shape[-1]).contiguous()
        logG = None if log_g is None else chunks(log_g).cumsum(-2)  # [batch, N, C, 1]
        S0 = None if initial_state is None else initial_state.float().reshape(-1, dk, dv)
        o, S = _DeltaChunks.apply(chunks(q), chunks(k), chunks(v), chunks(beta), logG, S0)
        return o.flatten(1, 2)[:, :T].reshape(*lead, T, dv), S.view(*lead, dk, dv)


class _DeltaChunks(torch.autograd.Function):
    """The chunked delta rule on ``[batch, N, C, d]`` chunks (``logG``: the log decay
    accumulated from each chunk start, or None), with a hand-written backward.

    Forward, per chunk (``G = exp(logG)``, ``D_ts = G_t / G_s`` for ``s <= t``, ``gamma = G_C``,
    ``Kout = K gamma / G``, ``Qg = Q G``, ``Kb = b G K``; without decay G, D, gamma are 1)::

        M = tril(b * (K K^T) * D, -1),   Tinv = (I + M)^-1,   P = tril((Q K^T) * D)
        u = Tinv (b V - Kb S_in),   S_next = gamma S_in + Kout^T u     (the loop over chunks)
        O = P u + Qg S_in

    Backward, with ``dS'_n = dL/dS_next`` carried back through the chunks and ``dr`` the
    gradient of the solve's right-hand side::

        du = P^T dO + Kout dS',   dr = Tinv^T du,   dS_in = Qg^T dO + gamma dS' - Kb^T dr
        dP = tril(dO u^T),  dM = -tril(dr u^T, -1),  dQg = dO S_in^T,  dKb = -dr S_in^T,
        dKout = u dS'^T,  dgamma = sum(S_in * dS'),  dV = b dr

    and from ``dM``, ``dP`` and the rest the products and decays they were made of
    (``dlogG`` from ``D`` as row sums minus column sums of ``dD * D``). Per chunk that is
    seven products of ``C x C x d`` forward and fourteen backward, each batched over the
    chunks except the loop's three.
    """

    @staticmethod
    def forward(ctx: Any, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, beta: torch.Tensor,
                logG: torch.Tensor | None, S0: torch.Tensor | None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        (Bn, N, C, dk), dv = q.shape, v.shape[-1]
        kq = torch.cat([k, q], -2)  # [Bn, N, 2C, dk]: products with both are twice as tall
        kkqk = kq @ k.transpose(-1, -2)  # [k k^T; q k^T]  [Bn, N, 2C, C]
        kk, qk = kkqk[..., :C, :], kkqk[..., C:, :]
        if logG is None:
            D = G = gamma = None
            Kb, Kout, Qg = beta * k, k, q
        else:
            D = decay_matrix(logG[..., 0])  # [Bn, N, C, C], zero above the diagonal
            kk, qk = kk * D, qk * D
            G = logG.exp()
            gamma = G[..., -1:, :]  # [Bn, N, 1, 1]
            Kb, Qg = beta * G * k, q * G
            Kout = k * (logG[..., -1:, :] - logG).exp()
        Tinv = _unit_lower_inverse(beta * kk)  # reads the strictly lower triangle only
        bv, P = beta * v, qk.tril_()
        PQ = torch.cat([P, Qg], -1)  # [Bn, N, C, C + dk]
        u, S_in = torch.empty_like(v), q.new_empty(Bn, N, dk, dv)
        S = q.new_zeros(Bn, dk, dv) if S0 is None else S0.float()
        Kout_t = Kout.transpose(-1, -2)
        for n in range(N):
            S_in[:, n] = S
            u_n = torch.bmm(Tinv[:, n], torch.baddbmm(bv[:, n], Kb[:, n], S, alpha=-1))
            u[:, n] = u_n
            S = torch.baddbmm(S if gamma is None else S * gamma[:, n], Kout_t[:, n], u_n)
        o = PQ @ torch.cat([u, S_in], -2)  # P u + Qg S_in
        ctx.has_S0 = S0 is not None
        ctx.save_for_backward(kq, v, beta, logG, D, G, kk, PQ, Tinv, Kb, u, S_in, Kout)
        return o, S

    @staticmethod
    def backward(ctx: Any, dO: torch.Tensor, dS_last: torch.Tensor | None
                 ) -> tuple[torch.Tensor | None, ...]:
        kq, v, beta, logG, D, G, kk, PQ, Tinv, Kb, u, S_in, Kout = ctx.saved_tensors
        (Bn, N, C, dk), dv = Kb.shape, v.shape[-1]
        k, q, P = kq[..., :C, :], kq[..., C:, :], PQ[..., :C]
        gated = logG is not None
        dUSO = PQ.transpose(-1, -2) @ dO.contiguous()  # [P^T dO; Qg^T dO]  [Bn, N, C + dk, dv]
        dU, dSO = dUSO[..., :C, :], dUSO[..., C:, :]
        dr, dS_next = torch.empty_like(u), torch.empty_like(S_in)
        dS = q.new_zeros(Bn, dk, dv) if dS_last is None else dS_last.float()
        Tinv_t, Kb_t = Tinv.transpose(-1, -2), Kb.transpose(-1, -2)
        for n in reversed(range(N)):
            dS_next[:, n] = dS
            dr_n = torch.bmm(Tinv_t[:, n], torch.baddbmm(dU[:, n], Kout[:, n], dS))
            dr[:, n] = dr_n
            carried = dSO[:, n] + (dS if not gated else dS * G[:, n, -1:, :])
            dS = torch.baddbmm(carried, Kb_t[:, n], dr_n, alpha=-1)
        Y = torch.cat([dO, dr], -2)  # [Bn, N, 2C, dv]
        dPM = Y @ u.transpose(-1, -2)  # [dP; -dM] before their masks  [Bn, N, 2C, C]
        dP, dM = dPM[..., :C, :].tril_(), dPM[..., C:, :].tril_(-1).neg_()
        dQK = Y @ S_in.transpose(-1, -2)  # [dQg; -dKb]  [Bn, N, 2C, dk]
        dQg, dKb = dQK[..., :C, :], dQK[..., C:, :].neg_()
        dKout = u @ dS_next.transpose(-1, -2)  # [Bn, N, C, dk]
        rk = (dKb * k).sum(-1, keepdim=True)  # [Bn, N, C, 1]
        dbeta = (dr * v).sum(-1, keepdim=True).add_((dM * kk).sum(-1, keepdim=True))
        dKK = beta * dM  # dL/d(kk * D), strictly lower
        if gated:
            dbeta.addcmul_(rk, G)
            dD = (dKK * kk).add_(dP * P)  # dL/dD * D (kk and P hold their products with D)
            dlogG = dD.sum(-1)[..., None] - dD.sum(-2)[..., None]  # rows minus columns
            dKK, dP = dKK * D, dP * D
            dlogG += G * (beta * rk + (dQg * q).sum(-1, keepdim=True))
            c = (dKout * Kout).sum(-1, keepdim=True)  # through Kout = k gamma / G
            dlogG -= c
            gamma = G[..., -1:, :]  # [Bn, N, 1, 1]
            dgamma = (S_in * dS_next).sum((-2, -1))[..., None, None]
            dlogG[..., -1:, :] += c.sum(-2, keepdim=True) + dgamma * gamma
            dq = _matmul_add(dQg * G, dP, k)
            k_base = torch.addcmul(dKout * (logG[..., -1:, :] - logG).exp(), beta * G, dKb)
        else:
            dbeta.add_(rk)
            dlogG = None
            dq = _matmul_add(dQg, dP, k)
            k_base = torch.addcmul(dKout, beta, dKb)
        dk = _matmul_add(k_base, torch.cat([dKK + dKK.transpose(-1, -2), dP.transpose(-1, -2)], -1),
                         kq)
        return dq, dk, beta * dr, dbeta, dlogG, dS if ctx.has_S0 else None


def _unit_lower_inverse(M: torch.Tensor, leaf: int = 16) -> torch.Tensor:
    """``(I + tril(M, -1))^-1`` for ``[..., C, C]`` (M's diagonal and upper triangle are not
    read), by halves: ``[[A, 0], [B, D]]^-1 = [[A^-1, 0], [-D^-1 B A^-1, D^-1]]``, the two
    diagonal blocks inverted together, down to ``leaf``-sized triangular solves. Batched
    products in place of one large solve, about twice as fast on CPU."""
    C = M.shape[-1]
    if C <= leaf or C % 2:
        eye = torch.eye(C, dtype=M.dtype, device=M.device).expand(M.shape)
        return torch.linalg.solve_triangular(M, eye, upper=False, unitriangular=True)
    h = C // 2
    Ai, Di = _unit_lower_inverse(torch.stack([M[..., :h, :h], M[..., h:, h:]], -3), leaf).unbind(-3)
    out = M.new_zeros(M.shape)
    out[..., :h, :h], out[..., h:, h:] = Ai, Di
    out[..., h:, :h] = -(Di @ (M[..., h:, :h] @ Ai))
    return out


def delta_operator(q: torch.Tensor, k: torch.Tensor, beta: torch.Tensor,
                   log_g: torch.Tensor | None = None, *, chunk_size: int = 64) -> torch.Tensor:
    """The materialised ``[..., T, T]`` map from v to o: row t holds
    ``b_s q_t^T M_t M_{t-1} ... M_{s+1} k_s`` on column ``s <= t``, with
    ``M_r = a_r (I - b_r k_r k_r^T)`` (the papers' ``q_t^T P_{s+1..t} k_s``). It is the chunked
    form on identity values, so ``operator @ v`` equals its output up to rounding."""
    T = q.shape[-2]
    eye = torch.eye(T, device=q.device, dtype=torch.float32).expand(*q.shape[:-2], T, T)
    return chunked_delta_rule(q, k, eye, beta, log_g, chunk_size=chunk_size)[0]
