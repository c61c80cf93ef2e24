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
