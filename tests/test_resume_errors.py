"""Resuming a run whose files were left damaged, or refusing to reuse one: one error naming the
file or folder and what to do, never a traceback without a name nor a silently smaller result.
Also a run whose agent checkpoint does not fit the env: refused before anything is written."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest

from bow_gym.cli import main
from bow_gym.rounds import RoundsConfig, StageFileError, run_rounds

TINY = dict(dataset="synthetic", dataset_kwargs={"n_images": 8, "size": 96}, rounds=2,
            clicks_per_image=2, segmenter="light", segmenter_kwargs={"epochs": 1, "size": 64},
            examples=0, feature_cache=None, progress=False, tensorboard=False, device="cpu",
            agent="reinforce", agent_kwargs={"policy": "patches"}, top_k=0.5)
KEYS = ("round", "target", "fill_holes", "dice_mean", "hd95_mean")


def _metrics(run: Path) -> list[list[str]]:
    with open(run / "metrics.csv", newline="") as f:
        return [[row[k] for k in KEYS] for row in csv.DictReader(f)]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("resume") / "run"
    run_rounds(RoundsConfig(**TINY), out)
    return out


def _damaged_copy(run: Path, tmp_path: Path, name: str) -> tuple[Path, Path]:
    """A copy of the run with round 2 not done and its ``name`` cut to half its bytes (a run
    killed while the file was written by something other than our atomic writers, a full
    disk, a partial copy)."""
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    rd = copy / "round_02"
    (rd / "done.json").unlink()
    if name == "segmenter.safetensors":  # read back only when its predictions are missing
        (rd / "predictions.npz").unlink()
    path = copy / name if name == "config.json" else rd / name
    if name == "agent.safetensors":  # read back by round 2's labelling
        path = copy / "round_01" / name
        (rd / "labels.npz").unlink()
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])
    return copy, path


@pytest.mark.parametrize("name", ["labels.npz", "predictions.npz", "segmenter.safetensors",
                                  "quality.csv", "agent.safetensors", "config.json",
                                  "metrics.json"])
def test_a_truncated_stage_file_is_named_with_what_to_do(run, tmp_path, name):
    copy, path = _damaged_copy(run, tmp_path, name)
    if name == "metrics.json":  # a finished round's metrics, read when the table is rewritten
        path = copy / "round_01" / "metrics.json"
        path.write_text(path.read_text()[:20])
    # Before: BadZipFile "File is not a zip file" (labels, predictions), a JSON error without
    # the file (config, metrics), or for quality.csv no error at all: the half table kept fewer
    # images and the run went on with other numbers.
    with pytest.raises(StageFileError, match=rf"{path.parent.name}/{name} cannot be read back "
                                             r".*Delete it to redo its stage.*--out NEW"):
        run_rounds(RoundsConfig(**TINY), copy)
    if name in ("labels.npz", "predictions.npz", "quality.csv"):
        path.unlink()  # as the message says: the stage is redone, the seeded run repeats
        run_rounds(RoundsConfig(**TINY), copy)
        assert _metrics(copy) == _metrics(run)


def _cli_args(out: Path) -> list[str]:
    return ["rounds", "--set", "dataset_kwargs={n_images=8, size=96}", "--rounds", "2",
            "--clicks-per-image", "2", "--set", "segmenter_kwargs={epochs=1, size=64}",
            "--set", "feature_cache='none'", "--set", "progress=false",
            "--set", "tensorboard=false", "--set", "examples=0", "--set", "top_k=0.5",
            "--agent", "reinforce", "--set", "agent_kwargs={policy='patches'}",
            "--device", "cpu", "--out", str(out)]


def test_cli_no_resume_on_a_run_folder_is_one_line(run, capsys):
    # Before: a FileExistsError traceback out of bow-gym rounds.
    assert main(_cli_args(run) + ["--no-resume"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert f"{run} already holds a run" in err
    assert "drop --no-resume" in err and "another --out" in err


def test_cli_truncated_stage_file_is_one_line(run, tmp_path, capsys):
    copy, path = _damaged_copy(run, tmp_path, "labels.npz")
    assert main(_cli_args(copy)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(path) in err and "Delete it" in err


def test_an_agent_checkpoint_for_other_observations_is_refused_up_front(tmp_path):
    from agents.reinforce import ReinforceAgent

    ReinforceAgent(5, seed=0).save(tmp_path / "five.safetensors")  # trained with the clicks
    cfg = RoundsConfig(**{**TINY, "agent_kwargs": {},
                          "agent_checkpoint": str(tmp_path / "five.safetensors")})
    # Before: round 1 started (round_01/ written), then a convolution error at the first click.
    with pytest.raises(ValueError, match=r"agent_checkpoint='.*five\.safetensors'.*does not fit "
                                         r"the env: .*\(in_channels\) 5, the env gives 4 "
                                         r"\(include_clicks=False"):
        run_rounds(cfg, tmp_path / "r")
    assert not (tmp_path / "r").exists()
    ok = RoundsConfig(**{**cfg.__dict__, "env_kwargs": {"include_clicks": True}, "rounds": 1})
    assert run_rounds(ok, tmp_path / "r5")


def test_a_run_without_empty_ground_truth_has_no_ground_truth_groups(run):
    """The synthetic images all have a lesion: no [non-empty-gt]/[empty-gt] rows, empty_gt 0
    (tests/test_empty_ground_truth.py checks a data set with empty masks)."""
    from benchmarks import lib
    from bow_gym.figures import load_run

    data = load_run(run)
    assert not any("gt]" in row["target"] for row in data.metrics)
    assert lib.rounds_targets(data.metrics) == [("all", "prediction")]
    assert {row["empty_gt"] for row in data.per_image} == {"0"}

