"""Test helpers shared by several test modules."""

from __future__ import annotations

import numpy as np

from bow_gym.datasets.base import Sample, SegmentationDataset
from bow_gym.oracles import Oracle, Overlap


class ConstantOracle(Oracle):
    """Answers the same whatever the ground truth: trajectories may then not depend on it."""

    def __init__(self, answer: int):
        self.answer = answer

    def judge(self, before: Overlap, after: Overlap, rng=None) -> int:
        return self.answer


class OtherMasks(SegmentationDataset):
    """The images of ``base`` with another ground truth (inverted and shifted).

    Two envs over ``base`` and ``OtherMasks(base)`` differ only in ground truth: what an agent
    does must not differ between them.
    """

    def __init__(self, base: SegmentationDataset, shift: int = 9, axis: int = 0):
        self.base, self.shift, self.axis, self.name = base, shift, axis, "other-masks"

    @property
    def ids(self) -> list[str]:
        return self.base.ids

    def _load(self, index: int) -> Sample:
        s = self.base[index]
        return Sample(s.image, np.roll(~s.mask, self.shift, axis=self.axis), s.id)


def tiny_units(seeds: int, evals: tuple = ()) -> list:
    """compare_policies units on 20 small synthetic images (64 px), seeds ``0..seeds-1``;
    ``evals``: transfer data sets (:class:`benchmarks.lib.data.DataSource`), also at 64 px."""
    from benchmarks.compare_policies import Unit
    from benchmarks.lib.data import DataSource, data_configs

    source = DataSource("synthetic", None, {"n_images": 200})
    cfg = data_configs([source], transductive=False, evals=evals)["synthetic"]
    small = {"n_images": 20, "size": 64}
    for part in ("train", "test"):
        cfg[part] = {**cfg[part], "obs_size": 64,
                     "dataset_kwargs": {**cfg[part]["dataset_kwargs"], **small}}
    cfg["transfer"] = {label: {**kw, "obs_size": 64} for label, kw in cfg["transfer"].items()}
    kw = cfg["trainer"]["env_kwargs"]
    cfg["trainer"] = {**cfg["trainer"], "env_kwargs": {
        **kw, "obs_size": 64, "dataset_kwargs": {**kw["dataset_kwargs"], **small}}}
    return [Unit("synthetic", cfg, 0, seed) for seed in range(seeds)]
