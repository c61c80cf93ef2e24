"""The softmax cross-entropy of a language-model head, compiled from C on the CPU (the kernel
library of ``_cscan``: ``xent_sums``, ``xent_grad``), as zoo's training loss uses it: the same
loss and gradient as ``F.cross_entropy`` (mean over the rows, no ignored targets) in two passes
over the logits forward (each row's max and sum of exponentials) and one backward
(``(softmax - onehot) / n`` written once).
torch's log-softmax, the negative log-likelihood, its zero-filled gradient and the
log-softmax backward pass over the ``[rows, vocabulary]`` logits five times: at the recall
frontier's shape (592 supervised positions x 8,192 tokens) they took about a quarter of a
training step at one thread.

``cross_entropy(logits, y)`` takes the compiled path for fp32 CPU logits where the library
builds and every logit is finite (the C code is compiled with ``-ffinite-math-only``: a NaN
or an infinity would not propagate there, so such logits go to ``F.cross_entropy``, whose NaN
loss then stops the run as diverged); ``F.cross_entropy`` otherwise.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from ._cscan import _check, library, usable

WHAT = "cross_entropy: the compiled kernel"


def cross_entropy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean softmax cross-entropy of ``logits [n, V]`` against targets ``y [n]`` (every one a
    class index in ``[0, V)``)."""
    if (logits.dim() == 2 and logits.dtype == torch.float32 and logits.shape[0] > 0
            and usable(logits, y) and torch.isfinite(logits.detach().sum())):
        if y.numel() and not 0 <= int(y.min()) <= int(y.max()) < logits.shape[1]:
            raise ValueError(f"cross_entropy: targets must lie in [0, {logits.shape[1]}), got "
                             f"{int(y.min())}..{int(y.max())}")
        return _CompiledCrossEntropy.apply(logits, y)
    return F.cross_entropy(logits, y)


class _CompiledCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        logits, y = logits.contiguous(), y.to(torch.int64).contiguous()
        (n, V), lib = logits.shape, library()
        maxes, sums = logits.new_empty(n), logits.new_empty(n)
        _check(lib.xent_sums(logits.data_ptr(), maxes.data_ptr(), sums.data_ptr(), n, V,
                             torch.get_num_threads()), WHAT)
        lse = maxes + sums.log()
        ctx.save_for_backward(logits, y, lse)
        return (lse - logits.gather(1, y[:, None])[:, 0]).mean()

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor | None, None]:
        logits, y, lse = ctx.saved_tensors
        n, V = logits.shape
        grad = torch.empty_like(logits)
        _check(library().xent_grad(logits.data_ptr(), y.data_ptr(), lse.data_ptr(),
                                   float(g) / n, grad.data_ptr(), n, V,
                                   torch.get_num_threads()), WHAT)
        return grad, None

