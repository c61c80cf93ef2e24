"""Channel mixers: the SwiGLU MLP (Shazeer 2020, arXiv 2002.05202) and ``none``.

    mlp(x) = W_3 (silu(x W_1) * (x W_2)),  hidden = 8/3 D rounded up to a multiple of 8

``none`` contributes nothing: the recall literature often trains sequence-mixer-only models.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .registry import ChannelMixer, register


def swiglu_hidden(d_model: int, multiple_of: int = 8) -> int:
    """``8/3 d_model`` rounded up to a multiple of ``multiple_of``."""
    return multiple_of * -(-(8 * d_model) // (3 * multiple_of))


@register("mlp", kind="channel")
class SwiGLU(ChannelMixer):
    """The SwiGLU MLP, ``W_3 (silu(x W_1) * (x W_2))``.

    Args:
        d_model: width D of the input and output.
        hidden: hidden width; None: ``8/3 D`` rounded up to a multiple of 8.
        bias: biases on the projections.
    """

    def __init__(self, d_model: int, *, hidden: int | None = None, bias: bool = False) -> None:
        super().__init__()
        self.hidden = hidden or swiglu_hidden(d_model)
        self.w12 = nn.Linear(d_model, 2 * self.hidden, bias=bias)
        self.w3 = nn.Linear(self.hidden, d_model, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.w12(x).chunk(2, dim=-1)  # [B, T, hidden] each
        return self.w3(F.silu(gate) * up)


@register("none", kind="channel")
class NoChannelMixer(ChannelMixer):
    """No channel mixer: adds nothing to the residual stream (sequence-mixer-only models).

    Args:
        d_model: width D (unused; every mixer takes it).
    """

    def __init__(self, d_model: int) -> None:
        super().__init__()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(x)
