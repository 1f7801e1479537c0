"""Known-answer tests for the arithmetic behind the benchmarks' headline numbers."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest

from benchmarks.compare_policies import (
    clicks_to_90,
    data_configs,
    gaps_closed,
    learner_spec,
    main,
    run_name,
)
from bow_gym.datasets import make_dataset


def _summary(ds: str, **dice5: float) -> list[dict]:
    return [{"dataset": ds, "policy": k, "dice@5": v} for k, v in dice5.items()]


def test_learner_spec_overrides_arguments():
    assert learner_spec("answer_model") == ("answer_model", {})
    assert learner_spec("reinforce_patches:lr=0.003:baseline=value") == (
        "reinforce", {"policy": "patches", "lr": 0.003, "baseline": "value"})
    assert run_name("answer_model:width=32:device='cpu'") == "answer_model_width-32_device-_cpu_"


def test_gaps_closed_known_answer():
    summary = _summary("kv", random=0.2, gt=0.7, a=0.6, b=0.45)
    best, value = gaps_closed(summary, ["a", "b"])["kv"]
    assert best == "a"
    assert value == pytest.approx(0.8)


def test_gaps_closed_can_exceed_one_and_skips_data_without_a_gap():
    summary = _summary("easy", random=0.2, gt=0.6, a=0.7) + _summary("flat", random=0.5, gt=0.5, a=0.6)
    gaps = gaps_closed(summary, ["a"])
    assert gaps["easy"] == ("a", pytest.approx(1.25))
    assert "flat" not in gaps


def test_gaps_closed_per_split_follow_the_overall_best_agent():
    from benchmarks.compare_policies import gaps_closed_per_split

    dice = {0: {"random": 0.2, "gt": 0.7, "a": 0.6, "b": 0.5},   # a best on split 0
            1: {"random": 0.2, "gt": 0.6, "a": 0.4, "b": 0.5},   # b best on split 1
            2: {"random": 0.4, "gt": 0.4, "a": 0.5, "b": 0.5}}   # no gap on split 2
    per_seed = [{"dataset": "kv", "split": sp, "seed": seed, "policy": pol, "dice@5": d + shift}
                for sp, by in dice.items() for pol, d in by.items()
                for seed, shift in ((0, -0.01), (1, 0.01))]
    a1, a2, a3 = gaps_closed_per_split(per_seed, {"kv": "a"}, 3)["kv"]
    assert (a1, a2) == (pytest.approx(0.8), pytest.approx(0.5)) and np.isnan(a3)
    assert gaps_closed_per_split(per_seed, {"kv": "b"}, 2)["kv"] == [pytest.approx(0.6),
                                                                      pytest.approx(0.75)]


def test_clicks_to_90_known_answer():
    clicks = list(range(1, 101))
    reward = [min(i, 50) / 50 for i in clicks]  # rises linearly to 1 at click 50, then flat
    # window 1: the first click whose reward reaches 0.02 + 0.9 * (1.0 - 0.02) = 0.902 is 46
    assert clicks_to_90(clicks, reward, window=1) == 46
    assert math.isnan(clicks_to_90(clicks, [0.5] * 100))


def test_split_seeds_give_disjoint_parts_and_different_test_sets():
    tests = []
    for split_seed in (0, 1):
        cfg = data_configs(["synthetic"], None, transductive=False, split_seed=split_seed)
        kw = cfg["synthetic"]
        assert kw["reinforce"]["env_kwargs"]["dataset_kwargs"]["split_seed"] == split_seed
        train = make_dataset("synthetic", **kw["train"]["dataset_kwargs"])
        test = make_dataset("synthetic", **kw["test"]["dataset_kwargs"])
        assert not set(train.ids) & set(test.ids)
        assert len(train) + len(test) == 200
        tests.append(set(test.ids))
    assert tests[0] != tests[1]


@pytest.mark.parametrize("argv, message", [
    (["--splits", "0"], "--splits must be at least 1"),
    (["--transductive", "--splits", "2"], "needs held-out evaluation"),
    (["--jobs", "0"], "--jobs must be at least 1, got 0"),
])
def test_bad_arguments_are_refused(argv, message, capsys):
    with pytest.raises(SystemExit):
        main(argv)
    assert message in capsys.readouterr().err


def test_named_data_folders_must_exist(tmp_path, monkeypatch):
    from benchmarks._common import shared_data, t_interval

    with pytest.raises(FileNotFoundError, match="--data /no/such/dir: no such folder"):
        shared_data("/no/such/dir")
    monkeypatch.setenv("BOW_GYM_SHARED_DATA", "/no/such/dir")
    with pytest.raises(FileNotFoundError, match="BOW_GYM_SHARED_DATA='/no/such/dir'"):
        shared_data()
    monkeypatch.setenv("BOW_GYM_SHARED_DATA", str(tmp_path))
    assert shared_data() == tmp_path
    mean, lo, hi = t_interval([0.4])
    assert mean == 0.4 and np.isnan(lo) and np.isnan(hi)
    assert t_interval([0.4, 0.4]) == (0.4, 0.4, 0.4)


@pytest.mark.parametrize("argv, message", [
    (["--datasets", "bogus"], "--datasets: expected a comma-separated subset of synthetic, "
                              "kvasir-seg, got 'bogus'"),
    (["--datasets", ","], "--datasets: expected a comma-separated subset"),
    (["--data", "/no/such/dir"], "--data /no/such/dir: no such folder"),
])
@pytest.mark.parametrize("module", ["compare_policies", "first_click", "click_budget"])
def test_benchmarks_refuse_bad_data_before_writing(module, argv, message, tmp_path, capsys):
    import importlib

    bench = importlib.import_module(f"benchmarks.{module}")
    with pytest.raises(SystemExit) as exc:
        bench.main([*argv, "--out", str(tmp_path / "out")])
    assert exc.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_validation_runs_say_so_on_their_last_line(tmp_path, capsys):
    main(["--datasets", "synthetic", "--agents", "reinforce_patches", "--clicks", "16",
          "--seeds", "1", "--validation", "--no-progress", "--out", str(tmp_path)])
    last = capsys.readouterr().out.splitlines()[-1]
    assert last.startswith("gap_closed: ") and last.endswith("(validation images, not the test part)")


@pytest.mark.parametrize("argv, message", [
    (["--seeds", "0"], "need --seeds >= 1, --clicks >= 1"),
    (["--clicks", "-1"], "need --seeds >= 1, --clicks >= 1"),
    (["--variants", "default,nope"], "--variants: expected a comma-separated subset of default"),
])
def test_reinforce_ablation_refuses_bad_numbers_before_writing(argv, message, tmp_path, capsys):
    from benchmarks.reinforce_ablation import main as reinforce_ablation

    with pytest.raises(SystemExit):
        reinforce_ablation([*argv, "--out", str(tmp_path / "out")])
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("top_k", ["1.5", "0", "half"])
def test_pseudo_label_quality_refuses_shares_outside_zero_one(top_k, tmp_path, capsys):
    from benchmarks.pseudo_label_quality import main as pseudo_label_quality

    with pytest.raises(SystemExit):
        pseudo_label_quality([str(tmp_path), "--top-k", top_k, "--out", str(tmp_path / "out")])
    assert "--top-k: expected comma-separated shares in (0, 1]" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_replot_names_the_missing_file(tmp_path):
    with pytest.raises(SystemExit, match="compare_policies.json not found"):
        main(["--replot", str(tmp_path)])


def test_replot_redraws_figures(tmp_path):
    rows = [{"dataset": "synthetic", "policy": p, "split": 0, "seed": s, "dice@5": d + 0.01 * s,
             "better_share": b} for p, d, b in (("random", 0.2, 0.2), ("gt", 0.8, 0.5),
                                                ("dqn", 0.6, 0.6)) for s in range(2)]
    summary = [{"dataset": "synthetic", "policy": p,
                **{f"dice@{k}{x}": d for k in range(1, 6) for x in ("", "_ci_low", "_ci_high")}}
               for p, d in (("random", 0.2), ("gt", 0.8), ("dqn", 0.6))]
    curve = {"clicks": list(range(8, 208, 8)), "reward": list(np.linspace(-0.5, 0.5, 25))}
    (tmp_path / "compare_policies.json").write_text(json.dumps(
        {"summary": summary, "per_seed": rows, "curves": {"synthetic/dqn": [curve, curve]}}))
    main(["--replot", str(tmp_path)])
    for name in ("learning_curves.png", "dice_vs_clicks.png", "reward_vs_dice.png"):
        assert (tmp_path / name).stat().st_size > 1000


@pytest.mark.parametrize("argv, message", [
    (["--budgets", "0,100"], "--budgets: comma-separated positive integers expected"),
    (["--budgets", "ten"], "--budgets: comma-separated positive integers expected"),
    (["--agents", "nope"], "--agents: unknown learner 'nope'"),
    (["--agents", "dqn:depth=3"], "--agents: 'dqn:depth=3' sets ['depth']"),
    (["--agents", "dqn:lr"], "--agents: 'lr' in 'dqn:lr' is not field=value"),
    (["--agents", "answer_model:epsilon=2"],
     "--agents: 'answer_model:epsilon=2': epsilon must be in [0, 1], got 2"),
    (["--agents", "maskable_ppo_belief_aux:aux_coef=-1"],
     "--agents: 'maskable_ppo_belief_aux:aux_coef=-1': aux_coef must be >= 0, got -1"),
])
def test_click_budget_refuses_bad_arguments(argv, message):
    from benchmarks.click_budget import main as click_budget

    with pytest.raises(SystemExit, match=re.escape(message)):
        click_budget(argv)


def test_reinforce_ablation_refuses_the_auxiliary_loss_without_a_belief():
    from benchmarks.reinforce_ablation import main as reinforce_ablation

    with pytest.raises(SystemExit, match="--variants aux needs --policy belief"):
        reinforce_ablation(["--policy", "patches", "--variants", "default,aux"])


def _tiny_units(seeds: int) -> list:
    from benchmarks.compare_policies import Unit

    cfg = data_configs(["synthetic"], None, transductive=False)["synthetic"]
    small = {"n_images": 20, "size": 64}
    for part in ("train", "test"):
        cfg[part] = {**cfg[part], "obs_size": 64,
                     "dataset_kwargs": {**cfg[part]["dataset_kwargs"], **small}}
    kw = cfg["reinforce"]["env_kwargs"]
    cfg["reinforce"] = {**cfg["reinforce"], "env_kwargs": {
        **kw, "obs_size": 64, "dataset_kwargs": {**kw["dataset_kwargs"], **small}}}
    return [Unit("synthetic", cfg, 0, seed) for seed in range(seeds)]


def _without_time(results) -> str:
    # As JSON text, so that a NaN (clicks_to_90 of a flat curve) equals itself.
    return json.dumps([[{k: v for k, v in row.items() if k != "train_s"} for row in rows]
                       for rows, _ in results])


def test_parallel_runs_match_sequential_ones_and_resume_reuses_them(tmp_path, capsys):
    import torch

    # One torch thread here and in the spawned workers, so both do the same arithmetic.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _check_parallel_and_resume(tmp_path, capsys)
    finally:
        torch.set_num_threads(threads)


def _check_parallel_and_resume(tmp_path, capsys):
    from benchmarks.compare_policies import run_units

    units, fp = _tiny_units(2), {"agents": "reinforce", "clicks": 16}
    seq = run_units(units, ["reinforce"], 16, tmp_path / "seq", fp, jobs=1, progress=False)
    par = run_units(units, ["reinforce"], 16, tmp_path / "par", fp, jobs=2, threads=1,
                    progress=False)
    assert [r["seed"] for rows, _ in par for r in rows] == [0, 0, 0, 1, 1, 1]
    assert _without_time(par) == _without_time(seq)
    assert [h["reinforce"]["reward"] for _, h in par] == [h["reinforce"]["reward"] for _, h in seq]
    # Every finished run was saved; a resumed call trains nothing and returns them as they were.
    capsys.readouterr()
    again = run_units(units, ["reinforce"], 16, tmp_path / "par", fp, jobs=2, threads=1,
                      resume=True, progress=False)
    assert json.dumps(again) == json.dumps(par)
    assert capsys.readouterr().out.count("(reused)") == 6
    # A saved run made with other settings is trained again, and the call says why.
    (tmp_path / "par" / "runs" / "synthetic" / "unit-split0-seed1.json").write_text(
        json.dumps({"settings": {**fp, "clicks": 8}, "rows": [], "histories": {}}))
    mixed = run_units(units, ["reinforce"], 16, tmp_path / "par", fp, resume=True, progress=False)
    assert "unit-split0-seed1.json: made with other settings" in capsys.readouterr().out
    assert _without_time(mixed) == _without_time(seq)


def test_reference_clickers_writes_the_greedy_reference(tmp_path, capsys):
    from benchmarks.reference_clickers import main as reference_clickers

    with pytest.raises(SystemExit):
        reference_clickers(["--splits", "-1", "--out", str(tmp_path)])
    assert "--splits must be >= 0" in capsys.readouterr().err
    reference_clickers(["--synthetic-images", "8", "--kvasir-images", "4", "--seeds", "1",
                        "--no-progress", "--out", str(tmp_path)])
    saved = json.loads((tmp_path / "reference_clickers.json").read_text())
    at5 = {r["policy"]: r["mean_dice"] for r in saved["rows"]
           if r["dataset"] == "synthetic" and r["clicks"] == 5}
    assert set(at5) == {"random", "gt", "gt_greedy"}
    assert at5["gt_greedy"] > at5["gt"] > at5["random"]
    assert saved["greedy_gap_closed"]["synthetic"] > 1.0
    assert (tmp_path / "reference_clickers.png").is_file()
    assert capsys.readouterr().out.splitlines()[-1].startswith("kvasir_gt_clicker_dice_at_5: ")


def test_first_click_belief_ceiling_over_seeds(tmp_path, capsys):
    from benchmarks.first_click import main as first_click

    with pytest.raises(SystemExit):
        first_click(["--seeds", "0", "--out", str(tmp_path)])
    assert "--seeds and --steps must be >= 1" in capsys.readouterr().err
    first_click(["--datasets", "synthetic", "--belief-ceiling", "--belief", "context",
                 "--global-offset", "--steps", "3", "--seeds", "2", "--out", str(tmp_path)])
    row = json.loads((tmp_path / "first_click.json").read_text())["rows"][0]
    per_seed = [float(v) for v in row["ceiling_dice@5_per_seed"].split()]
    assert len(per_seed) == 2 and row["ceiling_dice@5"] == pytest.approx(np.mean(per_seed), abs=1e-4)
    assert 0.0 < row["ceiling_dice@5"] <= 1.0 and row["ceiling_steps"] == 3
    assert 0.4 < row["better_share"] < 0.6  # about half of all first clicks touch the lesion


def test_first_click_ceiling_augment(tmp_path, capsys):
    from benchmarks.first_click import main as first_click

    with pytest.raises(SystemExit):
        first_click(["--belief-ceiling", "--belief", "features", "--augment", "--out", str(tmp_path)])
    assert "--augment flips images: it needs --belief image, hybrid or residual" in \
        capsys.readouterr().err
    assert not (tmp_path / "first_click.json").exists()
    first_click(["--datasets", "synthetic", "--belief-ceiling", "--belief", "hybrid", "--augment",
                 "--steps", "3", "--out", str(tmp_path)])
    saved = json.loads((tmp_path / "first_click.json").read_text())
    assert saved["settings"]["augment"] is True
    assert 0.0 < saved["rows"][0]["ceiling_dice@5"] <= 1.0


@pytest.mark.parametrize("argv, message", [
    (["--variants", "full,nope"], "--variants: expected a comma-separated subset of full, no_lora"),
    (["--rounds", "0"], "--rounds must be >= 1, got 0"),
    (["--seeds", "a,b"], "--seeds: expected comma-separated integers, got 'a,b'"),
])
def test_ablation_refuses_bad_arguments_before_writing(argv, message, tmp_path, capsys):
    from benchmarks.ablation import main as ablation

    with pytest.raises(SystemExit):
        ablation([*argv, "--out", str(tmp_path / "out")])
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_adaptation_names_a_missing_checkpoint(tmp_path, capsys):
    from benchmarks.adaptation import main as adaptation

    with pytest.raises(SystemExit) as exc:
        adaptation(["--checkpoint", str(tmp_path / "none.pth"), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.startswith("usage: python -m benchmarks.adaptation")
    assert f"--checkpoint {tmp_path / 'none.pth'}: no such file" in err
    assert not (tmp_path / "out").exists()
