"""The backbone every zoo model shares: mixers from the registry in pre-norm residual blocks.

    h = embed(tokens) [+ pos]
    for each block:  h = h + mixer(norm(h));  h = h + channel(norm(h))
    logits = norm(h) @ embed.weight^T        (tied head)

``pattern`` lists sequence-mixer names repeated over ``n_layers`` (``[gla, gla, attention]``
makes a hybrid); each entry takes its options from ``mixer_options[name]``. The model knows no
layer by name: everything layer-specific goes through the registry contract.

``generate`` decodes through that contract too: one token at a time through every mixer's
``init_state`` / ``step`` (attention's KV cache, a recurrence's state), so decoding costs one
step per token and equals the full forward pass wherever ``step`` equals ``forward``.

What the model reads and writes is the task's declaration (``tasks.Task.io``): token ids
through the embedding and the tied head (``vocab_size``), or real vectors (``d_in``, ``d_out``:
in-context regression, mixtures) through a linear map in and a linear head out,

    h = W_in x + b_in                  x [B, T, d_in]
    out = W_out norm(h) + b_out        [B, T, d_out]

``loops = k`` applies the whole block stack ``k`` times with the same weights (a looped model,
Giannou et al. 2023, arXiv 2301.13196; Yang et al. 2023, arXiv 2311.12424): depth ``k L`` from
the parameters of ``L`` layers. Each application keeps its own recurrent state when decoding.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator, Sequence

import torch
from torch import nn

import layers


NORMS = ("rms", "none")


def _norm(kind: str, d_model: int, eps: float) -> nn.Module:
    """RMSNorm, or none: the linear transformers of the in-context learning theory have no
    normalisation, and with it one linear-attention layer is exactly a preconditioned gradient
    step (``norm: none``)."""
    return nn.RMSNorm(d_model, eps=eps) if kind == "rms" else nn.Identity()


class Block(nn.Module):
    def __init__(self, d_model: int, mixer: str, mixer_opts: dict[str, Any], channel: str,
                 channel_opts: dict[str, Any], norm_eps: float,
                 norm: str = "rms") -> None:
        super().__init__()
        self.norm1 = _norm(norm, d_model, norm_eps)
        self.mixer = layers.build(mixer, d_model, **mixer_opts)
        self.norm2 = _norm(norm, d_model, norm_eps)
        self.channel = layers.build(channel, d_model, kind="channel", **channel_opts)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.mixer(self.norm1(x))
        return x + self.channel(self.norm2(x))

    def step(self, x_t: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]:
        y, state = self.mixer.step(self.norm1(x_t), state)
        x_t = x_t + y
        return x_t + self.channel(self.norm2(x_t)), state


class Backbone(nn.Module):
    def __init__(self, vocab_size: int | None = None, d_model: int = 64, n_layers: int = 2,
                 pattern: Sequence[str] | str = "attention",
                 mixer_options: dict[str, dict[str, Any]] | None = None,
                 channel: str = "mlp", channel_options: dict[str, Any] | None = None,
                 max_positions: int = 0, norm_eps: float = 1e-5, *, d_in: int | None = None,
                 d_out: int | None = None, loops: int = 1, norm: str = "rms") -> None:
        super().__init__()
        pattern = [pattern] if isinstance(pattern, str) else list(pattern)
        if not pattern:
            raise ValueError("model: pattern must name at least one sequence mixer")
        if n_layers < 1:
            raise ValueError(f"model: n_layers must be >= 1, got {n_layers}")
        if isinstance(loops, bool) or not isinstance(loops, int) or loops < 1:
            raise ValueError(f"model: loops must be an int >= 1, got {loops!r}")
        if norm not in NORMS:
            raise ValueError(f"model: norm must be one of {', '.join(NORMS)}, got {norm!r}")
        if (vocab_size is None) == (d_in is None and d_out is None) or \
                (vocab_size is None and (d_in is None or d_out is None)):
            raise ValueError("model: give either vocab_size (tokens) or both d_in and d_out "
                             f"(real vectors), got vocab_size={vocab_size}, d_in={d_in}, "
                             f"d_out={d_out}")
        mixer_options = dict(mixer_options or {})
        unused = set(mixer_options) - set(pattern)
        if unused:
            raise ValueError(f"model: mixer_options given for {sorted(unused)}, which the "
                             f"pattern {pattern} does not use")
        self.vocab_size, self.d_model, self.pattern = vocab_size, d_model, pattern
        self.d_in, self.d_out, self.loops = d_in, d_out, loops
        self.continuous = vocab_size is None
        if self.continuous:
            self.embed = None
            self.read_in = nn.Linear(d_in, d_model)
            self.read_out = nn.Linear(d_model, d_out)
        else:
            self.embed = nn.Embedding(vocab_size, d_model)
            nn.init.normal_(self.embed.weight, std=0.02)
            self.embed.weight._no_weight_decay = True
        # Most mixers bring their own positions; a learned table is there for those that don't.
        self.pos = nn.Embedding(max_positions, d_model) if max_positions else None
        if self.pos is not None:
            nn.init.normal_(self.pos.weight, std=0.02)
            self.pos.weight._no_weight_decay = True
        self.blocks = nn.ModuleList(
            Block(d_model, pattern[i % len(pattern)], mixer_options.get(pattern[i % len(pattern)], {}),
                  channel, dict(channel_options or {}), norm_eps, norm)
            for i in range(n_layers))
        self.norm = _norm(norm, d_model, norm_eps)

    def applied(self) -> list[Block]:
        """The blocks in the order the forward pass applies them: the stack, ``loops`` times."""
        return list(self.blocks) * self.loops

    def _read(self, x: torch.Tensor) -> torch.Tensor:
        """The residual stream's start: token ids ``[...]`` embedded, or real vectors
        ``[..., d_in]`` mapped in."""
        return self.read_in(x) if self.continuous else self.embed(x)

    def hidden(self, tokens: torch.Tensor) -> torch.Tensor:
        """Final-normed hidden states ``[B, T, D]`` of token ids ``[B, T]`` (or of real vectors
        ``[B, T, d_in]``)."""
        h = self._read(tokens)
        if self.pos is not None:
            if tokens.shape[1] > self.pos.num_embeddings:
                raise ValueError(f"model: sequence length {tokens.shape[1]} exceeds "
                                 f"max_positions={self.pos.num_embeddings}")
            h = h + self.pos.weight[: tokens.shape[1]]
        for block in self.applied():
            h = block(h)
        return self.norm(h)

    def head(self, h: torch.Tensor) -> torch.Tensor:
        """Logits (or real outputs) for any ``[..., D]`` hidden states: call it on the
        supervised positions only."""
        return self.read_out(h) if self.continuous else h @ self.embed.weight.T

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.hidden(tokens))

    def _step(self, token: torch.Tensor, t: int, states: list[Any]) -> torch.Tensor:
        """Logits ``[B, V]`` after the token ``[B]`` at position ``t``; ``states`` advance."""
        h = self._read(token)  # [B, D]
        if self.pos is not None:
            h = h + self.pos.weight[t]
        for i, block in enumerate(self.applied()):
            h, states[i] = block.step(h, states[i])
        return self.head(self.norm(h))

    @torch.no_grad()
    def generate(self, tokens: torch.Tensor, max_new_tokens: int, *, temperature: float = 0.0,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        """Continue each prompt of ``tokens [B, P]`` by ``max_new_tokens`` tokens; returns
        ``[B, P + max_new_tokens]``. The prompt is read and the continuation written one token
        at a time by each mixer's recurrent ``step``. ``temperature`` 0 decodes greedily
        (argmax); above 0 it samples from ``softmax(logits / temperature)``, drawing from
        ``generator`` (so a seeded generator repeats a sample)."""
        if self.continuous:
            raise ValueError("generate: this model reads real vectors (d_in), not tokens")
        if tokens.ndim != 2 or tokens.shape[1] < 1:
            raise ValueError(f"generate: tokens must be [batch, prompt length >= 1], got "
                             f"shape {tuple(tokens.shape)}")
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) \
                or max_new_tokens < 0:
            raise ValueError(f"generate: max_new_tokens must be an int >= 0, got "
                             f"{max_new_tokens!r}")
        if not (isinstance(temperature, (int, float)) and temperature >= 0):
            raise ValueError(f"generate: temperature must be a number >= 0 (0: greedy), got "
                             f"{temperature!r}")
        B, P = tokens.shape
        total = P + max_new_tokens
        if self.pos is not None and total - 1 > self.pos.num_embeddings:
            raise ValueError(f"generate: {total - 1} positions exceed "
                             f"max_positions={self.pos.num_embeddings}")
        was_training = self.training
        self.eval()
        try:
            dtype = self.embed.weight.dtype
            states = [b.mixer.init_state(B, tokens.device, dtype) for b in self.applied()]
            out = torch.empty(B, total, dtype=tokens.dtype, device=tokens.device)
            out[:, :P] = tokens
            # the last token needs no step: nothing is predicted after it
            for t in range(total - 1):
                logits = self._step(out[:, t], t, states)
                if t >= P - 1:
                    out[:, t + 1] = self._pick(logits, temperature, generator)
            return out
        finally:
            self.train(was_training)

    @staticmethod
    def _pick(logits: torch.Tensor, temperature: float,
              generator: torch.Generator | None) -> torch.Tensor:
        if temperature == 0:
            return logits.argmax(-1)
        probs = torch.softmax(logits.float() / temperature, dim=-1)  # [B, V]
        return torch.multinomial(probs, 1, generator=generator)[:, 0]

    def mixers(self) -> Iterator[nn.Module]:
        return (b.mixer for b in self.blocks)

    def _layer_reports(self, method: str) -> dict[str, list[Any]]:
        """Values each mixer and channel mixer reports through ``method``, grouped by name."""
        out: dict[str, list[Any]] = {}
        for block in self.blocks:
            for part in (block.mixer, block.channel):
                for k, v in getattr(part, method)().items():
                    out.setdefault(k, []).append(v)
        return out

    def aux_losses(self) -> dict[str, torch.Tensor]:
        """Auxiliary losses reported by the layers after the last forward, summed by name."""
        return {k: sum(v[1:], v[0]) for k, v in self._layer_reports("aux_losses").items()}

    def stats(self) -> dict[str, float]:
        """Layer diagnostics of the last forward (e.g. MoE routing), averaged over layers."""
        return {k: sum(map(float, v)) / len(v) for k, v in self._layer_reports("stats").items()}

    def state_size(self, seq_len: int) -> int:
        """Theoretical state size (floats) of all sequence mixers at that length; a looped
        model keeps one per application."""
        return self.loops * sum(int(m.state_size(seq_len)) for m in self.mixers())

    def num_params(self, non_embedding: bool = False) -> int:
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= (self.embed.weight.numel() if self.embed is not None else 0) \
                + (self.pos.weight.numel() if self.pos is not None else 0)
        return n


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: decay on matrices; none on norms, biases, embeddings and any parameter
    marked ``_no_weight_decay``; parameters marked ``_optim`` get a group of their own."""
    groups: dict[tuple, dict[str, Any]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        extra = dict(getattr(p, "_optim", {}))
        no_decay = p.ndim < 2 or getattr(p, "_no_weight_decay", False) or "weight_decay" in extra
        settings = {"weight_decay": 0.0 if no_decay else weight_decay, **extra}
        key = tuple(sorted(settings.items()))
        group = groups.setdefault(key, {"params": [], "names": [], **settings})
        group["params"].append(p)
        group["names"].append(name)
    return list(groups.values())


def model_kwargs(cfg: Any, vocab_size: int | None = None, **io: int) -> dict[str, Any]:
    """Backbone kwargs from the ``layer`` and ``model`` groups; the task gives what the model
    reads and writes (``Task.io``: ``vocab_size``, or ``d_in`` and ``d_out``)."""
    layer = dict(cfg["layer"])
    name = layer.pop("name")
    model = dict(cfg["model"])
    pattern = model.pop("pattern", None) or [name]
    pattern = [pattern] if isinstance(pattern, str) else list(pattern)
    mixer_options = {k: dict(v) for k, v in (model.pop("mixer_options", None) or {}).items()}
    if name in pattern:
        mixer_options[name] = {**mixer_options.get(name, {}), **layer}
    given = {"vocab_size": vocab_size} if vocab_size is not None else {}
    return {**given, **io, "pattern": pattern, "mixer_options": mixer_options, **model}


def checkpoint_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """The ``Backbone`` weights in a checkpoint file: a Lightning checkpoint of ``ZooModule``
    (its ``state_dict``, keys under ``model.``) or a bare ``Backbone.state_dict()``."""
    state = torch.load(path, map_location="cpu", weights_only=False)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = {k[len("model."):]: v for k, v in state["state_dict"].items()
                 if k.startswith("model.")}
    if not isinstance(state, dict) or not state or not all(
            isinstance(k, str) and torch.is_tensor(v) for k, v in state.items()):
        raise ValueError("holds no model weights (neither a zoo checkpoint nor a state_dict)")
    return state


def weights_mismatch(model: nn.Module, weights: dict[str, torch.Tensor]) -> str | None:
    """Why ``weights`` cannot be loaded into ``model`` (the first differing name or shape), or
    None when they fit exactly."""
    own = model.state_dict()
    for name in [*own, *(n for n in weights if n not in own)]:  # the model's order first
        if name not in weights:
            return f"it lacks {name}"
        if name not in own:
            return f"it has {name}, which this model does not"
        if own[name].shape != weights[name].shape:
            return (f"{name} is {list(weights[name].shape)} there and "
                    f"{list(own[name].shape)} in this model")
    return None
