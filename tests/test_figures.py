"""Figures from run directories: loading, the four PNGs, errors and the command line."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest

from bow_gym.figures import (
    FIGURE_NAMES,
    _moving_average,
    load_run,
    main,
    make_figures,
    plot_qualitative,
)

METRIC_COLUMNS = ["round", "target", "split", "fill_holes", "n", "dice_mean", "dice_ci_low",
                  "dice_ci_high", "iou_mean", "hd95_mean", "hd95_median", "hd95_ci_low",
                  "hd95_ci_high", "better_share", "kept"]
PER_IMAGE_COLUMNS = ["round", "target", "fill_holes", "image_id", "dice", "iou", "hd95"]
CLICK_COLUMNS = ["step", "round", "image_id", "click", "label", "reward"]
SPLITS = {"initial": "train", "pseudo": "train", "prediction": "test"}


def _write_csv(path: Path, columns: list[str], rows: list[dict]) -> None:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def write_fake_run(root: Path, name: str = "full", *, rounds: int = 3, images: int = 4,
                   clicks: int = 5, size: int = 32, seed: int = 0) -> Path:
    """A run directory in the pipeline's format: ``rounds`` finished rounds and one more
    (``round_{rounds + 1}``) with files but no ``done.json``, as a run still going."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True)
    (root / "config.json").write_text(json.dumps(
        {"name": name, "rounds": rounds + 1, "clicks": clicks, "agent": "reinforce",
         "dataset": "synthetic", "protocol": "default"}))
    metrics, step = [], 1
    for r in range(1, rounds + 2):
        round_dir = root / f"round_{r:02d}"
        round_dir.mkdir()
        per_image, click_rows = [], []
        ids = [f"img{i}" for i in range(images)]
        for target in ("initial", "pseudo", "prediction"):
            for fill in (0, 1):
                dice = np.clip(rng.normal(0.5 + 0.1 * r, 0.1, images), 0, 1)
                hd = rng.uniform(2, 20, images)
                hd[0] = math.nan  # an empty mask
                for image_id, d, h in zip(ids, dice, hd, strict=True):
                    per_image.append({"round": r, "target": target, "fill_holes": fill,
                                      "image_id": image_id, "dice": d, "iou": d / (2 - d),
                                      "hd95": h})
                metrics.append({
                    "round": r, "target": target, "split": SPLITS[target], "fill_holes": fill,
                    "n": images, "dice_mean": dice.mean(), "dice_ci_low": dice.mean() - 0.05,
                    "dice_ci_high": dice.mean() + 0.05, "iou_mean": 0.4,
                    "hd95_mean": np.nanmean(hd), "hd95_median": np.nanmedian(hd),
                    "hd95_ci_low": np.nanmean(hd) - 1,
                    # one nan CI bound: what an all-empty round would write
                    "hd95_ci_high": math.nan if r == 2 else np.nanmean(hd) + 1,
                    "better_share": 0.6, "kept": 0.75})
        for image_id in ids:
            for c in range(1, clicks + 1):
                reward = 1 if rng.random() < 0.6 else -1
                click_rows.append({"step": step, "round": r, "image_id": image_id, "click": c,
                                   "label": int(rng.integers(0, 2)), "reward": reward})
                step += 1
        _write_csv(round_dir / "per_image.csv", PER_IMAGE_COLUMNS, per_image)
        _write_csv(round_dir / "clicks.csv", CLICK_COLUMNS, click_rows)
        masks = {k: rng.random((images, size, size)) > 0.6
                 for k in ("initial", "pseudo", "prediction", "ground_truth")}
        masks["ground_truth"][1] = False  # an image without lesion: no contour to draw
        np.savez(round_dir / "examples.npz", ids=np.array(ids),
                 image=rng.integers(0, 256, (images, size, size, 3), dtype=np.uint8), **masks)
        if r <= rounds:
            (round_dir / "done.json").write_text("{}")
    _write_csv(root / "metrics.csv", METRIC_COLUMNS, metrics)
    (root / "metrics.json").write_text(json.dumps({"rows": metrics}, default=float))
    return root


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    return write_fake_run(tmp_path / "run_full")


def _check_png(path: Path, min_height: int = 200, min_width: int = 300) -> None:
    assert path.is_file() and path.stat().st_size > 0, path
    image = cv2.imread(str(path))
    assert image is not None, f"{path} is not a decodable image"
    height, width = image.shape[:2]
    assert height >= min_height and width >= min_width, (path, image.shape)
    assert image.std() > 1.0, f"{path} is blank"


def test_load_run_parses_numbers_and_ignores_unfinished_round(run_dir):
    run = load_run(run_dir)
    assert run.name == "full" and run.config["clicks"] == 5
    assert run.rounds == [1, 2, 3]
    row = run.metrics[0]
    assert isinstance(row["round"], int) and isinstance(row["fill_holes"], int)
    assert isinstance(row["n"], int) and isinstance(row["dice_mean"], float)
    assert isinstance(row["target"], str) and row["split"] in ("train", "test")
    assert any(math.isnan(r["hd95_ci_high"]) for r in run.metrics)
    # round 4 has files and metrics rows but no done.json
    assert {r["round"] for r in run.metrics} == {1, 2, 3}
    assert {r["round"] for r in run.per_image} == {1, 2, 3}
    assert {r["round"] for r in run.clicks} == {1, 2, 3}
    assert len(run.metrics) == 3 * 3 * 2
    assert len(run.clicks) == 3 * 4 * 5
    assert [c["step"] for c in run.clicks] == list(range(1, 61))
    assert {c["reward"] for c in run.clicks} <= {1.0, -1.0}
    assert isinstance(run.per_image[0]["dice"], float)
    assert isinstance(run.per_image[0]["image_id"], str)
    assert sorted(run.example_paths) == [1, 2, 3]
    examples = run.examples()
    assert examples["pseudo"].dtype == bool and examples["pseudo"].shape == (4, 32, 32)
    assert examples["image"].shape == (4, 32, 32, 3) and list(examples["ids"])[0] == "img0"
    with pytest.raises(ValueError, match="round 4 is not a finished round"):
        run.examples(4)


def test_make_figures_writes_four_pngs(run_dir, tmp_path):
    paths = make_figures([run_dir])
    assert [p.name for p in paths] == list(FIGURE_NAMES)
    assert all(p.parent == run_dir / "figures" for p in paths)
    for path in paths:
        _check_png(path)
    # atomic writes leave no temporary files behind
    assert sorted(p.name for p in (run_dir / "figures").iterdir()) == sorted(FIGURE_NAMES)


def test_qualitative_other_round_and_bad_round(run_dir, tmp_path):
    out = plot_qualitative(run_dir, tmp_path / "q.png", round=1, n=2)
    _check_png(out, min_height=150)
    with pytest.raises(ValueError, match="not a finished round"):
        plot_qualitative(run_dir, tmp_path / "q.png", round=4)


def test_missing_metrics_names_the_path(run_dir):
    (run_dir / "metrics.csv").unlink()
    with pytest.raises(FileNotFoundError) as info:
        load_run(run_dir)
    message = str(info.value)
    assert str(run_dir) in message
    assert "not a bow-gym run directory (no metrics.csv)" in message


def test_run_without_examples_skips_fig4(run_dir, tmp_path, monkeypatch):
    import bow_gym.figures as figures

    def fake_plot(runs, out_path, **kwargs):  # only make_figures' choices are under test here
        Path(out_path).parent.mkdir(parents=True, exist_ok=True)
        Path(out_path).write_bytes(b"png")
        return Path(out_path)

    for name in ("plot_round_metrics", "plot_dice_distributions", "plot_reward_curves"):
        monkeypatch.setattr(figures, name, fake_plot)
    (run_dir / "round_03" / "examples.npz").unlink()
    with pytest.warns(UserWarning, match="round 3 saved no examples.npz"):
        paths = make_figures(run_dir, tmp_path / "out")
    assert [p.name for p in paths] == list(FIGURE_NAMES[:3])
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(FIGURE_NAMES[:3])


def test_empty_csv_is_no_rows(run_dir):
    (run_dir / "round_02" / "clicks.csv").write_text("\r\n")  # csv.DictWriter with no rows
    run = load_run(run_dir)
    assert {c["round"] for c in run.clicks} == {1, 3}


def test_missing_metrics_column_is_named(run_dir):
    text = (run_dir / "metrics.csv").read_text().replace("dice_ci_low", "dice_lo", 1)
    (run_dir / "metrics.csv").write_text(text)
    with pytest.raises(ValueError, match=r"metrics\.csv: missing column\(s\) dice_ci_low"):
        load_run(run_dir)


def test_round_column_must_match_folder(run_dir):
    path = run_dir / "round_02" / "clicks.csv"
    path.write_text(path.read_text().replace(",2,img", ",1,img"))  # 0-based writer
    with pytest.raises(ValueError, match="round 2"):
        load_run(run_dir)


def test_label_count_mismatch(run_dir, tmp_path, capsys):
    other = write_fake_run(tmp_path / "run_b", "b", seed=2)
    with pytest.raises(ValueError, match=r"got 1 label\(s\) .* for 2 run directories"):
        make_figures([run_dir, other], tmp_path / "out", labels=["only"])
    assert not (tmp_path / "out").exists()
    assert main([str(run_dir), str(other), "--labels", "a,b,c"]) == 2
    assert "got 3 label(s)" in capsys.readouterr().err


def test_main_overlays_runs_and_prints_paths(run_dir, tmp_path, capsys):
    # a second run with fewer rounds: the overlay must cope with rounds one run lacks
    other = write_fake_run(tmp_path / "run_random", "random", rounds=2, seed=1)
    out = tmp_path / "cli"
    assert main([str(run_dir), str(other), "--out", str(out), "--labels", "full,random"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed == [str(out / name) for name in FIGURE_NAMES]
    for path in printed:
        _check_png(Path(path))
    assert not (run_dir / "figures").exists()


def test_main_reports_missing_run(tmp_path, capsys):
    assert main([str(tmp_path / "nowhere")]) == 2
    assert "nowhere" in capsys.readouterr().err


def test_moving_average_is_trailing():
    values = np.array([1, -1, 1, 1, -1], dtype=float)
    np.testing.assert_allclose(_moving_average(values, 2), [1, 0, 0, 1, 0])
    np.testing.assert_allclose(_moving_average(values, 10), np.cumsum(values) / np.arange(1, 6))
