"""Selective Self-Attention (Zhang et al. 2024, "Selective Attention: Enhancing Transformer
through Principled Context Control", arXiv 2411.12892).

Softmax attention whose inverse temperature depends on the query's position and token, with a
temperature of the same form on the values (``i``, ``j``: absolute 0-based positions):

    c          = exp(-exp(beta))             beta: one scalar per layer, shared by heads, init 2.0
    tau_pos(i) = 1 + c log(i + 1)
    tau_tok(x) = tanh(x . w_h)               one scalar per head, w zero-initialised
    tau_q(i)   = tau_pos(i) + tau_tok(x_i)
    tau_v(j)   = tau_pos'(j) + tau_tok'(x_j)        its own beta', w' (same start)
    y_i = W_o concat_h sum_j softmax_j(tau_q(i) q_i . k_j / sqrt(dk) + b_ij) tau_v(j) v_j

Positions are absolute, also in ``step`` (the official code uses the query-chunk length, which
is wrong under a KV cache). Scaling ``q_i`` by ``tau_q(i)`` scales row ``i`` of the content
logits, and scaling ``v_j`` scales column ``j`` of the mixing, so ``forward`` stays on SDPA;
a positional bias ``b`` (``alibi``, ``hard_alibi``) is not scaled.

Options: ``token_temp`` (the token terms, off by default: the position term alone, as the
official code), ``value_temp`` (the value temperature, off by default; it takes a token term
only when ``token_temp``); on MQAR the two held accuracy at 0.23-0.26 where position alone
reached 0.996 (``configs/layer/ssa.yaml``). ``temp_weights``: ``"shared"`` (default) computes
the token term from the head's own projection,
``tanh(q_{i,h} . u_h) = tanh(x_i . W_{q,h}^T u_h)``, i.e. the form above with ``w_h`` tied to
``W_q`` (the paper's weight sharing): ``u in R^{H x dk}`` is ``D`` floats per temperature,
``2 D + 2`` in all, ``1 / (2 D)`` of the ``4 D^2`` projection weights (under 0.5% from
``D = 100``); ``"full"`` learns ``w in R^{D x H}`` directly (``H / (4 D)`` per temperature).

Initialisation: ``w = 0`` and ``c = exp(-e^2) ~ 6.2e-4``, so the layer starts as attention up
to ``tau_pos - 1 = c log(i + 1)`` (4e-3 at ``i = 1000``); with ``beta -> inf`` it is exact.
The paper trains the temperature parameters with their own learning rate and no weight decay:
``beta`` carries ``_optim = {"lr": temp_lr, "weight_decay": 0.0}`` (default 1e-2); the token
weights ``w`` skip weight decay and train at the model's learning rate.

ESS operator: ``T_ij = softmax_j(tau_q(i) q_i . k_j / sqrt(dk) + b_ij) tau_v(j)``, acting on the
unscaled values. State: the KV cache, as attention (``2 D t`` floats).
"""

from __future__ import annotations

import torch
from einops import rearrange
from torch import nn

from .attention import Attention
from .registry import register

TEMP_WEIGHTS = ("shared", "full")
BETA_INIT = 2.0  # c = exp(-exp(2)) ~ 6.2e-4: a near-identity start, as in the official code


@register("ssa")
class SelectiveAttention(Attention):
    """Selective self-attention: attention whose queries (and optionally values) carry a
    learned inverse temperature by absolute position and token (see the module docstring).

    Args:
        d_model, num_heads, pos, window, num_masked_heads, qk_norm, rope_base, bias,
            use_kernels: as ``Attention``.
        token_temp: add the token term ``tanh(x . w_h)`` to the temperatures (default off: the
            position term alone, as the official code).
        value_temp: scale each source value by its own temperature (default off).
        temp_weights: the token term's weights: ``shared`` (tied to ``W_q``) or ``full``.
        temp_lr: learning rate of the ``beta`` parameters' own optimiser group (no decay).
    """

    label = "ssa"

    def __init__(self, d_model: int, *, num_heads: int = 1, pos: str = "rope",
                 window: int | None = None,
                 num_masked_heads: int | None = None, qk_norm: bool = False,
                 rope_base: float = 10000.0, bias: bool = False, use_kernels: bool = True,
                 token_temp: bool = False, value_temp: bool = False,
                 temp_weights: str = "shared", temp_lr: float = 1e-2) -> None:
        super().__init__(d_model, num_heads=num_heads, pos=pos,
                         window=window, num_masked_heads=num_masked_heads, qk_norm=qk_norm,
                         rope_base=rope_base, bias=bias, use_kernels=use_kernels)
        for knob, value in (("token_temp", token_temp), ("value_temp", value_temp)):
            if not isinstance(value, bool):
                raise ValueError(f"ssa: {knob} must be True or False, got {value!r}")
        if temp_weights not in TEMP_WEIGHTS:
            raise ValueError(f"ssa: temp_weights={temp_weights!r} is not one of {TEMP_WEIGHTS}")
        if not temp_lr > 0:
            raise ValueError(f"ssa: temp_lr must be a positive learning rate, got {temp_lr!r}")
        self.token_temp, self.value_temp, self.temp_weights = token_temp, value_temp, temp_weights
        self.beta_q, self.w_q = self._new_temperature(temp_lr)
        self.beta_v, self.w_v = self._new_temperature(temp_lr) if value_temp else (None, None)

    def _new_temperature(self, lr: float) -> tuple[nn.Parameter, nn.Parameter | None]:
        """``beta`` (own optimiser group) and, with ``token_temp``, a zero ``w``."""
        beta = nn.Parameter(torch.tensor(BETA_INIT))
        w = None
        if self.token_temp:
            shape = (self.num_heads, self.head_dim) if self.temp_weights == "shared" else (
                self.d_model, self.num_heads)
            w = nn.Parameter(torch.zeros(shape))
        # The spec gives the higher learning rate to the scalar beta; the token weights train
        # at the model's rate.
        beta._optim = {"lr": lr, "weight_decay": 0.0}
        for p in (beta, w):
            if p is not None:
                p._no_weight_decay = True
        return beta, w

    def _temperature(self, x: torch.Tensor, u: torch.Tensor, beta: nn.Parameter,
                     w: nn.Parameter | None, offset: int) -> torch.Tensor:
        """``tau_pos(i) + tau_tok(x_i)`` for ``x [B, T, D]`` starting at absolute position
        ``offset``; ``u [B, H, T, dk]`` is the head's own projection (q or v) that the shared
        token weights read. Shape ``[B, H, T, 1]``, or ``[T, 1]`` without a token term."""
        i = torch.arange(offset, offset + x.shape[1], device=x.device, dtype=torch.float32)
        tau = (1 + torch.exp(-torch.exp(beta)) * torch.log1p(i))[:, None]  # [T, 1]
        if w is not None:
            if self.temp_weights == "shared":
                logit = (u.float() * w[None, :, None, :]).sum(-1, keepdim=True)  # [B, H, T, 1]
            else:
                logit = rearrange(x.float() @ w, "b t h -> b h t 1")
            tau = tau + torch.tanh(logit)
        return tau.to(u.dtype)

    def _qkv(self, x: torch.Tensor, offset: int = 0) -> tuple[torch.Tensor, ...]:
        q, k, v = self._project(x)  # [B, H, T, dk]
        tau_q = self._temperature(x, q, self.beta_q, self.w_q, offset)
        if self.value_temp:
            v = v * self._temperature(x, v, self.beta_v, self.w_v, offset)
        q, k = self._rotate(q, k, offset)
        return q * tau_q, k, v

    def _mix_sources(self, probs: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if not self.value_temp:
            return probs
        tau_v = self._temperature(x, self._values(x), self.beta_v, self.w_v, 0)  # [.., T, 1]
        return probs * rearrange(tau_v.float(), "... t 1 -> ... 1 t")  # column j by tau_v(j)
