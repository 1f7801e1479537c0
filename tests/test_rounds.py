"""The multi-round pipeline: configs, run directory, determinism, resume, smoke runs."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from bow_gym.envs.better_worse_seg import BetterWorseSegEnv
from bow_gym.rounds import RoundsConfig, list_configs, load_config, run_rounds

TINY = dict(dataset="synthetic", dataset_kwargs={"n_images": 12, "size": 96}, rounds=2,
            clicks_per_image=2, segmenter="light", segmenter_kwargs={"epochs": 2, "size": 64},
            examples=3, feature_cache=None, progress=False, tensorboard=False, device="cpu")


def _metrics(run: Path) -> list[dict[str, str]]:
    with open(run / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_shipped_configs_load():
    names = list_configs()
    assert {"synthetic", "kvasir-cpu", "kvasir-cvc", "busi", "isic2018"} <= set(names)
    for name in names:
        cfg = load_config(name)
        assert cfg.rounds == 5 and cfg.clicks_per_image == 5 and cfg.threshold == 0.8
    assert load_config("kvasir-cvc").adapt
    assert load_config("kvasir-cvc").segmenter == "hsnet_released"
    assert load_config("kvasir-cvc").protocol == "transductive"
    assert load_config("kvasir-cpu", root=None).root is None
    assert load_config(None, rounds=2).rounds == 2


def test_config_errors_name_the_problem(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('rounds = 3\ncliks = 5\n')
    with pytest.raises(ValueError, match=r"bad\.toml.*cliks"):
        load_config(bad)
    broken = tmp_path / "broken.toml"
    broken.write_text("rounds = [\n")
    with pytest.raises(ValueError, match="not valid TOML"):
        load_config(broken)
    with pytest.raises(FileNotFoundError, match="shipped configs"):
        load_config("no-such-config")
    with pytest.raises(ValueError, match="agent"):
        RoundsConfig(agent="clever")
    with pytest.raises(ValueError, match="top_k"):
        RoundsConfig(top_k=0)
    with pytest.raises(ValueError, match="quality"):
        RoundsConfig(quality="best")
    assert RoundsConfig(quality="auto", feature_cache="none").feature_cache is None
    with pytest.raises(ValueError, match="rounds"):
        RoundsConfig(rounds=0)
    with pytest.raises(ValueError, match="not set"):
        run_rounds(load_config("kvasir-cpu", root="$BOW_GYM_NO_SUCH_VARIABLE/x",
                               progress=False), tmp_path / "r")


def test_adaptation_runs_on_the_weight_free_backbone(tmp_path):
    """adapt = true trains lab_texture's feature head (LoRA's stand-in) each round."""
    out = tmp_path / "r"
    run_rounds(RoundsConfig(**{**TINY, "adapt": True, "triplet_kwargs": {"steps": 5}}), out)
    from safetensors import safe_open

    ids = []
    for r in (1, 2):
        with safe_open(str(out / f"round_{r:02d}" / "adapter.safetensors"), "pt") as f:
            meta = f.metadata()
        assert meta["format"] == "bow_gym.feature_head"
        ids.append(meta["adapter_id"])
    assert ids[0] != ids[1]  # round 2 trained the head further
    with pytest.raises(ValueError, match="'lora' was renamed 'adapt'"):
        RoundsConfig(lora=True)


def test_evidence_records_what_the_answers_verified():
    from bow_gym.rounds import record_evidence

    ev = np.zeros(6, np.int8)
    sel = np.array([1, 1, 0, 0, 0, 0], bool)
    fg = np.array([0, 64, 0, 0, 0, 64])
    record_evidence(ev, sel, fg, 1, True, 64)  # foreground accepted on patches 0, 1
    np.testing.assert_array_equal(ev, [2, 2, 0, 0, 0, 0])
    # A rejected foreground click says "probably background" only where it would have changed
    # something (patch 1 is foreground already) and nothing where an answer accepted a label.
    record_evidence(ev, np.array([1, 1, 1, 1, 0, 0], bool), np.array([64, 64, 64, 0, 0, 64]),
                    1, False, 64)
    np.testing.assert_array_equal(ev, [2, 2, 0, -1, 0, 0])
    record_evidence(ev, np.array([0, 0, 0, 0, 1, 1], bool), fg, 0, False, 64)
    np.testing.assert_array_equal(ev, [2, 2, 0, -1, 0, 1])
    record_evidence(ev, np.array([0, 1, 0, 1, 0, 0], bool), fg, 0, True, 64)
    np.testing.assert_array_equal(ev, [2, -2, 0, -2, 0, 1])


def test_training_targets_weigh_and_carry_the_evidence():
    from bow_gym.rounds import Labels, apply_evidence, training_targets

    grid, s = (2, 2), 4
    pseudo = np.zeros((1, s, s), bool)
    pseudo[0, :2, :2] = True  # patch 0 foreground
    ev = np.array([[2, 0, -1, 0]], np.int8)
    total = np.array([[2, 2, -1, -2]], np.int8)  # earlier rounds accepted fg on patch 1
    lab = Labels(["a"], pseudo, pseudo.copy(), np.ones((1, 1), np.int8), np.ones((1, 1), np.int8),
                 np.full((1, 1), np.nan, np.float32), ev, total)
    masks, weights = training_targets(lab, RoundsConfig(), grid)
    assert weights is None and np.array_equal(masks[0], pseudo[0])
    cfg = RoundsConfig(label_trust={"untouched": 0.0, "rejected": 0.5})
    masks, weights = training_targets(lab, cfg, grid)
    np.testing.assert_array_equal(weights[0][::2, ::2], [[1.0, 0.0], [0.5, 0.0]])
    masks, weights = training_targets(lab, RoundsConfig(carry_evidence=True, **{
        "label_trust": {"untouched": 0.0}}), grid)
    np.testing.assert_array_equal(masks[0][::2, ::2], [[True, True], [False, False]])
    np.testing.assert_array_equal(weights[0][::2, ::2], [[1.0, 1.0], [1.0, 1.0]])
    np.testing.assert_array_equal(apply_evidence(np.ones((s, s), bool), total[0], grid)[::2, ::2],
                                  [[True, True], [True, False]])
    with pytest.raises(ValueError, match="label_trust"):
        RoundsConfig(label_trust={"verified": 1.0})
    with pytest.raises(ValueError, match="start"):
        RoundsConfig(start="empty")


@pytest.mark.parametrize("agent", ["answer_model", "answer_model_hybrid", "reinforce_patches"])
def test_labelling_does_not_depend_on_what_the_global_rng_held(agent):
    """Networks with lazy layers draw those weights at their first input: from a seed drawn at
    construction (which make_agent seeds), not from the global RNG of that moment, which
    depends on whatever else ran in the process (other rows of an ablation, other tests)."""
    from bow_gym.datasets.synthetic import SyntheticDataset
    from bow_gym.rounds import label_round, make_agent

    cfg = RoundsConfig(**{**TINY, "agent": agent})
    ds = SyntheticDataset(n_images=8, size=96)
    out = []
    for noise in (1, 1000):
        torch.rand(noise)  # what ran before the agent was built
        envs = [BetterWorseSegEnv(ds, feature_cache=None, clicks_per_episode=3) for _ in range(2)]
        clicker = make_agent(cfg, envs[0], "cpu")
        torch.rand(noise)  # what ran between building it and its first input
        out.append(label_round(envs, clicker, list(range(8)), seed=3, progress=False))
    assert np.array_equal(out[0].pseudo, out[1].pseudo)
    assert np.array_equal(out[0].rewards, out[1].rewards)


def test_segmenter_init_previous_trains_on_from_the_last_round(tmp_path, monkeypatch):
    import torch

    import bow_gym.segmenters as segmenters
    from bow_gym.segmenters import load_segmenter

    starts = []
    real = segmenters.train_segmenter

    def spy(model, *args, **kwargs):
        starts.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        return real(model, *args, **kwargs)

    monkeypatch.setattr(segmenters, "train_segmenter", spy)
    for init in ("scratch", "previous"):
        starts.clear()
        out = tmp_path / init
        run_rounds(RoundsConfig(**{**TINY, "segmenter_init": init}), out)
        assert len(starts) == 2
        first, _ = load_segmenter(out / "round_01" / "segmenter.safetensors")
        same = all(torch.equal(starts[1][k], v) for k, v in first.state_dict().items())
        assert same == (init == "previous"), init
    with pytest.raises(ValueError, match=r"segmenter_init must be one of \('scratch', "
                                         r"'previous'\), got 'last'"):
        RoundsConfig(segmenter_init="last")


@pytest.mark.parametrize("mask_threshold", ["match_area", 0.7])
def test_predictions_become_masks_at_the_configured_threshold(tmp_path, mask_threshold):
    """The level is stored with the predictions and cuts the next round's start masks and the
    scored predictions; match_area matches the share of the training masks (no ground truth)."""
    from bow_gym.metrics import match_area_level
    from bow_gym.rounds import _resize_prob

    out = tmp_path / str(mask_threshold)
    run_rounds(RoundsConfig(**{**TINY, "mask_threshold": mask_threshold}), out)
    pred = np.load(out / "round_01" / "predictions.npz")
    r1 = np.load(out / "round_01" / "labels.npz")
    level = int(pred["level"])
    if mask_threshold == "match_area":
        assert level == match_area_level(list(pred["label_prob"]), list(r1["pseudo"]))
    else:
        assert level == 179
    assert level != 128  # so the check below would fail at the old fixed 0.5
    r2 = np.load(out / "round_02" / "labels.npz")  # starts from round 1's prediction
    prob = dict(zip(pred["label_ids"], pred["label_prob"], strict=True))
    size = r2["initial"].shape[1]
    np.testing.assert_array_equal(
        r2["initial"], np.stack([_resize_prob(prob[i], (size, size), level) for i in r2["ids"]]))
    rows = [r for r in _metrics(out) if r["round"] == "1" and r["target"] == "prediction"]
    assert rows and all(float(r["mask_threshold"]) == round(level / 255, 4) for r in rows)
    with pytest.raises(ValueError, match=r"probability in \(0, 1\) or 'match_area', got 'area'"):
        RoundsConfig(mask_threshold="area")


@pytest.mark.parametrize("start", ["merged", "previous"])
def test_later_rounds_start_where_the_config_says(tmp_path, start):
    out = tmp_path / start
    run_rounds(RoundsConfig(**{**TINY, "start": start, "carry_evidence": True,
                               "label_trust": {"untouched": 0.2}}), out)
    r1 = np.load(out / "round_01" / "labels.npz")
    r2 = np.load(out / "round_02" / "labels.npz")
    pos = {str(i): k for k, i in enumerate(r1["ids"])}
    order = [pos[str(i)] for i in r2["ids"]]
    if start == "previous":
        np.testing.assert_array_equal(r2["initial"], r1["pseudo"][order])
    else:
        # Every patch an earlier answer accepted starts with its accepted label.
        ev = r1["evidence_total"][order].reshape(-1, 16, 16)
        init = r2["initial"].reshape(len(order), 16, 8, 16, 8)
        fg_patches = init.all(axis=(2, 4))
        bg_patches = ~init.any(axis=(2, 4))
        assert fg_patches[ev == 2].all() and bg_patches[ev == -2].all()
    # Accumulated evidence: this round's where it has any, else the previous total.
    prev = r1["evidence_total"][order]
    np.testing.assert_array_equal(
        r2["evidence_total"], np.where(r2["evidence"] != 0, r2["evidence"], prev))


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("rounds") / "run"
    run_rounds(RoundsConfig(**TINY), out)
    return out


@pytest.mark.slow
def test_run_directory_contents(tiny_run):
    cfg = json.loads((tiny_run / "config.json").read_text())
    assert cfg["rounds"] == 2
    for r in (1, 2):
        rd = tiny_run / f"round_{r:02d}"
        for name in ("labels.npz", "clicks.csv", "agent.safetensors", "quality.csv",
                     "segmenter.safetensors", "predictions.npz", "per_image.csv",
                     "examples.npz", "times.json", "done.json", "metrics.json"):
            assert (rd / name).is_file(), name
        with np.load(rd / "examples.npz") as z:
            assert z["image"].shape == (3, 128, 128, 3) and z["ground_truth"].dtype == bool
    rows = _metrics(tiny_run)
    # 2 rounds x (initial, pseudo, prediction) x (raw, hole-filled)
    assert len(rows) == 12
    assert {r["target"] for r in rows} == {"initial", "pseudo", "prediction"}
    # round 1 starts empty; clicks only keep "better" changes, so pseudo >= initial
    first = {r["target"]: float(r["dice_mean"]) for r in rows
             if r["round"] == "1" and r["fill_holes"] == "0"}
    assert first["initial"] == 0.0 and first["pseudo"] >= first["initial"]
    # round 2 starts from round 1's predictions on the labelling images
    with np.load(tiny_run / "round_01" / "predictions.npz") as z:
        pred = dict(zip(z["label_ids"], z["label_prob"], strict=True))
    with np.load(tiny_run / "round_02" / "labels.npz") as z:
        i0 = str(z["ids"][0])
        assert z["initial"][0].any() == (pred[i0] >= 128).any()
    with open(tiny_run / "round_02" / "clicks.csv") as f:
        clicks = list(csv.DictReader(f))
    n_label = 12 - round(0.2 * 12)
    assert [int(c["step"]) for c in clicks] == list(range(n_label * 2 + 1, n_label * 4 + 1))


@pytest.mark.slow
def test_seeded_runs_repeat_and_resume_after_a_kill(tiny_run, tmp_path, monkeypatch):
    import bow_gym.rounds as rounds

    out = tmp_path / "killed"
    real = rounds.RoundsRun._train_segmenter
    calls = {"n": 0}

    def dies_in_round_2(self, rd, *args, **kwargs):
        if rd.name == "round_02":
            raise KeyboardInterrupt  # the run is killed mid-round
        calls["n"] += 1
        return real(self, rd, *args, **kwargs)

    monkeypatch.setattr(rounds.RoundsRun, "_train_segmenter", dies_in_round_2)
    torch.manual_seed(12345)  # whatever ran before must not change a seeded run
    with pytest.raises(KeyboardInterrupt):
        run_rounds(RoundsConfig(**TINY), out)
    assert (out / "round_01" / "done.json").is_file()
    assert (out / "round_02" / "labels.npz").is_file()  # clicks of round 2 were kept
    assert not (out / "round_02" / "done.json").exists()
    monkeypatch.setattr(rounds.RoundsRun, "_train_segmenter", real)
    labels_before = (out / "round_02" / "labels.npz").stat().st_mtime_ns
    run_rounds(RoundsConfig(**TINY), out)
    assert (out / "round_02" / "labels.npz").stat().st_mtime_ns == labels_before  # not redone
    keys = ("round", "target", "fill_holes", "dice_mean", "hd95_mean", "better_share")
    assert [[r[k] for k in keys] for r in _metrics(out)] == \
        [[r[k] for k in keys] for r in _metrics(tiny_run)]


def test_resume_refuses_another_config(tiny_run):
    with pytest.raises(ValueError, match="clicks"):
        run_rounds(RoundsConfig(**{**TINY, "clicks_per_image": 3}), tiny_run)
    with pytest.raises(FileExistsError, match="already holds a run"):
        run_rounds(RoundsConfig(**TINY), tiny_run, resume=False)


@pytest.mark.slow
def test_random_agent_and_filtering(tmp_path):
    cfg = RoundsConfig(**{**TINY, "agent": "random", "rounds": 1, "top_k": 0.5,
                          "quality": "auto"})
    run_rounds(cfg, tmp_path / "r")
    with open(tmp_path / "r" / "round_01" / "quality.csv") as f:
        q = list(csv.DictReader(f))
    kept = [row for row in q if row["kept"] == "1"]
    assert len(kept) == int(np.ceil(0.5 * len(q)))
    assert min(float(r["score"]) for r in kept) >= max(
        float(r["score"]) for r in q if r["kept"] == "0")
    assert any(r["target"] == "pseudo_kept" for r in _metrics(tmp_path / "r"))


def test_answer_model_agent_learns_across_lockstep_episodes_and_rounds(tmp_path):
    from agents.answer_model import AnswerModelAgent
    from bow_gym.rounds import label_round

    cfg = RoundsConfig(**{**TINY, "agent": "answer_model", "label_envs": 4})
    run_rounds(cfg, tmp_path / "r")
    for r in (1, 2):
        agent = AnswerModelAgent.load(tmp_path / "r" / f"round_{r:02d}" / "agent.safetensors")
        # 12 images x 2 clicks per round, one online step per 8 clicks: all twins fed one model
        assert agent.updates == 3 * r
    # the twins of one lockstep labelling share the replay buffer
    env = BetterWorseSegEnv(dataset_kwargs={"n_images": 6, "size": 96}, feature_cache=None)
    agent = AnswerModelAgent(env.grid, online_batch=4)
    labels = label_round([env] + [BetterWorseSegEnv(env.dataset, feature_cache=None)
                                  for _ in range(2)], agent, list(range(6)), seed=0,
                         progress=False)
    assert len(agent.replay) == 6 * env.clicks_per_episode and len(labels.ids) == 6
    assert agent.updates == 6 * env.clicks_per_episode // 4 + 1  # the last two by flush()


def test_reinforce_patch_policy_across_rounds(tmp_path):
    from agents.reinforce import ReinforceAgent

    cfg = RoundsConfig(**{**TINY, "agent": "reinforce", "agent_kwargs": {"policy": "patches"},
                          "label_envs": 4})
    run_rounds(cfg, tmp_path / "r")
    for r in (1, 2):
        agent = ReinforceAgent.load(tmp_path / "r" / f"round_{r:02d}" / "agent.safetensors")
        # 12 images x 2 clicks per round, one online update per 8 clicks, round 2 resumes
        assert agent.policy == "patches" and agent.updates == 3 * r
    opt = torch.load(tmp_path / "r" / "round_02" / "agent_optimizer.pt", weights_only=True)
    assert opt["state"]  # the optimiser's moments were carried over, not restarted


@pytest.mark.slow
def test_original_config_code_path_with_random_weights(tmp_path):
    """kvasir-cvc's settings (DINOv2 + LoRA + HSNet) on tiny data with random weights."""
    cfg = load_config(
        "kvasir-cvc", dataset="synthetic", root=None, extra_datasets=[],
        dataset_kwargs={"n_images": 4, "size": 64}, rounds=2, clicks_per_image=2,
        backbone="dinov2_vits14", backbone_kwargs={"pretrained": False, "seed": 0},
        segmenter_kwargs={"pretrained": False, "epochs": 1, "size": 64, "batch_size": 2},
        triplet_kwargs={"steps": 2, "batch_size": 2}, feature_cache=None, progress=False,
        tensorboard=False, device="cpu", examples=2)
    run_rounds(cfg, tmp_path / "r")
    assert (tmp_path / "r" / "round_01" / "adapter.safetensors").is_file()
    assert (tmp_path / "r" / "round_02" / "done.json").is_file()


@pytest.mark.slow
def test_cli_rounds_and_figures(tmp_path, capsys):
    from bow_gym.cli import main

    out = tmp_path / "cli-run"
    argv = ["rounds", "--rounds", "1", "--clicks-per-image", "2", "--agent", "random", "--out",
            str(out),
            "--set", "dataset_kwargs={n_images=10, size=96}", "--set", "feature_cache='none'",
            "--set", "segmenter_kwargs={epochs=1, size=64}", "--set", "progress=false",
            "--set", "tensorboard=false", "--set", "device='cpu'"]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "prediction" in text and "metrics.csv" in text
    assert json.loads((out / "config.json").read_text())["agent"] == "random"
    assert main(["figures", str(out)]) == 0
    assert (out / "figures" / "fig1_dice_hd95.png").is_file()
    assert main(["rounds", "--set", "cliks=3", "--out", str(tmp_path / "x")]) == 2
    assert "cliks" in capsys.readouterr().err


def test_evaluation_known_answers():
    from bow_gym.rounds import evaluate_masks, summarise

    gt = np.zeros((40, 60), bool)
    gt[:20, :30] = True  # the top-left quarter
    quarter = np.zeros((4, 4), bool)
    quarter[:2, :2] = True
    ring = np.zeros((40, 60), bool)
    ring[:20, :30] = True
    ring[5:15, 10:20] = False  # a hole, filled by fill_holes=True
    prob = np.zeros((2, 2), np.uint8)
    prob[0, 0] = 200  # probabilities (uint8) are resized linearly, then cut at 0.5
    rows = evaluate_masks([quarter, ring, prob], [gt, gt, gt], probabilities=False)
    assert rows[0]["dice"] == 1.0 and rows[0]["hd95"] == 0.0  # nearest resize keeps the quarter
    assert rows[1]["dice"] == pytest.approx(2 * 500 / (500 + 600))
    filled = evaluate_masks([ring], [gt], fill=True)
    assert filled[0]["dice"] == 1.0
    p = evaluate_masks([prob], [gt], probabilities=True)[0]
    assert 0.3 < p["dice"] < 1.0  # a blurred quarter: overlapping, not exact
    s = summarise(rows[:2])
    assert s["n"] == 2 and s["dice_mean"] == pytest.approx((1 + 1000 / 1100) / 2)
    assert s["dice_ci_low"] <= s["dice_mean"] <= s["dice_ci_high"]


def test_agent_initialisation_depends_only_on_the_run_seed():
    from bow_gym.rounds import make_agent

    env = BetterWorseSegEnv(dataset_kwargs={"n_images": 2, "size": 64}, feature_cache=None)
    torch.manual_seed(1)
    a = make_agent(RoundsConfig(**TINY), env, "cpu")
    torch.rand(100)  # other work in between moves the global generator
    b = make_agent(RoundsConfig(**TINY), env, "cpu")
    c = make_agent(RoundsConfig(**{**TINY, "seed": 1}), env, "cpu")
    sa, sb, sc = (x.net.state_dict() for x in (a, b, c))
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


# --------------------------------------------------------------------------- up-front checks
#: The smallest run of these tests: one round of the random agent on 12 synthetic images.
FAST = {**TINY, "rounds": 1, "agent": "random"}


def _kvasir_folder(root: Path, n: int = 8) -> Path:
    """A Kvasir-SEG layout (``images/<id>.jpg``, ``masks/<id>.png``) of small synthetic images."""
    import cv2

    from bow_gym.datasets import make_dataset

    data = make_dataset("synthetic", n_images=n, size=64)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(len(data)):
        sample = data[i]
        cv2.imwrite(str(root / "images" / f"{i}.jpg"), cv2.cvtColor(sample.image,
                                                                    cv2.COLOR_RGB2BGR))
        cv2.imwrite(str(root / "masks" / f"{i}.png"), sample.mask.astype(np.uint8) * 255)
    return root


@pytest.mark.parametrize(("field", "error", "bad", "good", "shown"), [
    # root: relative names, taken under tmp_path (a Kvasir-SEG layout is written at "kvasir")
    ("root", FileNotFoundError, {"root": "missing"}, {"root": "kvasir"}, "missing"),
    ("backbone", ValueError, {"backbone": "bogus"}, {"backbone": "lab_texture"}, "bogus"),
    ("threshold", ValueError, {"threshold": 5.0}, {"threshold": 0.8}, "[-1, 1]"),
    # before the fix: a raw TypeError after round 1's clicks, with round_01/ left behind
    ("segmenter_kwargs", ValueError, {"segmenter_kwargs": {"epochs": 1, "size": 64, "bogus": 1}},
     {"segmenter_kwargs": {"epochs": 1, "size": 64}}, "bogus"),
])
def test_bad_config_writes_nothing_and_the_corrected_config_reuses_out(
        tmp_path, field, error, bad, good, shown):
    base = dict(FAST)
    if field == "root":
        _kvasir_folder(tmp_path / "kvasir")
        base.update(dataset="kvasir-seg", dataset_kwargs={})
        bad, good = ({"root": str(tmp_path / v["root"])} for v in (bad, good))
    out = tmp_path / "run"
    with pytest.raises(error, match=rf"\b{field}=") as info:
        run_rounds(RoundsConfig(**{**base, **bad}), out)
    assert shown in str(info.value)
    assert not out.exists()  # no config.json to refuse the corrected config with
    rows = run_rounds(RoundsConfig(**{**base, **good}), out)
    assert (out / "round_01" / "done.json").is_file()
    assert {r["target"] for r in rows} == {"initial", "pseudo", "prediction"}
    assert json.loads((out / "config.json").read_text())[field] == \
        json.loads(json.dumps({**base, **good}))[field]


@pytest.mark.parametrize(("overrides", "field", "shown"), [
    ({"dataset": "bogus"}, "dataset", "valid names"),
    ({"dataset_kwargs": {"n_images": 12, "split": "middle"}}, "dataset_kwargs", "middle"),
    ({"dataset_kwargs": {"n_images": 12, "bogus": 1}}, "dataset_kwargs", "bogus"),
    ({"extra_datasets": [{"dataset": "kvasir-seg", "root": "/nonexistent/kvasir"}]},
     "extra_datasets", "/nonexistent/kvasir"),
    ({"segmenter_kwargs": {"size": 100}}, "segmenter_kwargs", "multiple of 32"),
    ({"segmenter": "hsnet", "segmenter_kwargs": {"checkpoint": "/nonexistent/pvt_v2_b2.pth"}},
     "segmenter_kwargs", "/nonexistent/pvt_v2_b2.pth"),
    ({"backbone_kwargs": {"bogus": 1}}, "backbone_kwargs", "bogus"),
    ({"env_kwargs": {"oracle": "psychic"}}, "env_kwargs", "psychic"),
    ({"env_kwargs": {"oracle_kwargs": {"bogus": 1}}}, "env_kwargs", "bogus"),
    ({"env_kwargs": {"obs_size": 100}}, "env_kwargs", "patch grid"),
    ({"agent": "reinforce", "agent_kwargs": {"policy": "psychic"}}, "agent_kwargs", "psychic"),
    ({"agent": "reinforce", "agent_kwargs": {"bogus": 1}}, "agent_kwargs", "bogus"),
    ({"adapt": True, "head_kwargs": {"hidden": 0}}, "head_kwargs", "hidden"),
])
def test_every_later_check_runs_before_out_is_written(tmp_path, overrides, field, shown):
    out = tmp_path / "run"
    # ValueError (unknown keywords arrive as TypeError: turned into it), or FileNotFoundError
    with pytest.raises((ValueError, FileNotFoundError), match=rf"\b{field}\b") as info:
        run_rounds(RoundsConfig(**{**FAST, **overrides}), out)
    assert shown in str(info.value)
    assert not out.exists()


@pytest.mark.slow
def test_cli_bad_root_and_segmenter_keyword_then_the_same_out(tmp_path, capsys):
    from bow_gym.cli import main

    root = _kvasir_folder(tmp_path / "kvasir")
    out = tmp_path / "run"
    argv = ["rounds", "--config", "kvasir-cpu", "--rounds", "1", "--clicks-per-image", "2",
            "--agent", "random", "--out", str(out), "--set", "feature_cache='none'", "--set",
            "progress=false", "--set", "tensorboard=false", "--set", "device='cpu'"]
    small = ["--set", "segmenter_kwargs={epochs=1, size=64}"]
    assert main([*argv, *small, "--root", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert "root=" in err and "missing" in err and not out.exists()
    assert main([*argv, "--root", str(root), "--set",
                 "segmenter_kwargs={epochs=1, size=64, bogus=1}"]) == 2
    err = capsys.readouterr().err
    assert "segmenter_kwargs=" in err and "bogus" in err and not out.exists()
    assert main([*argv, *small, "--root", str(root)]) == 0
    assert (out / "round_01" / "done.json").is_file()


def test_the_renamed_clicks_key_is_refused_naming_the_new_one(tmp_path):
    from bow_gym.cli import build_parser

    toml = tmp_path / "old.toml"
    toml.write_text('dataset = "synthetic"\nclicks = 3\n')
    with pytest.raises(ValueError, match="'clicks' was renamed 'clicks_per_image'"):
        load_config(toml)
    with pytest.raises(ValueError, match="'clicks' was renamed 'clicks_per_image'"):
        load_config(None, clicks=3)
    with pytest.raises(ValueError, match="'clicks' was renamed 'clicks_per_image'"):
        RoundsConfig(clicks=3)
    with pytest.warns(FutureWarning, match="--clicks is deprecated: use --clicks-per-image"):
        args = build_parser().parse_args(["rounds", "--clicks", "3"])
    assert args.clicks_per_image == 3
    from bow_gym.rounds import CONFIG_DIR

    for name in list_configs():  # the shipped configs use the new name
        assert "clicks_per_image" in (CONFIG_DIR / f"{name}.toml").read_text()


def test_a_run_started_before_the_renaming_resumes(tiny_run, tmp_path):
    import shutil

    old = shutil.copytree(tiny_run, tmp_path / "old")
    stored = json.loads((old / "config.json").read_text())
    stored["clicks"] = stored.pop("clicks_per_image")  # as written before the renaming
    (old / "config.json").write_text(json.dumps(stored))
    rows = run_rounds(RoundsConfig(**TINY), old)  # resumed: every round is done already
    assert rows and json.loads((old / "config.json").read_text())["clicks_per_image"] == 2


def test_ask_start_takes_the_mask_the_expert_prefers(tmp_path):
    out = tmp_path / "ask"
    run_rounds(RoundsConfig(**{**TINY, "start": "ask", "carry_evidence": True}), out)
    r1 = np.load(out / "round_01" / "labels.npz")
    r2 = np.load(out / "round_02" / "labels.npz")
    assert "start_answers" not in r1.files and set(np.unique(r2["start_answers"])) <= {-1, 1}
    pos = {str(i): k for k, i in enumerate(r1["ids"])}
    prev = r1["pseudo"][[pos[str(i)] for i in r2["ids"]]]
    kept = r2["start_answers"] < 0
    np.testing.assert_array_equal(r2["initial"][kept], prev[kept])
    # The expert (the Dice oracle) answered "better" exactly where the start beats the previous
    # pseudo-mask.
    from bow_gym.metrics import dice

    env = BetterWorseSegEnv(dataset="synthetic", dataset_kwargs=TINY["dataset_kwargs"],
                            feature_cache=None)
    for k, iid in enumerate(r2["ids"]):
        env.reset(options={"image_id": str(iid)})
        gt = env.ground_truth_for_evaluation()
        better = dice(r2["initial"][k], gt) > dice(prev[k], gt)
        assert better == (r2["start_answers"][k] > 0)
