"""Known-answer tests for the arithmetic behind the benchmarks' headline numbers."""

from __future__ import annotations

import csv
import json
import math
import re

import numpy as np
import pytest
from _support import tiny_units

from benchmarks.compare_policies import gaps_closed, main
from benchmarks.lib.data import DataSource, data_configs
from benchmarks.lib.learners import clicks_to_90, learner_spec, run_name
from bow_gym.datasets import make_dataset

SYNTHETIC = DataSource("synthetic", None, {"n_images": 200})


def _summary(ds: str, **dice5: float) -> list[dict]:
    return [{"dataset": ds, "policy": k, "dice@5": v} for k, v in dice5.items()]


def test_learner_spec_overrides_arguments():
    spec, kwargs = learner_spec("answer_model")
    assert spec.name == "answer_model" and kwargs == {}
    spec, kwargs = learner_spec("reinforce_patches:lr=0.003:baseline=value")
    assert spec.args_class().__name__ == "ReinforceArgs"
    assert kwargs == {"policy": "patches", "lr": 0.003, "baseline": "value"}
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
        cfg = data_configs([SYNTHETIC], transductive=False, split_seed=split_seed)
        kw = cfg["synthetic"]
        assert kw["trainer"]["env_kwargs"]["dataset_kwargs"]["split_seed"] == split_seed
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
    from benchmarks.lib.data import shared_data
    from benchmarks.lib.stats import t_interval

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
    (["--dataset", "bogus"], "--dataset: unknown data set 'bogus'; registered: "),
    (["--dataset", "synthetic", "--dataset", "nope"], "--dataset: unknown data set 'nope'"),
    (["--datasets", "bogus"], "--dataset: unknown data set 'bogus'"),  # the deprecated spelling
    (["--datasets", ","], "--datasets: expected comma-separated data set names"),
    (["--data", "/no/such/dir"], "--data /no/such/dir: no such folder"),
    (["--dataset", "kvasir-seg", "--root", "/no/such/dir"], "--root /no/such/dir: no such folder"),
    (["--root", ".", "--dataset", "kvasir-seg"], "--root PATH must follow the --dataset NAME"),
    (["--dataset", "synthetic", "--root", "."], "--dataset synthetic: data set 'synthetic' is "
                                                   "generated, not read from files"),
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
    main(["--dataset", "synthetic", "--agents", "reinforce_patches", "--answers", "16",
          "--seeds", "1", "--validation", "--no-progress", "--out", str(tmp_path)])
    last = capsys.readouterr().out.splitlines()[-1]
    assert last.startswith("gap_closed: ") and last.endswith("(validation images, not the test part)")


@pytest.mark.parametrize("argv, message", [
    (["--seeds", "0"], "need --seeds >= 1, --answers >= 1"),
    (["--answers", "-1"], "need --seeds >= 1, --answers >= 1"),
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

    units, fp = tiny_units(2), {"agents": "reinforce", "answers": 16}
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
        json.dumps({"settings": {**fp, "answers": 8}, "rows": [], "histories": {}}))
    mixed = run_units(units, ["reinforce"], 16, tmp_path / "par", fp, resume=True, progress=False)
    assert "unit-split0-seed1.json: made with other settings" in capsys.readouterr().out
    assert _without_time(mixed) == _without_time(seq)


def test_reference_clickers_writes_the_greedy_reference(tmp_path, capsys):
    from benchmarks.reference_clickers import main as reference_clickers

    with pytest.raises(SystemExit):
        reference_clickers(["--splits", "-1", "--out", str(tmp_path)])
    assert "--splits must be >= 0" in capsys.readouterr().err
    reference_clickers(["--synthetic-images", "8", "--limit", "4", "--seeds", "1",
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
    first_click(["--dataset", "synthetic", "--belief-ceiling", "--belief", "context",
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
    first_click(["--dataset", "synthetic", "--belief-ceiling", "--belief", "hybrid", "--augment",
                 "--steps", "3", "--out", str(tmp_path)])
    saved = json.loads((tmp_path / "first_click.json").read_text())
    assert saved["settings"]["augment"] is True
    assert 0.0 < saved["rows"][0]["ceiling_dice@5"] <= 1.0


@pytest.mark.parametrize("argv, message", [
    (["--rows", "full,nope"], "--rows: expected a comma-separated subset of full, full_reinforce"),
    (["--protocols", "heldout,x"], "--protocols: expected a comma-separated subset of heldout"),
    (["--agent", "nope"], "--agent: unknown agent 'nope'"),
    (["--rounds", "0"], "--rounds must be >= 1, got 0"),
    (["--seeds", "a,b"], "--seeds: expected distinct comma-separated integers, got 'a,b'"),
    (["--jobs", "0"], "--jobs must be at least 1, got 0"),
    (["--lever", "no_trust"], "--lever: expected NAME KEY=VALUE [KEY=VALUE ...], got ['no_trust']"),
    (["--lever", "x", "agent=random"], "--lever: lever 'x' changes ['agent']"),
    (["--lever", "a-b", "top_k=0.5"], "--lever: a lever's name must be a word"),
    (["--lever", "x", "top_k=0.5", "--lever", "x", "top_k=0.2"], "--lever: lever 'x' given twice"),
    (["--lever", "x", "top_k"], "--lever: --set expects KEY=VALUE, got 'top_k'"),
    (["--lever", "x", "no_such_key=1"], "unknown config key(s) ['no_such_key']"),
    (["--rows", "random", "--lever", "x", "top_k=0.5"], "--lever: a lever is paired against the "
                                                        "full row; add full to --rows"),
])
def test_ablation_refuses_bad_arguments_before_writing(argv, message, tmp_path, capsys):
    from benchmarks.ablation import main as ablation

    with pytest.raises(SystemExit):
        ablation([*argv, "--out", str(tmp_path / "out")])
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_ablation_levers_are_full_rows_with_one_change_paired_against_full(tmp_path, capsys):
    from benchmarks.ablation import main as ablation

    out = tmp_path / "out"
    ablation(["--dataset", "synthetic", "--rounds", "1", "--seeds", "0", "--rows", "full",
              "--protocols", "transductive", "--limit", "6", "--set", "segmenter_kwargs={epochs=1}",
              "--lever", "half", "top_k=0.5", "--lever", "half_trust",
              "label_trust={untouched=0.5}", "carry_evidence=false", "--out", str(out)])
    printed = capsys.readouterr().out
    runs = out / "runs" / "transductive"
    full = json.loads((runs / "full-s0" / "config.json").read_text())
    half = json.loads((runs / "lever_half-s0" / "config.json").read_text())
    half_trust = json.loads((runs / "lever_half_trust-s0" / "config.json").read_text())
    # each lever is the full row with only its own fields changed
    assert full["top_k"] == 1.0 and full["label_trust"] == {} and full["carry_evidence"] is True
    assert {k for k in full if full[k] != half[k]} == {"top_k", "name"}
    assert {k for k in full if full[k] != half_trust[k]} == {"label_trust", "carry_evidence", "name"}
    assert half["agent"] == full["agent"] == "answer_model" and half["adapt"] is True
    saved = json.loads((out / "ablation.json").read_text())
    pairs = {(x["a"], x["b"]) for x in saved["protocols"]["transductive"]["paired"]}
    assert {("lever_half", "full"), ("lever_half_trust", "full")} <= pairs
    assert "round 1: lever_half - full:" in printed
    rows = {t["row"]: t["label"] for t in saved["protocols"]["transductive"]["table"]}
    assert rows["lever_half_trust"] == ("full method: answer_model + adaptation, with "
                                        "label_trust={'untouched': 0.5}, carry_evidence=False")


def test_adaptation_names_a_missing_checkpoint(tmp_path, capsys):
    from benchmarks.adaptation import main as adaptation

    with pytest.raises(SystemExit) as exc:
        adaptation(["--checkpoint", str(tmp_path / "none.pth"), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.startswith("usage: python -m benchmarks.adaptation")
    assert f"--checkpoint {tmp_path / 'none.pth'}: no such file" in err
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------ results layout, run.json
def test_run_names_derive_from_the_arguments_as_typed():
    from benchmarks.lib.results import derive_run_name

    assert derive_run_name([]) == "default"
    assert derive_run_name(["--agents", "answer_model,ppo", "--answers", "6000", "--jobs", "2",
                            "--dataset", "kvasir-seg", "--root", "/data/kvasir-seg",
                            "--out", "out/x"]) == "agents-answer_model,ppo_answers-6000_dataset-kvasir-seg"
    assert derive_run_name(["runs/a", "runs/b/", "--top-k=0.5"]) == "a_b_top-k-0.5"
    long = derive_run_name(["--agents", ",".join(["answer_model_hybrid"] * 9)])
    assert len(long) == 80 and long != derive_run_name(["--agents", ",".join(["x"] * 60)])


def test_every_run_writes_run_json_beside_its_tables(tmp_path, monkeypatch, capsys):
    from benchmarks.lib import results
    from benchmarks.lib.results import RUN_KEYS
    from benchmarks.reference_clickers import main as reference_clickers

    monkeypatch.setattr(results, "RESULTS", tmp_path / "results")
    argv = ["--dataset", "synthetic", "--synthetic-images", "4", "--seeds", "2", "--no-progress"]
    reference_clickers(argv)
    folder = tmp_path / "results" / "reference_clickers" / "dataset-synthetic_synthetic-images-4_seeds-2"
    record = json.loads((folder / "run.json").read_text())
    assert list(record) == list(RUN_KEYS)
    assert record["script"] == "reference_clickers" and record["run"] == folder.name
    assert record["command"] == "python -m benchmarks.reference_clickers " + " ".join(argv)
    assert (len(record["git_commit"]) == 40 or record["git_commit"] == "unknown")
    assert isinstance(record["git_dirty"], bool)
    assert record["date"].endswith("+00:00") and record["machine"]["cpu_count"] >= 1
    assert record["seeds"] == [0, 1] and record["protocol"] == "first-images"
    assert record["datasets"] == ["synthetic"]
    assert (folder / "reference_clickers.csv").is_file()
    with pytest.raises(ValueError, match="exactly the keys"):
        results.write_run_json(tmp_path, {"script": "x"})


def test_cross_data_set_transfer_evaluates_on_every_image_of_the_other_set():
    from benchmarks.compare_policies import run_unit
    from benchmarks.lib.data import DataSource

    skin = DataSource("synthetic", None, {"n_images": 5, "size": 64, "flavour": "skin"})
    unit, = tiny_units(1, evals=(skin,))
    assert unit.cfg["transfer"]["synthetic->synthetic"]["dataset_kwargs"] == skin.kwargs
    rows, _ = run_unit(unit, [], 8, None, progress=False)
    assert [(r["dataset"], r["policy"]) for r in rows] == [
        ("synthetic", "random"), ("synthetic", "gt"),
        ("synthetic->synthetic", "random"), ("synthetic->synthetic", "gt")]
    assert rows[0]["dice@5"] != rows[2]["dice@5"]  # other images


def test_old_flag_spellings_still_work_with_a_warning(tmp_path):
    import argparse

    from benchmarks.lib.learners import add_answers_argument

    p = argparse.ArgumentParser()
    add_answers_argument(p)
    with pytest.warns(FutureWarning, match="--clicks is deprecated: use --answers"):
        assert p.parse_args(["--clicks", "40"]).answers == 40
    assert p.parse_args([]).answers == 2000
    with pytest.warns(FutureWarning, match="--datasets is deprecated: use --dataset NAME"):
        main(["--datasets", "synthetic", "--agents", "reinforce_patches", "--answers", "8",
              "--seeds", "1", "--validation", "--no-progress", "--out", str(tmp_path)])
    assert json.loads((tmp_path / "run.json").read_text())["protocol"] == "validation"


@pytest.mark.real_data
@pytest.mark.slow
@pytest.mark.parametrize("dataset, folder, empty_gt", [
    ("busi", "samples/Dataset_BUSI_with_GT", True),
    ("cvc-clinicdb", "samples/CVC-ClinicDB", False),
    ("isic2018", "samples/ISIC2018", False),
])
def test_ablation_runs_unchanged_on_every_data_set_layout(dataset, folder, empty_gt, shared_data,
                                                          tmp_path, capsys, monkeypatch):
    from benchmarks.ablation import main as ablation

    monkeypatch.setenv("BOW_GYM_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "out"
    ablation(["--dataset", dataset, "--root", str(shared_data / folder), "--rounds", "2",
              "--seeds", "0", "--rows", "full,random,supervised", "--protocols", "transductive",
              "--set", "segmenter_kwargs={epochs=1}", "--out", str(out)])
    lines = capsys.readouterr().out.rstrip().splitlines()
    assert lines[-2].startswith("full_round5_minus_round1: ")
    assert lines[-1].startswith("full_round5_over_supervised: ")
    saved = json.loads((out / "ablation.json").read_text())
    assert saved["seeds"] == [0] and saved["base"]["dataset"] == dataset
    table = saved["protocols"]["transductive"]["table"]
    assert {(t["row"], t["round"]) for t in table} == {
        ("full", 1), ("full", 2), ("random", 1), ("random", 2), ("supervised", 2)}
    # images with empty ground truth (BUSI normal) are reported apart
    assert ("prediction[empty-gt]" in table[0]) == empty_gt
    assert (out / "ablation.png").stat().st_size > 0
    assert json.loads((out / "run.json").read_text())["script"] == "ablation"


def test_mask_threshold_rescores_stored_predictions(tmp_path, capsys):
    """0.5 re-scored from the stored probabilities is the run's own prediction Dice, and the
    paired difference is match_area minus 0.5 on the same images."""
    from benchmarks.mask_threshold import main as mask_threshold
    from bow_gym.rounds import RoundsConfig, run_rounds

    runs = tmp_path / "runs"
    tiny = dict(dataset="synthetic", dataset_kwargs={"n_images": 12, "size": 96}, rounds=2,
                clicks_per_image=2, segmenter_kwargs={"epochs": 2, "size": 64}, examples=0,
                feature_cache=None, progress=False, tensorboard=False, device="cpu")
    for seed in (0, 1):
        run_rounds(RoundsConfig(**{**tiny, "seed": seed}), runs / f"base-s{seed}")
    with pytest.raises(SystemExit):
        mask_threshold(["--runs", str(runs), "--rows", "other", "--out", str(tmp_path / "x")])
    assert "no rounds run with stored predictions" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
    out = tmp_path / "out"
    mask_threshold(["--runs", str(runs), "--out", str(out)])
    saved = json.loads((out / "mask_threshold.json").read_text())
    assert saved["seeds"] == [0, 1] and sorted(saved["rows"]["base"]) == ["1", "2"]
    for r in (1, 2):
        recorded = []
        for seed in (0, 1):
            with open(runs / f"base-s{seed}" / "metrics.csv") as f:
                recorded += [float(x["dice_mean"]) for x in csv.DictReader(f)
                             if x["round"] == str(r) and x["target"] == "prediction"
                             and x["fill_holes"] == "0"]
        s = saved["rows"]["base"][str(r)]
        assert s["half"] == pytest.approx(np.mean(recorded) * 100)
        assert s["run"] == s["half"]  # these runs cut at 0.5
        assert s["match_area_minus_half"]["mean"] == pytest.approx(s["match_area"] - s["half"])
    assert (out / "mask_threshold.png").is_file() and (out / "run.json").is_file()
