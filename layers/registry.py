"""The layer registry and the mixer contract.

Every mixer registers under the name used everywhere else (config file stem, CLI value,
leaderboard row). Two kinds live here: ``sequence`` mixers (token mixing, ``[B, T, D] ->
[B, T, D]`` causally) and ``channel`` mixers (per-token MLPs, MoE, ``none``).

The contract a sequence mixer fulfils (see ARCHITECTURE.md):

- ``__init__(d_model, *, **opts)`` (every option keyword-only, with its default) and
  ``forward(x [B, T, D]) -> [B, T, D]``;
- ``reference(x)``: the short, obviously-correct fp32 path the tests compare ``forward`` to;
- ``init_state(batch, device, dtype)`` / ``step(x_t [B, D], state) -> (y_t, state)``;
- ``state_size(seq_len) -> int``: floats of state the layer needs at that length;
- ``operator(x) -> [B, heads, T, T]`` and ``apply_operator(x, op) -> [B, T, D]`` for mixers
  that are input-dependent linear operators ``y = T(x) u(x)``: ``apply_operator`` mixes with
  a given operator exactly as ``forward`` mixes with its own, which is how the tests check
  that the materialised operator is the one ``forward`` uses.

Optimiser hints live on the parameters themselves: ``p._no_weight_decay = True`` and
``p._optim = {"lr": 1e-2}`` (an extra parameter group with its own settings).
Auxiliary losses (MoE balance) are reported, already weighted, by ``aux_losses()`` after a
forward pass; ``stats()`` reports diagnostics (routing loads) the same way.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable

import torch
from torch import nn

KINDS = ("sequence", "channel")
# kind -> name -> (class, option defaults for that name)
_REGISTRY: dict[str, dict[str, tuple[type[nn.Module], dict[str, Any]]]] = {k: {} for k in KINDS}


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"kind={kind!r} is not one of {KINDS}")


def register(name: str, kind: str = "sequence", **defaults: Any) -> Callable[[type], type]:
    """Class decorator: ``@register("gla")``. ``defaults`` pre-fill options, so one class can
    register several names (``swa`` is ``attention`` with a window)."""
    _check_kind(kind)

    def wrap(cls: type) -> type:
        if name in _REGISTRY[kind]:
            raise ValueError(f"register: {kind} mixer {name!r} is registered twice")
        _check_options(name, cls, defaults)
        _REGISTRY[kind][name] = (cls, dict(defaults))
        return cls

    return wrap


def names(kind: str = "sequence") -> list[str]:
    """Registered names of one kind, sorted."""
    _check_kind(kind)
    return sorted(_REGISTRY[kind])


def _entry(name: str, kind: str) -> tuple[type[nn.Module], dict[str, Any]]:
    _check_kind(kind)
    try:
        return _REGISTRY[kind][name]
    except KeyError:
        raise ValueError(
            f"unknown {kind} mixer {name!r}; known {kind} mixers: {', '.join(names(kind))}"
        ) from None


def get(name: str, kind: str = "sequence") -> type[nn.Module]:
    """The class registered under ``name``."""
    return _entry(name, kind)[0]


def options(name: str, kind: str = "sequence") -> dict[str, Any]:
    """The options a registered mixer accepts, with the defaults that name uses."""
    cls, defaults = _entry(name, kind)
    return {**_signature_defaults(cls), **defaults}


def _signature_defaults(cls: type) -> dict[str, Any]:
    params = inspect.signature(cls.__init__).parameters
    return {p: v.default for p, v in params.items()
            if p not in ("self", "d_model") and v.kind == v.KEYWORD_ONLY}


def _check_options(name: str, cls: type, opts: dict[str, Any]) -> None:
    valid = list(_signature_defaults(cls))
    unknown = [k for k in opts if k not in valid]
    if unknown:
        raise ValueError(
            f"{name}: unknown option(s) {', '.join(map(repr, unknown))}; "
            f"valid options: {', '.join(valid) or '(none)'}"
        )


def build(name: str, d_model: int, *, kind: str = "sequence", **opts: Any) -> nn.Module:
    """Instantiate a registered mixer, failing on unknown names and unknown options."""
    cls, defaults = _entry(name, kind)
    _check_options(name, cls, opts)
    if isinstance(d_model, bool) or not isinstance(d_model, int) or d_model <= 0:
        raise ValueError(f"{name}: d_model must be a positive int, got {d_model!r}")
    module = cls(d_model, **{**defaults, **opts})
    module.registry_name = name
    return module


def split_heads(name: str, num_heads: int, **widths: int) -> None:
    """Check that ``num_heads`` is a positive int dividing every named width (``d_model=64``):
    the message names the option, not the arithmetic that would fail."""
    if isinstance(num_heads, bool) or not isinstance(num_heads, int) or num_heads < 1:
        raise ValueError(f"{name}: num_heads must be an int >= 1, got {num_heads!r}")
    for what, width in widths.items():
        if width < 1 or width % num_heads:
            raise ValueError(f"{name}: {what}={width} is not divisible by num_heads={num_heads}")


class Mixer(nn.Module):
    """What every mixer shares: the auxiliary-loss and diagnostics protocol the model collects."""

    registry_name: str = ""

    def aux_losses(self) -> dict[str, torch.Tensor]:
        """Losses of the last forward, already weighted, to be added to the task loss."""
        return {}

    def stats(self) -> dict[str, float]:
        """Diagnostics of the last forward (e.g. routing loads) for the logs and the record."""
        return {}


class SequenceMixer(Mixer):
    """Base class of sequence mixers: the optional parts of the contract default to
    'not supported', so the registry-wide tests can tell which apply."""

    def reference(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def init_state(self, batch: int, device: torch.device | None = None,
                   dtype: torch.dtype | None = None) -> Any:
        raise NotImplementedError(f"{type(self).__name__} has no recurrent step")

    def step(self, x_t: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]:
        raise NotImplementedError(f"{type(self).__name__} has no recurrent step")

    def state_size(self, seq_len: int) -> int:
        raise NotImplementedError

    def operator(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} is not a linear operator")

    def apply_operator(self, x: torch.Tensor, op: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} is not a linear operator")

    def operator_channels(self) -> int:
        """How many value channels each head of ``operator`` mixes (``apply_operator`` applies
        the ``[B, heads, T, T]`` operator to values ``[B, heads, T, channels]``). A head whose
        operator has rank r at a position carries r floats per channel there, so
        ``heads * channels * ESS`` is a layer's ESS in the units of ``state_size``."""
        raise NotImplementedError(f"{type(self).__name__} is not a linear operator")

    @classmethod
    def supports(cls, method: str) -> bool:
        """Whether a subclass implements an optional contract method."""
        return getattr(cls, method) is not getattr(SequenceMixer, method)


class ChannelMixer(Mixer):
    """Base class of channel mixers (per-token maps ``[B, T, D] -> [B, T, D]``)."""
