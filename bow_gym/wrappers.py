"""Wrappers for BetterWorseSeg environments."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from bow_gym.envs.better_worse_seg import EVAL_ONLY_KEY, BetterWorseSegEnv


class PatchActions(gym.ActionWrapper):
    """Click patches instead of pixels: ``Discrete(2 * Hp * Wp)``.

    Every pixel of a patch selects the same patches (they share one feature), so for learning
    where to click the patch is the natural unit; this shrinks the action space by the cell area
    (64x for the defaults), which helps value-based agents such as DQN. Action ``a`` is
    ``label = a // P`` at patch ``a % P`` (row-major), clicked at the centre pixel of its cell.
    """

    def __init__(self, env: gym.Env):
        super().__init__(env)
        base = env.unwrapped
        if not isinstance(base, BetterWorseSegEnv):
            raise TypeError(f"PatchActions wraps a BetterWorseSegEnv, got {type(base).__name__}")
        self.grid = base.grid
        self.n_patches = base.n_patches
        self.action_space = spaces.Discrete(2 * self.n_patches)

    def action(self, action: Any) -> int:
        a = int(action)
        if not 0 <= a < 2 * self.n_patches:
            raise ValueError(f"action must be in [0, {2 * self.n_patches}), got {action!r}")
        base: BetterWorseSegEnv = self.env.unwrapped
        label, patch = divmod(a, self.n_patches)
        r, c = divmod(patch, self.grid[1])
        ch, cw = base.cell
        return base.encode_action(label, r * ch + ch // 2, c * cw + cw // 2)


class StripEvalInfo(gym.Wrapper):
    """Removes ``info["eval_only"]`` (values computed from the ground truth).

    Wrap a training environment with it to make sure a learning agent's pipeline cannot read the
    ground truth through ``info``; evaluation code uses the unwrapped values instead.
    """

    def reset(self, **kwargs):
        obs, info = self.env.reset(**kwargs)
        info.pop(EVAL_ONLY_KEY, None)
        return obs, info

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        info.pop(EVAL_ONLY_KEY, None)
        return obs, reward, terminated, truncated, info


def mask_from_obs(obs: np.ndarray) -> np.ndarray:
    """The ``(H, W)`` bool mask channel of a BetterWorseSeg observation (single or batched)."""
    return obs[..., 3, :, :] > 127
