"""``python -m zoo.bench generate``: the recurrent ``step`` over N tokens, its speed and the
growth of its state."""

from __future__ import annotations

import time
from typing import Any, Sequence

import torch

import layers
from .timing import MIB


def _tensor_bytes(obj: Any) -> int:
    """Bytes held by the tensors in a (nested) state."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_tensor_bytes(v) for v in obj)
    return 0


def bench_generate(tokens: int = 2048, d_model: int = 128, batch: int = 1,
                   names: Sequence[str] | None = None, device: str = "cpu") -> list[str]:
    """Recurrent inference: ``step`` over ``tokens`` tokens from an empty state. Memory growth
    is the state's tensor bytes after the last token against after the first."""
    dev = torch.device(device)
    rows = [f"d_model={d_model}, batch={batch}, {tokens:,} tokens, default options.", "",
            "| mixer | tokens/s | state MiB after 1 | state MiB after N | growth | "
            "state_size(N) floats |", "|---|---|---|---|---|---|"]
    for name in names or layers.names():
        torch.manual_seed(0)
        module = layers.build(name, d_model).to(dev).eval()
        if not type(module).supports("step"):
            rows.append(f"| {name} | no recurrent step | | | | |")
            continue
        xs = torch.randn(tokens, batch, d_model, generator=torch.Generator().manual_seed(0)).to(dev)
        with torch.no_grad():
            state = module.init_state(batch, dev, xs.dtype)
            _, state = module.step(xs[0], state)
            first = _tensor_bytes(state)
            start = time.perf_counter()
            for x_t in xs[1:]:
                _, state = module.step(x_t, state)
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            secs = time.perf_counter() - start
        last = _tensor_bytes(state)
        rows.append(f"| {name} | {(tokens - 1) / secs:,.0f} | {first / MIB:,.3f} "
                    f"| {last / MIB:,.3f} | {last / first:,.1f}x | {module.state_size(tokens):,} |")
    return rows
