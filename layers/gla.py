"""Gated linear attention (GLA; Yang, Wang, Shen, Panda, Kim 2023, arXiv 2312.06635), with
the scalar/vector gate choice of the in-context-learning view (arXiv 2504.04308).

Per head, with row vectors ``q_t, k_t in R^dk``, ``v_t in R^dv`` and ``S_0 = 0``:

    S_t = Diag(alpha_t) S_{t-1} + k_t^T v_t,        o_t = (q_t / sqrt(dk)) S_t
    log alpha_t = logsigmoid(x_t W_a1 W_a2 + b) / 16     (low rank 16; W_a1 no bias)
    y_t = (RMSNorm_head(o_t) * swish(x_t W_r)) W_o

``gate="vector"`` (default) gives one decay per key channel; ``gate="scalar"`` one per head.
Defaults follow the reference library: 4 heads, ``expand_k=0.5`` (dk_total = D/2),
``expand_v=1.0``, no biases on q/k/v/r/o. ``short_conv=k > 0`` (default 0, off) puts fla's
short convolution on q, k, v after their projections: ``silu(conv_causal(.))``, depthwise,
k taps (``_shortconv.py``).

Paths: ``reference`` is the loop over time (``_recurrence.naive_recurrence``); ``forward``
the chunked form in log space (``_recurrence.chunked_linear_attention``, linear in T, stable
under strong decay); on CUDA with ``fla`` installed, fla's ``chunk_gla`` kernel. ``step`` is
the recurrence on one token. ``operator`` is per head
``T_ij = (q_i / sqrt(dk)) . (prod_{m=j+1..i} alpha_m * k_j)``, applied to ``v`` before the
norm, gate and output projection.
State size: ``H dk dv`` floats (plus ``(k - 1) D`` inputs with the short convolution),
constant in T.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from ._dispatch import call_time_major, kernel_module
from ._recurrence import causal_operator, chunked_linear_attention, naive_recurrence
from ._shortconv import ShortConv
from .registry import SequenceMixer, register, split_heads

GATES = ("vector", "scalar")


@register("gla")
class GatedLinearAttention(SequenceMixer):
    """Gated linear attention: ``S_t = Diag(alpha_t) S_{t-1} + k_t^T v_t`` per head, a
    data-dependent decay ``alpha_t``, output normed and gated (see the module docstring).

    Args:
        d_model: width D of the input and output.
        num_heads: heads H; must divide both the key and the value width.
        expand_k: key width over D (all heads together).
        expand_v: value width over D.
        gate: ``vector`` (a decay per key channel) or ``scalar`` (one per head).
        gate_low_rank_dim: rank of the gate's projection.
        gate_logit_normalizer: divides ``logsigmoid(.)``, so decays start near 1.
        chunk_size: tokens per chunk of the chunked form.
        norm_eps: epsilon of the per-head RMSNorm.
        short_conv: taps of the short causal convolution on q, k, v (0: none).
        use_kernels: use fla's kernel on CUDA when it is installed, and on the CPU the short
            convolution compiled from C (``_cscan``; pure torch where it does not build).
    """

    def __init__(self, d_model: int, *, num_heads: int = 4,
                 expand_k: float = 0.5, expand_v: float = 1.0, gate: str = "vector",
                 gate_low_rank_dim: int = 16, gate_logit_normalizer: float = 16.0,
                 chunk_size: int = 32, norm_eps: float = 1e-5, short_conv: int = 0,
                 use_kernels: bool = True) -> None:
        super().__init__()
        key_dim, value_dim = int(d_model * expand_k), int(d_model * expand_v)
        split_heads("gla", num_heads, **{"key dim (d_model * expand_k)": key_dim,
                                          "value dim (d_model * expand_v)": value_dim})
        if gate not in GATES:
            raise ValueError(f"gla: gate={gate!r} is not one of {GATES}")
        if chunk_size < 1:
            raise ValueError(f"gla: chunk_size must be a positive int, got {chunk_size}")
        self.d_model, self.num_heads = d_model, num_heads
        self.key_dim, self.value_dim = key_dim, value_dim
        self.dk, self.dv = key_dim // num_heads, value_dim // num_heads
        self.gate, self.gate_logit_normalizer = gate, gate_logit_normalizer
        self.chunk_size, self.use_kernels = chunk_size, use_kernels
        self.proj = nn.Linear(d_model, 2 * key_dim + 2 * value_dim, bias=False)  # q, k, v, r
        self.gate_proj = nn.Sequential(
            nn.Linear(d_model, gate_low_rank_dim, bias=False),
            nn.Linear(gate_low_rank_dim, key_dim if gate == "vector" else num_heads, bias=True))
        self.norm = nn.RMSNorm(self.dv, eps=norm_eps)
        self.out = nn.Linear(value_dim, d_model, bias=False)
        self.short_conv = ShortConv(2 * key_dim + value_dim, short_conv, "gla",  # q, k, v
                                    use_kernels)

    def _streams(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """q (scaled), k ``[B, H, T, dk]``, v ``[B, H, T, dv]``, log alpha ``[B, H, T, dk|1]``
        (fp32), r ``[B, T, value_dim]``."""
        K, V = self.key_dim, self.value_dim
        qkv, r = self.proj(x).split([2 * K + V, V], -1)
        q, k, v = (rearrange(t, "b t (h d) -> b h t d", h=self.num_heads)
                   for t in self.short_conv(qkv).split([K, K, V], -1))
        g = F.logsigmoid(self.gate_proj(x).float()) / self.gate_logit_normalizer
        g = rearrange(g, "b t (h d) -> b h t d", h=self.num_heads)  # [B, H, T, dk|1]
        return q / math.sqrt(self.dk), k, v, g, r

    def _out(self, o: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        o = self.norm(rearrange(o, "b h t d -> b t h d").to(self.norm.weight.dtype))  # per head
        o = rearrange(o, "b t h d -> b t (h d)") * F.silu(r.to(o.dtype))  # [B, T, value_dim]
        return self.out(o.to(self.out.weight.dtype))  # [B, T, D]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v, g, r = self._streams(x)
        fla = kernel_module("fla.ops.gla", x, self.use_kernels)
        if fla is not None:
            o = _fla_chunk_gla(fla, q, k, v, g)
        else:
            o, _ = chunked_linear_attention(q, k, v, g, chunk_size=self.chunk_size)
        return self._out(o, r)

    def reference(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v, g, r = self._streams(x)
        o, _ = naive_recurrence(q, k, v, g)
        return self._out(o, r)

    def operator(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, H, T, T]`` in fp32: row i mixes v_0..v_i into o_i."""
        q, k, _, g, _ = self._streams(x)
        return causal_operator(q, k, g, chunk_size=self.chunk_size)

    def apply_operator(self, x: torch.Tensor, op: torch.Tensor) -> torch.Tensor:
        _, _, v, _, r = self._streams(x)
        return self._out(op @ v.float(), r)

    def init_state(self, batch: int, device: torch.device | None = None,
                   dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
        """``S [B, H, dk, dv]``, kept in fp32 whatever ``dtype`` the activations use; ``x``
        the short convolution's last inputs ``[B, k - 1, D]`` (empty without it)."""
        return {"S": torch.zeros(batch, self.num_heads, self.dk, self.dv, device=device,
                                 dtype=torch.float32),
                "x": self.short_conv.init_window(batch, self.d_model, device, dtype)}

    def step(self, x_t: torch.Tensor, state: dict[str, torch.Tensor]
             ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        window, past = self.short_conv.window(state["x"], x_t)
        q, k, v, g, r = (t[..., -1:, :] for t in self._streams(window))  # the newest token
        o, S = naive_recurrence(q, k, v, g, initial_state=state["S"])
        return self._out(o, r)[:, 0], {"S": S, "x": past}

    def state_size(self, seq_len: int) -> int:
        return self.num_heads * self.dk * self.dv + self.short_conv.state_size(self.d_model)

    def operator_channels(self) -> int:
        return self.dv


def _fla_chunk_gla(fla: Any, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                   g: torch.Tensor) -> torch.Tensor:
    """fla's Triton ``chunk_gla`` (layout ``[B, T, H, d]``); q is already scaled."""
    q, k, v = (rearrange(t, "b h t d -> b t h d") for t in (q, k, v))
    g = rearrange(g.expand(*g.shape[:-1], q.shape[-1]), "b h t d -> b t h d").to(q.dtype)
    o, _ = call_time_major(fla.chunk_gla, q, k, v, g, scale=1.0)
    return rearrange(o, "b t h d -> b h t d")
