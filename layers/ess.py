"""Effective state-size (ESS) of a causal linear operator, arXiv 2504.19561 (torch only): the
mathematics behind the mixer contract's ``operator``. ``zoo.ess`` measures a model's layers with
it; ``from layers.ess import ess`` measures any ``[..., T, T]`` operator, a mixer's or your own.

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
``O(i^2)`` (accumulated in place in one buffer). For ``i > T / 2`` the same walk runs on the
anti-transpose (``H_i`` of ``T`` is the transpose of ``H_{T-i}`` of ``flip(T^T)``), so the
eigenproblem is always on the smaller side. Small eigenproblems of similar size are
zero-padded to a common size (padding only adds zero eigenvalues) and solved in batches with
``torch.linalg.eigvalsh``, all in float64; large ones are solved unpadded, since their cost
(``~ i^3``, over 90% of the total for full-rank operators) would grow with the padding.
The two walks are independent and run in two threads, each with single-threaded LAPACK.

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

from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Iterator, NamedTuple, Sequence

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


def _buckets(ps: list[int], n_mat: int) -> list[list[int]]:
    """Descending positions grouped into batched eigensolves. A group pads every matrix to its
    largest size ``nb``: worth it while ``nb`` is small (per-call overhead dominates), wasteful
    at large ``nb`` (cost ~ nb^3), so groups span about ``1024 / nb`` positions, and at most
    about 32 MiB of padded float64 matrices for the ``n_mat`` operators."""
    out: list[list[int]] = []
    for p in sorted(ps, reverse=True):
        nb = out[-1][0] if out else 0
        room = max(1, (2 ** 22) // (n_mat * nb * nb)) if out else 0
        if out and nb - p < max(1, 1024 // nb) and len(out[-1]) < min(64, room):
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


def _rank(lam: torch.Tensor) -> int:
    """Numerical rank of the eigenvalues ``lam [N, n]``: the largest over the batch."""
    return int((lam > RR_TOL * lam.amax(-1, keepdim=True)).sum(-1).max())


def _lower_half(A: torch.Tensor, ps: list[int], low_rank: bool
                ) -> Iterator[tuple[list[int], torch.Tensor]]:
    """Singular values of ``A[:, i:, :i]`` for positions ``i <= T - i`` (so ``i`` is the small
    side), as (bucket positions, ``[N, len(bucket), n_b]`` descending) with ``n_b`` the
    bucket's largest ``i``; ``A`` is ``[N, T, T]`` float64.

    ``S`` accumulates, in place, the outer products of the rows ``row..T-1`` of ``A`` over the
    first ``n0`` columns; since a row only ever loses columns as ``i`` walks down,
    ``S[:, :i, :i]`` is exactly ``H_i^T H_i`` once the rows ``i..row-1`` are added."""
    N = A.shape[0]
    n0 = max(ps)
    S = A[:, n0:, :n0].mT @ A[:, n0:, :n0]  # [N, n0, n0] the Gram matrix at position n0
    row = n0  # S sums the rows row.. of A
    gen = torch.Generator().manual_seed(0)
    rank = n0  # rank guess for the randomised path, from the last position
    for bucket in _buckets(ps, N):
        nb = bucket[0]
        lam = A.new_zeros(N, len(bucket), nb)  # [N, w, nb] eigenvalues of G_i
        full: list[int] = []
        padded = A.new_zeros(N, len(bucket), nb, nb) if len(bucket) > 1 else None
        for j, i in enumerate(bucket):
            rows = A[:, i:row, :i]  # [N, row - i, i]
            G = S[:, :i, :i].baddbmm_(rows.mT, rows)  # [N, i, i] = H_i^T H_i (a view of S)
            row = i
            k = rank + OVERSAMPLE
            got = _rayleigh_ritz(G, k, gen) if low_rank and 2 * k <= i else None
            if got is not None:
                lam[:, j, :i] = got
                rank = _rank(got)
            elif padded is None:
                lam[:, j] = torch.linalg.eigvalsh(G)  # [N, nb]
                rank = _rank(lam[:, j])
            else:
                padded[:, j, :i, :i] = G
                full.append(j)
        if full:
            lam[:, full] = torch.linalg.eigvalsh(padded[:, full])  # [N, f, nb]
            rank = _rank(lam[:, full[-1]])
        s = lam.clamp_min(0).sqrt().sort(-1, descending=True).values  # [N, w, nb]
        s = torch.where(s > FLOOR * s[..., :1], s, torch.zeros_like(s))
        yield bucket, s


def _spectra(op: torch.Tensor, positions: Sequence[int] | torch.Tensor | None, low_rank: bool,
             reduce: Callable[[torch.Tensor], Any]) -> list[tuple[list[int], Any]]:
    """``reduce(s)`` for each bucket of positions, ``s [..., len(bucket), n]`` the singular
    values of ``H_i = op[..., i:, :i]`` (float64, descending, zero-padded to ``n``).

    The two halves (``i <= T / 2`` and its anti-transpose) are independent walks, run in two
    threads when torch may use two. Each thread does its linear algebra single-threaded:
    LAPACK's own threads gain little on these sizes and, on a machine whose cores are busy,
    their spin-waiting makes a batched eigensolve 10-30x slower."""
    ps = _check(op, positions)
    T, batch = op.shape[-1], op.shape[:-2]
    A = op.detach().to(torch.float64).reshape(-1, T, T)  # [N, T, T]
    lower = [p for p in ps if p <= T - p]
    upper = [T - p for p in ps if p > T - p]  # positions of the anti-transpose
    At = A.flip(-1, -2).mT.contiguous()  # At[a, b] = A[T-1-b, T-1-a]: H_j(At) = H_{T-j}(A)^T

    def walk(M: torch.Tensor, half: list[int], to_pos: Callable[[int], int]
             ) -> list[tuple[list[int], Any]]:
        torch.set_num_threads(1)  # this thread's intra-op and MKL threads
        return [([to_pos(p) for p in bucket], reduce(s.reshape(*batch, *s.shape[1:])))
                for bucket, s in (_lower_half(M, half, low_rank) if half else ())]

    threads = torch.get_num_threads()
    try:
        with ThreadPoolExecutor(min(2, threads)) as pool:
            halves = [pool.submit(walk, A, lower, lambda p: p),
                      pool.submit(walk, At, upper, lambda j: T - j)]
            return [part for h in halves for part in h.result()]
    finally:
        torch.set_num_threads(threads)  # the global count the workers changed


def singular_values(op: torch.Tensor, positions: Sequence[int] | torch.Tensor | None = None,
                    *, low_rank: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """``(positions [P], s [..., P, K])`` sorted by position: the singular values of
    ``H_i = op[..., i:, :i]`` in float64, descending and zero-padded to
    ``K = max min(i, T - i)``."""
    parts = _spectra(op, positions, low_rank, lambda s: s)
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
    parts = _spectra(op, positions, low_rank,
                     lambda s: (tolerance_ess(s, tol, absolute), entropy_ess(s)))
    p = torch.tensor([i for bucket, _ in parts for i in bucket])
    order = p.argsort()
    tols = torch.cat([t for _, (t, _e) in parts], -1)
    ents = torch.cat([e for _, (_t, e) in parts], -1)
    return ESS(p[order], tols[..., order], ents[..., order])


def summary(result: ESS) -> dict[str, float]:
    """Mean tolerance- and entropy-ESS over positions, heads and batch (one layer's ESS)."""
    return {"tolerance": float(result.tolerance.mean()), "entropy": float(result.entropy.mean())}
