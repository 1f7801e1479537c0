"""The click-policy protocol, and the episode runner every policy is evaluated with.

Everything that runs an agent (the episode runner below, the multi-round loop
:func:`bow_gym.rounds.label_round`, the ``bow-gym`` CLI, the benchmarks) calls it only through
the methods declared here, so the package never imports the agents it runs (they are built by
name from :mod:`bow_gym.agent_registry`). Three levels:

* :class:`ClickPolicy`: chooses the next click (every agent, reference clickers included);
* :class:`OnlineLearner`: also learns from the expert's answers while it labels, and saves and
  loads its weights (its weights carry over from round to round);
* :class:`BatchedLearner`: an online learner that acts on a batch of episodes in lockstep with
  one forward pass (:meth:`BatchedLearner.act_batch`).

A policy sees what an expert's annotation tool would show (the observation) and the non-ground-
truth part of ``info``. Policies that need the ground truth (ceilings such as the RITM-style
clicker) say so with ``reads_ground_truth = True``; only then do :func:`run_episode` and the
multi-round loop hand them the evaluation-only ground truth. Learning agents must leave it
``False``.
"""

from __future__ import annotations

import abc
import copy
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from bow_gym.envs.better_worse_seg import EVAL_ONLY_KEY
from bow_gym.oracles import Overlap

if TYPE_CHECKING:
    import gymnasium as gym

    from bow_gym.envs.better_worse_seg import BetterWorseSegEnv


class ClickPolicy(abc.ABC):
    """Chooses the next click (an action index of the wrapped env's ``Discrete`` space)."""

    #: Short name used in tables and figures.
    name: ClassVar[str] = "policy"
    #: True only for reference policies that read the ground truth (never for learners).
    reads_ground_truth: ClassVar[bool] = False
    #: Confidence of the last :meth:`act` in [0, 1], for policies that have one (else ``None``).
    last_confidence: float | None = None

    @classmethod
    def for_env(cls, env: BetterWorseSegEnv, *, seed: int | None = None, device: str = "cpu",
                **kwargs: Any) -> ClickPolicy:
        """A new policy sized for ``env`` (how :func:`~bow_gym.agent_registry.make_agent` builds
        one for an env).

        The default is ``cls(**kwargs)``: a policy whose constructor needs neither the env's
        geometry (channels, patch grid), a seed nor a torch device overrides this.

        Args:
            env: The unwrapped env the policy will click in.
            seed: Seed of the policy's randomness.
            device: Torch device of a policy with a network.
            **kwargs: The policy's own constructor arguments.
        """
        return cls(**kwargs)

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

    def fork(self) -> ClickPolicy:
        """A twin for another episode run in lockstep with this one.

        By default an independent deep copy; a learner whose twins should share what they learn
        (one network, one replay buffer) overrides this.
        """
        return copy.deepcopy(self)

    def flush(self) -> None:  # noqa: B027 - optional hook
        """Learn from answers still waiting for a full batch (called at the end of a round)."""

    def evaluation_mode(self) -> ClickPolicy:
        """Stop exploring and learning (greedy clicks, no online updates), for evaluation.

        A no-op for policies that neither explore nor learn; returns the policy itself.
        """
        return self


class OnlineLearner(ClickPolicy):
    """A click policy that learns from the expert's answers while it labels (the method's agent).

    Its weights and optimiser carry over from one round of :mod:`bow_gym.rounds` to the next:
    the loop saves it after a round (:meth:`save`, and the state of :attr:`opt`) and loads it
    before the next (:meth:`load`).
    """

    #: Take a gradient step after this many answered clicks (0: no online learning).
    online_batch: int
    #: The torch optimiser whose state carries over between rounds.
    opt: Any

    @abc.abstractmethod
    def save(self, path: str | os.PathLike) -> None:
        """Write the weights (and hyper-parameters) to ``path`` (safetensors, atomically)."""

    @classmethod
    @abc.abstractmethod
    def load(cls, path: str | os.PathLike, device: str = "cpu",
             **overrides: Any) -> OnlineLearner:
        """A learner from a :meth:`save` checkpoint; ``overrides`` change acting options."""


class BatchedLearner(OnlineLearner):
    """An online learner that acts on a batch of episodes in lockstep with one forward pass.

    The multi-round loop then runs one instance for all its envs (no :meth:`fork`): per step it
    calls :meth:`act_batch`, then per answered click :meth:`answer_batch` and
    :meth:`learn_online`, and :meth:`flush` at the end of the round.
    """

    @abc.abstractmethod
    def act_batch(self, obs: np.ndarray, rejected: Sequence[list[tuple[int, int]]],
                  env: BetterWorseSegEnv | Sequence[BetterWorseSegEnv],
                  episodes: Sequence[Any] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Actions and confidences ``(B,)`` for ``B`` episodes run in lockstep.

        Args:
            obs: ``(B, C, H, W)`` observations.
            rejected: Per episode, the ``(label, patch)`` clicks the expert rejected so far.
            env: The env of each episode (or one env, when only its geometry is needed).
            episodes: Per episode, the learner's memory of it (:meth:`new_episode`).
        """

    @abc.abstractmethod
    def new_episode(self) -> Any:
        """An empty per-episode memory for :meth:`act_batch`."""

    @abc.abstractmethod
    def answer_batch(self, episodes: Sequence[Any], rewards: Sequence[float]) -> None:
        """Give each episode of the last :meth:`act_batch` its answer."""

    @abc.abstractmethod
    def learn_online(self, obs: np.ndarray, action: int, reward: float) -> None:
        """Queue one answered click; update once ``online_batch`` clicks are queued."""


# --------------------------------------------------------------------------- one step
def public_info(info: dict[str, Any]) -> dict[str, Any]:
    """``info`` without its evaluation-only part (what a policy may see)."""
    return {k: v for k, v in info.items() if k != EVAL_ONLY_KEY}


def choose_click(policy: ClickPolicy, obs: np.ndarray, info: dict[str, Any],
                 env: BetterWorseSegEnv) -> tuple[int, float]:
    """The policy's next action and its confidence (NaN if it has none).

    The policy gets ``info`` without its evaluation-only part, and the ground truth only if it
    declares ``reads_ground_truth``.

    Args:
        policy: The click policy.
        obs: The current observation.
        info: The env's last ``info``.
        env: The unwrapped env.
    """
    gt = env.ground_truth_for_evaluation() if policy.reads_ground_truth else None
    action = int(policy.act(obs, public_info(info), env, ground_truth=gt))
    conf = policy.last_confidence
    return action, float("nan") if conf is None else float(conf)


def evaluation_dice(env: BetterWorseSegEnv) -> float:
    """Dice of the env's current mask at working resolution. **Evaluation only** (it reads the
    ground truth); the same value as the env's ``info["eval_only"]["dice"]``."""
    return Overlap.of(env.current_mask(), env.ground_truth_for_evaluation()).dice


# --------------------------------------------------------------------------- one episode
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
    from bow_gym.envs.better_worse_seg import BetterWorseSegEnv

    base = env.unwrapped
    if not isinstance(base, BetterWorseSegEnv):
        raise TypeError(f"run_episode needs a BetterWorseSeg env, got {type(base).__name__}")
    obs, info = env.reset(seed=seed, options=options)
    policy.reset(seed)
    record = EpisodeRecord(image_id=info["image_id"], initial_mask=obs[3] > 127,
                           initial_dice=evaluation_dice(base))
    if render:
        record.frames.append(env.render())
    terminated = truncated = False
    while not (terminated or truncated):
        action, conf = choose_click(policy, obs, info, base)
        record.confidence.append(conf)
        obs, reward, terminated, truncated, info = env.step(action)
        policy.observe(action, float(reward), bool(terminated), public_info(info))
        record.actions.append(action)
        record.rewards.append(float(reward))
        record.dice.append(evaluation_dice(base))
        if render:
            record.frames.append(env.render())
    return record
