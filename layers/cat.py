"""Convolution-Augmented Transformer attention (Li, Zhang, Huang & Oymak 2024, "On the Power of
Convolution Augmented Transformer", arXiv 2407.05591).

Short causal convolutions on the token stream before the Q, K, V projections, then causal
softmax attention:

    (F * X)_t = sum_{i<W} F_i X_{t-i}             (zero for t - i < 0), one filter per stream
    Q = norm((F_q * X) W_q),  K = norm((F_k * X) W_k),  V = (F_v * X) W_v
    y = W_o concat_h softmax(Q_h K_h^T / sqrt(dk) + b_h) V_h

Options: ``kernel_size`` W (default 3); taps shared across channels (a scalar per tap and
stream, ``F in R^{3 x W}``, default) or ``depthwise=True`` (``F in R^{3 x W x D}``); ``norm``
is an RMS norm per head on q and k with a learned gain (``qk_norm=True``). The taps start at
the identity (``F_0 = 1``, others 0), so at initialisation the layer *is*
``attention(pos=..., qk_norm=True)`` with the same weights.

Positions: ``pos="nope"`` by default. The paper's results (one CAT layer solves N-gram
associative recall and selective copying, and length-generalises) are for attention without
positional encoding, the filter supplying locality (the shift); the attention family's other
schemes remain options.

Paths: ``forward`` filters with W shifted adds and attends with SDPA; ``reference`` applies
each filter as its Toeplitz matrix and materialises the attention in fp32; ``step`` keeps the
last ``W - 1`` inputs for the filters plus the KV cache (``2 D t + (W - 1) D`` floats).

Operator: shared taps commute with ``W_v``, so per head ``V = Toep(F_v) (X W_v)`` and
``T = softmax(...) Toep(F_v)`` (``[B, H, T, T]``) reproduces ``forward`` from the unfiltered
``X W_v``. A depthwise filter shifts each *input* channel differently and ``W_v`` then mixes
the channels, so no per-head ``[T, T]`` matrix acts on ``X W_v`` (nor, with ``bias=True``, on
``X W_v + b_v``): ``operator`` raises NotImplementedError for those options.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from .attention import Attention
from .registry import register


@register("cat")
class ConvAugmentedAttention(Attention):
    """Convolution-augmented attention: short causal filters on the token stream before the
    q, k, v projections, then attention (see the module docstring).

    Args:
        d_model, num_heads, window, num_masked_heads, rope_base, bias, use_kernels: as
            ``Attention``.
        pos: positional scheme, as ``Attention``; default ``nope`` (the paper's setting).
        qk_norm: RMS-normalise q and k per head (the paper's ``norm``); default on.
        kernel_size: taps W of each filter (default 3).
        depthwise: one filter per channel (``F in R^{W x D}``) instead of a scalar per tap.
    """

    label = "cat"

    def __init__(self, d_model: int, *, num_heads: int = 1, pos: str = "nope",
                 window: int | None = None,
                 num_masked_heads: int | None = None, qk_norm: bool = True,
                 rope_base: float = 10000.0, bias: bool = False, use_kernels: bool = True,
                 kernel_size: int = 3, depthwise: bool = False) -> None:
        super().__init__(d_model, num_heads=num_heads, pos=pos,
                         window=window, num_masked_heads=num_masked_heads, qk_norm=qk_norm,
                         rope_base=rope_base, bias=bias, use_kernels=use_kernels)
        if isinstance(kernel_size, bool) or not isinstance(kernel_size, int) or kernel_size < 1:
            raise ValueError(f"cat: kernel_size must be a positive int, got {kernel_size!r}")
        if not isinstance(depthwise, bool):
            raise ValueError(f"cat: depthwise must be True or False, got {depthwise!r}")
        self.kernel_size, self.depthwise = kernel_size, depthwise
        taps = torch.zeros(3, kernel_size, d_model if depthwise else 1)  # [stream, tap, channel]
        taps[:, 0] = 1.0  # identity filters: the layer starts as attention
        self.taps = nn.Parameter(taps)
        self.taps._no_weight_decay = True  # decay would pull F_0 away from the identity

    def _filter(self, x: torch.Tensor) -> torch.Tensor:
        """``(F_s * X)`` for the q, k, v streams: ``x [B, T, D] -> [B, T, 3, D]``."""
        T, W = x.shape[1], self.kernel_size
        padded = F.pad(x, (0, 0, W - 1, 0))[:, :, None, :]  # [B, W-1+T, 1, D], zeros before t=0
        return sum(self.taps[:, i] * padded[:, W - 1 - i: W - 1 - i + T] for i in range(W))

    def _toeplitz(self, T: int) -> torch.Tensor:
        """Each stream's filter as a causal Toeplitz matrix ``[3, T, T, C]``: ``M[s, t, u] =
        F_s[t - u]`` for ``0 <= t - u < W`` (C = 1 shared, D depthwise)."""
        t = torch.arange(T, device=self.taps.device)
        lag = t[:, None] - t[None, :]  # [T, T]
        valid = (lag >= 0) & (lag < self.kernel_size)
        return self.taps[:, lag.clamp(0, self.kernel_size - 1)] * valid[None, :, :, None]

    def _filter_reference(self, x: torch.Tensor) -> torch.Tensor:
        M = self._toeplitz(x.shape[1]).expand(-1, -1, -1, x.shape[2])  # [3, T, T, D]
        return torch.einsum("stud,bud->btsd", M.float(), x.float()).to(x.dtype)  # [B, T, 3, D]

    def _project_streams(self, streams: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Filtered streams ``[B, T, 3, D]`` -> q, k, v ``[B, H, T, dk]``, each stream through its
        own slice of the fused projection."""
        weight = rearrange(self.qkv.weight, "(s o) i -> s o i", s=3)
        qkv = torch.einsum("btsi,soi->btso", streams, weight)  # [B, T, 3, D]
        if self.qkv.bias is not None:
            qkv = qkv + rearrange(self.qkv.bias, "(s o) -> s o", s=3)
        return self._split(rearrange(qkv, "b t s o -> b t (s o)"))

    def _project(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self._project_streams(self._filter(x))

    def reference(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self._project_streams(self._filter_reference(x))
        return self._attend_reference(*self._rotate(q, k, 0), v)

    def _check_operator(self) -> None:
        if self.depthwise or self.qkv.bias is not None:
            raise NotImplementedError(
                "cat: operator needs taps shared across channels and no bias (depthwise=False, "
                "bias=False); otherwise no per-head [T, T] matrix acts on X W_v")

    def _values(self, x: torch.Tensor) -> torch.Tensor:
        """The unfiltered ``X W_v [B, H, T, dk]``; the operator carries the filter."""
        self._check_operator()
        v = F.linear(x, self.qkv.weight[2 * self.d_model:])  # [B, T, D]
        return rearrange(v, "b t (h d) -> b h t d", h=self.num_heads)

    def _mix_sources(self, probs: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        self._check_operator()
        return probs @ self._toeplitz(x.shape[1])[2, :, :, 0].float()  # A Toep(F_v)

    def init_state(self, batch: int, device: torch.device | None = None,
                   dtype: torch.dtype | None = None) -> dict[str, Any]:
        state = super().init_state(batch, device, dtype)
        state["x"] = torch.zeros(batch, self.kernel_size - 1, self.d_model, device=device,
                                 dtype=dtype)  # the filters' history, zero before t=0
        return state

    def step(self, x_t: torch.Tensor, state: dict[str, Any]) -> tuple[torch.Tensor, dict[str, Any]]:
        xs = torch.cat([state["x"], x_t[:, None, :]], dim=1)  # [B, W, D]: the filters' reach
        q, k, v = self._project_streams(self._filter(xs)[:, -1:])  # [B, H, 1, dk]
        y_t, state = self._cached_step(*self._rotate(q, k, state["pos"]), v, state)
        state["x"] = xs[:, 1:]
        return y_t, state

    def state_size(self, seq_len: int) -> int:
        return super().state_size(seq_len) + (self.kernel_size - 1) * self.d_model
