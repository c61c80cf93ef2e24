"""``python -m zoo.bench moe``: MoE against the dense MLP of the same active parameters."""

from __future__ import annotations

from typing import Sequence

import torch

import layers
from .timing import measure


def bench_moe(d_model: int = 128, batch: int = 8, lengths: Sequence[int] = (1024,),
              experts: Sequence[int] = (8,), top_k: int = 2, repeats: int = 3,
              device: str = "cpu") -> list[str]:
    """MoE forward+backward against the dense SwiGLU MLP with the same active parameters
    (hidden = top_k x expert hidden)."""
    dev = torch.device(device)
    rows = [f"d_model={d_model}, batch={batch}, top-{top_k}, expert hidden = SwiGLU's 8/3 d; "
            "dense MLP hidden = top_k x expert hidden (same active parameters).", "",
            "| experts | T | MoE ms / step | dense ms / step | MoE / dense |", "|---|---|---|---|---|"]
    for E in experts:
        for T in lengths:
            torch.manual_seed(0)
            moe = layers.build("moe", d_model, kind="channel", num_experts=E, top_k=top_k).to(dev)
            dense = layers.build("mlp", d_model, kind="channel", hidden=top_k * moe.hidden).to(dev)
            t_moe, _ = measure(moe, d_model, batch, T, repeats, False, dev)
            t_dense, _ = measure(dense, d_model, batch, T, repeats, False, dev)
            rows.append(f"| {E} | {T:,} | {t_moe * 1e3:,.1f} | {t_dense * 1e3:,.1f} "
                        f"| {t_moe / t_dense:.2f}x |")
    return rows
