import gymnasium as gym
import numpy as np
import pytest
from _support import OtherMasks

import bow_gym  # noqa: F401
from agents import (
    ClickPolicy,
    GreedyDiceClicker,
    GroundTruthClicker,
    RandomClicker,
    make_policy,
    run_episode,
)
from agents.reference import dice_after_clicks, largest_error_click
from bow_gym.datasets.synthetic import SyntheticDataset
from bow_gym.envs.better_worse_seg import EVAL_ONLY_KEY, BetterWorseSegEnv


def test_largest_error_click_known_answers():
    gt = np.zeros((21, 21), bool)
    gt[5:16, 5:16] = True
    assert largest_error_click(np.zeros_like(gt), gt) == (1, 10, 10)
    pred = gt.copy()
    pred[0:3, 0:21] = True  # a thin false positive band
    pred[8:13, 8:13] = False  # a 5x5 hole inside the lesion
    assert largest_error_click(pred, gt) == (1, 10, 10)
    pred[8:13, 8:13] = True
    assert largest_error_click(pred, gt)[0] == 0  # only the band is left
    assert largest_error_click(gt, gt) is None
    excl = np.zeros_like(gt)
    excl[8:13, 8:13] = True
    label, y, x = largest_error_click(np.zeros_like(gt), gt, exclude=excl)
    assert label == 1 and not excl[y, x]


def test_dice_after_clicks_known_answers():
    # 2 x 2 grid of 2 x 2-pixel patches; the lesion fills patch 0 and half of patch 1.
    gt = np.zeros((4, 4), bool)
    gt[0:2, 0:3] = True
    pred = np.zeros_like(gt)
    graph = np.eye(4, dtype=bool)
    graph[0, 1] = graph[1, 0] = True  # patches 0 and 1 propagate to each other
    d = dice_after_clicks(pred, gt, graph, (2, 2))
    assert d.shape == (2, 4)
    np.testing.assert_allclose(d[0], 0.0)  # background clicks on an empty mask
    # patch 0 or 1: 8 pixels with 6 true -> 2*6/(8+6); patch 2 or 3: 4 false pixels -> 0.
    np.testing.assert_allclose(d[1], [12 / 14, 12 / 14, 0.0, 0.0])
    pred[0:2, 0:2] = True  # patch 0 already foreground (Dice 2*4/(4+6))
    pred[3, 3] = True  # and one stray pixel in patch 3: partly filled patches count exactly
    d = dice_after_clicks(pred, gt, graph, (2, 2))
    np.testing.assert_allclose(d[0, 3], 8 / 10)  # removing the stray pixel
    np.testing.assert_allclose(d[0, 0], 0.0)  # clearing patches 0 and 1 leaves only the stray
    np.testing.assert_allclose(d[1, 2], 8 / 15)  # 4 + 4 + 1 pixels predicted, 4 true
    empty = np.zeros_like(gt)
    assert dice_after_clicks(empty, empty, graph, (2, 2))[0, 0] == 1.0  # both empty
    with pytest.raises(ValueError, match="tile"):
        dice_after_clicks(np.zeros((5, 4), bool), np.zeros((5, 4), bool), graph, (2, 2))


def test_dice_after_clicks_agrees_with_the_env():
    env = BetterWorseSegEnv(dataset_kwargs={"n_images": 3, "size": 96}, on_worse="keep",
                            feature_cache=None)
    rng = np.random.default_rng(0)
    for i in range(3):
        obs, _ = env.reset(options={"index": i})
        for _ in range(5):
            expected = dice_after_clicks(obs[3] > 127, env.ground_truth_for_evaluation(),
                                         env.propagation_graph(), env.grid)
            label, patch = int(rng.integers(2)), int(rng.integers(env.n_patches))
            r, c = divmod(patch, env.grid[1])
            y, x = r * env.cell[0] + 1, c * env.cell[1] + 1
            obs, _, _, _, info = env.step(env.encode_action(label, y, x))
            assert info[EVAL_ONLY_KEY]["dice"] == pytest.approx(expected[label, patch])


def test_greedy_dice_clicker_takes_the_best_click_and_beats_the_gt_clicker():
    env = gym.make("BetterWorseSeg-v0", dataset_kwargs={"n_images": 12})
    base = env.unwrapped
    finals = {}
    for policy in (GroundTruthClicker(), GreedyDiceClicker()):
        finals[policy.name] = np.mean([
            run_episode(env, policy, seed=i, options={"index": i}).final_dice for i in range(12)
        ])
    obs, _ = base.reset(options={"index": 0})
    best = dice_after_clicks(obs[3] > 127, base.ground_truth_for_evaluation(),
                             base.propagation_graph(), base.grid).max()
    rec = run_episode(env, GreedyDiceClicker(), options={"index": 0})
    assert rec.dice[0] == pytest.approx(best)
    assert all(b >= a for a, b in zip(rec.dice, rec.dice[1:], strict=False))  # never worse
    assert finals["gt_greedy"] > finals["gt"] + 0.03
    with pytest.raises(ValueError, match="ground_truth"):
        GreedyDiceClicker().act(obs, {}, base, ground_truth=None)


def test_gt_clicker_beats_random_clearly_on_synthetic():
    env = gym.make("BetterWorseSeg-v0", dataset_kwargs={"n_images": 12})
    finals = {}
    for policy in (RandomClicker(), GroundTruthClicker()):
        finals[policy.name] = np.mean([
            run_episode(env, policy, seed=i, options={"index": i}).final_dice for i in range(12)
        ])
    assert finals["gt"] > 0.6
    assert finals["gt"] > finals["random"] + 0.3


def test_random_clicker_is_seeded():
    env = gym.make("BetterWorseSeg-v0", dataset_kwargs={"n_images": 3})
    a = run_episode(env, RandomClicker(), seed=5).actions
    b = run_episode(env, RandomClicker(), seed=5).actions
    c = run_episode(env, RandomClicker(), seed=6).actions
    assert a == b and a != c


class _Spy(ClickPolicy):
    name = "spy"

    def __init__(self):
        self.seen = []

    def act(self, obs, info, env, ground_truth=None):
        self.seen.append((ground_truth, set(info)))
        return 0


def test_runner_hides_ground_truth_from_non_reference_policies():
    env = gym.make("BetterWorseSeg-v0", dataset_kwargs={"n_images": 2})
    spy = _Spy()
    run_episode(env, spy, seed=0)
    assert len(spy.seen) == 5
    assert all(gt is None and EVAL_ONLY_KEY not in keys for gt, keys in spy.seen)
    with pytest.raises(ValueError, match="ground_truth"):
        GroundTruthClicker().act(env.reset()[0], {}, env.unwrapped, ground_truth=None)




def test_random_policy_actions_do_not_depend_on_ground_truth():
    ds = SyntheticDataset(n_images=3, size=96)
    runs = []
    for data in (ds, OtherMasks(ds, 9, 0)):
        env = BetterWorseSegEnv(data, on_worse="keep", feature_cache=None)
        runs.append([run_episode(env, RandomClicker(), seed=s).actions for s in range(3)])
    assert runs[0] == runs[1]


def test_make_policy_registry():
    assert isinstance(make_policy("random", seed=1), RandomClicker)
    assert make_policy("gt").reads_ground_truth
    assert isinstance(make_policy("gt_greedy"), GreedyDiceClicker)
    assert GreedyDiceClicker.reads_ground_truth
    assert not RandomClicker.reads_ground_truth
    with pytest.raises(ValueError, match="unknown policy"):
        make_policy("oracle-peeker")


def test_render_frames_recorded():
    env = gym.make("BetterWorseSeg-v0", dataset_kwargs={"n_images": 2}, render_mode="rgb_array")
    rec = run_episode(env, GroundTruthClicker(), seed=0, render=True)
    assert len(rec.frames) == 6 and len(rec.dice) == 5
    assert rec.final_dice == rec.dice[-1] >= rec.initial_dice
