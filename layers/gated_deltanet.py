"""Gated DeltaNet (Yang, Kautz, Hatamizadeh 2024, "Gated Delta Networks: Improving Mamba2 with
Delta Rule", arXiv 2412.06464): the delta rule with Mamba-2's data-dependent scalar decay per
head, in the form of fla's ``GatedDeltaNet`` layer.

Per head, as DeltaNet (``deltanet.py``: short convolution + silu on q, k, v, L2-normalised
q and k, ``b_t = sigmoid(x_t W_b)``), with a decay ``a_t = exp(g_t)``:

    g_t = -exp(A_log) * softplus(x_t W_a + dt_bias)            <= 0, one per head
    S_t = S_{t-1} a_t (I - b_t k_t k_t^T) + b_t v_t k_t^T      S_t in R^{dv x dk}, S_0 = 0
    o_t = S_t q_t / sqrt(dk)
    y_t = concat_h (RMSNorm_head(o_t) * silu(x_t W_g)) W_o       (the output gate)

The decay forgets everything at once (``a_t -> 0`` clears the state), the delta rule one key
at a time; ``a_t = 1`` is DeltaNet. Initialisation as fla's layer (that of Mamba-2's ``dt`` and
``A``): ``A = exp(A_log) ~ U(0, 16)`` per head, ``softplus(dt_bias)`` log-uniform in
``[0.001, 0.1]``; both skip weight decay. Defaults: fla's layer (``expand_v = 2``, the output
gate and the short convolution on, chunks of 64) with 2 heads of ``d_model / 2`` key dims,
as Zoology's MQAR runs of Gated DeltaNet.

Paths: ``reference`` is the loop over time (``_delta.naive_delta_rule`` with the decay);
``forward`` the chunked form (``_delta.chunked_delta_rule``: decays as cumulative log sums
inside a chunk, every ratio ``exp`` of a log difference <= 0, the rank-1 products in WY form);
on CUDA with ``fla`` installed, fla's ``chunk_gated_delta_rule``. ``operator`` is per head
``T_ts = b_s q_t^T M_t ... M_{s+1} k_s / sqrt(dk)``, ``M_r = a_r (I - b_r k_r k_r^T)``, exact.
State size: ``H dk dv`` floats plus the short convolution's ``(k - 1) D`` inputs.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .deltanet import DeltaNet
from .registry import register

DT_MIN, DT_MAX = 0.001, 0.1


@register("gated_deltanet")
class GatedDeltaNet(DeltaNet):
    """DeltaNet with a scalar decay per head (``_log_decay``) and, by default, the output gate.
    ``A_log`` and ``dt_bias`` are marked to skip weight decay.

    Args:
        d_model, num_heads, expand_k, short_conv, chunk_size, norm_eps, use_kernels: as
            ``DeltaNet``.
        expand_v: value width over D (default 2, fla's layer).
        output_gate: gate the normed output by ``silu(x W_g)`` (default on).
    """

    gated = True

    def __init__(self, d_model: int, *, num_heads: int = 2,
                 expand_k: float = 1.0, expand_v: float = 2.0, short_conv: int = 4,
                 output_gate: bool = True, chunk_size: int = 64, norm_eps: float = 1e-5,
                 use_kernels: bool = True) -> None:
        super().__init__(d_model, num_heads=num_heads, expand_k=expand_k,
                         expand_v=expand_v, short_conv=short_conv, output_gate=output_gate,
                         chunk_size=chunk_size, norm_eps=norm_eps, use_kernels=use_kernels)
        H = num_heads
        self.A_log = nn.Parameter(torch.empty(H).uniform_(0, 16).log())
        self.A_log._no_weight_decay = True
        dt = torch.exp(torch.rand(H) * (math.log(DT_MAX) - math.log(DT_MIN)) + math.log(DT_MIN))
        dt = dt.clamp(min=1e-4)
        self.dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus
        self.dt_bias._no_weight_decay = True

    def _log_decay(self, a: torch.Tensor) -> torch.Tensor:
        return -self.A_log.float().exp() * F.softplus(a.float() + self.dt_bias.float())
