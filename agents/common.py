"""What every learning agent shares: which data it trains on, and how its envs are built."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


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
    """which part of a seeded 80/20 split to train on: train, test or all"""
    limit: int | None = None
    """use only the first N images of that part"""
    backbone: str | None = None
    """backbone name (default: the env's lab_texture)"""
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    """extra gym.make keyword arguments"""


def make_envs(args: TrainDataArgs, n: int) -> list:
    """``n`` envs on the training data, without ground truth in their ``info``.

    The envs share one data set, backbone and feature cache, so each image is featurised once.
    """
    import gymnasium as gym

    import bow_gym  # noqa: F401
    from bow_gym.wrappers import StripEvalInfo

    kwargs: dict[str, Any] = dict(args.env_kwargs)
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
    return [StripEvalInfo(e) for e in envs]
