"""layers.xent: the training loss's cross-entropy compiled from C against F.cross_entropy (loss and
gradient, odd shapes, saturated softmax, any upstream gradient), bit-identical for 1 and 2
threads, the fallbacks (non-finite logits, no library, bf16), and the training step using it."""

import pytest
import torch
import torch.nn.functional as F

import tasks
from layers import _cscan
from layers.testing import assert_rel_close
from layers import xent
from zoo.module import ZooModule

needs_build = pytest.mark.skipif(_cscan.library() is None, reason="the C code does not build here")


def inputs(n: int, V: int, scale: float = 3.0, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    logits = (scale * torch.randn(n, V, generator=g)).requires_grad_()
    return logits, torch.randint(0, V, (n,), generator=g)


def loss_and_grad(fn, logits, y, upstream=1.7):
    loss = fn(logits, y)
    (grad,) = torch.autograd.grad(loss * upstream, logits)
    return loss, grad


@needs_build
@pytest.mark.parametrize("n,V,scale", [(1, 2, 1.0), (7, 13, 3.0), (37, 1000, 30.0),
                                       (592, 8192, 3.0), (5, 17, 200.0)])
def test_compiled_matches_torch(n, V, scale):
    """Loss and gradient against F.cross_entropy; scale 200: each row's softmax saturates (all
    but its max underflow to 0)."""
    logits, y = inputs(n, V, scale)
    y[0] = logits[0].argmax()  # a target at the max, too
    loss, grad = loss_and_grad(xent.cross_entropy, logits, y)
    assert "_CompiledCrossEntropyBackward" == loss.grad_fn.name()
    ref_loss, ref_grad = loss_and_grad(F.cross_entropy, logits, y)
    assert_rel_close(loss, ref_loss, 1e-6, what="loss")
    assert_rel_close(grad, ref_grad, 1e-5, what="gradient")


@needs_build
def test_compiled_bit_identical_across_threads():
    logits, y = inputs(33, 1001)
    before, runs = torch.get_num_threads(), []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            runs.append(loss_and_grad(xent.cross_entropy, logits, y))
    finally:
        torch.set_num_threads(before)
    assert all(torch.equal(a, b) for a, b in zip(*runs))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_logits_give_torchs_result(bad):
    """The C code assumes finite numbers, so such logits go to F.cross_entropy: a diverged
    model's loss stays non-finite and the run stops as failed."""
    logits, y = inputs(4, 9)
    with torch.no_grad():
        logits[2, 3] = bad
    loss = xent.cross_entropy(logits, y)
    assert loss.grad_fn.name() != "_CompiledCrossEntropyBackward"
    assert torch.equal(loss.isfinite(), F.cross_entropy(logits, y).isfinite())


def test_fallbacks_are_torchs(monkeypatch):
    logits, y = inputs(6, 11)
    ref = F.cross_entropy(logits, y)
    half = logits.bfloat16()
    assert torch.equal(xent.cross_entropy(half, y), F.cross_entropy(half, y))
    monkeypatch.setattr(xent, "usable", lambda *t: False)  # no compiler, or not on the CPU
    assert torch.equal(xent.cross_entropy(logits, y), ref)


@needs_build
def test_targets_out_of_range_are_refused():
    logits, y = inputs(3, 5)
    with pytest.raises(ValueError, match=r"targets must lie in \[0, 5\)"):
        xent.cross_entropy(logits, torch.tensor([0, 5, 1]))


@needs_build
def test_the_training_loss_is_the_compiled_one():
    task = tasks.build("assoc_recall", vocab_size=64, num_kv_pairs=2, seq_len=16)
    x, y = task.generate(4, torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    m = ZooModule({"vocab_size": task.vocab_size, "d_model": 16, "n_layers": 1,
                   "pattern": "attention", "channel": "none"}, {"lr": 1e-3, "weight_decay": 0.0})
    loss, logits, _ = m._forward((x, y))
    assert loss.grad_fn.name() == "_CompiledCrossEntropyBackward"
    sel = y != tasks.IGNORE
    assert_rel_close(loss, F.cross_entropy(logits.float(), y[sel]), 1e-6, what="loss")
