"""The jobs of an experiment preset's own sweep, without running them.

``python -m zoo.train -m experiment=<name>`` expands the preset's ``hydra.sweeper.params``
(group options such as ``arch`` included, globs resolved) into one list of overrides per job;
``sweep_jobs`` does the same through Hydra's basic sweeper, so a test or a cost estimate sees
exactly the configs the sweep would train.
"""

from __future__ import annotations

from hydra import compose, initialize_config_dir

from .labels import CONFIG_DIR

# What a stage or a repeat varies within one architecture and setting.
REPEATS = ("seed=", "optim.lr=")


def sweep_jobs(experiment: str, *extra: str) -> list[list[str]]:
    """Each job's overrides, in the sweep's order: ``experiment=<experiment>``, the preset's
    sweep parameters, then ``extra`` (fixed overrides or further sweeps, ``a=1,2``)."""
    from hydra._internal.config_loader_impl import ConfigLoaderImpl
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra._internal.utils import create_config_search_path
    from hydra.core.override_parser.overrides_parser import OverridesParser

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        hcfg = compose("train", overrides=[f"experiment={experiment}"], return_hydra_config=True)
    params = [f"{k}={v}" for k, v in (hcfg.hydra.sweeper.params or {}).items()]
    loader = ConfigLoaderImpl(config_search_path=create_config_search_path(str(CONFIG_DIR)))
    parsed = OverridesParser.create(config_loader=loader).parse_overrides(
        [f"experiment={experiment}", *params, *extra])
    return [job for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]


def distinct_jobs(experiment: str, *extra: str) -> list[list[str]]:
    """One job per architecture and setting of the sweep: its seeds and learning rates
    (``REPEATS``) left out."""
    out: dict[tuple[str, ...], list[str]] = {}
    for job in sweep_jobs(experiment, *extra):
        out.setdefault(tuple(o for o in job if not o.startswith(REPEATS)), job)
    return [list(k) for k in out]
