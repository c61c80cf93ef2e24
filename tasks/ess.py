"""Effective state-size (ESS) of a causal linear operator, arXiv 2504.19561 (torch only).

For a materialised causal operator ``T`` (``y = T u``, shape ``[..., T, T]``) and a position
``1 <= i < T``, the submatrix ``H_i = T[i:, :i]`` (future rows, past columns) carries all the
information from the past that the future reads, so its rank is the state a recurrence needs
at ``i``. With ``s`` the singular values of ``H_i``:

    tolerance-ESS(i) = #{ s > tol * s_max }        (or ``s > tol`` with ``absolute=True``)
    entropy-ESS(i)   = exp(-sum p log p),  p = s / sum(s)      (0 when every s is 0)

Computing it fast. A plain SVD of each of the ``T - 1`` submatrices costs ``O(T^4)`` per head.
Instead, for ``i <= T / 2`` the singular values are the square roots of the eigenvalues of the
``i x i`` Gram matrix ``G_i = H_i^T H_i = sum_{r >= i} T[r, :i]^T T[r, :i]``; walking ``i``
downwards, ``G_i`` is ``G_{i+1}`` cropped plus one outer product, so every Gram matrix costs
``O(i^2)``. For ``i > T / 2`` the same walk runs on the anti-transpose (``H_i`` of ``T`` is the
transpose of ``H_{T-i}`` of ``flip(T^T)``), so the eigenproblem is always on the smaller side.
Eigenproblems of similar size are zero-padded to a common size (padding only adds zero
eigenvalues) and solved in batches with ``torch.linalg.eigvalsh``, all in float64.

Where the operator has low numerical rank (every recurrent mixer: rank <= its state per head),
a randomised Rayleigh-Ritz step replaces the ``O(i^3)`` eigensolve: ``Q = qr(G Omega)`` with
``rank + OVERSAMPLE`` probes, the eigenvalues of ``Q^T G Q``, accepted only if
``||G - Q Q^T G Q Q^T||_F <= RR_TOL ||G||_F`` (then, by Weyl's inequality, every singular value
moves by at most ``sqrt(RR_TOL ||G||_F)``); otherwise the full eigensolve runs. The rank guess
comes from the previous position, so full-rank operators (softmax attention) never try it.

Accuracy: the Gram route resolves singular values to about ``sqrt(eps) * s_max`` (1e-8), so
values below ``FLOOR * s_max`` are reported as exactly 0 (they are below what is resolved and
would otherwise add rounding noise to entropy-ESS). Above that, values agree with a float64
SVD of ``H_i`` to about 1e-7 of ``s_max`` (the tests check 1e-6).
"""

from __future__ import annotations

from typing import Iterator, NamedTuple, Sequence

import torch

DEFAULT_TOL = 1e-3
FLOOR = 1e-7  # relative to s_max: below this the Gram route does not resolve singular values
OVERSAMPLE = 8
RR_TOL = 1e-13


class ESS(NamedTuple):
    positions: torch.Tensor  # [P] the positions i (1 <= i < T)
    tolerance: torch.Tensor  # [..., P] tolerance-ESS
    entropy: torch.Tensor  # [..., P] entropy-ESS


def _check(op: torch.Tensor, positions: Sequence[int] | torch.Tensor | None) -> list[int]:
    if op.ndim < 2 or op.shape[-1] != op.shape[-2]:
        raise ValueError(f"ess: operator must be [..., T, T], got shape {tuple(op.shape)}")
    T = op.shape[-1]
    ps = list(range(1, T)) if positions is None else sorted({int(p) for p in positions})
    bad = [p for p in ps if not 1 <= p < T]
    if bad:
        raise ValueError(f"ess: positions must lie in 1..{T - 1}, got {bad[:5]}")
    return ps


def _buckets(ps: list[int]) -> list[list[int]]:
    """Descending positions grouped so that padding to the bucket's largest wastes little."""
    out: list[list[int]] = []
    for p in sorted(ps, reverse=True):
        if out and out[-1][0] - p <= max(4, out[-1][0] // 16) and len(out[-1]) < 64:
            out[-1].append(p)
        else:
            out.append([p])
    return out


def _rayleigh_ritz(G: torch.Tensor, k: int, gen: torch.Generator) -> torch.Tensor | None:
    """Eigenvalues of the PSD batch ``G [N, n, n]`` from a rank-``k`` randomised subspace,
    padded with zeros to ``n``; None when the subspace misses part of any ``G``."""
    N, n, _ = G.shape
    omega = torch.randn(n, k, generator=gen, dtype=G.dtype).to(G.device)
    Q = torch.linalg.qr(G @ omega).Q  # [N, n, k]
    M = Q.mT @ G @ Q  # [N, k, k]
    resid = torch.linalg.matrix_norm(G - Q @ M @ Q.mT)  # [N]
    if (resid > RR_TOL * torch.linalg.matrix_norm(G)).any():
        return None
    lam = torch.linalg.eigvalsh((M + M.mT) / 2)  # [N, k]
    return torch.cat([lam, lam.new_zeros(N, n - k)], -1)


def _lower_half(A: torch.Tensor, ps: list[int], low_rank: bool
                ) -> Iterator[tuple[list[int], torch.Tensor]]:
    """Singular values of ``A[:, i:, :i]`` for positions ``i <= T - i`` (so ``i`` is the small
    side), as (bucket positions, ``[N, len(bucket), n_b]`` descending) with ``n_b`` the
    bucket's largest ``i``; ``A`` is ``[N, T, T]`` float64."""
    n0 = max(ps)
    G = A[:, n0:, :n0].mT @ A[:, n0:, :n0]  # [N, n0, n0] the Gram matrix at position n0
    row = n0  # G sums the rows row.. of A
    gen = torch.Generator().manual_seed(0)
    rank = n0  # rank guess for the randomised path, from the last position
    for bucket in _buckets(ps):
        nb = bucket[0]
        lam = A.new_zeros(A.shape[0], len(bucket), nb)  # [N, w, nb] eigenvalues of G_i
        full: list[int] = []
        padded = A.new_zeros(A.shape[0], len(bucket), nb, nb)
        for j, i in enumerate(bucket):
            rows = A[:, i:row, :i]  # [N, row - i, i]
            G = G[:, :i, :i] + rows.mT @ rows  # [N, i, i] = H_i^T H_i
            row = i
            k = rank + OVERSAMPLE
            got = _rayleigh_ritz(G, k, gen) if low_rank and 2 * k <= i else None
            if got is None:
                padded[:, j, :i, :i] = G
                full.append(j)
            else:
                lam[:, j, :i] = got
                rank = int((got > RR_TOL * got.amax(-1, keepdim=True)).sum(-1).max())
        if full:
            lam[:, full] = torch.linalg.eigvalsh(padded[:, full])  # [N, f, nb]
            last = lam[:, full[-1]]
            rank = int((last > RR_TOL * last.amax(-1, keepdim=True)).sum(-1).max())
        s = lam.clamp_min(0).sqrt().sort(-1, descending=True).values  # [N, w, nb]
        s = torch.where(s > FLOOR * s[..., :1], s, torch.zeros_like(s))
        yield bucket, s


def iter_singular_values(op: torch.Tensor, positions: Sequence[int] | torch.Tensor | None = None,
                         *, low_rank: bool = True
                         ) -> Iterator[tuple[list[int], torch.Tensor]]:
    """Singular values of ``H_i = op[..., i:, :i]`` in float64, a bucket of positions at a
    time: ``(positions, s [..., len(positions), n])``, descending, zero-padded to ``n``."""
    ps = _check(op, positions)
    T, batch = op.shape[-1], op.shape[:-2]
    A = op.detach().to(torch.float64).reshape(-1, T, T)  # [N, T, T]
    lower = [p for p in ps if p <= T - p]
    upper = [T - p for p in ps if p > T - p]  # positions of the anti-transpose
    if lower:
        for bucket, s in _lower_half(A, lower, low_rank):
            yield bucket, s.reshape(*batch, *s.shape[1:])
    if upper:
        At = A.flip(-1, -2).mT  # At[a, b] = A[T-1-b, T-1-a]: H_j(At) = H_{T-j}(A)^T, flipped
        for bucket, s in _lower_half(At, upper, low_rank):
            yield [T - j for j in bucket], s.reshape(*batch, *s.shape[1:])


def singular_values(op: torch.Tensor, positions: Sequence[int] | torch.Tensor | None = None,
                    *, low_rank: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """All at once: ``(positions [P], s [..., P, K])`` sorted by position, ``s`` descending and
    zero-padded to ``K = max min(i, T - i)``."""
    parts = list(iter_singular_values(op, positions, low_rank=low_rank))
    K = max(s.shape[-1] for _, s in parts)
    pos = torch.tensor([p for b, _ in parts for p in b])
    s = torch.cat([torch.nn.functional.pad(s, (0, K - s.shape[-1])) for _, s in parts], -2)
    order = pos.argsort()
    return pos[order], s[..., order, :]


def tolerance_ess(s: torch.Tensor, tol: float = DEFAULT_TOL, absolute: bool = False) -> torch.Tensor:
    """Count of singular values ``s [..., K]`` above ``tol * s_max`` (or above ``tol``)."""
    bound = tol if absolute else tol * s.amax(-1, keepdim=True)
    return ((s > bound) & (s > 0)).sum(-1).to(torch.float64)


def entropy_ess(s: torch.Tensor) -> torch.Tensor:
    """``exp`` of the entropy of ``p = s / sum(s)`` over ``s [..., K]``; 0 where all s are 0."""
    total = s.sum(-1, keepdim=True)
    p = s / total.clamp_min(torch.finfo(s.dtype).tiny)
    h = -torch.xlogy(p, p).sum(-1)
    return torch.where(total[..., 0] > 0, h.exp(), torch.zeros_like(h))


def ess(op: torch.Tensor, positions: Sequence[int] | torch.Tensor | None = None, *,
        tol: float = DEFAULT_TOL, absolute: bool = False, low_rank: bool = True) -> ESS:
    """Tolerance- and entropy-ESS of ``op [..., T, T]`` at every position (or ``positions``)."""
    pos, tols, ents = [], [], []
    for bucket, s in iter_singular_values(op, positions, low_rank=low_rank):
        pos += bucket
        tols.append(tolerance_ess(s, tol, absolute))
        ents.append(entropy_ess(s))
    p = torch.tensor(pos)
    order = p.argsort()
    return ESS(p[order], torch.cat(tols, -1)[..., order], torch.cat(ents, -1)[..., order])


def summary(result: ESS) -> dict[str, float]:
    """Mean tolerance- and entropy-ESS over positions, heads and batch (one layer's ESS)."""
    return {"tolerance": float(result.tolerance.mean()), "entropy": float(result.entropy.mean())}
