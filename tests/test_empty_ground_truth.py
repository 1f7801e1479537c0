"""Images with empty ground truth are reported apart in every benchmark, the multi-round run's
tables and its figures: ``<name>[non-empty-gt]`` and ``<name>[empty-gt]`` beside ``<name>``.

On an empty ground truth every click from an empty mask is answered "worse" and undone, so every
policy keeps Dice 1.0 there; mixed into one mean, such images lift random clicking and a good
agent alike. These tests run on a folder data set with two empty masks out of eight (always) and
on the BUSI samples, two of whose seven images are ``normal`` (with ``../shared/data``)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from bow_gym.datasets import make_dataset
from bow_gym.metrics import ground_truth_groups, ground_truth_label

EMPTY = ("img0", "img3")


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """Eight synthetic polyp images as a ``folder`` data set; img0 and img3 have empty masks."""
    root = tmp_path_factory.mktemp("with-empty")
    synthetic = make_dataset("synthetic", n_images=8, size=96, flavour="polyp")
    (root / "images").mkdir()
    (root / "masks").mkdir()
    for k, sample in enumerate(synthetic):
        cv2.imwrite(str(root / "images" / f"img{k}.png"), sample.image[..., ::-1])
        mask = np.zeros_like(sample.mask) if f"img{k}" in EMPTY else sample.mask
        cv2.imwrite(str(root / "masks" / f"img{k}.png"), mask.astype(np.uint8) * 255)
    return root


def _csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_groups_and_labels():
    groups = ground_truth_groups([False, True, False])
    assert list(groups) == ["all", "non_empty", "empty"]
    assert groups["empty"].tolist() == [False, True, False]
    assert list(ground_truth_groups([False, False])) == ["all"]  # no empty: reported as before
    assert list(ground_truth_groups([True, True])) == ["all", "empty"]
    assert ground_truth_label("busi", "all") == "busi"
    assert ground_truth_label("busi", "empty") == "busi[empty-gt]"
    assert ground_truth_label("prediction", "non_empty") == "prediction[non-empty-gt]"
    with pytest.raises(ValueError, match="group"):
        ground_truth_label("busi", "normal")


def test_evaluation_reports_the_groups_apart_and_all_is_their_mix(folder):
    import gymnasium as gym

    from benchmarks import lib
    from bow_gym.agent_registry import make_agent

    env = gym.make("BetterWorseSeg-v0", dataset="folder", root=str(folder), feature_cache=None)
    assert lib.empty_ground_truth(env).tolist() == [f"img{k}" in EMPTY for k in range(8)]
    for name in ("random", "gt"):
        res = lib.evaluate_by_ground_truth(make_agent(name), env, seed=0)
        assert [res[g]["images"] for g in ("all", "non_empty", "empty")] == [8, 6, 2]
        # Every click on an empty ground truth is answered "worse" and undone: Dice 1, no "better".
        assert res["empty"]["dice"] == [1.0] * 5 and res["empty"]["better_share"] == 0.0
        mixed = (6 * np.array(res["non_empty"]["dice"]) + 2 * np.array(res["empty"]["dice"])) / 8
        np.testing.assert_allclose(res["all"]["dice"], mixed)
        assert res["all"]["dice"][-1] > res["non_empty"]["dice"][-1]  # what the mix hid
        assert lib.evaluate(make_agent(name), env, seed=0) == res["all"]


def _benchmark_data(shared: Path | None, folder: Path) -> list[str]:
    if shared is None:
        return ["--dataset", "folder", "--root", str(folder)]
    return ["--dataset", "busi", "--root", str(shared / "samples" / "Dataset_BUSI_with_GT")]


@pytest.mark.parametrize("data", ["folder", "busi"])
def test_compare_policies_click_budget_and_paired_report_empty_ground_truth_apart(
        tmp_path, folder, data, request, capsys):
    from benchmarks import click_budget, compare_policies, paired

    shared = request.getfixturevalue("shared_data") if data == "busi" else None
    name = "busi" if data == "busi" else "folder"
    args = _benchmark_data(shared, folder)
    compare_policies.main([*args, "--transductive", "--agents", "answer_model", "--answers", "16",
                           "--seeds", "1", "--no-progress", "--out", str(tmp_path / "cp")])
    summary = _csv(tmp_path / "cp" / "summary.csv")
    labels = list(dict.fromkeys(r["dataset"] for r in summary))
    assert labels == [name, f"{name}[non-empty-gt]", f"{name}[empty-gt]"]
    at5 = {(r["dataset"], r["policy"]): float(r["dice@5"]) for r in summary}
    for policy in ("random", "gt", "answer_model"):
        assert at5[(f"{name}[empty-gt]", policy)] == 1.0
        assert at5[(f"{name}[non-empty-gt]", policy)] < at5[(name, policy)]
    out = capsys.readouterr().out
    assert f"{name}[non-empty-gt]" in out and f"{name}[empty-gt]" in out
    from PIL import Image

    with Image.open(tmp_path / "cp" / "dice_vs_clicks.png") as im:  # one panel per label
        assert im.size[0] > 2.5 * im.size[1]

    paired.main(["--a", str(tmp_path / "cp"), "--a-policy", "random", "--b", str(tmp_path / "cp"),
                 "--b-policy", "answer_model", "--out", str(tmp_path / "pd")])
    pairs = json.loads((tmp_path / "pd" / "paired.json").read_text())["summary"]
    assert {s["dataset"] for s in pairs} == set(labels)
    assert all(s["diff"] == 0 for s in pairs if s["dataset"] == f"{name}[empty-gt]")

    if data == "busi":
        return  # click_budget trains per budget; once is enough
    click_budget.main([*args, "--agents", "answer_model", "--budgets", "8", "--seeds", "1",
                       "--no-progress", "--out", str(tmp_path / "cb")])
    rows = _csv(tmp_path / "cb" / "click_budget.csv")
    # click_budget evaluates the held-out part: what it holds of the empty images decides
    test = make_dataset("folder", folder, split="test")
    n_empty = sum(test.mask_is_empty(i) for i in range(len(test)))
    expected = {"folder"} | ({"folder[non-empty-gt]", "folder[empty-gt]"}
                             if 0 < n_empty < len(test) else set())
    assert {r["dataset"] for r in rows} == expected


@pytest.mark.real_data
def test_first_click_and_reference_clickers_on_busi_samples(shared_data, tmp_path):
    import gymnasium as gym

    from benchmarks import reference_clickers
    from benchmarks.first_click import first_click_stats

    root = shared_data / "samples" / "Dataset_BUSI_with_GT"
    env = gym.make("BetterWorseSeg-v0", dataset="busi", root=str(root), feature_cache=None)
    stats = {g: s for g, s, _ in first_click_stats(env)}
    # Before, the two normal images were skipped and the busi row held the five lesion images.
    assert [stats[g]["images"] for g in ("all", "non_empty", "empty")] == [7, 5, 2]
    assert stats["empty"]["better_share"] == 0.0 and np.isnan(stats["empty"]["dice_if_better"])
    assert stats["empty"]["dice_best"] == 1.0 and stats["empty"]["dice_gt_clicker"] == 1.0
    assert stats["non_empty"]["better_share"] > stats["all"]["better_share"]

    reference_clickers.main(["--dataset", "busi", "--root", str(root), "--seeds", "1",
                             "--no-progress", "--out", str(tmp_path / "rc")])
    rows = _csv(tmp_path / "rc" / "reference_clickers.csv")
    at5 = {(r["dataset"], r["policy"]): (float(r["mean_dice"]), int(r["images"]))
           for r in rows if r["clicks"] == "5"}
    assert at5[("busi[empty-gt]", "random")] == (1.0, 2)
    assert at5[("busi[non-empty-gt]", "gt")][1] == 5 and at5[("busi", "gt")][1] == 7
    assert at5[("busi[non-empty-gt]", "random")][0] < at5[("busi", "random")][0]


def test_first_click_without_empty_ground_truth_is_one_row_as_before():
    import gymnasium as gym

    from benchmarks.first_click import first_click_stats

    env = gym.make("BetterWorseSeg-v0", dataset_kwargs={"n_images": 3, "size": 96},
                   feature_cache=None)
    (group, stats, pooled), = first_click_stats(env)
    assert group == "all" and stats["images"] == 3 and len(pooled) > 0


def test_rounds_write_empty_gt_and_group_rows_and_the_figure(folder, tmp_path):
    from benchmarks import lib
    from bow_gym.figures import GROUND_TRUTH_FIGURE_NAME, make_figures
    from bow_gym.rounds import RoundsConfig, run_rounds

    cfg = RoundsConfig(dataset="folder", root=str(folder), protocol="transductive", rounds=1,
                       clicks_per_image=2, segmenter="light",
                       segmenter_kwargs={"epochs": 1, "size": 64}, examples=2,
                       feature_cache=None, progress=False, tensorboard=False, device="cpu")
    rows = run_rounds(cfg, tmp_path / "r")
    per_image = _csv(tmp_path / "r" / "round_01" / "per_image.csv")
    flagged = {r["image_id"] for r in per_image if r["empty_gt"] == "1"}
    assert flagged == set(EMPTY)
    by = {(r["target"], r["fill_holes"]): r for r in rows}
    for target in ("initial", "pseudo", "prediction"):
        assert by[(target, 0)]["n"] == 8
        assert by[(f"{target}[non-empty-gt]", 0)]["n"] == 6
        assert by[(f"{target}[empty-gt]", 0)]["n"] == 2
        assert by[(f"{target}[empty-gt]", 1)]["n"] == 2  # after hole filling too
    # Round 1 starts from empty masks: Dice 0 on the lesions, 1 on the empty ground truth.
    assert by[("initial[non-empty-gt]", 0)]["dice_mean"] == 0.0
    assert by[("initial[empty-gt]", 0)]["dice_mean"] == 1.0
    assert by[("initial", 0)]["dice_mean"] == pytest.approx(0.25)
    assert lib.rounds_targets(rows) == [("all", "prediction"),
                                        ("non_empty", "prediction[non-empty-gt]"),
                                        ("empty", "prediction[empty-gt]")]
    paths = make_figures(tmp_path / "r")
    assert (tmp_path / "r" / "figures" / GROUND_TRUTH_FIGURE_NAME) in paths
