"""What every learning agent shares: which data it trains on, and how its envs are built."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn


@dataclass
class TrainDataArgs:
    """Training data of an agent (the first fields of every agent's argument dataclass)."""

    env_id: str = "BetterWorseSeg-v0"
    """registered env id"""
    dataset: str | None = None
    """data set name (default: the env's synthetic data)"""
    root: str | None = None
    """data set folder, for file-based data sets"""
    split: str = "train"
    """which part of a seeded 80/20 split to train on: train, test or all (fit and val: the train
    part split 80/20 again, for model selection away from the test part)"""
    limit: int | None = None
    """use only the first N images of that part"""
    backbone: str | None = None
    """backbone name (default: the env's lab_texture)"""
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    """extra gym.make keyword arguments"""
    expert_margin: float = 0.0
    """the training expert answers "better" only for a Dice gain above this (0: the method's Dice
    oracle; > 0: :class:`~bow_gym.oracles.MarginOracle`, a stricter expert); evaluation is not
    affected"""
    reward: str = "answer"
    """answer (the expert's +1/-1: the method) or dice_gain (5 x the Dice gain of the step,
    :class:`~bow_gym.wrappers.DiceGainReward`; reads the ground truth: a reference for
    diagnosing an agent's learning, never a result of the method)"""


def make_envs(args: TrainDataArgs, n: int) -> list:
    """``n`` envs on the training data, without ground truth in their ``info``.

    The envs share one data set, backbone and feature cache, so each image is featurised once.
    """
    import gymnasium as gym

    import bow_gym  # noqa: F401
    from bow_gym.wrappers import DiceGainReward, StripEvalInfo

    if args.reward not in ("answer", "dice_gain"):
        raise ValueError(f"reward must be 'answer' or 'dice_gain', got {args.reward!r}")
    if not args.expert_margin >= 0:
        raise ValueError(f"expert_margin must be >= 0, got {args.expert_margin!r}")
    kwargs: dict[str, Any] = dict(args.env_kwargs)
    if args.expert_margin > 0:
        if "oracle" in kwargs:
            raise ValueError("expert_margin sets the training oracle: do not also pass "
                             f"env_kwargs['oracle'] ({kwargs['oracle']!r})")
        kwargs["oracle"] = "margin"
        kwargs["oracle_kwargs"] = {"delta": float(args.expert_margin)}
    for key in ("dataset", "root", "backbone"):
        if getattr(args, key):
            kwargs[key] = getattr(args, key)
    ds_kwargs = dict(kwargs.pop("dataset_kwargs", None) or {})
    if args.split != "all":
        ds_kwargs["split"] = args.split
    if args.limit:
        ds_kwargs["limit"] = args.limit
    if ds_kwargs:
        kwargs["dataset_kwargs"] = ds_kwargs
    first = gym.make(args.env_id, **kwargs)
    base = first.unwrapped
    shared = {**kwargs, "dataset": base.dataset, "backbone": base.backbone, "root": None,
              "dataset_kwargs": None, "backbone_kwargs": None}
    envs = [first] + [gym.make(args.env_id, **shared) for _ in range(n - 1)]
    if args.reward == "dice_gain":
        return [StripEvalInfo(DiceGainReward(e)) for e in envs]
    return [StripEvalInfo(e) for e in envs]


class TrainingLog:
    """What an offline agent trainer records: learning curve, TensorBoard, progress bar, files.

    Args:
        out: Run folder (created); TensorBoard logs go to ``<out>/tb``.
        total_clicks: Length of the progress bar.
        desc: Progress-bar label.
        tensorboard: Write TensorBoard logs (skipped with a hint if tensorboard is missing).
        progress: Show the progress bar.
    """

    def __init__(self, out: Path, total_clicks: int, desc: str, tensorboard: bool,
                 progress: bool):
        from tqdm.auto import tqdm

        self.out = Path(out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.writer = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(self.out / "tb"))
            except ImportError:
                print("tensorboard is not installed (pip install tensorboard): logging to CSV only")
        self.history: dict[str, list[float]] = {"clicks": [], "reward": [], "better_share": []}
        self.t0 = time.time()
        self.bar = tqdm(total=total_clicks, desc=desc, unit="click", disable=not progress)

    def step(self, clicks: int, rewards: list[float], stats: dict[str, float]) -> None:
        """Record one lockstep of answered clicks (``clicks``: total so far)."""
        mean_r = float(np.mean(rewards))
        h = self.history
        h["clicks"].append(clicks)
        h["reward"].append(mean_r)
        h["better_share"].append(float(np.mean(np.array(rewards) > 0)))
        if self.writer is not None:
            self.writer.add_scalar("charts/reward", mean_r, clicks)
            self.writer.add_scalar("charts/better_share", h["better_share"][-1], clicks)
            self.writer.add_scalar("charts/clicks_per_s", clicks / (time.time() - self.t0), clicks)
            for k, v in stats.items():
                self.writer.add_scalar(k, v, clicks)
        self.bar.update(len(rewards))
        self.bar.set_postfix(reward=f"{np.mean(h['reward'][-25:]):+.2f}")

    def finish(self, agent: Any, args: Any) -> dict[str, list[float]]:
        """Close the logs; write ``agent.safetensors``, ``args.json``, ``history.json``."""
        self.bar.close()
        if self.writer is not None:
            self.writer.close()
        agent.save(self.out / "agent.safetensors")
        (self.out / "args.json").write_text(json.dumps(asdict(args), indent=1))
        (self.out / "history.json").write_text(json.dumps(self.history))
        return self.history


def summary_line(history: dict[str, list[float]], out: str | Path) -> str:
    """The line an agent's CLI prints after training."""
    last = history["reward"][-max(1, len(history["reward"]) // 10):]
    return (f"trained {history['clicks'][-1]} clicks; mean reward over the last 10%: "
            f"{np.mean(last):+.3f}; checkpoint {Path(out) / 'agent.safetensors'}")


class PatchMLP(nn.Module):
    """One small MLP applied alike to every patch's input row: ``(B, P, D) -> (B, P, hidden)``.

    The input size is inferred on the first call (lazy layers), so one agent serves any
    backbone, and inputs are standardised by running statistics (no learned affine). ``head``
    maps each patch to ``outputs`` values and starts at zero (an untrained network is neutral:
    a uniform policy, a belief of 0.5); subclasses decide what the outputs mean.
    """

    def __init__(self, hidden: int, outputs: int):
        super().__init__()
        self.norm = nn.LazyBatchNorm1d(affine=False)
        self.body = nn.Sequential(nn.LazyLinear(hidden), nn.SiLU(), nn.Linear(hidden, hidden),
                                  nn.SiLU())
        self.head = nn.Linear(hidden, outputs)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, P, hidden)`` per-patch features of ``(B, P, D)`` inputs."""
        b, p, d = x.shape
        return self.body(self.norm(x.reshape(b * p, d))).reshape(b, p, -1)
