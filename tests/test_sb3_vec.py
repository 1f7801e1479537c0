"""The SB3 VecEnv adapter over the native vector env against the project's DummyVecEnv path."""

import gymnasium as gym
import numpy as np
import pytest
import torch
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env import DummyVecEnv, VecCheckNan, VecMonitor

import bow_gym  # noqa: F401
from bow_gym.sb3_vec import SB3VecEnv, make_sb3_vec_env, patch_to_pixel_actions
from bow_gym.wrappers import (
    BeliefObservation,
    ClickMasks,
    DiceGainReward,
    PatchActions,
    PatchFeatureObservation,
    StripEvalInfo,
    patch_to_pixel_action,
)

SMALL = {"dataset_kwargs": {"n_images": 6, "size": 96}}


def _dummy(n, masks=False, env_id="BetterWorseSeg-v0", obs="pixels", reward="answer", **kwargs):
    """agents.sb3's sync path: DummyVecEnv of PatchActions(StripEvalInfo(env)), with ClickMasks,
    an observation wrapper and DiceGainReward as asked."""
    def make():
        env = gym.make(env_id, **{**SMALL, **kwargs})
        env = PatchActions(StripEvalInfo(DiceGainReward(env) if reward == "dice_gain" else env))
        env = ClickMasks(env) if masks else env
        if obs == "features":
            env = PatchFeatureObservation(env)
        elif obs == "belief":
            env = BeliefObservation(env)
        return Monitor(env)

    return DummyVecEnv([make for _ in range(n)])


@pytest.mark.parametrize(("masks", "obs", "reward"), [
    (False, "pixels", "answer"), (True, "pixels", "answer"), (False, "features", "answer"),
    (True, "belief", "answer"), (False, "pixels", "dice_gain"), (False, "belief", "dice_gain")])
def test_adapter_equals_dummy_vec_env_of_single_envs(masks, obs, reward):
    n = 3
    dummy = _dummy(n, masks, obs=obs, reward=reward)
    adapter = make_sb3_vec_env(num_envs=n, action_masks=masks, obs=obs, reward=reward, **SMALL)
    assert adapter.observation_space == dummy.observation_space
    assert adapter.action_space == dummy.action_space
    dummy.seed(4)
    adapter.seed(4)
    assert np.array_equal(dummy.reset(), adapter.reset())
    rng = np.random.default_rng(0)
    ends = 0
    for t in range(17):
        if masks:
            expected = np.stack(dummy.env_method("action_masks"))
            assert np.array_equal(np.stack(adapter.env_method("action_masks")), expected), t
            # Sample among the valid clicks, as MaskablePPO would.
            actions = np.array([rng.choice(np.flatnonzero(m)) for m in expected])
        else:
            actions = rng.integers(0, adapter.action_space.n, n)
        o1, r1, d1, i1 = dummy.step(actions)
        o2, r2, d2, i2 = adapter.step(actions)
        assert np.array_equal(o1, o2) and np.array_equal(r1, r2) and r1.dtype == r2.dtype
        assert np.array_equal(d1, d2)
        for a, b in zip(i1, i2, strict=True):
            assert a["TimeLimit.truncated"] == b["TimeLimit.truncated"]
            assert ("terminal_observation" in a) == ("terminal_observation" in b)
            if "terminal_observation" in a:
                ends += 1
                assert np.array_equal(a["terminal_observation"], b["terminal_observation"])
            assert "eval_only" not in b
    assert ends == 9  # three episodes per sub-env were compared to their end


def test_patch_actions_equal_the_wrapper():
    adapter = make_sb3_vec_env(num_envs=2, **SMALL)
    single = gym.make("BetterWorseSeg-v0", **SMALL).unwrapped
    actions = np.arange(0, 512, 7)
    batched = patch_to_pixel_actions(actions, adapter.venv)
    assert batched.tolist() == [patch_to_pixel_action(single, int(a)) for a in actions]


def test_infos_option_carries_the_single_env_keys_but_never_eval_only():
    adapter = make_sb3_vec_env(num_envs=2, infos=True, **SMALL)
    adapter.reset()
    _, _, _, infos = adapter.step(np.array([3, 300]))
    assert infos[1]["click"]["label"] == 1 and infos[0]["patch"] == 3
    assert all("eval_only" not in i for i in infos)


def test_vec_check_nan_and_monitor():
    env = VecCheckNan(VecMonitor(make_sb3_vec_env(num_envs=4, **SMALL)), raise_exception=True)
    env.seed(0)
    env.reset()
    episodes = 0
    for _ in range(10):
        _, _, dones, infos = env.step(np.random.default_rng(0).integers(0, 512, 4))
        episodes += sum("episode" in i for i in infos)
    assert episodes == 8  # VecMonitor reports each finished episode


class _Actions(BaseCallback):
    """Records the actions and the masks MaskablePPO sampled them under."""

    def __init__(self):
        super().__init__()
        self.taken, self.allowed = [], []

    def _on_step(self):
        self.taken.append(np.asarray(self.locals["actions"]).copy())
        self.allowed.append(np.asarray(self.locals["action_masks"]).copy())
        return True


@pytest.mark.parametrize("algo", ["ppo", "a2c", "maskable_ppo"])
def test_sb3_algorithms_train_on_the_adapter_in_process(algo):
    from sb3_contrib import MaskablePPO
    from stable_baselines3 import A2C, PPO

    from agents.sb3 import policy_kwargs, tie_patch_head

    env = make_sb3_vec_env(num_envs=4, action_masks=algo == "maskable_ppo", **SMALL)
    kwargs = dict(policy_kwargs=policy_kwargs(algo, env.venv.grid), seed=0, device="cpu",
                  gamma=0.0, verbose=0)
    if algo == "a2c":
        model = A2C("CnnPolicy", env, n_steps=2, **kwargs)
    else:
        cls = MaskablePPO if algo == "maskable_ppo" else PPO
        model = cls("CnnPolicy", env, n_steps=4, batch_size=8, n_epochs=1, **kwargs)
    tie_patch_head(model.policy)
    before = [p.detach().clone() for p in model.policy.parameters() if p.requires_grad]
    callback = _Actions() if algo == "maskable_ppo" else None
    model.learn(total_timesteps=32, callback=callback)
    after = [p for p in model.policy.parameters() if p.requires_grad]
    assert any(not torch.equal(a, b) for a, b in zip(before, after, strict=True))  # it learnt
    if callback is not None:
        for taken, allowed in zip(callback.taken, callback.allowed, strict=True):
            assert allowed[np.arange(4), taken].all()  # never a masked click
        assert any(not m.all() for m in callback.allowed)  # and some clicks were masked


def test_ppo_learns_the_same_on_both_paths():
    from stable_baselines3 import PPO

    from agents.sb3 import policy_kwargs, tie_patch_head

    params = []
    for env in (_dummy(2), make_sb3_vec_env(num_envs=2, **SMALL)):
        model = PPO("CnnPolicy", env, n_steps=8, batch_size=8, n_epochs=2, seed=3, device="cpu",
                    gamma=0.0, policy_kwargs=policy_kwargs("ppo", (16, 16)), verbose=0)
        tie_patch_head(model.policy)
        model.learn(total_timesteps=16)  # one rollout of 2 x 8 clicks, two epochs over it
        params.append([p.detach().clone() for p in model.policy.parameters()])
    for a, b in zip(*params, strict=True):
        assert torch.equal(a, b)


def test_bad_input_is_refused():
    from gymnasium.vector import AutoresetMode

    with pytest.raises(ValueError, match="SameStep"):
        SB3VecEnv(gym.make_vec("BetterWorseSeg-v0", num_envs=2, **SMALL))
    with pytest.raises(ValueError, match="copy=True"):
        SB3VecEnv(gym.make_vec("BetterWorseSeg-v0", num_envs=2, copy=False,
                               autoreset_mode=AutoresetMode.SAME_STEP, **SMALL))
    with pytest.raises(ValueError, match="patch_actions"):
        make_sb3_vec_env(num_envs=2, patch_actions=False, action_masks=True, **SMALL)
    with pytest.raises(TypeError, match="BetterWorseSegVectorEnv"):
        SB3VecEnv(gym.make_vec("CartPole-v1", num_envs=2))
    with pytest.raises(ValueError, match=r"obs must be one of \['pixels', 'features', 'belief'\]"):
        make_sb3_vec_env(num_envs=2, obs="image", **SMALL)
    with pytest.raises(ValueError, match=r"reward must be one of \['answer', 'dice_gain'\]"):
        make_sb3_vec_env(num_envs=2, reward="dice", **SMALL)
    env = make_sb3_vec_env(num_envs=2, **SMALL)
    env.reset()
    with pytest.raises(ValueError, match=r"shape \(2,\)"):
        env.step(np.array([1, 2, 3]))
    with pytest.raises(ValueError, match=r"in \[0, 512\)"):
        env.step(np.array([1, 512]))
    with pytest.raises(ValueError, match="integer"):
        env.step(np.array([1.0, 2.0]))
    assert not env.has_attr("action_masks")  # so MaskablePPO refuses it
    with pytest.raises(AttributeError, match="action_masks"):
        env.env_method("current_mask")
