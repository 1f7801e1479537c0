"""Images with empty ground truth, reported apart in every benchmark.

On an image whose ground truth is empty (BUSI's ``normal`` images) every click from an empty mask
is answered "worse" and undone, so every policy keeps Dice 1.0 there; averaged with the lesion
images, those images lift every policy alike and hide how well it segments lesions. So a data set
that holds any is reported three ways (:func:`bow_gym.metrics.ground_truth_groups`): all images
under its own label, ``<label>[non-empty-gt]`` without them and ``<label>[empty-gt]`` only them
(:func:`bow_gym.metrics.ground_truth_label`). A data set without empty ground truth keeps its one
label and its rows are unchanged.

Which images have empty ground truth is read from the masks (``mask_is_empty``): evaluation
only, like the Dice it splits.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from bow_gym.metrics import ground_truth_groups, ground_truth_label

__all__ = ["empty_ground_truth", "labelled_groups", "rounds_targets"]


def empty_ground_truth(dataset: Any) -> np.ndarray:
    """``(N,)`` whether each image of ``dataset`` (or of an env's) has an empty ground truth.
    **Evaluation only.**"""
    dataset = getattr(getattr(dataset, "unwrapped", dataset), "dataset", dataset)
    return np.array([dataset.mask_is_empty(i) for i in range(len(dataset))], dtype=bool)


def labelled_groups(label: str, gt_empty: Sequence[bool] | np.ndarray
                    ) -> list[tuple[str, np.ndarray]]:
    """``(table label, image selection)`` of each group a data set is reported as: ``label``
    for all images, then ``label[non-empty-gt]`` and ``label[empty-gt]`` when some ground truth
    is empty."""
    return [(ground_truth_label(label, group), keep)
            for group, keep in ground_truth_groups(gt_empty).items()]


def rounds_targets(rows: Sequence[Mapping[str, Any]], target: str = "prediction"
                   ) -> list[tuple[str, str]]:
    """``(group, target name)`` under which a multi-round run's metrics rows report ``target``:
    ``("all", target)``, then ``("non_empty", "<target>[non-empty-gt]")`` and ``("empty",
    "<target>[empty-gt]")`` when the run evaluated images with empty ground truth
    (:meth:`bow_gym.rounds.RoundsRun` writes those rows).

    For the ablation table: its per-target aggregation reads each of them as one more row.
    """
    present = {row["target"] for row in rows}
    out = [("all", target)]
    for group in ("non_empty", "empty"):
        name = ground_truth_label(target, group)
        if name in present:
            out.append((group, name))
    return out
