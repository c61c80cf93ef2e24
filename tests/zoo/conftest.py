from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"


@pytest.fixture
def make_cfg(tmp_path):
    """Compose the training config as the CLI would, with a tiny debug setting and outputs
    under tmp_path."""

    def _make(*overrides: str):
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            return compose("train", overrides=["debug=tiny", f"results_dir={tmp_path / 'results'}",
                                               f"out_dir={tmp_path / 'out'}", "logger=csv",
                                               *overrides])

    return _make
