"""The zoo's task suite: synthetic generators, splits, leakage check and metrics (torch only).

    from tasks import build
    task = build("assoc_recall", seq_len=64, num_kv_pairs=4)
    inputs, targets = task.generate(1000, torch.Generator().manual_seed(0))
"""

from .base import (IGNORE, SPLITS, ContinuousTask, Task, accuracy_counts, build, knobs, leakage,  # noqa: F401
                   make_split, names, nullable, predictions_at, rates, register_task, row_hashes,
                   single_threaded, split_seed)
from .assoc_recall import AssocRecall  # noqa: F401  (registers "assoc_recall")
from .copying import Copying  # noqa: F401  (registers "copying")
from .induction import Induction  # noqa: F401  (registers "induction")
from .memorization import Memorization  # noqa: F401  (registers "memorization")
from .selective_copying import SelectiveCopying  # noqa: F401  (registers "selective_copying")
from .lm import LanguageModel  # noqa: F401  (registers "lm")
from .state_size import StateSize  # noqa: F401  (registers "state_size")
from .icl import ICLGaussianMixture, ICLMultitask, ICLRegression  # noqa: F401  (icl_*)
