import gymnasium as gym
import numpy as np
import pytest
from _support import OtherMasks

import bow_gym  # noqa: F401
from agents import ClickPolicy, GroundTruthClicker, RandomClicker, make_policy, run_episode
from agents.reference import largest_error_click
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
    assert not RandomClicker.reads_ground_truth
    with pytest.raises(ValueError, match="unknown policy"):
        make_policy("oracle-peeker")


def test_render_frames_recorded():
    env = gym.make("BetterWorseSeg-v0", dataset_kwargs={"n_images": 2}, render_mode="rgb_array")
    rec = run_episode(env, GroundTruthClicker(), seed=0, render=True)
    assert len(rec.frames) == 6 and len(rec.dice) == 5
    assert rec.final_dice == rec.dice[-1] >= rec.initial_dice
