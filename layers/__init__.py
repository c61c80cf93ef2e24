"""The zoo's layers: a registry of sequence mixers and channel mixers.

    from layers import build, names
    mixer = build("attention", d_model=64, num_heads=4)   # or: from layers import Attention

Importing this package needs torch only; accelerated kernels are imported lazily.
"""

from .registry import (ChannelMixer, SequenceMixer, build, get, names, options,  # noqa: F401
                       register)
from .attention import Attention  # noqa: F401  (registers "attention", "swa")
from .cat import ConvAugmentedAttention  # noqa: F401  (registers "cat")
from .deltanet import DeltaNet  # noqa: F401  (registers "deltanet")
from .gated_deltanet import GatedDeltaNet  # noqa: F401  (registers "gated_deltanet")
from .gla import GatedLinearAttention  # noqa: F401  (registers "gla")
from .linear_attn import LinearAttention  # noqa: F401  (registers "linear_attn")
from .mamba import Mamba  # noqa: F401  (registers "mamba")
from .mamba2 import Mamba2  # noqa: F401  (registers "mamba2")
from .mlp import NoChannelMixer, SwiGLU  # noqa: F401  (registers "mlp", "none")
from .moe import MixtureOfExperts  # noqa: F401  (registers "moe")
from .phalanx import Phalanx  # noqa: F401  (registers "phalanx")
from .ssa import SelectiveAttention  # noqa: F401  (registers "ssa")

__all__ = ["register", "build", "get", "names", "options", "SequenceMixer", "ChannelMixer",
           "Attention", "SelectiveAttention", "ConvAugmentedAttention", "LinearAttention",
           "GatedLinearAttention", "DeltaNet", "GatedDeltaNet", "Phalanx", "Mamba", "Mamba2",
           "SwiGLU", "NoChannelMixer", "MixtureOfExperts"]
