"""In-context learning with continuous tokens: linear regression, multitask prompts and a
semi-supervised Gaussian mixture, each scored beside the estimators it is measured against.

``icl_regression`` (Garg, Tsipras, Liang, Valiant 2022, arXiv 2208.01066): per prompt a fresh
``w`` from the prior (``gaussian``: ``N(0, I_d / d)``; ``standard``: ``N(0, I_d)``, Garg's;
``sphere``: uniform on the unit sphere; ``s^2 = E||w||^2 / d``), ``x_i ~ N(0, I_d)``,
``y_i = w^T x_i + noise * eps_i``.

``icl_multitask`` (arXiv 2504.04308's data model): ``K`` task vectors per prompt,
``w_k = sqrt(rho) u + sqrt(1 - rho) v_k`` with ``u, v_k`` from the prior (so
``corr(w_j, w_k) = rho``); the demonstrations in ``K`` contiguous segments of ``m``, segment
``k`` labelled by ``w_k``; only the queries of the last segment are scored.

``icl_gmm`` (Li, Chang, Kara, Liu, Roy-Chowdhury, Oymak 2025, "When and how unlabeled data
provably improve in-context learning", arXiv 2506.15329): ``c_i = +-1`` equiprobable,
``x_i = c_i mu + N(0, I_d)``, ``mu = mu_norm * (uniform direction)`` fresh per prompt; each
demonstration's label is shown with probability ``1 - missing``, else it reads 0.

Layout, every task: example ``i`` is two tokens of ``d + 1`` reals, a query ``[x_i, 0]`` at
which the model predicts ``y_i`` (``c_i``) from the examples before it, then a demonstration

    alternating   [0, y_i]      x and y in separate tokens (Garg et al.)
    paired        [x_i, y_i]    the pair in one token: the form in which one linear-attention
                                layer is one step of preconditioned gradient descent (von Oswald
                                et al. 2023, arXiv 2212.07677; Ahn et al. 2023, arXiv 2306.00297)

so the query at position ``2i`` has ``n = i`` examples before it, and one prompt scores every
``n`` from 0 to ``num_examples - 1`` (reported as ``test/<m>@n=<i>``).

Baselines on the same prompts, each query from the demonstrations before it (``X [n, d]``,
``y [n]``; fp64), read from the inputs as a model reads them:

    lstsq      w = X^+ y                                   (min norm below n = d)
    ridge      w = (X^T X + lambda I)^-1 X^T y, lambda = noise^2 / s^2: the posterior mean,
               Bayes-optimal under the Gaussian prior (= lstsq without noise)
    gd         one step of preconditioned gradient descent from 0 on ||y - X w||^2 / 2,
               w = eta_n X^T y with the best step for these n examples (isotropy makes the best
               preconditioner a multiple of I): eta_n = s^2 c / (s^2 q + n noise^2), c and q
               below (one task: c = n, q = n (n + d + 1))
    gd_shared  the same with one step for every query of the prompt, the best for their mean
               error: eta = s^2 sum c / sum (s^2 q + n noise^2). One linear-attention layer's
               weights are one such step for every n (it has no n to tune a step by)
    avg        w = X^T y / n
    *_task     (multitask) the same on the query's own segment only: an estimator told where
               its task begins
    sup        (mixture) mu = sum over labelled j of y_j x_j; predict sign(x^T mu)
    em<t>      (mixture) t EM iterations from mu_0 = the labelled mean:
               mu <- (sum_labelled y_j x_j + sum_unlabelled tanh(x_j^T mu) x_j) / n,
               E[c | x] = tanh(x^T mu) under unit variance

One step with ``n_k`` examples from task ``k`` before a query of task ``K``:
``E||eta X^T y - w_K||^2 = s^2 d (1 - 2 eta c + eta^2 q) + eta^2 n d noise^2`` with
``c = sum_k n_k c_k`` (``c_K = 1``, else ``rho``) and
``q = sum_k n_k (n_k + d + 1) + rho sum_{k != l} n_k n_l``.

Metrics: ``mse`` = squared error / ``E||w||^2`` (1 for predicting 0 without noise; Garg's
MSE / d under his prior), ``loss`` the raw MSE; the mixture: ``acc`` (sign, ties to +1) and
``loss`` (MSE or logistic by knob).
"""

from __future__ import annotations

import dataclasses
import math
from typing import ClassVar

import torch
import torch.nn.functional as F

from .base import ContinuousTask, register_task

PRIORS = ("gaussian", "standard", "sphere")
LAYOUTS = ("alternating", "paired")
GMM_LOSSES = ("mse", "logistic")
EM_STEPS = (1, 2, 10)


@dataclasses.dataclass(frozen=True)
class InContext(ContinuousTask):
    """What the three tasks share: the two-token layout, per-n counts, the prior of ``w``."""
    d: int = 8
    layout: str = "alternating"
    seq_len: int = dataclasses.field(default=0, init=False)  # 2 tokens per example

    def __post_init__(self) -> None:
        object.__setattr__(self, "seq_len", 2 * self.examples)
        super().__post_init__()

    # The knob ``at_length`` changes, in examples: ``eval_lengths: [20, 40]`` tests prompts of
    # 20 and 40 examples (of examples per task for multitask prompts).
    length_knob: ClassVar[str] = "num_examples"

    @property
    def examples(self) -> int:
        """Examples per prompt (each two tokens)."""
        return getattr(self, self.length_knob)

    @property
    def length(self) -> int:
        return getattr(self, self.length_knob)

    def at_length(self, length: int) -> "InContext":
        return dataclasses.replace(self, **{self.length_knob: length})

    @property
    def d_in(self) -> int:
        return self.d + 1

    @property
    def d_out(self) -> int:
        return 1

    def _check(self, **ints: int) -> None:
        for knob, v in {"d": self.d, **ints}.items():
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{self.name}: {knob} must be an int >= 1, got {knob}={v!r}")
        if self.layout not in LAYOUTS:
            raise ValueError(f"{self.name}: layout must be one of {', '.join(LAYOUTS)}, got "
                             f"layout={self.layout!r}")

    def _prompts(self, x: torch.Tensor, shown: torch.Tensor, target: torch.Tensor,
                 scored: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        """``x [N, n, d]``, the labels shown ``[N, n]`` and the labels to predict ``[N, n]``
        -> inputs ``[N, 2n, d + 1]``, targets ``[N, 2n, 1]``, mask ``[N, 2n]`` (the queries;
        of ``scored [n]`` only, where given)."""
        N, n, d = x.shape
        inputs = x.new_zeros(N, n, 2, d + 1)
        inputs[:, :, 0, :d] = x  # the query token
        if self.layout == "paired":
            inputs[:, :, 1, :d] = x
        inputs[:, :, 1, d] = shown
        targets = x.new_zeros(N, n, 2, 1)
        targets[:, :, 0, 0] = target
        mask = torch.zeros(N, n, 2, dtype=torch.bool)
        mask[:, :, 0] = True if scored is None else scored
        return inputs.reshape(N, 2 * n, d + 1), targets.reshape(N, 2 * n, 1), \
            mask.reshape(N, 2 * n)

    def _examples(self, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The prompt as a model reads it: ``x [N, n, d]`` and the labels shown ``[N, n]``."""
        d = self.d
        return inputs[:, 0::2, :d].double(), inputs[:, 1::2, d].double()

    def _at_queries(self, pred: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """Predictions per example ``[N, n]`` placed at the query tokens ``[N, 2n, 1]``."""
        out = torch.zeros(like.shape[0], like.shape[1], 1, dtype=torch.float32,
                          device=like.device)
        out[:, 0::2, 0] = pred.float()
        return out

    @staticmethod
    def _sums(values: torch.Tensor, mask: torch.Tensor, key: str,
              slices: bool) -> dict[str, float]:
        """``values [N, T]`` summed over the mask, and per query position as ``key@n=<i>``."""
        kept = torch.where(mask, values.double(), 0.0)
        out = {key: float(kept.sum())}
        if slices:
            per = kept.sum(0).tolist()
            for t, (v, c) in enumerate(zip(per, mask.sum(0).tolist())):
                if c:
                    out[f"{key}@n={t // 2}"] = v
        return out

    @staticmethod
    def _groups(counts: dict[str, float], denominator: str) -> list[tuple[str, str]]:
        """Every (prefix, slice) of the keys ``<prefix><denominator>[@<slice>]``."""
        out = []
        for key in counts:
            head, at, where = key.partition("@")
            if head.endswith(denominator):
                out.append((head[:-len(denominator)], at + where))
        return sorted(out)


@dataclasses.dataclass(frozen=True)
class _Regression(InContext):
    """Regression targets: squared error counts, ``mse`` and the linear baselines."""
    noise: float = 0.0
    prior: str = "gaussian"

    def _check_regression(self) -> None:
        if not (isinstance(self.noise, (int, float)) and not isinstance(self.noise, bool)
                and math.isfinite(self.noise) and self.noise >= 0):
            raise ValueError(f"{self.name}: noise must be a finite number >= 0, got "
                             f"noise={self.noise!r}")
        if self.prior not in PRIORS:
            raise ValueError(f"{self.name}: prior must be one of {', '.join(PRIORS)}, got "
                             f"prior={self.prior!r}")

    def _prior(self, N: int, generator: torch.Generator) -> torch.Tensor:
        w = torch.randn(N, self.d, generator=generator)  # [N, d]
        if self.prior == "sphere":
            return w / w.norm(dim=-1, keepdim=True)
        return w / math.sqrt(self.d) if self.prior == "gaussian" else w

    @property
    def s2(self) -> float:
        """``E||w||^2 / d`` of the prior: the per-coordinate variance the estimators assume."""
        return 1.0 if self.prior == "standard" else 1.0 / self.d

    @property
    def rho(self) -> float:
        """The correlation between two tasks of a prompt (one task: no other to correlate)."""
        return 1.0

    def loss(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(pred, target)

    def counts(self, pred: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor,
               prefix: str = "", slices: bool = False) -> dict[str, float]:
        err = (pred.double() - targets.double()).pow(2).sum(-1)  # [N, T]
        return {**self._sums(err, mask, f"{prefix}sse", slices),
                **self._sums(torch.ones_like(err), mask, f"{prefix}count", slices)}

    def rates(self, counts: dict[str, float]) -> dict[str, float]:
        signal = self.d * self.s2  # E||w||^2
        out = {}
        for prefix, where in self._groups(counts, "count"):
            n = max(counts[f"{prefix}count{where}"], 1.0)
            sse = counts[f"{prefix}sse{where}"]
            out[f"{prefix}mse{where}"] = sse / n / signal
            if not prefix and not where:
                out["loss"] = sse / n
        return out

    def _segments(self) -> torch.Tensor:
        """The task (segment) of each example ``[n]``; one segment outside multitask."""
        return torch.zeros(self.examples, dtype=torch.long)

    def baselines(self, inputs: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        x, y = self._examples(inputs)  # [N, n, d], [N, n]
        seg = self._segments().to(x.device)
        n = x.shape[1]
        before = torch.ones(n, n, dtype=x.dtype, device=x.device).tril(-1)  # [query, demo]
        views = {"": before}
        if int(seg.max()) > 0:
            views["_task"] = before * (seg[:, None] == seg[None, :])
        scored = mask[0, 0::2].to(x.dtype)  # [n]: the queries a prompt scores
        out = {}
        for suffix, use in views.items():
            for name, w in self._estimators(x, y, use, seg, scored).items():
                out[name + suffix] = self._at_queries((x * w).sum(-1), inputs)
        return out

    def _estimators(self, x: torch.Tensor, y: torch.Tensor, use: torch.Tensor,
                    seg: torch.Tensor, scored: torch.Tensor) -> dict[str, torch.Tensor]:
        """Each query's ``w [N, n, d]`` from the demonstrations ``use [query, demo]`` marks."""
        d, lam = self.d, self.noise ** 2 / self.s2
        gram = torch.einsum("qj,nja,njb->nqab", use, x, x)  # [N, n, d, d]
        xty = torch.einsum("qj,nja,nj->nqa", use, x, y)  # [N, n, d]
        evals, evecs = torch.linalg.eigh(gram)  # pseudo-inverse of the PSD Gram matrix
        keep = evals > 1e-9 * evals.amax(-1, keepdim=True).clamp_min(1e-300)
        inv = torch.where(keep, 1.0 / evals.clamp_min(1e-300), 0.0)
        proj = torch.einsum("nqab,nqb->nqa", evecs.transpose(-1, -2), xty)
        lstsq = torch.einsum("nqab,nqb->nqa", evecs, inv * proj)
        ridge = lstsq if lam == 0 else torch.linalg.solve(
            gram + lam * torch.eye(d, dtype=x.dtype, device=x.device), xty)
        count = use.sum(1)  # [n]
        c, denom = self._step_terms(use, seg)  # [n] each
        eta = torch.where(denom > 0, self.s2 * c / denom.clamp_min(1e-300), 0.0)
        shared = self.s2 * (scored * c).sum() / (scored * denom).sum().clamp_min(1e-300)
        return {"lstsq": lstsq, "ridge": ridge, "gd": eta[:, None] * xty,
                "gd_shared": shared * xty, "avg": xty / count.clamp_min(1)[:, None]}

    def _step_terms(self, use: torch.Tensor,
                    seg: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per query, ``c`` and ``s^2 q + n noise^2``: the expected error of the step ``eta``
        is ``d (s^2 - 2 eta s^2 c + eta^2 (s^2 q + n noise^2))`` (module docstring)."""
        rho, d, s2, noise2 = self.rho, self.d, self.s2, self.noise ** 2
        K = int(seg.max()) + 1
        per = torch.stack([(use * (seg == k)).sum(1) for k in range(K)], 1).double()  # [n, K]
        own = torch.nn.functional.one_hot(seg, K).double()  # the query's task
        c = (per * torch.where(own.bool(), 1.0, rho)).sum(1)
        total = per.sum(1)
        q = (per * (per + d + 1)).sum(1) + rho * (total ** 2 - (per ** 2).sum(1))
        return c, s2 * q + total * noise2


@register_task("icl_regression")
@dataclasses.dataclass(frozen=True)
class ICLRegression(_Regression):
    num_examples: int = 20

    def validate(self) -> None:
        self._check(num_examples=self.num_examples)
        self._check_regression()

    def generate(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
        w = self._prior(n, generator)  # [N, d]
        x = torch.randn(n, self.num_examples, self.d, generator=generator)  # [N, n, d]
        y = (x @ w[:, :, None])[..., 0]  # [N, n]
        y = y + self.noise * torch.randn(y.shape, generator=generator)
        return self._prompts(x, y, y)


@register_task("icl_multitask")
@dataclasses.dataclass(frozen=True)
class ICLMultitask(_Regression):
    layout: str = "paired"
    num_tasks: int = 3
    examples_per_task: int = 8
    correlation: float = 0.0

    def validate(self) -> None:
        self._check(num_tasks=self.num_tasks, examples_per_task=self.examples_per_task)
        self._check_regression()
        rho = self.correlation
        if not (isinstance(rho, (int, float)) and not isinstance(rho, bool) and 0 <= rho <= 1):
            raise ValueError(f"icl_multitask: correlation must be a number in [0, 1], got "
                             f"correlation={rho!r}")

    length_knob = "examples_per_task"  # a longer prompt: the same tasks, longer segments

    @property
    def examples(self) -> int:
        return self.num_tasks * self.examples_per_task

    @property
    def rho(self) -> float:
        return float(self.correlation)

    def _segments(self) -> torch.Tensor:
        return torch.arange(self.examples) // self.examples_per_task

    def generate(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
        K, rho = self.num_tasks, self.rho
        shared = self._prior(n, generator)  # [N, d]
        own = self._prior(n * K, generator).view(n, K, self.d)
        w = math.sqrt(rho) * shared[:, None] + math.sqrt(1 - rho) * own  # [N, K, d]
        x = torch.randn(n, self.examples, self.d, generator=generator)  # [N, K m, d]
        seg = self._segments()
        y = (x * w[:, seg]).sum(-1)  # [N, K m]
        y = y + self.noise * torch.randn(y.shape, generator=generator)
        return self._prompts(x, y, y, scored=seg == K - 1)


@register_task("icl_gmm")
@dataclasses.dataclass(frozen=True)
class ICLGaussianMixture(InContext):
    metrics = ("acc", "loss")
    monitor = ("acc", "max")
    threshold_applies = True  # an accuracy: passing the threshold means solved
    layout: str = "paired"
    num_examples: int = 20
    mu_norm: float = 1.5
    missing: float = 0.5
    loss_fn: str = "mse"

    def validate(self) -> None:
        self._check(num_examples=self.num_examples)
        for knob, v, ok, allowed in (
                ("mu_norm", self.mu_norm, lambda v: v > 0, "a finite number > 0"),
                ("missing", self.missing, lambda v: 0 <= v < 1, "a number in [0, 1)")):
            if not (isinstance(v, (int, float)) and not isinstance(v, bool)
                    and math.isfinite(v) and ok(v)):
                raise ValueError(f"icl_gmm: {knob} must be {allowed}, got {knob}={v!r}")
        if self.loss_fn not in GMM_LOSSES:
            raise ValueError(f"icl_gmm: loss_fn must be one of {', '.join(GMM_LOSSES)}, got "
                             f"loss_fn={self.loss_fn!r}")

    def generate(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
        k, d = self.num_examples, self.d
        mu = torch.randn(n, d, generator=generator)
        mu = self.mu_norm * mu / mu.norm(dim=-1, keepdim=True)  # [N, d]
        c = torch.randint(0, 2, (n, k), generator=generator).float() * 2 - 1  # [N, n]
        x = c[..., None] * mu[:, None] + torch.randn(n, k, d, generator=generator)
        shown = torch.rand(n, k, generator=generator) >= self.missing
        return self._prompts(x, c * shown, c)

    def loss(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.loss_fn == "logistic":
            return F.softplus(-target * pred).mean()
        return F.mse_loss(pred, target)

    def counts(self, pred: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor,
               prefix: str = "", slices: bool = False) -> dict[str, float]:
        p, c = pred[..., 0], targets[..., 0]
        right = (torch.where(p >= 0, 1.0, -1.0) == c).double()  # [N, T]
        out = {**self._sums(right, mask, f"{prefix}correct", slices),
               **self._sums(torch.ones_like(right), mask, f"{prefix}total", slices)}
        if not prefix:  # the model's own loss; a baseline's scale means nothing
            per = (F.softplus(-c * p) if self.loss_fn == "logistic" else (p - c) ** 2)
            out["nll"] = float(torch.where(mask, per.double(), 0.0).sum())
        return out

    def rates(self, counts: dict[str, float]) -> dict[str, float]:
        out = {}
        for prefix, where in self._groups(counts, "total"):
            n = max(counts[f"{prefix}total{where}"], 1.0)
            out[f"{prefix}acc{where}"] = counts[f"{prefix}correct{where}"] / n
        if "nll" in counts:
            out["loss"] = counts["nll"] / max(counts["total"], 1.0)
        return out

    def baselines(self, inputs: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        x, y = self._examples(inputs)  # [N, n, d], [N, n] (0: missing)
        n = x.shape[1]
        use = torch.ones(n, n, dtype=x.dtype, device=x.device).tril(-1)  # [query, demo]
        labelled = (y != 0).to(x.dtype)
        sup = torch.einsum("qj,nj,nja->nqa", use, y, x)  # [N, n, d]
        out = {"sup": self._at_queries((x * sup).sum(-1), inputs)}
        mu = sup / torch.einsum("qj,nj->nq", use, labelled).clamp_min(1)[..., None]
        seen = use.sum(1).clamp_min(1)[None, :, None]  # [1, n, 1]
        for step in range(1, max(EM_STEPS) + 1):
            soft = torch.tanh(torch.einsum("nja,nqa->nqj", x, mu))  # E[c_j | x_j, mu_q]
            pseudo = use * (1 - labelled)[:, None, :] * soft  # [N, n, n]
            mu = (sup + torch.einsum("nqj,nja->nqa", pseudo, x)) / seen
            if step in EM_STEPS:
                out[f"em{step}"] = self._at_queries((x * mu).sum(-1), inputs)
        return out
