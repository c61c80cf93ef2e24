"""task=lm through zoo.train: perplexity in the logs and the record, bad data paths fail before
any work, and perplexity is exp of the mean token loss, checked by hand."""

import math

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from zoo.module import ZooModule
from zoo.train import run


@pytest.fixture
def lm_overrides(tmp_path, write_corpus):
    write_corpus(tmp_path / "text")
    return lambda *extra: _overrides(tmp_path, *extra)


def _overrides(tmp_path, *extra):
    return ("task=lm", f"task.data_files={tmp_path / 'text'}/*.txt", "task.vocab_size=300",
            "task.seq_len=32", f"task.cache_dir={tmp_path / 'cache'}", *extra)


def test_tiny_lm_run_records_perplexity(make_cfg, lm_overrides):
    record = run(make_cfg(*lm_overrides("task.eval_lengths=[32,64]")))
    assert record["status"] == "completed"
    m = record["metrics"]
    for key in ("val/ppl", "test/ppl", "test/ppl@len=32", "test/ppl@len=64"):
        assert math.isfinite(m[key]) and 1.0 < m[key] < 300 * 1.5, key
    for ppl, loss in [("val/ppl", "val/loss"), ("test/ppl", "test/loss"),
                      ("test/ppl@len=64", "test/loss@len=64")]:
        assert m[ppl] == pytest.approx(math.exp(m[loss]), rel=1e-12)
    assert m["test/ppl"] == m["test/ppl@len=32"]
    assert 0.0 <= m["test/acc"] <= 1.0 and "test/exact_match" not in m, "lm reports ppl, acc"
    es = record["config"]["early_stopping"]
    assert (es["monitor"], es["mode"]) == ("val/ppl", "min"), "selected on validation ppl"
    assert set(record["leakage"]) == {"val", "test"}
    assert record["state_size"] == 2 * 2 * 32 * 32  # KV cache: 2 layers, T=32, D=32


def test_an_explicit_monitor_is_kept(make_cfg, lm_overrides):
    record = run(make_cfg(*lm_overrides("early_stopping.monitor=val/acc")))
    assert record["config"]["early_stopping"]["monitor"] == "val/acc"
    assert record["config"]["early_stopping"]["mode"] == "max"


@pytest.mark.parametrize("override,message", [
    ("task.data_files=/no/such/dir", "data_files='/no/such/dir' matches no file"),
    ("task.data_files=/no/such/*.txt", "data_files=.* matches no file"),
    ("EMPTY", "data_files=.* matches only empty files"),
])
def test_missing_or_empty_data_fails_before_any_work(make_cfg, tmp_path, override, message):
    if override == "EMPTY":
        (tmp_path / "empty").mkdir()
        (tmp_path / "empty" / "a.txt").write_text("")
        override = f"task.data_files={tmp_path / 'empty'}"
    with pytest.raises(ValueError, match=message):
        run(make_cfg("task=lm", override))
    assert not (tmp_path / "results").exists()
    assert not (tmp_path / "out").exists()


def test_ppl_is_exp_of_the_mean_token_loss_by_hand():
    """Two validation batches of different sizes: the metric averages over tokens (not
    batches), then exponentiates; a model with constant logits has perplexity V exactly."""
    V = 50
    model = {"vocab_size": V, "d_model": 16, "n_layers": 1, "pattern": ["attention"],
             "mixer_options": {"attention": {"num_heads": 2}}}
    optim = {"lr": 1e-3, "weight_decay": 0.0}
    module = ZooModule(model, optim, metrics=("ppl", "loss", "acc"))
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randint(0, V, (b, 12), generator=g), torch.randint(0, V, (b, 12),
                                                                         generator=g))
               for b in (3, 1)]
    with torch.no_grad():
        nll = torch.cat([-F.log_softmax(module.model(x).double(), -1)
                         .gather(-1, y[..., None]).flatten() for x, y in batches])
    hand = float(nll.mean())  # 48 tokens, each weighted the same
    per_batch = math.exp(sum(float(n.mean()) for n in nll.split([36, 12])) / 2)

    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False,
                        enable_model_summary=False)
    trainer.validate(module, dataloaders=DataLoader(batches, batch_size=None), verbose=False)
    assert module.metrics["val/loss"] == pytest.approx(hand, rel=1e-5)
    assert module.metrics["val/ppl"] == pytest.approx(math.exp(hand), rel=1e-5)
    assert abs(module.metrics["val/ppl"] - per_batch) > 1e-3, "a token average, not per batch"

    with torch.no_grad():
        module.model.norm.weight.zero_()  # hidden states 0: every logit 0, uniform over V
    trainer.validate(module, dataloaders=DataLoader(batches, batch_size=None), verbose=False)
    assert module.metrics["val/ppl"] == pytest.approx(V, rel=1e-6)
    assert set(module.metrics) == {"val/ppl", "val/loss", "val/acc"}
