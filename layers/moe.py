"""Mixture of experts as a channel mixer: token-choice top-k routing over SwiGLU experts
(Shazeer et al. 2017, arXiv 1701.06538; Switch Transformer, Fedus et al. 2021, arXiv 2101.03961).

For each token ``x`` (``E`` experts, ``k`` chosen):

    r = x W_r                                     router logits, [E]
    S = topk(r, k)                                the chosen experts
    w_e = softmax_{e in S}(r_e)                   weights over the chosen logits only
    y = sum_{e in S} w_e FFN_e(x),   FFN_e(x) = W3_e (silu(x W1_e) * (x W2_e))

Auxiliary losses, reported by ``aux_losses()`` after each forward, already weighted:

    balance = balance_coef * E * sum_e f_e P_e    f_e: fraction of routed (token, slot) pairs
                                                  sent to e; P_e: mean router probability of e
    z       = z_coef * mean_tokens(logsumexp(r)^2)          (router z-loss, off by default)

Dispatch sorts the ``N k`` (token, expert) assignments by expert and runs each expert on its
contiguous slice: compute scales with ``k``, never with ``E``. Dropless by default; with
``capacity_factor`` each expert takes at most ``ceil(capacity_factor N k / E)`` assignments
(earlier tokens first) and the rest are dropped (their slot contributes zero).

Fixed active parameters while the expert count grows (the "experts help memorisation more than
reasoning" experiment, arXiv 2410.19034): give ``active_hidden``; each expert then has
``active_hidden / k`` hidden units, so a token always sees ``active_hidden`` of them.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .mlp import swiglu_hidden
from .registry import ChannelMixer, register


@register("moe", kind="channel")
class MixtureOfExperts(ChannelMixer):
    """Token-choice top-k mixture of SwiGLU experts with a Switch-style balance loss.

    Args:
        d_model: width D of the input and output.
        num_experts: experts E.
        top_k: experts k each token is sent to.
        expert_hidden: hidden width of each expert; None: SwiGLU's ``8/3 D``.
        active_hidden: instead of ``expert_hidden``: the hidden units a token sees in all,
            ``active_hidden / top_k`` per expert, fixed as E grows.
        capacity_factor: cap each expert at ``ceil(capacity_factor N k / E)`` assignments,
            dropping the rest; None: dropless.
        balance_coef: weight of the load-balancing loss.
        z_coef: weight of the router z-loss (0: off).
    """

    def __init__(self, d_model: int, *, num_experts: int = 8, top_k: int = 2,
                 expert_hidden: int | None = None, active_hidden: int | None = None,
                 capacity_factor: float | None = None, balance_coef: float = 0.01,
                 z_coef: float = 0.0) -> None:
        super().__init__()
        if num_experts < 1:
            raise ValueError(f"moe: num_experts must be >= 1, got {num_experts}")
        if not 1 <= top_k <= num_experts:
            raise ValueError(f"moe: top_k must be in 1..num_experts={num_experts}, got {top_k}")
        if expert_hidden is not None and active_hidden is not None:
            raise ValueError("moe: give expert_hidden or active_hidden, not both")
        if active_hidden is not None:
            if active_hidden % top_k:
                raise ValueError(f"moe: active_hidden={active_hidden} is not divisible by "
                                 f"top_k={top_k}")
            expert_hidden = active_hidden // top_k
        hidden = expert_hidden or swiglu_hidden(d_model)
        if capacity_factor is not None and capacity_factor <= 0:
            raise ValueError(f"moe: capacity_factor must be positive or None, got {capacity_factor}")
        self.num_experts, self.top_k, self.hidden = num_experts, top_k, hidden
        self.capacity_factor, self.balance_coef, self.z_coef = capacity_factor, balance_coef, z_coef
        self.router = nn.Linear(d_model, num_experts, bias=False)
        self.w12 = nn.Parameter(torch.empty(num_experts, d_model, 2 * hidden))  # [E, D, 2h]
        self.w3 = nn.Parameter(torch.empty(num_experts, hidden, d_model))  # [E, h, D]
        # nn.Linear's default init, per expert.
        nn.init.uniform_(self.w12, -1 / math.sqrt(d_model), 1 / math.sqrt(d_model))
        nn.init.uniform_(self.w3, -1 / math.sqrt(hidden), 1 / math.sqrt(hidden))
        self._aux: dict[str, torch.Tensor] = {}
        self._stats: dict[str, float] = {}

    def expert(self, e: int, x: torch.Tensor) -> torch.Tensor:
        gate, up = (x @ self.w12[e]).chunk(2, dim=-1)  # [n, h] each
        return (F.silu(gate) * up) @ self.w3[e]

    def route(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Router logits ``[N, E]``, chosen experts ``[N, k]`` and their weights ``[N, k]``."""
        logits = self.router(x).float()
        top_logits, top_idx = logits.topk(self.top_k, dim=-1)
        return logits, top_idx, top_logits.softmax(-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x = x.reshape(-1, shape[-1])  # [N, D]
        N, E, k = x.shape[0], self.num_experts, self.top_k
        logits, top_idx, weights = self.route(x)
        expert_of = top_idx.reshape(-1)  # [N k], assignment a = n k + slot
        order = torch.argsort(expert_of, stable=True)  # by expert, then by token
        counts = torch.bincount(expert_of, minlength=E)  # [E]
        token_of = order // k
        keep = torch.ones_like(order, dtype=torch.bool)
        if self.capacity_factor is not None:
            capacity = math.ceil(self.capacity_factor * N * k / E)
            starts = torch.cumsum(counts, 0) - counts
            rank_in_expert = torch.arange(N * k, device=x.device) - starts[expert_of[order]]
            keep = rank_in_expert < capacity
        kept_counts = torch.bincount(expert_of[order][keep], minlength=E).tolist()
        sorted_tokens, sorted_w = token_of[keep], weights.reshape(-1)[order][keep]
        grouped = x[sorted_tokens]  # [M, D]: one gather, contiguous per expert
        w12, w3 = self.w12.unbind(0), self.w3.unbind(0)  # one backward for all experts
        outs = []
        for e, xe in enumerate(grouped.split(kept_counts)):
            if len(xe):
                gate, up = (xe @ w12[e]).chunk(2, dim=-1)  # [n_e, h] each
                outs.append((F.silu(gate) * up) @ w3[e])
        ys = torch.cat(outs) * sorted_w[:, None].to(x.dtype) if outs else grouped
        out = torch.zeros_like(x).index_add_(0, sorted_tokens, ys)  # one scatter back
        self._record(logits, counts, N * k - int(keep.sum()))
        return out.reshape(shape)

    def _record(self, logits: torch.Tensor, counts: torch.Tensor, dropped: int) -> None:
        E = self.num_experts
        f = counts.float() / counts.sum()  # fraction of assignments per expert
        P = logits.softmax(-1).mean(0)  # mean router probability per expert
        self._aux = {"moe_balance": self.balance_coef * E * (f * P).sum()}
        if self.z_coef:
            self._aux["moe_z"] = self.z_coef * torch.logsumexp(logits, -1).square().mean()
        self._stats = {"moe_dropped_fraction": dropped / max(int(counts.sum()), 1),
                       "moe_max_load": float(f.max() * E),  # 1.0 = perfectly balanced
                       "moe_balance_loss": float(self._aux["moe_balance"].detach())}
        # tokens per expert, as fractions of the routed (token, slot) pairs
        self._stats.update({f"moe_load_e{e}": float(f[e]) for e in range(E)})

    def reference(self, x: torch.Tensor) -> torch.Tensor:
        """Dense per-token loop over the selected experts (slow; for tests)."""
        flat = x.reshape(-1, x.shape[-1])
        _, top_idx, weights = self.route(flat)
        rows = []
        for n in range(flat.shape[0]):
            y = torch.zeros_like(flat[n])
            for slot in range(self.top_k):
                y = y + weights[n, slot].to(x.dtype) * self.expert(int(top_idx[n, slot]), flat[n])
            rows.append(y)
        return torch.stack(rows).reshape(x.shape)

    def aux_losses(self) -> dict[str, torch.Tensor]:
        return dict(self._aux)

    def stats(self) -> dict[str, float]:
        return dict(self._stats)
