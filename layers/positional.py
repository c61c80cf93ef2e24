"""Positional schemes shared by the attention family.

RoPE (Su et al. 2021, arXiv 2104.09864) rotates each pair of query/key channels by an angle
proportional to the absolute position: ``q_m <- R(m theta) q_m``, so ``q_m . k_n`` depends on
``m - n`` only. Positions are absolute, which is what makes a KV-cache ``step`` agree with
the parallel ``forward``.
"""

from __future__ import annotations

import torch


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
