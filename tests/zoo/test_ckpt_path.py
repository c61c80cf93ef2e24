"""``ckpt_path=`` on zoo.train: a run starts from a checkpoint's weights. A path that is not a
checkpoint of this model fails in the validation pass naming the knob; a real one gives a first
validation (step 0) equal to the checkpoint's own, is recorded, and is part of the run's
identity by its contents."""

import json
import shutil
import subprocess
import sys

import pytest
import torch
from lightning.pytorch.callbacks import Callback

from zoo.model import Backbone, checkpoint_weights, weights_mismatch
from zoo.record import config_key
from zoo.train import identity, run
from zoo.validate import ConfigError


class FirstValidation(Callback):
    """The module's metrics after its first validation, and the step it ran at."""

    def on_validation_end(self, trainer, module):  # after the module's epoch end
        if not hasattr(self, "metrics"):
            self.metrics, self.step = dict(module.metrics), trainer.global_step


@pytest.fixture
def source(make_cfg, tmp_path):
    """A tiny run that kept its best checkpoint."""
    rec = run(make_cfg("keep_checkpoint=true", f"out_dir={tmp_path / 'a'}"))
    return rec, rec["checkpoint"]["path"]


def test_missing_checkpoint_fails_naming_the_knob_before_any_work(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "zoo.train",
                           f"ckpt_path={tmp_path / 'nowhere' / 'best.ckpt'}"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    (line,) = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert line.startswith("error: ckpt_path=") and "no such checkpoint file" in line
    assert list(tmp_path.iterdir()) == [], "left something behind"


def test_start_from_a_checkpoint(make_cfg, tmp_path, source):
    first, path = source
    saved = torch.load(path, weights_only=False)["zoo"]["val_history"][-1][1]
    seen = FirstValidation()
    rec = run(make_cfg(f"ckpt_path={path}", f"out_dir={tmp_path / 'b'}"), callbacks=[seen])
    assert seen.step == 0 and rec["val_curve"][0][0] == 0
    assert seen.metrics["val/loss"] == saved["loss"], "the checkpoint's weights, as saved"
    assert seen.metrics["val/acc"] == saved["acc"] == rec["val_curve"][0][1]
    sha = rec["started_from"]["sha256"]
    assert rec["started_from"] == {"path": path, "sha256": sha} and len(sha) == 64
    assert rec["config"]["ckpt_path"] == path
    on_disk = json.loads(next((tmp_path / "results").rglob(f"{rec['run_id']}.json")).read_text())
    assert on_disk["started_from"]["sha256"] == sha
    # identity: the weights, not where they lie
    assert rec["config_key"] != first["config_key"]
    assert "ckpt_path" not in first["config"], "a run from scratch records no ckpt_path"
    moved = str(shutil.copy(path, tmp_path / "moved.ckpt"))
    here = config_key(identity({"seed": 0, "ckpt_path": path}, rec["started_from"]))
    there = config_key(identity({"seed": 0, "ckpt_path": moved}, {"path": moved, "sha256": sha}))
    other = config_key(identity({"seed": 0, "ckpt_path": path}, {"path": path, "sha256": "0"}))
    assert here == there != other


def test_a_checkpoint_of_another_model_is_refused(make_cfg, tmp_path, source):
    _, path = source
    with pytest.raises(ConfigError) as e:
        run(make_cfg(f"ckpt_path={path}", "model.d_model=64", f"out_dir={tmp_path / 'c'}"))
    assert e.value.knob == "ckpt_path"
    assert "embed.weight is [8192, 32] there and [8192, 64] in this model" in str(e.value)
    (tmp_path / "junk.ckpt").write_text("not a checkpoint")
    with pytest.raises(ConfigError, match="ckpt_path=.*junk.ckpt: cannot be read"):
        run(make_cfg(f"ckpt_path={tmp_path / 'junk.ckpt'}"))
    with pytest.raises(ConfigError, match="ckpt_path=.*: is a directory"):
        run(make_cfg(f"ckpt_path={tmp_path}"))
    assert not (tmp_path / "c").exists()


def test_checkpoint_weights_and_mismatch(tmp_path):
    torch.manual_seed(0)
    m = Backbone(13, d_model=32, n_layers=2, pattern="attention", channel="mlp")
    torch.save({"state_dict": {f"model.{k}": v for k, v in m.state_dict().items()},
                "other": 1}, tmp_path / "a.ckpt")
    torch.save(m.state_dict(), tmp_path / "b.pt")
    for name in ("a.ckpt", "b.pt"):
        w = checkpoint_weights(tmp_path / name)
        assert weights_mismatch(m, w) is None
        assert all(torch.equal(w[k], v) for k, v in m.state_dict().items())
    wider = Backbone(13, d_model=64, n_layers=2, pattern="attention", channel="mlp")
    assert "embed.weight is [13, 32] there and [13, 64] in this model" in \
        weights_mismatch(wider, checkpoint_weights(tmp_path / "a.ckpt"))
    torch.save({"not": "weights"}, tmp_path / "c.pt")
    with pytest.raises(ValueError, match="holds no model weights"):
        checkpoint_weights(tmp_path / "c.pt")
