"""Positional schemes shared by the attention family (``pos`` option of every attention mixer).

- ``rope`` (Su et al. 2021, arXiv 2104.09864) rotates each pair of query/key channels by an
  angle proportional to the absolute position: ``q_m <- R(m theta) q_m``, so ``q_m . k_n``
  depends on ``m - n`` only.
- ``nope``: no positional information beyond the causal mask.
- ``alibi`` (Press et al. 2022, arXiv 2108.12409): an additive logit bias
  ``-m_h (i - j)`` with a fixed geometric slope ``m_h`` per head.
- ``hard_alibi`` (Jelassi et al. 2024, "Repeat After Me", arXiv 2402.01032): head
  ``h < num_masked_heads`` attends only to keys with ``i - j <= h``; the other heads use no
  positional information.

Everything is written in absolute positions (query ``i``, key ``j``), which is what makes a
KV-cache ``step`` agree with the parallel ``forward``.
"""

from __future__ import annotations

import math

import torch

POSITIONS = ("rope", "nope", "alibi", "hard_alibi")


def rope(x: torch.Tensor, positions: torch.Tensor, base: float = 10000.0) -> torch.Tensor:
    """Rotate ``x [B, H, T, dk]`` (dk even) at integer ``positions [T]`` (rotate-half layout)."""
    dk = x.shape[-1]
    if dk % 2:
        raise ValueError(f"rope needs an even head dimension, got {dk}")
    inv_freq = base ** (-torch.arange(0, dk, 2, device=x.device, dtype=torch.float32) / dk)
    angles = positions.to(torch.float32)[:, None] * inv_freq[None, :]  # [T, dk/2]
    cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
    x1, x2 = x[..., : dk // 2], x[..., dk // 2 :]
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


def alibi_slopes(num_heads: int) -> torch.Tensor:
    """ALiBi slopes ``[H]``: ``2^(-8 h / n)`` for ``h = 1..n`` when ``n`` is a power of two;
    otherwise those of the largest power of two below ``n``, then every other slope of the
    next power of two (the reference implementation's rule)."""
    def geometric(n: int) -> list[float]:
        return [2.0 ** (-8.0 * (h + 1) / n) for h in range(n)]

    p = 2 ** math.floor(math.log2(num_heads))
    return torch.tensor(geometric(p) + geometric(2 * p)[0::2][: num_heads - p])


def attention_bias(q_pos: torch.Tensor, k_pos: torch.Tensor, *, pos: str, num_heads: int,
                   window: int | None = None, num_masked_heads: int = 0) -> torch.Tensor:
    """Additive fp32 logit bias ``[H, Tq, Tk]`` for queries at absolute positions ``q_pos [Tq]``
    and keys at ``k_pos [Tk]``: ``-inf`` where a key is not visible (future, outside the
    ``window``, beyond a hard-ALiBi head's reach), the ALiBi ramp or 0 elsewhere."""
    diff = (q_pos[:, None] - k_pos[None, :]).float()  # [Tq, Tk] query minus key
    allowed = diff >= 0
    if window is not None:
        allowed = allowed & (diff < window)
    allowed = allowed.expand(num_heads, -1, -1)  # [H, Tq, Tk]
    bias = torch.zeros(allowed.shape, device=diff.device)
    if pos == "alibi":
        bias = -alibi_slopes(num_heads).to(diff.device)[:, None, None] * diff  # [H, Tq, Tk]
    elif pos == "hard_alibi":
        reach = torch.full((num_heads,), math.inf, device=diff.device)
        reach[:num_masked_heads] = torch.arange(num_masked_heads, device=diff.device).float()
        allowed = allowed & (diff <= reach[:, None, None])
    return bias.masked_fill(~allowed, -math.inf)
