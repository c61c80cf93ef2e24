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
inverse: batched products down to 8 x 8 triangular solves), then carries the state through
the chunks with ``U = Tinv (b * V - (b G * K) S_0)`` and ``S_next = G_C S_0 + (K G_C / G)^T U``
(three products per chunk, batched over the heads); ``O = P U + (G * Q) S_0`` and the whole
backward (hand-written, ``_DeltaChunks``) are matrix products batched over blocks of
consecutive chunks.
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

    All chunks' ``(I + A)^-1`` come at once from a blocked inverse (``_unit_lower_inverse``);
    then a loop over the ``T / chunk_size`` chunks carries the state (``u = Tinv (b V - Kb S)``,
    ``S <- G_C S + (K G_C / G)^T u``: three ``[C, d] x [d, dv]``-sized products per chunk,
    batched over the heads), and the outputs are batched products again (``_DeltaChunks``,
    with a hand-written backward). The chunks are laid out chunk-major (``[N, batch, C, d]``)
    so that each chunk's slice the loops read and write is contiguous. The zero-padded tail
    (``k = v = b = 0``, no decay) leaves the state unchanged.
    """
    with fp32(q):
        T, C, dk, dv = q.shape[-2], chunk_size, q.shape[-1], v.shape[-1]
        lead, N = q.shape[:-2], -(-T // chunk_size)

        def chunks(t: torch.Tensor) -> torch.Tensor:  # [..., T, d] -> [N, batch, C, d]
            t = pad_time(t.float(), C).expand(*lead, -1, t.shape[-1])
            return t.unflatten(-2, (N, C)).movedim(-3, 0).contiguous().view(N, -1, C, t.shape[-1])
        logG = None if log_g is None else chunks(log_g).cumsum(-2)  # [N, batch, C, 1]
        S0 = None if initial_state is None else initial_state.float().reshape(-1, dk, dv)
        o, S = _DeltaChunks.apply(chunks(q), chunks(k), chunks(v), chunks(beta), logG, S0)
        o = o.unflatten(1, lead).movedim(0, -3).reshape(*lead, N * C, dv)
        return o[..., :T, :], S.view(*lead, dk, dv)


BLOCK_BYTES = 2 ** 20  # about this many bytes of each [chunks, C, d] tensor per block


class _DeltaChunks(torch.autograd.Function):
    """The chunked delta rule on chunk-major ``[N, batch, C, d]`` chunks (``logG``: the log
    decay accumulated from each chunk start, or None), with a hand-written backward.

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
    seven products of ``C x C x d`` forward and thirteen backward, ``bmm``/``baddbmm`` on
    contiguous or transposed operands, no concatenation (the signs of ``dM`` and ``dKb`` are
    carried into what uses them: ``Mn = -dM``, ``Kbn = -dKb``). The work goes block by block
    of consecutive chunks (about ``BLOCK_BYTES`` per tensor, so a block's operands stay in
    cache from one product to the next): forward, ``K K^T``, ``D`` and the inverses of all
    chunks at once, then block by block ``Q K^T``, the state loop and the outputs; backward,
    the blocks from the last, each its state loop back and then its gradients. ``D`` is
    recomputed in backward rather than saved.
    """

    @staticmethod
    def forward(ctx: Any, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, beta: torch.Tensor,
                logG: torch.Tensor | None, S0: torch.Tensor | None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        (N, Bn, C, dk), dv = q.shape, v.shape[-1]
        gated = logG is not None
        P = q.new_empty(N, Bn, C, C)
        Kb, u, o = torch.empty_like(k), torch.empty_like(v), torch.empty_like(v)
        S = v.new_empty(N + 1, Bn, dk, dv)
        S[0] = 0 if S0 is None else S0
        G = Qg = Kout = None
        if gated:
            G, Qg, Kout = logG.exp(), torch.empty_like(q), torch.empty_like(k)
        k_all = k.view(N * Bn, C, dk)
        kk = torch.bmm(k_all, k_all.mT).view(N, Bn, C, C)
        D = None if logG is None else _decay(logG)  # [N, Bn, C, C]
        if D is not None:
            kk.mul_(D)
        Tinv = _unit_lower_inverse((beta * kk).view(N * Bn, C, C)).view(N, Bn, C, C)
        for lo, hi in _blocks(N, Bn * C * max(C, dk, dv) * 4):
            Z, sl = (hi - lo) * Bn, slice(lo, hi)
            qf, kf, Pf = q[sl].view(Z, C, dk), k[sl].view(Z, C, dk), P[sl].view(Z, C, C)
            torch.bmm(qf, kf.mT, out=Pf)
            if gated:
                Pf.mul_(D[sl].view(Z, C, C))  # lower triangular
                Gb, lb = G[sl], logG[sl]
                torch.mul(q[sl], Gb, out=Qg[sl])
                torch.mul(beta[sl] * Gb, k[sl], out=Kb[sl])
                torch.mul(k[sl], (lb[..., -1:, :] - lb).exp_(), out=Kout[sl])
            else:
                Pf.tril_()
                torch.mul(beta[sl], k[sl], out=Kb[sl])
            rhs = beta[sl] * v[sl]  # b V, then b V - Kb S_in in place, chunk by chunk
            for i, n in enumerate(range(lo, hi)):
                rhs[i].baddbmm_(Kb[n], S[n], alpha=-1)
                torch.bmm(Tinv[n], rhs[i], out=u[n])
                if gated:
                    torch.mul(S[n], G[n, :, -1:, :], out=S[n + 1]).baddbmm_(Kout[n].mT, u[n])
                else:
                    torch.baddbmm(S[n], k[n].mT, u[n], out=S[n + 1])
            of = o[sl].view(Z, C, dv)
            torch.bmm((qf if Qg is None else Qg[sl].view(Z, C, dk)), S[sl].view(Z, dk, dv), out=of)
            of.baddbmm_(Pf, u[sl].view(Z, C, dv))  # P u + Qg S_in
        ctx.has_S0 = S0 is not None
        ctx.save_for_backward(q, k, v, beta, logG, G, kk, P, Qg, Tinv, Kb, u, S, Kout)
        return o, S[N].clone()

    @staticmethod
    def backward(ctx: Any, dO: torch.Tensor, dS_last: torch.Tensor | None
                 ) -> tuple[torch.Tensor | None, ...]:
        q, k, v, beta, logG, G, kk, P, Qg, Tinv, Kb, u, S, Kout = ctx.saved_tensors
        (N, Bn, C, dk), dv = q.shape, v.shape[-1]
        gated = logG is not None
        Qg, Kout = (q, k) if not gated else (Qg, Kout)
        dO = dO.contiguous()  # strided where the output's layout was
        dq, dk_, dv_, dbeta = (torch.empty_like(t) for t in (q, k, v, beta))
        dlogG = torch.empty_like(logG) if gated else None
        dS = torch.empty_like(S)
        dS[N] = 0 if dS_last is None else dS_last
        for lo, hi in reversed(_blocks(N, Bn * C * max(C, dk, dv) * 4)):
            Z, sl = (hi - lo) * Bn, slice(lo, hi)
            qf, kf, bf = q[sl].view(Z, C, dk), k[sl].view(Z, C, dk), beta[sl].view(Z, C, 1)
            dOf, Pf, kkf = dO[sl].view(Z, C, dv), P[sl].view(Z, C, C), kk[sl].view(Z, C, C)
            dU = torch.bmm(Pf.mT, dOf).view(hi - lo, Bn, C, dv)  # P^T dO, + Kout dS' below
            dSO = torch.bmm(Qg[sl].view(Z, C, dk).mT, dOf).view(hi - lo, Bn, dk, dv)  # Qg^T dO
            dr = torch.empty_like(dU)
            for i, n in reversed(list(enumerate(range(lo, hi)))):
                dU[i].baddbmm_(Kout[n], dS[n + 1])
                torch.bmm(Tinv[n].mT, dU[i], out=dr[i])
                if gated:
                    torch.addcmul(dSO[i], dS[n + 1], G[n, :, -1:, :], out=dS[n])
                else:
                    torch.add(dSO[i], dS[n + 1], out=dS[n])
                dS[n].baddbmm_(Kb[n].mT, dr[i], alpha=-1)
            uf, drf = u[sl].view(Z, C, dv), dr.view(Z, C, dv)
            torch.mul(bf, drf, out=dv_[sl].view(Z, C, dv))
            S_in, dS_next = S[sl].view(Z, dk, dv), dS[lo + 1:hi + 1].view(Z, dk, dv)
            dP = torch.bmm(dOf, uf.mT)  # its upper triangle meets only zeros when gated
            Mn = torch.bmm(drf, uf.mT).tril_(-1)  # -dM
            dqf, dkf = dq[sl].view(Z, C, dk), dk_[sl].view(Z, C, dk)
            torch.bmm(dOf, S_in.mT, out=dqf)  # dQg
            Kbn = torch.bmm(drf, S_in.mT)  # -dKb
            torch.bmm(uf, dS_next.mT, out=dkf)  # dKout
            rkn = (Kbn * kf).sum(-1, keepdim=True)  # -(dKb . k)  [Z, C, 1]
            dbf = dbeta[sl].view(Z, C, 1)
            torch.sum(drf * v[sl].view(Z, C, dv), -1, keepdim=True, out=dbf)
            dbf.sub_((Mn * kkf).sum(-1, keepdim=True))
            KKn = bf * Mn  # -dL/d(kk * D), strictly lower
            if gated:
                Gf, lb = G[sl].view(Z, C, 1), logG[sl]
                dbf.addcmul_(rkn, Gf, value=-1)
                D = _decay(lb).view(Z, C, C)
                dD = (dP * Pf).addcmul_(KKn, kkf, value=-1)  # dL/dD * D (kk, P hold D's factor)
                dlf = dlogG[sl].view(Z, C, 1)
                torch.sub(dD.sum(-1)[..., None], dD.sum(-2)[..., None], out=dlf)  # rows - columns
                KKn.mul_(D)
                dP.mul_(D)
                dlf += Gf * ((dqf * qf).sum(-1, keepdim=True) - bf * rkn)
                c = (dkf * Kout[sl].view(Z, C, dk)).sum(-1, keepdim=True)  # via Kout = k gamma / G
                dlf -= c
                dgamma = (S_in * dS_next).sum((-2, -1)).view(hi - lo, Bn, 1, 1)
                dlogG[sl, ..., -1:, :] += (c.view(hi - lo, Bn, C, 1).sum(-2, keepdim=True)
                                          + dgamma * G[sl, ..., -1:, :])
                dqf.mul_(Gf)
                dkf.mul_((lb[..., -1:, :] - lb).exp().view(Z, C, 1))  # through Kout
                dkf.addcmul_(bf * Gf, Kbn, value=-1)  # through Kb = b G k
            else:
                dbf.sub_(rkn)
                dP.tril_()
                dkf.addcmul_(bf, Kbn, value=-1)
            dqf.baddbmm_(dP, kf)
            dkf.baddbmm_(KKn + KKn.mT, kf, alpha=-1).baddbmm_(dP.mT, qf)
        return dq, dk_, dv_, dbeta, dlogG, dS[0] if ctx.has_S0 else None


def _decay(logG: torch.Tensor) -> torch.Tensor:
    """``[..., C, 1] -> [..., C, C]``: ``exp(logG_t - logG_s)`` for ``s <= t``, 0 above (the
    values of ``_recurrence.decay_matrix``, every kept exponent <= 0). The exponent is taken
    of every entry and the upper triangle then zeroed (an overflow there to ``inf`` is
    overwritten, never multiplied), three passes where the mask on the exponent takes more."""
    return (logG - logG.mT).exp_().tril_()


def _blocks(N: int, chunk_bytes: int) -> list[tuple[int, int]]:
    """``[lo, hi)`` ranges of consecutive chunks, each about ``BLOCK_BYTES`` of a tensor whose
    chunks take ``chunk_bytes`` each (at least one chunk a block)."""
    per = max(1, BLOCK_BYTES // chunk_bytes)
    return [(lo, min(lo + per, N)) for lo in range(0, N, per)]


def _unit_lower_inverse(M: torch.Tensor, leaf: int = 8) -> torch.Tensor:
    """``(I + tril(M, -1))^-1`` for ``[..., C, C]`` (M's diagonal and upper triangle are not
    read), blockwise: the ``leaf``-sized diagonal blocks by one batched triangular solve, then
    level by level the lower-left block of each diagonal block twice as large,
    ``[[A, 0], [B, D]]^-1 = [[A^-1, 0], [-D^-1 B A^-1, D^-1]]``, every block of a level as one
    strided view (batched products, no stacking). Where ``C / leaf`` is not a power of two,
    one triangular solve of the whole. Batched products in place of one large solve, about
    twice as fast on CPU."""
    C, lead = M.shape[-1], M.shape[:-2]
    eye = torch.eye(C, dtype=M.dtype, device=M.device)
    if C <= leaf or C % leaf or (C // leaf) & (C // leaf - 1):
        return torch.linalg.solve_triangular(M, eye.expand(M.shape), upper=False,
                                             unitriangular=True)
    M = M.reshape(-1, C, C).contiguous()
    out = M.new_zeros(M.shape)

    def blocks(t: torch.Tensor, size: int, row: int, col: int, step: int) -> torch.Tensor:
        """The ``size x size`` blocks at ``(row + i step, col + i step)``: a ``[Z, C / step,
        size, size]`` view."""
        return t.as_strided((t.shape[0], C // step, size, size), (C * C, step * (C + 1), C, 1),
                            t.storage_offset() + row * C + col)
    leaves = blocks(M, leaf, 0, 0, leaf)
    blocks(out, leaf, 0, 0, leaf).copy_(torch.linalg.solve_triangular(
        leaves, eye[:leaf, :leaf].expand(leaves.shape), upper=False, unitriangular=True))
    h = leaf
    while h < C:  # pairs of h-blocks into 2h-blocks: the lower-left is -D^-1 B A^-1
        B_Ainv = blocks(M, h, h, 0, 2 * h) @ blocks(out, h, 0, 0, 2 * h)
        blocks(out, h, h, 0, 2 * h).copy_((blocks(out, h, h, h, 2 * h) @ B_Ainv).neg_())
        h *= 2
    return out.view(*lead, C, C)


def delta_operator(q: torch.Tensor, k: torch.Tensor, beta: torch.Tensor,
                   log_g: torch.Tensor | None = None, *, chunk_size: int = 64) -> torch.Tensor:
    """The materialised ``[..., T, T]`` map from v to o: row t holds
    ``b_s q_t^T M_t M_{t-1} ... M_{s+1} k_s`` on column ``s <= t``, with
    ``M_r = a_r (I - b_r k_r k_r^T)`` (the papers' ``q_t^T P_{s+1..t} k_s``). It is the chunked
    form on identity values, so ``operator @ v`` equals its output up to rounding."""
    T = q.shape[-2]
    eye = torch.eye(T, device=q.device, dtype=torch.float32).expand(*q.shape[:-2], T, T)
    return chunked_delta_rule(q, k, eye, beta, log_g, chunk_size=chunk_size)[0]
