"""The training signal an agent learns from: the expert's strictness and the reference Dice reward."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

import bow_gym  # noqa: F401
from agents.common import TrainDataArgs, make_envs
from benchmarks.lib.learners import is_reference
from bow_gym.envs.better_worse_seg import EVAL_ONLY_KEY
from bow_gym.oracles import DiceOracle, MarginOracle
from bow_gym.wrappers import DiceGainReward, StripEvalInfo

TINY = {"dataset_kwargs": {"n_images": 8, "size": 64}, "obs_size": 64}


def _chain(env: gym.Env) -> list[type]:
    chain = []
    while isinstance(env, gym.Wrapper):
        chain.append(type(env))
        env = env.env
    return chain


def test_dice_gain_reward_is_the_scaled_change_of_dice():
    env = DiceGainReward(gym.make("BetterWorseSeg-v0", **TINY), scale=5.0)
    _, info = env.reset(seed=0)
    rng = np.random.default_rng(0)
    dice, rewards = info[EVAL_ONLY_KEY]["dice"], []
    for _ in range(5):
        _, reward, *_, info = env.step(int(rng.integers(env.action_space.n)))
        new = info[EVAL_ONLY_KEY]["dice"]
        assert reward == pytest.approx(5.0 * (new - dice))
        rewards.append(reward)
        dice = new
    assert any(r != 0 for r in rewards)  # random clicks do change the mask sometimes


def test_dice_gain_reward_refuses_a_stripped_env_and_a_bad_scale():
    with pytest.raises(ValueError, match="before StripEvalInfo"):
        DiceGainReward(StripEvalInfo(gym.make("BetterWorseSeg-v0", **TINY))).reset(seed=0)
    with pytest.raises(ValueError, match="scale"):
        DiceGainReward(gym.make("BetterWorseSeg-v0", **TINY), scale=0.0)


def test_training_envs_take_the_expert_and_reward_asked_for():
    plain = make_envs(TrainDataArgs(env_kwargs=TINY), 2)
    assert all(type(e.unwrapped.oracle) is DiceOracle for e in plain)
    strict = make_envs(TrainDataArgs(env_kwargs=TINY, expert_margin=0.1), 2)
    assert all(isinstance(e.unwrapped.oracle, MarginOracle) and e.unwrapped.oracle.delta == 0.1
               for e in strict)
    ref = make_envs(TrainDataArgs(env_kwargs=TINY, reward="dice_gain"), 2)
    for env in ref:
        # The reference reward reads the truth, and the agent still never sees it in info.
        assert _chain(env)[:2] == [StripEvalInfo, DiceGainReward]
        _, info = env.reset(seed=0)
        *_, info = env.step(0)
        assert EVAL_ONLY_KEY not in info


@pytest.mark.parametrize("kwargs, message", [
    ({"reward": "dice"}, "reward must be 'answer' or 'dice_gain'"),
    ({"expert_margin": -0.1}, "expert_margin must be >= 0"),
    ({"expert_margin": 0.1, "env_kwargs": {**TINY, "oracle": "noisy"}}, "do not also pass"),
])
def test_bad_training_signal_arguments_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_envs(TrainDataArgs(**{"env_kwargs": TINY, **kwargs}), 1)


def test_learners_on_the_truth_are_references_not_results():
    assert is_reference("reinforce_patches:reward=dice_gain")
    assert not is_reference("reinforce_patches")
    assert not is_reference("reinforce_patches:expert_margin=0.1")
