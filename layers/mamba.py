"""Mamba (Gu & Dao 2023, arXiv 2312.00752): the selective state-space block (S6), the zoo's
baseline for the state-space family.

    [u, z] = x W_in                                   u, z: [B, T, D_in], D_in = expand * D
    u = silu(conv_causal(u))                          depthwise, kernel d_conv = 4
    [dt, B_t, C_t] = u W_x;  Delta = softplus(dt W_dt + b_dt)   dt rank ceil(D / 16)
    per channel d:  h_t = exp(Delta_t A) h_{t-1} + Delta_t B_t u_t      (h in R^d_state)
                    y_t = C_t . h_t + D u_t
    out = (y * silu(z)) W_out

Standard initialisation (mamba_simple.py): ``A = -exp(A_log)`` with ``A_log = log(1..d_state)``
per channel (S4D-real), ``D = 1``; the dt bias is the inverse softplus of a log-uniform sample
in ``[dt_min, dt_max]``. ``A_log`` and ``D`` skip weight decay (marked on the parameters).

Paths: ``reference`` is the loop over time (``_recurrence.naive_recurrence`` with one head per
channel, ``dv = 1``), autograd through every step; ``forward`` the same loop in
``_selective_scan.selective_scan``, a custom autograd function that keeps only the state
entering every few steps and recomputes the rest in its hand-written backward (never all T
states of ``D_in * d_state``; Delta's softplus, the skip ``D u`` and the gate ``silu(z)``
inside it, as mamba-ssm's kernel has them), everything time-major ``[T, B, .]`` (the scan's
layout; the convolution as ``_CausalConv``'s shifted taps) so nothing is transposed around
the scan; on the CPU (``use_kernels``) the same scan, and the convolution before it,
compiled from C (``_cscan``: built with the system's C compiler at first use and cached;
pure torch where it cannot build); on CUDA with ``mamba-ssm`` installed, its
``selective_scan_fn`` kernel. ``chunk_size`` is the operator's chunk (the scan sizes its
own). Speed: the scan's cost is a few elementwise ops per step over the whole
``[B, d_state, D_in]`` state (its decay differs per state channel and channel, so no chunk of
it is a matrix product, unlike Mamba-2's scalar decay), which the C scan does in one pass per
step instead of torch's op-by-op; see benchmarks/step.md. ``step`` keeps the last ``d_conv``
conv inputs and the SSM state.
``operator`` is per channel ``[B, D_in, T, T]``, ``T_ij = C_i . (prod_{m=j+1..i}
exp(Delta_m A)) Delta_j B_j`` plus ``D`` on the diagonal (the skip), applied to ``u`` *after*
the short conv; the conv itself is outside the operator.
State size: ``D_in * d_state`` floats, constant in T (the SSM state; the conv's
``D_in * (d_conv - 1)`` input buffer is not counted).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ._dispatch import kernel_module
from ._recurrence import causal_operator, naive_recurrence
from ._selective_scan import selective_scan
from ._shortconv import CausalConv, _CausalConv
from .registry import SequenceMixer, register


@register("mamba")
class Mamba(SequenceMixer):
    """Mamba's selective SSM block (S6): input projection, short causal convolution, the
    selective scan with input-dependent ``Delta``, ``B``, ``C``, and a SiLU-gated output.

    Args:
        d_model: width D of the input and output.
        d_state: state size N per channel.
        d_conv: taps of the causal depthwise convolution.
        expand: inner width ``D_in = expand * D``.
        dt_rank: rank of ``Delta``'s projection; ``auto`` is ``ceil(D / 16)``.
        dt_min, dt_max: range of the log-uniform initial ``Delta``.
        dt_init_floor: lower bound of the initial ``Delta``.
        conv_bias: a bias on the convolution.
        chunk_size: chunk of ``operator``'s chunked form (the scan sizes its own).
        use_kernels: use mamba-ssm's kernel on CUDA when it is installed, and on the CPU the
            scan and the convolution compiled from C (``_cscan``) when it builds; False: pure
            torch.
    """

    def __init__(self, d_model: int, *, d_state: int = 16,
                 d_conv: int = 4, expand: int = 2, dt_rank: int | str = "auto",
                 dt_min: float = 0.001, dt_max: float = 0.1, dt_init_floor: float = 1e-4,
                 conv_bias: bool = True, chunk_size: int = 64, use_kernels: bool = True) -> None:
        super().__init__()
        if dt_rank == "auto":
            dt_rank = math.ceil(d_model / 16)
        if not isinstance(dt_rank, int) or dt_rank < 1:
            raise ValueError(f"mamba: dt_rank must be 'auto' or a positive int, got {dt_rank!r}")
        if min(d_state, d_conv, expand, chunk_size) < 1:
            raise ValueError("mamba: d_state, d_conv, expand and chunk_size must be positive")
        if not 0 < dt_min <= dt_max:
            raise ValueError(f"mamba: need 0 < dt_min <= dt_max, got {dt_min}, {dt_max}")
        self.d_model, self.d_state, self.d_conv = d_model, d_state, d_conv
        self.d_inner, self.dt_rank = expand * d_model, dt_rank
        self.chunk_size, self.use_kernels = chunk_size, use_kernels
        Di = self.d_inner
        self.in_proj = nn.Linear(d_model, 2 * Di, bias=False)
        self.conv = nn.Conv1d(Di, Di, d_conv, groups=Di, padding=d_conv - 1, bias=conv_bias)
        self.x_proj = nn.Linear(Di, dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(dt_rank, Di, bias=True)
        self.out_proj = nn.Linear(Di, d_model, bias=False)

        # dt: W_dt ~ U(+-dt_rank^-1/2), softplus(b_dt) ~ log-uniform in [dt_min, dt_max].
        std = dt_rank ** -0.5
        nn.init.uniform_(self.dt_proj.weight, -std, std)
        dt = torch.exp(torch.rand(Di) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        dt = dt.clamp(min=dt_init_floor)
        with torch.no_grad():
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus
        # S4D-real: A_n = -(n + 1) in every channel.
        A = torch.arange(1, d_state + 1, dtype=torch.float32).repeat(Di, 1)  # [Di, N]
        self.A_log = nn.Parameter(torch.log(A))
        self.A_log._no_weight_decay = True
        self.D = nn.Parameter(torch.ones(Di))
        self.D._no_weight_decay = True

    def _project(self, u: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """From the conv output u ``[B, T, Di]``: the low-rank dt ``[B, T, R]``, B and C
        ``[B, T, N]``."""
        return self.x_proj(u).split([self.dt_rank, self.d_state, self.d_state], -1)

    def _streams(self, x: torch.Tensor, time_major: bool = False) -> tuple[torch.Tensor, ...]:
        """u (after conv and silu) and z ``[B, T, Di]``, dt ``[B, T, R]``, B, C ``[B, T, N]``;
        ``time_major``: all ``[T, B, .]``, the scan's layout, with the convolution as
        ``_CausalConv`` (compiled from C on the CPU with ``use_kernels``: ``_cscan``; the loop
        reference keeps ``nn.Conv1d``)."""
        if time_major:
            u, z = self.in_proj(x.transpose(0, 1)).chunk(2, -1)  # [T, B, Di]
            conv = CausalConv if self.use_kernels else _CausalConv
            u = conv.apply(u, self.conv.weight[:, 0, :], self.conv.bias)
            return (u, z, *self._project(u))
        T = x.shape[1]
        u, z = self.in_proj(x).chunk(2, -1)  # [B, T, Di]
        u = F.silu(self.conv(u.transpose(1, 2))[..., :T]).transpose(1, 2)  # [B, T, Di] causal
        return (u, z, *self._project(u))

    def _discretise(self, dt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Delta ``[B, T, Di]`` from the low-rank dt, and A ``[Di, N]``, in fp32."""
        return F.softplus(self.dt_proj(dt).float()), -torch.exp(self.A_log.float())

    def _ssm(self, u: torch.Tensor, dt: torch.Tensor, Bm: torch.Tensor,
             Cm: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The scan in ``_recurrence``'s convention, one head per channel, fp32:
        q = C ``[B, Di, T, N]``, k = Delta B ``[B, Di, T, N]``, v = u ``[B, Di, T, 1]``,
        log decay Delta A ``[B, Di, T, N]``."""
        delta, A = self._discretise(dt)
        delta = delta.transpose(1, 2)[..., None]  # [B, Di, T, 1]
        B_, Di, T = u.shape[0], self.d_inner, u.shape[1]
        q = Cm.float()[:, None].expand(B_, Di, T, self.d_state)
        k = delta * Bm.float()[:, None]
        return q, k, u.float().transpose(1, 2)[..., None], delta * A[:, None, :]

    def _out(self, y: torch.Tensor, u: torch.Tensor | None, z: torch.Tensor) -> torch.Tensor:
        """y ``[B, T, Di]`` the scan, plus the skip ``D u`` (u ``[B, T, Di]``; None when y has
        it already), gated -> output ``[B, T, D]``."""
        if u is not None:
            y = y + self.D.float() * u.float()
        y = y * F.silu(z.float())
        return self.out_proj(y.to(self.out_proj.weight.dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ops = kernel_module("mamba_ssm.ops.selective_scan_interface", x, self.use_kernels)
        if ops is not None:
            return self._mamba_ssm(ops, *self._streams(x))
        u, z, dt, Bm, Cm = self._streams(x, time_major=True)
        # _discretise's softplus, the skip D u and the gate silu(z) inside the scan
        # dt_proj as dt @ W^T with W^T contiguous: its weight's gradient is then one product of
        # [R, B T] by [B T, Di], where F.linear's [Di, B T] by [B T, R] ran at a few GFLOP/s
        dt = torch.addmm(self.dt_proj.bias, dt.flatten(0, 1), self.dt_proj.weight.t().contiguous())
        y = selective_scan(u, dt.view(*u.shape).float(), -torch.exp(self.A_log.float()), Bm, Cm,
                           self.D, z=z, delta_softplus=True, time_major=True,
                           compiled=self.use_kernels)
        return self.out_proj(y.to(self.out_proj.weight.dtype)).transpose(0, 1)  # [B, T, D]

    def reference(self, x: torch.Tensor) -> torch.Tensor:
        u, z, dt, Bm, Cm = self._streams(x)
        o, _ = naive_recurrence(*self._ssm(u, dt, Bm, Cm))  # [B, Di, T, 1]
        return self._out(o[..., 0].transpose(1, 2), u, z)

    def operator(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, Di, T, T]`` per channel, fp32, the skip ``D`` on the diagonal."""
        u, _, dt, Bm, Cm = self._streams(x)
        q, k, _, log_a = self._ssm(u, dt, Bm, Cm)
        op = causal_operator(q, k, log_a, chunk_size=self.chunk_size)
        return op + torch.diag_embed(self.D.float()[:, None].expand(-1, op.shape[-1]))

    def apply_operator(self, x: torch.Tensor, op: torch.Tensor) -> torch.Tensor:
        u, z, *_ = self._streams(x)
        y = (op @ u.float().transpose(1, 2)[..., None])[..., 0]  # [B, Di, T]
        return self._out(y.transpose(1, 2), None, z)  # the skip is inside op

    def operator_channels(self) -> int:
        return 1  # one operator per channel

    def init_state(self, batch: int, device: torch.device | None = None,
                   dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
        """``conv``: the last d_conv conv inputs ``[B, Di, d_conv]`` (activation dtype);
        ``ssm``: h ``[B, Di, N, 1]`` in fp32."""
        dtype = dtype or self.in_proj.weight.dtype
        return {"conv": torch.zeros(batch, self.d_inner, self.d_conv, device=device, dtype=dtype),
                "ssm": torch.zeros(batch, self.d_inner, self.d_state, 1, device=device,
                                   dtype=torch.float32)}

    def step(self, x_t: torch.Tensor, state: dict[str, torch.Tensor]
             ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        u, z = self.in_proj(x_t).chunk(2, -1)  # [B, Di]
        conv = torch.cat([state["conv"][..., 1:], u[..., None].to(state["conv"].dtype)], -1)
        u = (conv * self.conv.weight[:, 0, :]).sum(-1)  # [B, Di] the newest conv output
        if self.conv.bias is not None:
            u = u + self.conv.bias
        u, z = F.silu(u)[:, None], z[:, None]  # [B, 1, Di]
        o, ssm = naive_recurrence(*self._ssm(u, *self._project(u)), initial_state=state["ssm"])
        return self._out(o[..., 0].transpose(1, 2), u, z)[:, 0], {"conv": conv, "ssm": ssm}

    def state_size(self, seq_len: int) -> int:
        return self.d_inner * self.d_state

    def _mamba_ssm(self, ops: Any, u: torch.Tensor, z: torch.Tensor, dt: torch.Tensor,
                   Bm: torch.Tensor, Cm: torch.Tensor) -> torch.Tensor:
        """mamba-ssm's CUDA ``selective_scan_fn`` (gating and skip fused in)."""
        y = ops.selective_scan_fn(
            u.transpose(1, 2).contiguous(),  # [B, Di, T]
            F.linear(dt, self.dt_proj.weight).transpose(1, 2).contiguous(),  # [B, Di, T] pre-bias
            -torch.exp(self.A_log.float()),  # [Di, N]
            Bm.transpose(1, 2).contiguous(), Cm.transpose(1, 2).contiguous(),  # [B, N, T]
            self.D.float(), z=z.transpose(1, 2).contiguous(),
            delta_bias=self.dt_proj.bias.float(), delta_softplus=True)
        return self.out_proj(y.transpose(1, 2).to(self.out_proj.weight.dtype))  # [B, T, D]
