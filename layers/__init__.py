"""The zoo's layers: a registry of sequence mixers and channel mixers.

    from layers import build, names
    mixer = build("attention", d_model=64, num_heads=4)   # or: from layers import Attention

Importing this package needs torch (and einops) only; accelerated kernels are imported lazily.
"""

from .registry import (ChannelMixer, SequenceMixer, build, get, names, options,  # noqa: F401
                       register)
from .attention import Attention  # noqa: F401  (registers "attention", "swa")
from .cat import ConvAugmentedAttention  # noqa: F401  (registers "cat")
from .ssa import SelectiveAttention  # noqa: F401  (registers "ssa")
from .mlp import NoChannelMixer, SwiGLU  # noqa: F401  (registers "mlp", "none")
from .moe import MixtureOfExperts  # noqa: F401  (registers "moe")

__all__ = ["register", "build", "get", "names", "options", "SequenceMixer", "ChannelMixer",
           "Attention", "SelectiveAttention", "ConvAugmentedAttention", "SwiGLU", "NoChannelMixer", "MixtureOfExperts"]
