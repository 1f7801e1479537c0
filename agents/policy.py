"""The small interface every click policy implements, and an episode runner.

A policy sees what an expert's annotation tool would show (the observation) and the non-ground-
truth part of ``info``. Policies that need the ground truth (ceilings such as the RITM-style
clicker) say so with ``reads_ground_truth = True``; only then does :func:`run_episode` hand them
the evaluation-only ground truth. Learning agents must leave it ``False``.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np

from bow_gym.envs.better_worse_seg import EVAL_ONLY_KEY, BetterWorseSegEnv


class ClickPolicy(abc.ABC):
    """Chooses the next click (an action index of the wrapped env's ``Discrete`` space)."""

    #: Short name used in tables and figures.
    name: ClassVar[str] = "policy"
    #: True only for reference policies that read the ground truth (never for learners).
    reads_ground_truth: ClassVar[bool] = False
    #: Confidence of the last :meth:`act` in [0, 1], for policies that have one (else ``None``).
    last_confidence: float | None = None

    def reset(self, seed: int | None = None) -> None:  # noqa: B027 - optional hook
        """Called at the start of each episode; reseeds the policy's randomness if ``seed``."""

    @abc.abstractmethod
    def act(self, obs: np.ndarray, info: dict[str, Any], env: BetterWorseSegEnv,
            ground_truth: np.ndarray | None = None) -> int:
        """The next action.

        Args:
            obs: The current observation ``(C, H, W)`` uint8.
            info: The last ``info`` without its ``"eval_only"`` part.
            env: The unwrapped environment, for its geometry (``obs_size``, ``grid``,
                ``encode_action``); not for its ground truth.
            ground_truth: The working-resolution ground truth, given only to policies with
                ``reads_ground_truth = True``.
        """

    def observe(self, action: int, reward: float, terminated: bool,  # noqa: B027
                info: dict[str, Any]) -> None:
        """Feedback after each step (online learners update here); no-op by default."""


@dataclass
class EpisodeRecord:
    """What one episode did, for tables and figures (Dice values are evaluation-only)."""

    image_id: str
    initial_dice: float
    initial_mask: np.ndarray | None = None  # working resolution, as the episode started
    dice: list[float] = field(default_factory=list)  # after each click
    rewards: list[float] = field(default_factory=list)
    actions: list[int] = field(default_factory=list)
    confidence: list[float] = field(default_factory=list)  # policy's own, NaN if it has none
    frames: list[np.ndarray] = field(default_factory=list)

    @property
    def final_dice(self) -> float:
        return self.dice[-1] if self.dice else self.initial_dice


def _public(info: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in info.items() if k != EVAL_ONLY_KEY}


def run_episode(env: gym.Env, policy: ClickPolicy, *, seed: int | None = None,
                options: dict[str, Any] | None = None, render: bool = False) -> EpisodeRecord:
    """Run one episode of ``policy`` on ``env`` and record it.

    The policy never sees ``info["eval_only"]``; it gets the ground truth only if it declares
    ``reads_ground_truth``.

    Args:
        env: A BetterWorseSeg env (wrapped or not).
        policy: The click policy.
        seed: Passed to ``env.reset`` and ``policy.reset``.
        options: Passed to ``env.reset`` (e.g. ``{"index": 3}``).
        render: Keep an ``rgb_array`` frame after reset and after each click (the env must have
            ``render_mode="rgb_array"``).
    """
    base = env.unwrapped
    if not isinstance(base, BetterWorseSegEnv):
        raise TypeError(f"run_episode needs a BetterWorseSeg env, got {type(base).__name__}")
    obs, info = env.reset(seed=seed, options=options)
    policy.reset(seed)
    record = EpisodeRecord(image_id=info["image_id"], initial_mask=obs[3] > 127,
                           initial_dice=float(base._get_info()[EVAL_ONLY_KEY]["initial_dice"]))
    if render:
        record.frames.append(env.render())
    terminated = truncated = False
    while not (terminated or truncated):
        gt = base.ground_truth_for_evaluation() if policy.reads_ground_truth else None
        action = int(policy.act(obs, _public(info), base, ground_truth=gt))
        conf = policy.last_confidence
        record.confidence.append(float("nan") if conf is None else float(conf))
        obs, reward, terminated, truncated, info = env.step(action)
        policy.observe(action, float(reward), bool(terminated), _public(info))
        record.actions.append(action)
        record.rewards.append(float(reward))
        record.dice.append(float(base._get_info()[EVAL_ONLY_KEY]["dice"]))
        if render:
            record.frames.append(env.render())
    return record


def make_policy(name: str, **kwargs: Any) -> ClickPolicy:
    """A reference policy by name: ``"random"``, ``"gt"`` (the ground-truth-guided clicker) or
    ``"gt_greedy"`` (the propagation-aware one)."""
    from agents.reference import GreedyDiceClicker, GroundTruthClicker, RandomClicker

    policies: dict[str, type[ClickPolicy]] = {"random": RandomClicker, "gt": GroundTruthClicker,
                                              "gt_greedy": GreedyDiceClicker}
    if name not in policies:
        raise ValueError(f"unknown policy {name!r}; expected one of {sorted(policies)}")
    return policies[name](**kwargs)
