"""The report's plots as a reader meets them: runs named by their swept values, only results that vary."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from ti_experiments.report import labels, plot_evaluation, plot_sweep, varying_metrics


def _run(tmp_path: Path, num_vectors: int, lr: float, seed: int, heldout: float, clip_i: float) -> dict:
    config = {"concept.num_vectors": num_vectors, "optimizer.lr": lr, "seed": seed, "validation.seed": seed,
              "train.max_steps": 300}
    summary = {"final_loss": 0.3 + heldout / 10, "avg_loss": 0.31, "heldout_loss": heldout,
               "heldout_loss_init": 0.81, "clip_i": clip_i, "best_step": 100, "num_images": 6}
    metrics = [{"step": 300, "heldout_loss": heldout, "heldout_loss_init": 0.81, "clip_i": clip_i}]
    return {"dir": tmp_path / f"{num_vectors}-{lr}-{seed}", "config": config, "summary": summary,
            "record": {"status": "completed"}, "metrics": metrics}


def _sweep(tmp_path):
    return [_run(tmp_path, nv, lr, seed, 0.35 - 0.02 * (nv == 4) + 0.001 * seed, 0.70 + 0.01 * seed)
            for nv in (1, 4) for lr in (1e-4, 5e-4, 2e-3) for seed in (0, 1)]


def test_runs_are_named_by_their_swept_values_and_the_seed_once(tmp_path):
    runs = _sweep(tmp_path)
    assert labels(runs, [])[2] == "num_vectors=1, lr=5e-4, seed=0"  # validation.seed follows seed: not named


def test_only_the_results_that_vary_are_plotted_one_panel_each(tmp_path):
    runs = _sweep(tmp_path)
    # constants (the initializer's loss, avg_loss here) and bookkeeping (best_step, num_images) are left out
    assert varying_metrics(runs) == ["heldout_loss", "clip_i", "final_loss"]
    assert plot_sweep(tmp_path / "sweep.png", runs, ["concept.num_vectors", "optimizer.lr", "seed"]) == [
        "heldout_loss", "clip_i", "final_loss"]
    width, height = Image.open(tmp_path / "sweep.png").size
    assert width > height  # three panels side by side, the legend below


def test_one_evaluation_point_still_shows_the_initializer(tmp_path):
    run = _run(tmp_path, 1, 5e-4, 0, 0.35, 0.7)
    assert plot_evaluation(tmp_path / "evaluation.png", [run], ["run"])
    import numpy as np

    pixels = np.asarray(Image.open(tmp_path / "evaluation.png").convert("RGB")).astype(int)
    # the initializer's line: a long dashed grey row (antialiased: any grey between black and white)
    grey = (pixels.max(-1) - pixels.min(-1) <= 6) & (pixels.mean(-1) > 90) & (pixels.mean(-1) < 200)
    assert grey.sum(1).max() > 100
