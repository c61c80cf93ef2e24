import json

import pytest
import torch

from layers.registry import SequenceMixer
from zoo import ess
from zoo.plots import ess_by_position
from zoo.model import Backbone


def test_mixer_inputs_are_the_normed_residual_stream():
    torch.manual_seed(0)
    model = Backbone(16, d_model=16, n_layers=2, pattern=["gla", "attention"]).eval()
    tokens = torch.randint(0, 16, (2, 12))
    xs = ess.mixer_inputs(model, tokens)
    assert len(xs) == 2 and xs[0].shape == (2, 12, 16)
    with torch.no_grad():
        assert torch.allclose(xs[0], model.blocks[0].norm1(model.embed(tokens)))


def test_layer_ess_of_each_sequence_equals_the_batched_operators():
    """layer_ess takes the operator a sequence at a time (memory at long lengths): the same
    ESS by sequence, head and position as the whole batch's operator."""
    torch.manual_seed(0)
    model = Backbone(16, d_model=16, n_layers=2, pattern=["mamba", "gla"]).eval()
    tokens = torch.randint(0, 16, (3, 23))
    got = ess.layer_ess(model, tokens, positions=[1, 7, 22])
    for block, x, entry in zip(model.blocks, ess.mixer_inputs(model, tokens), got):
        with torch.no_grad():
            want = ess.E.ess(block.mixer.operator(x), [1, 7, 22])
        assert entry["ess"].tolerance.shape == want.tolerance.shape == (3, entry["heads"], 3)
        assert torch.equal(entry["ess"].positions, want.positions)
        assert torch.allclose(entry["ess"].tolerance, want.tolerance)
        assert torch.allclose(entry["ess"].entropy, want.entropy, rtol=1e-4, atol=1e-5)


class Shift(SequenceMixer):
    """A token shift: causal, but with no operator (every registered mixer has one)."""

    def forward(self, x):
        return torch.nn.functional.pad(x, (0, 0, 1, -1))


def test_summary_skips_mixers_without_an_operator():
    torch.manual_seed(0)
    model = Backbone(16, d_model=32, n_layers=2, pattern="gla")
    model.blocks[0].mixer = Shift()
    out = ess.ess_summary(model, torch.randint(0, 16, (3, 200)), max_positions=20)
    assert out["layers"]["0"] is None and out["layers"]["1"]["mixer"] == "gla"
    assert out["positions"] == 20 and out["sequences"] == 3
    json.dumps(out)  # goes into the run record as is



def _old_summary(model, tokens):
    """What runs recorded before ESS was bounded: each layer's operator on 8 sequences in one
    batch, every position (every committed record, all at T <= 64)."""
    out = []
    for block, x in zip(model.blocks, ess.mixer_inputs(model, tokens[:8])):
        with torch.no_grad():
            op = block.mixer.operator(x)
        out.append(ess.E.summary(ess.E.ess(op)))
    return out


def test_the_defaults_measure_what_committed_records_measured_at_64():
    torch.manual_seed(0)
    model = Backbone(16, d_model=128, n_layers=2, pattern=["mamba", "attention"]).eval()
    tokens = torch.randint(0, 16, (10, 64))  # mamba's 256 heads: the largest such operator
    out = ess.ess_summary(model, tokens, **ess.summary_kwargs(ess.settings(None)))
    assert (out["sequences"], out["seq_len"], out["input_len"]) == (8, 64, 64)
    assert out["positions"] == 63 and out["positions_at"] == list(range(1, 64))
    for i, want in enumerate(_old_summary(model, tokens)):
        row = out["layers"][str(i)]
        # a sequence at a time since 9b7b09c: entropy-ESS to rounding (the batched eigensolves)
        assert row["tolerance"] == want["tolerance"]
        assert row["entropy"] == pytest.approx(want["entropy"], rel=1e-9)


@pytest.mark.parametrize("pattern", [["mamba", "attention"], ["gla", "swa"]])
def test_a_capped_length_measures_the_prefix_of_the_whole_operator(pattern):
    """max_len L: the ESS of the top-left L x L block of each layer's operator on the whole
    sequence (causal mixers), at the recorded positions, and the record says so."""
    torch.manual_seed(1)
    model = Backbone(16, d_model=16, n_layers=2, pattern=pattern).eval()
    tokens = torch.randint(0, 16, (3, 41))
    out = ess.ess_summary(model, tokens, max_sequences=2, max_positions=5, max_len=17)
    at = [1, 5, 8, 12, 16]  # linspace(1, 16, 5) rounded (8.5 to even)
    assert (out["sequences"], out["seq_len"], out["input_len"]) == (2, 17, 41)
    assert out["positions"] == 5 and out["positions_at"] == at
    for i, (block, x) in enumerate(zip(model.blocks, ess.mixer_inputs(model, tokens[:2]))):
        with torch.no_grad():
            whole = block.mixer.operator(x)  # [2, heads, 41, 41]
        want = ess.E.summary(ess.E.ess(whole[..., :17, :17], at))
        row = out["layers"][str(i)]
        assert row["tolerance"] == want["tolerance"]
        assert row["entropy"] == pytest.approx(want["entropy"], rel=1e-5)
        assert row["tss"] == block.mixer.state_size(17)


def test_run_ess_applies_a_runs_settings_to_every_slice():
    import tasks

    torch.manual_seed(0)
    task = tasks.build("state_size", seq_len=32, kv_pairs=[2, 4])
    variants = {**task.eval_variants(),  # kv=2, kv=4
                "long": tasks.build("state_size", seq_len=48, kv_pairs=[4])}
    model = Backbone(task.io["vocab_size"], d_model=16, n_layers=2, pattern="gla").eval()
    out = ess.run_ess(model, task, variants, seed=0,
                      given={"sequences": 3, "positions": 4, "max_len": 20})
    assert (out["sequences"], out["seq_len"], out["input_len"], out["positions"]) == (3, 20, 32, 4)
    assert out["slices"]["long"]["input_len"] == 48
    for entry in out["slices"].values():
        assert entry["seq_len"] == 20 and entry["positions_at"] == out["positions_at"]
    assert out["slices"]["kv=2"]["kv"] == 2 and out["slices"]["kv=2"]["input_len"] == 32
    json.dumps(out)
    # unbounded: the whole sequence, all positions
    whole = ess.run_ess(model, task, {}, seed=0, given={"max_len": None, "positions": 64})
    assert (whole["seq_len"], whole["positions"], whole["sequences"]) == (32, 31, 8)


@pytest.mark.parametrize("given,knob", [
    ({"max_len": 1}, "ess.max_len"), ({"max_len": 2.5}, "ess.max_len"),
    ({"sequences": 0}, "ess.sequences"), ({"positions": "all"}, "ess.positions"),
    ({"positions": True}, "ess.positions"), ({"length": 64}, "ess.length"), ([8], "ess")])
def test_bad_ess_settings_name_the_knob(given, knob):
    from zoo.validate import ConfigError

    with pytest.raises(ConfigError, match=rf"^{knob}=") as e:
        ess.settings(given)
    assert e.value.knob == knob
    assert "sequences, positions, max_len" in str(e.value) or "must be an int" in str(e.value)


def test_a_bad_ess_knob_stops_a_run_before_any_work(make_cfg, tmp_path):
    from zoo.train import run

    with pytest.raises(ValueError, match=r"ess.max_len=1: must be an int >= 2 or null"):
        run(make_cfg("+ess.max_len=1"))
    assert not (tmp_path / "results").exists()


def test_cli_fresh_prints_a_table_and_writes_the_plot(capsys, tmp_path):
    png = tmp_path / "sub" / "e.png"
    ess.main(["--fresh", "--layer", "linear_attn", "--d-model", "32", "--seq-len", "40",
              "--plot", str(png)])
    out = capsys.readouterr().out
    assert "| 0 | linear_attn | all |" in out and "| 1 | linear_attn | 3 |" in out
    assert f"plot written to {png}" in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def test_cli_default_plot_path(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ess.main(["--fresh", "--layer", "gla", "--d-model", "32", "--seq-len", "24", "--n-layers", "1"])
    assert "plot written to ess-fresh-gla-T24.png" in capsys.readouterr().out
    assert (tmp_path / "ess-fresh-gla-T24.png").stat().st_size > 0
    record = {"run_id": "r1", "best_checkpoint": "outputs/t/gla/day/checkpoints/best.ckpt"}
    assert ess.default_plot_path(None, record) == tmp_path.joinpath(
        "outputs/t/gla/day/ess-r1.png").relative_to(tmp_path)


def test_plot_without_operator_layers_writes_nothing(tmp_path):
    assert "no plot" in ess_by_position([None, None], tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def test_cli_missing_checkpoint_says_so(tmp_path):
    rec = {"schema_version": 1, "run_id": "r1", "status": "completed", "time": "", "task": "t",
           "layer": "gla", "config": {}, "seed": 0, "metrics": {},
           "best_checkpoint": str(tmp_path / "gone.ckpt")}
    (tmp_path / "t" / "gla").mkdir(parents=True)
    (tmp_path / "t" / "gla" / "r1.json").write_text(json.dumps(rec))
    with pytest.raises(SystemExit, match="gone.ckpt.* is missing"):
        ess.main(["--run-id", "r1", "--results", str(tmp_path)])
    with pytest.raises(SystemExit, match="no record with run_id 'r2'"):
        ess.main(["--run-id", "r2", "--results", str(tmp_path)])
