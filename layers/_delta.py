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

so the pass from chunk to chunk is the ``dk x dk`` transition of ``S_0``, one matrix product
per chunk; everything else is batched over chunks. Every decay ratio is ``exp`` of a log
difference ``<= 0``: nothing overflows under strong decay.

What lives here: ``naive_delta_rule`` (the reference loop, fp32), ``chunked_delta_rule`` (the
chunked form, linear in T) and ``delta_operator`` (the chunked form on identity values: the
materialised ``[T, T]`` map from v to o, exact because o is linear in v given q, k, b, g).
Every kernel computes in fp32 with autocast disabled, whatever the input dtype.
"""

from __future__ import annotations

import torch

from ._dispatch import fp32, pad_time
from ._recurrence import decay_matrix


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

    The chunk's ``u`` come from one triangular solve (``torch.linalg.solve_triangular``, unit
    diagonal), the outputs and chunk transitions from batched matrix products, and the state
    from a loop over the ``T / chunk_size`` chunks of one ``[dk, dk] @ [dk, dv]`` product each.
    The zero-padded tail (``k = v = b = 0``, no decay) leaves the state unchanged.
    """
    with fp32(q):
        T, C, dv = q.shape[-2], chunk_size, v.shape[-1]
        # contiguous once, or every matmul copies a strided operand
        q, k, v, beta = (pad_time(t.float(), C).contiguous() for t in (q, k, v, beta))
        q, k, v, beta = (t.unflatten(-2, (-1, C)) for t in (q, k, v, beta))  # [..., N, C, d]
        kk = k @ k.transpose(-1, -2)  # [..., N, C, C]
        qk = q @ k.transpose(-1, -2)  # [..., N, C, C]
        if log_g is None:
            P = qk.tril()
            q_in, k_out, bk, gamma = q, k, beta * k, None
        else:
            logG = pad_time(log_g.float(), C).unflatten(-2, (-1, C)).cumsum(-2)  # [..., N, C, 1]
            ratio = decay_matrix(logG[..., 0])  # [..., N, C, C] G_t / G_s, s <= t
            kk = kk * ratio
            P = qk * ratio
            G = logG.exp()  # decay from the chunk start, <= 1
            q_in, bk = q * G, beta * G * k
            k_out = k * (logG[..., -1:, :] - logG).exp()  # decay to the chunk end, <= 1
            gamma = G[..., -1:, :]  # [..., N, 1, 1]
        # the solve reads only the strictly lower triangle (unit diagonal)
        UW = torch.linalg.solve_triangular(beta * kk, torch.cat([beta * v, bk], -1),
                                           upper=False, unitriangular=True)  # [..., N, C, dv+dk]
        U, W = UW.split([dv, UW.shape[-1] - dv], -1)
        q_state = q_in - P @ W  # [..., N, C, dk] what the entering state gives each output
        k_t = k_out.transpose(-1, -2)  # [..., N, dk, C]
        local = k_t @ U  # [..., N, dk, dv] each chunk's own state from zero
        trans = -(k_t @ W)  # [..., N, dk, dk] the chunk's map of its entering state
        trans.diagonal(dim1=-2, dim2=-1).add_(1.0 if gamma is None else gamma[..., 0])
        S_in, S_last = _carry(trans, local, initial_state)
        o = P @ U + q_state @ S_in  # [..., N, C, dv]
        return o.flatten(-3, -2)[..., :T, :], S_last


def _carry(trans: torch.Tensor, local: torch.Tensor, initial: torch.Tensor | None
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """``S_n = trans_n S_{n-1} + local_n`` over the chunk axis (-3): the state entering each
    chunk ``[..., N, dk, dv]`` and the final state. ``_recurrence.carry`` with a matrix decay."""
    S = torch.zeros_like(local[..., 0, :, :]) if initial is None else initial.float()
    entering = []
    for t_n, l_n in zip(trans.unbind(-3), local.unbind(-3)):
        entering.append(S)
        S = l_n + t_n @ S
    return torch.stack(entering, -3), S


def delta_operator(q: torch.Tensor, k: torch.Tensor, beta: torch.Tensor,
                   log_g: torch.Tensor | None = None, *, chunk_size: int = 64) -> torch.Tensor:
    """The materialised ``[..., T, T]`` map from v to o: row t holds
    ``b_s q_t^T M_t M_{t-1} ... M_{s+1} k_s`` on column ``s <= t``, with
    ``M_r = a_r (I - b_r k_r k_r^T)`` (the papers' ``q_t^T P_{s+1..t} k_s``). It is the chunked
    form on identity values, so ``operator @ v`` equals its output up to rounding."""
    T = q.shape[-2]
    eye = torch.eye(T, device=q.device, dtype=torch.float32).expand(*q.shape[:-2], T, T)
    return chunked_delta_rule(q, k, eye, beta, log_g, chunk_size=chunk_size)[0]
