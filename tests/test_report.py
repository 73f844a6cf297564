"""The report compares real runs: one row each, the settings that differ, and files on disk."""

from __future__ import annotations

import csv

import pytest
from PIL import Image

import ti_experiments.training.loop as loop
from conftest import TINY_RUN, compose
from ti_experiments.experiment import run
from ti_experiments.report import main, report

pytestmark = pytest.mark.train  # trains the tiny model in-process: seconds each

VALIDATION = ["validation.enabled=true", "validation.steps=null", "validation.num_images=1",
              "validation.num_inference_steps=2"]


@pytest.fixture()
def sweep(tmp_path, monkeypatch):
    for i, lr in enumerate(("1e-3", "1e-2")):
        run(compose(*TINY_RUN, *VALIDATION, f"optimizer.lr={lr}", output_dir=tmp_path / "sweep" / str(i)))
    original = loop.denoising_loss
    monkeypatch.setattr(loop, "denoising_loss", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("x")))
    with pytest.raises(RuntimeError):
        run(compose(*TINY_RUN, *VALIDATION, "optimizer.lr=5e-2", output_dir=tmp_path / "sweep" / "2"))
    monkeypatch.setattr(loop, "denoising_loss", original)
    return tmp_path / "sweep"


def test_report_on_a_sweep_directory(sweep, capsys):
    assert main([str(sweep)]) == 0
    printed = capsys.readouterr().out
    result = report([sweep])
    header, rows = result["header"], result["rows"]
    assert header[:2] == ["run", "optimizer.lr"] and "status" in header and "final_loss" in header
    assert [r[0] for r in rows] == ["0", "1", "2"]
    assert [r[1] for r in rows] == [1e-3, 1e-2, 5e-2]
    status = header.index("status")
    assert [r[status] for r in rows] == ["completed", "completed", "failed"]
    assert rows[0][header.index("final_loss")] > 0 and rows[2][header.index("final_loss")] is None
    assert "| 0 | 0.001 | completed |" in printed
    with open(sweep / "report.csv") as f:
        assert len(list(csv.reader(f))) == 4
    table, failures = (sweep / "report.md").read_text().split("\n## Runs that did not complete\n\n")
    assert table.count("\n") == 5
    assert failures.startswith("- 2: failed: ") and f"(log: {sweep / '2' / 'ti.log'})" in failures
    assert Image.open(sweep / "loss_curves.png").size[0] > 100
    # each run's validation images (a row per run: the runs that made any)
    assert Image.open(sweep / "validation.png").height > 2 * 96
    # the tiny model's runs are evaluated at the end: the held-out loss is a column and has a plot
    assert rows[0][header.index("heldout_loss")] > 0 and rows[2][header.index("heldout_loss")] is None
    assert Image.open(sweep / "evaluation.png").size[0] > 100


def test_report_of_run_directories_into_another_folder(sweep, tmp_path):
    out = tmp_path / "report"
    result = report([sweep / "0", sweep / "1"], out)
    assert len(result["rows"]) == 2 and (out / "report.md").exists()


def test_report_on_nothing_is_a_clean_error(tmp_path, capsys):
    assert main([str(tmp_path / "missing")]) == 2
    assert main([str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 2 and "fix:" in err


def test_settings_over_seeds_compare_the_settings_with_the_seeds_spread(tmp_path):
    from ti_experiments.report import seed_table

    def fake(lr, seed, loss):
        return {"dir": tmp_path / f"{lr}-{seed}", "config": {"optimizer.lr": lr, "seed": seed, "validation.seed": seed},
                "summary": {"heldout_loss": loss}, "record": {}, "metrics": []}

    runs = [fake(1e-3, 0, 0.50), fake(1e-3, 1, 0.52), fake(1e-2, 0, 0.40), fake(1e-2, 1, 0.41)]
    header, rows, lines = seed_table(runs)
    assert header == ["optimizer.lr", "seeds", "heldout_loss mean", "heldout_loss seed spread"]
    assert rows[0][:3] == [1e-3, 2, pytest.approx(0.51)] and rows[1][3] == pytest.approx(0.01)
    assert lines == ["heldout_loss: the settings' means differ by 0.105; the largest spread between seeds of one "
                     "setting is 0.02 (5.2x)"]
    assert seed_table(runs[:1] + runs[2:3]) is None  # one seed: nothing to compare
