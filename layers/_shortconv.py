"""The short causal convolution of linear-recurrence featurizers (H3, arXiv 2212.14052;
Zoology's BaseConv, arXiv 2312.04927; the ``use_short_conv`` of fla's layers):

    z = silu(conv_causal(z)),    a depthwise convolution of ``kernel_size`` taps over time

applied to the projected q, k, v streams. It lets a key be built from the previous token and
a value from the current one, the shift that associative recall needs and that a single
linear recurrence does not learn readily (measured on MQAR in ``configs/experiment``'s
ESS study). ``kernel_size=0`` is the identity (no parameters).

In a recurrent ``step`` the mixer keeps its last ``kernel_size - 1`` inputs and re-runs its
projections and this convolution on that window (see ``window``): without biases on the
projections, the zero inputs before the start project to the zero padding of the convolution.

``_CausalConv`` (also ``mamba``'s and ``mamba2``'s convolution) computes it as shifted
multiply-adds over the time axis with a hand-written backward, channels the contiguous axis;
``CausalConv`` (``ShortConv``'s with ``compiled``, the owner's ``use_kernels``; mamba's and
mamba2's with theirs) runs the same computation compiled from C (``_cscan._CompiledConv``) on
fp32 CPU tensors where it builds, ``_CausalConv`` otherwise.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ._cscan import _CompiledConv, usable


class ShortConv(nn.Module):
    def __init__(self, channels: int, kernel_size: int, owner: str,
                 compiled: bool = True) -> None:
        super().__init__()
        self.compiled = compiled
        if isinstance(kernel_size, bool) or not isinstance(kernel_size, int) or kernel_size < 0:
            raise ValueError(f"{owner}: short_conv must be an int >= 0 (0: none), got "
                             f"short_conv={kernel_size!r}")
        self.kernel_size = kernel_size
        self.conv = (nn.Conv1d(channels, channels, kernel_size, groups=channels,
                               padding=kernel_size - 1, bias=False) if kernel_size else None)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """``[B, T, C] -> [B, T, C]``, causal, by ``_CausalConv``'s shifted taps over the time
        axis: channels stay the contiguous axis (``nn.Conv1d`` would need ``[B, C, T]``, and
        its depthwise backward took 9 of deltanet's 56 ms at the recall frontier's shape)."""
        if self.conv is None:
            return z
        conv = CausalConv if self.compiled else _CausalConv
        return conv.apply(z.transpose(0, 1), self.conv.weight[:, 0, :], None).transpose(0, 1)

    def state_size(self, d_model: int) -> int:
        """Floats the step keeps: the last ``kernel_size - 1`` inputs of width ``d_model``."""
        return max(self.kernel_size - 1, 0) * d_model

    def init_window(self, batch: int, d_model: int, device: torch.device | None = None,
                    dtype: torch.dtype | None = None) -> torch.Tensor:
        """The ``kernel_size - 1`` most recent mixer inputs ``[B, k - 1, D]`` (zeros; empty
        without a convolution)."""
        return torch.zeros(batch, max(self.kernel_size - 1, 0), d_model, device=device,
                           dtype=dtype)

    def window(self, past: torch.Tensor, x_t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(window [B, k, D], new past [B, k - 1, D])`` for one step on ``x_t [B, D]``: the
        mixer runs its streams on the window and keeps the last position."""
        x = torch.cat([past, x_t[:, None, :].to(past.dtype)], 1)
        return x, x[:, 1:]


class CausalConv:
    """``_CausalConv`` with the compiled path: ``CausalConv.apply(u, w, b)`` is
    ``silu(conv_causal(u))`` over time-major ``u [T, B, C]`` (channels contiguous, any strides
    otherwise: a view of the input projection's output is read in place, and a transposed
    ``[B, T, C]`` gives a transposed ``[B, T, C]`` back), taps ``w [C, k]``, bias ``b [C]`` or
    None; compiled from C (``_cscan._CompiledConv``) for fp32 CPU tensors where the library
    builds, else ``_CausalConv`` itself."""

    @staticmethod
    def apply(u: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
        if (u.dtype == w.dtype == torch.float32 and u.stride(-1) == 1
                and (b is None or b.dtype == torch.float32) and usable(u, w)):
            return _CompiledConv.apply(u, w, b)
        return _CausalConv.apply(u, w, b)


class _CausalConv(torch.autograd.Function):
    """``silu(conv_causal(u))`` over time-major ``u [T, B, C]``, depthwise, taps ``w [C, k]``
    (``nn.Conv1d``'s weight without its middle axis), bias ``b [C]`` or None. ``mamba`` runs
    time-major; ``ShortConv`` and ``mamba2`` pass their ``[B, T, C]`` transposed (a view: the
    result keeps the input's memory layout).

    Each tap is one multiply-add of a shifted, contiguous ``[T - s, B, C]`` slice into the
    output, and the backward is the same taps run the other way. nn.Conv1d needs ``[B, C, T]``
    (copies in and out of the scan's layout), and autograd through padded shifts zero-fills and
    copies a full-size gradient per tap.
    """

    @staticmethod
    def forward(ctx: Any, u: torch.Tensor, w: torch.Tensor,
                b: torch.Tensor | None) -> torch.Tensor:
        T, k = u.shape[0], w.shape[1]
        pre = u * w[:, -1] if b is None else torch.addcmul(b, u, w[:, -1])
        for s in range(1, min(k, T)):  # tap k-1-s reads s steps back
            pre[s:].addcmul_(u[:T - s], w[:, k - 1 - s])
        ctx.has_bias = b is not None
        ctx.save_for_backward(u, w, pre)
        return F.silu(pre)

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        u, w, pre = ctx.saved_tensors
        T, k = u.shape[0], w.shape[1]
        g = torch.ops.aten.silu_backward(g, pre)  # dL/dpre
        gu, gw = g * w[:, -1], torch.zeros_like(w)
        gw[:, -1] = (g * u).sum((0, 1))
        for s in range(1, min(k, T)):
            gu[:T - s].addcmul_(g[s:], w[:, k - 1 - s])
            gw[:, k - 1 - s] = (g[s:] * u[:T - s]).sum((0, 1))
        return gu, gw, g.sum((0, 1)) if ctx.has_bias else None
