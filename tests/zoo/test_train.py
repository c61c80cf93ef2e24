import json
import subprocess
import sys

import pytest
import torch
from lightning.pytorch.callbacks import Callback

from zoo.record import REQUIRED, load_records
from zoo.train import run


def records_in(path):
    return sorted(path.rglob("*.json"))


def test_tiny_run_writes_a_valid_record(make_cfg, tmp_path):
    record = run(make_cfg())
    files = records_in(tmp_path / "results")
    assert len(files) == 1
    assert files[0].parent.parts[-2:] == ("assoc_recall", "attention")
    on_disk = json.loads(files[0].read_text())
    assert on_disk == json.loads(json.dumps(record, default=str))
    assert all(k in on_disk for k in REQUIRED)
    assert on_disk["status"] == "completed" and on_disk["error"] is None
    m = on_disk["metrics"]
    for key in ("val/acc", "test/acc", "test/exact_match", "test/acc@len=64"):
        assert 0.0 <= m[key] <= 1.0
    assert on_disk["steps"] == 8
    assert on_disk["params"] > on_disk["params_non_embedding"] > 0
    assert on_disk["state_size"] == 2 * 2 * 32 * 64  # 2 layers of KV cache at T=64, D=32
    assert on_disk["config"]["layer"]["name"] == "attention"
    assert on_disk["leakage"] == {"val": 0, "test": 0}
    es = on_disk["config"]["early_stopping"]  # resolved from the task: as records always said
    assert (es["monitor"], es["mode"]) == ("val/acc", "max")
    assert set(m) == {f"{s}/{k}" for s in ("val", "test") for k in ("acc", "exact_match", "loss")} \
        | {f"test/{k}@len=64" for k in ("acc", "exact_match", "loss")}
    assert on_disk["packages"]["torch"] == torch.__version__.split("+")[0] or on_disk["packages"]["torch"]
    assert not list((tmp_path / "results").rglob("*.tmp")), "temp files left behind"
    records, problems = load_records(tmp_path / "results")
    assert len(records) == 1 and not problems


class PoisonWeights(Callback):
    """Makes the loss non-finite from the third step on."""

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if trainer.global_step == 2:
            with torch.no_grad():
                module.model.norm.weight.fill_(float("nan"))


def test_nan_loss_stops_and_records_failure(make_cfg, tmp_path):
    record = run(make_cfg(), callbacks=[PoisonWeights()])
    assert record["status"] == "failed"
    assert "non-finite loss" in record["error"] and "batch of step 3" in record["error"]
    # the failing batch took no optimiser step, and the record counts the same steps
    assert "after 2 optimiser steps" in record["error"] and record["steps"] == 2
    assert record["stop_reason"] == "non_finite"
    assert not any(k.startswith("test/") for k in record["metrics"])
    files = records_in(tmp_path / "results")
    assert len(files) == 1

    def no_constants(name):
        raise ValueError(f"not strict JSON: {name}")

    on_disk = json.loads(files[0].read_text(), parse_constant=no_constants)
    assert on_disk["status"] == "failed"


@pytest.mark.parametrize("override,message", [
    ("layer.name=no_such_mixer", "must be one of .*attention"),
    ("+layer.num_hedas=2", "'num_hedas'"),
    ("layer.num_heads=3", "d_model=32 is not divisible by num_heads=3"),
    ("task.num_kv_pairs=17", "num_kv_pairs"),
    ("task.vocab_size=64", "vocab_size"),
    ("task.seq_len=63", "seq_len"),
    ("+task.bogus=1", "'bogus'"),
    ("model.channel=nope", "model.channel=nope: must be one of .*mlp"),
    ("task.batch_size=0", "batch_size"),
    ("threads=0", "threads=0: must be an int >= 1"),
])
def test_bad_input_fails_before_any_work(make_cfg, tmp_path, override, message):
    with pytest.raises(ValueError, match=message):
        run(make_cfg(override))
    assert not (tmp_path / "results").exists()
    assert not (tmp_path / "out").exists()


def cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "zoo.train", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=300)


def test_cli_unknown_layer_lists_choices(tmp_path):
    proc = cli("layer=no_such_mixer", cwd=tmp_path)
    assert proc.returncode != 0
    assert "no_such_mixer" in proc.stderr and "attention" in proc.stderr
    assert not (tmp_path / "results").exists()


def test_cli_tiny_run_from_another_directory(tmp_path):
    proc = cli("debug=tiny", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert not (tmp_path / "results").exists(), "a smoke test must not publish a record"
    assert not (tmp_path / "checkpoints").exists(), "a finished run keeps no checkpoint"
    files = records_in(tmp_path / "runs")
    assert len(files) == 1
    assert json.loads(files[0].read_text())["status"] == "completed"


def test_record_holds_the_ess_summary(make_cfg):
    record = run(make_cfg("layer=gla"))
    ess = record["ess"]
    assert ess["sequences"] == 8 and ess["seq_len"] == 64 and ess["positions"] == 63
    assert set(ess["layers"]) == {"0", "1"}
    for row in ess["layers"].values():
        dk, dv = 16 // 4, 32 // 4  # debug=tiny: d_model 32; GLA keys d/2, values d, 4 heads
        assert row["mixer"] == "gla" and row["heads"] == 4 and row["channels"] == dv
        assert 0 < row["tolerance"] <= dk and 0 < row["entropy"] <= dk + 1e-6
        assert row["tss"] == 4 * dk * dv
        # ESS in floats (rank x value channels) against the state: at most all of it
        assert row["utilisation"] == pytest.approx(4 * dv * row["tolerance"] / row["tss"])
        assert 0 < row["utilisation"] <= 1


def test_state_size_run_records_accuracy_and_ess_per_slice(make_cfg):
    record = run(make_cfg("layer=gla", "task=state_size"))
    slices = record["ess"]["slices"]
    assert list(slices) == ["kv=2", "kv=4", "kv=8", "kv=16"]
    layers = record["ess"]["layers"]
    tss = sum(row["tss"] for row in layers.values())
    assert record["ess"]["total"]["tss"] == tss
    for name, entry in slices.items():
        kv = int(name.split("=")[1])
        assert 0 <= record["metrics"][f"test/acc@{name}"] <= 1
        assert entry["kv"] == kv and entry["tss"] == tss
        assert entry["tolerance_ess"] == pytest.approx(
            sum(r["heads"] * r["channels"] * r["tolerance"] for r in entry["layers"].values()))
        assert 0 < entry["tolerance_ess"] <= tss  # 2 layers of 4 heads, rank <= 4, 8 channels
        assert entry["ess_per_kv"] == pytest.approx(entry["tolerance_ess"] / kv)
        assert entry["entropy_ess_per_kv"] == pytest.approx(entry["entropy_ess"] / kv)
        assert entry["tss_per_kv"] == pytest.approx(tss / kv)
    # each slice is measured on its own inputs, not on one shared batch
    assert len({entry["entropy_ess"] for entry in slices.values()}) == 4


def test_every_test_slice_lands_in_the_record(make_cfg, tmp_path):
    """Per length and per variant: each metric the task reports, for each test set, in the
    record on disk (and the trained length's also unsuffixed)."""
    run(make_cfg("task=induction", "task.distances=[16]", "task.eval_lengths=[64,128]"))
    m = json.loads(records_in(tmp_path / "results")[0].read_text())["metrics"]
    reported = ("acc", "exact_match", "loss")
    slices = {f"test/{k}@{v}" for k in reported for v in ("len=64", "len=128", "ood")}
    assert set(m) == slices | {f"{s}/{k}" for s in ("val", "test") for k in reported}
    assert m["test/acc"] == m["test/acc@len=64"]


def test_a_hybrids_other_mixers_take_their_layer_files_options(make_cfg):
    """[gla, attention] with layer=attention: gla is configs/layer/gla.yaml's gla (not the
    class defaults), mixer_options override it, and the record's config holds every option."""
    from zoo.labels import label, layer_defaults
    from zoo.train import run_config
    cfg = run_config(make_cfg("model.pattern=[gla,attention]",
                              "+model.mixer_options.gla.num_heads=2"))
    gla = cfg["model"]["mixer_options"]["gla"]
    assert gla == {**layer_defaults("gla"), "num_heads": 2}
    assert label(cfg) == "gla(num_heads=2):attention 1:1"
