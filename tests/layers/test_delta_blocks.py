"""The chunked delta rule's blocks of chunks (``_delta.BLOCK_BYTES``): one chunk a block, an
uneven last block and a single block give the loop's outputs, final state and every gradient
(the work is only regrouped), with and without decay, the initial state and strong decay."""

import pytest
import torch
import torch.nn.functional as F

from layers import _delta
from layers._delta import chunked_delta_rule, naive_delta_rule
from layers.testing import assert_rel_close

B, H, DK, DV, C = 2, 3, 8, 5, 16
CHUNK_BYTES = B * H * C * C * 4  # of the widest [chunks, C, d] tensor here (C >= dk, dv)


@pytest.mark.parametrize("chunks_per_block", [1, 3, 100], ids=["one", "uneven", "all"])
@pytest.mark.parametrize("decay", [0.0, 1.0, 30.0], ids=["delta", "gated", "strong"])
def test_blocks_match_loop(monkeypatch, chunks_per_block, decay):
    """T = 100 in chunks of 16 (7 chunks, the last zero-padded): blocks of 1, 3 (3 + 3 + 1)
    and all 7 chunks against the loop, under one random cotangent on output and state."""
    monkeypatch.setattr(_delta, "BLOCK_BYTES", chunks_per_block * CHUNK_BYTES)
    assert len(_delta._blocks(7, CHUNK_BYTES)) == -(-7 // chunks_per_block)
    g = torch.Generator().manual_seed(chunks_per_block)
    T = 100
    q, k = (F.normalize(torch.randn(B, H, T, DK, generator=g), dim=-1) for _ in range(2))
    v = torch.randn(B, H, T, DV, generator=g)
    beta = torch.rand(B, H, T, 1, generator=g)
    log_g = -decay * torch.rand(B, H, T, 1, generator=g) if decay else None
    S0 = torch.randn(B, H, DK, DV, generator=g)
    args = [t.requires_grad_() for t in (q, k, v, beta, log_g, S0) if t is not None]
    go, gS = torch.randn(B, H, T, DV, generator=g), torch.randn(B, H, DK, DV, generator=g)
    results = []
    for fn in (chunked_delta_rule, naive_delta_rule):
        kwargs = {"chunk_size": C} if fn is chunked_delta_rule else {}
        o, S = fn(q, k, v, beta, log_g, initial_state=S0, **kwargs)
        grads = torch.autograd.grad((o * go).sum() + (S * gS).sum(), args)
        results.append((o, S, *grads))
    names = ["output", "final state", "q", "k", "v", "beta", *(["log_g"] if decay else []), "S0"]
    for name, fast, ref in zip(names, *results):
        assert torch.isfinite(fast).all(), name
        assert_rel_close(fast, ref, 1e-5, what=name)
