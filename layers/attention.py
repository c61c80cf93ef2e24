"""Causal multi-head softmax attention (Vaswani et al. 2017), the zoo's baseline.

    y = W_o concat_h softmax(q_h k_h^T / sqrt(dk) + mask) v_h

with ``mask`` causal, optionally restricted to a sliding ``window`` (token ``i`` sees keys
``i - window < j <= i``). Positions: ``rope`` (default) or ``nope`` (none).

Paths: ``reference`` materialises the attention matrix in fp32; ``forward`` uses
``F.scaled_dot_product_attention`` (which dispatches to flash/memory-efficient kernels where
the device has them); ``step`` keeps a KV cache (only the last ``window`` entries when windowed).
State size: ``2 D t`` floats at position ``t`` (the KV cache), ``2 D window`` with a window.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .positional import rope
from .registry import SequenceMixer, register

POSITIONS = ("rope", "nope")


@register("attention")
class Attention(SequenceMixer):
    def __init__(self, d_model: int, *, layer_idx: int | None = None, num_heads: int = 4,
                 pos: str = "rope", window: int | None = None, rope_base: float = 10000.0,
                 bias: bool = False) -> None:
        super().__init__()
        if num_heads <= 0 or d_model % num_heads:
            raise ValueError(f"attention: d_model={d_model} is not divisible by num_heads={num_heads}")
        if (d_model // num_heads) % 2 and pos == "rope":
            raise ValueError(f"attention: pos='rope' needs an even head dim, got d_model/num_heads="
                             f"{d_model // num_heads}")
        if pos not in POSITIONS:
            raise ValueError(f"attention: pos={pos!r} is not one of {POSITIONS}")
        if window is not None and window < 1:
            raise ValueError(f"attention: window must be a positive int or None, got {window}")
        self.d_model, self.num_heads, self.head_dim = d_model, num_heads, d_model // num_heads
        self.pos, self.window, self.rope_base, self.layer_idx = pos, window, rope_base, layer_idx
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=bias)
        self.out = nn.Linear(d_model, d_model, bias=bias)

    def _qkv(self, x: torch.Tensor, offset: int = 0) -> tuple[torch.Tensor, ...]:
        B, T, _ = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.num_heads, self.head_dim).unbind(2)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # [B, H, T, dk]
        if self.pos == "rope":
            positions = torch.arange(offset, offset + T, device=x.device)
            q, k = rope(q, positions, self.rope_base), rope(k, positions, self.rope_base)
        return q, k, v

    def _merge(self, o: torch.Tensor) -> torch.Tensor:
        B, H, T, dv = o.shape
        return self.out(o.transpose(1, 2).reshape(B, T, H * dv))  # [B, T, D]

    def _mask(self, T: int, device: torch.device) -> torch.Tensor:
        i = torch.arange(T, device=device)
        diff = i[:, None] - i[None, :]  # [T, T] query minus key
        allowed = diff >= 0
        if self.window is not None:
            allowed &= diff < self.window
        return allowed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self._qkv(x)
        if self.window is None:
            o = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            o = F.scaled_dot_product_attention(q, k, v, attn_mask=self._mask(x.shape[1], x.device))
        return self._merge(o)

    def operator(self, x: torch.Tensor) -> torch.Tensor:
        """Attention probabilities ``[B, H, T, T]`` (rows: queries), in fp32."""
        q, k, _ = self._qkv(x)
        scores = (q.float() @ k.float().transpose(-1, -2)) / math.sqrt(self.head_dim)
        scores = scores.masked_fill(~self._mask(x.shape[1], x.device), float("-inf"))
        return scores.softmax(-1)

    def apply_operator(self, x: torch.Tensor, op: torch.Tensor) -> torch.Tensor:
        _, _, v = self._qkv(x)
        return self._merge((op @ v.float()).to(x.dtype))

    def reference(self, x: torch.Tensor) -> torch.Tensor:
        return self.apply_operator(x, self.operator(x))

    def init_state(self, batch: int, device: torch.device | None = None,
                   dtype: torch.dtype | None = None) -> dict[str, Any]:
        empty = torch.zeros(batch, self.num_heads, 0, self.head_dim, device=device, dtype=dtype)
        return {"k": empty, "v": empty.clone(), "pos": 0}

    def step(self, x_t: torch.Tensor, state: dict[str, Any]) -> tuple[torch.Tensor, dict[str, Any]]:
        q, k, v = self._qkv(x_t[:, None, :], offset=state["pos"])  # [B, H, 1, dk]
        k = torch.cat([state["k"], k], dim=2)
        v = torch.cat([state["v"], v], dim=2)
        if self.window is not None:
            k, v = k[:, :, -self.window:], v[:, :, -self.window:]
        o = F.scaled_dot_product_attention(q, k, v)  # every cached key is visible
        return self._merge(o)[:, 0], {"k": k, "v": v, "pos": state["pos"] + 1}

    def state_size(self, seq_len: int) -> int:
        length = seq_len if self.window is None else min(seq_len, self.window)
        return 2 * self.d_model * length
