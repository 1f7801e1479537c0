"""Groups of samples that must stay on one side of a split: video sequences, patients.

Frames of one colonoscopy video are near-duplicates: a split drawn per frame puts a test frame's
neighbours in the training part and inflates every held-out number. Data sets that have groups
report them through :attr:`~bow_gym.datasets.base.SegmentationDataset.groups`, and every split
(:meth:`~bow_gym.datasets.base.SegmentationDataset.split`,
:func:`~bow_gym.datasets.make_dataset`) keeps each group whole.

CVC-ClinicDB ships no sequence labels, only frame numbers (``1.tif`` ... ``612.tif``, frames of
one sequence numbered consecutively; the data set is documented as 612 frames from 29 sequences).
:func:`recover_sequences` finds the cuts between sequences from the images alone: consecutive
frames of one sequence look alike, frames on either side of a cut do not.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from itertools import pairwise

import cv2
import numpy as np

__all__ = [
    "CUT_DISTANCE",
    "frame_distance",
    "frame_signature",
    "recover_sequences",
]

#: Distance between successive frames above which a partial copy of a video data set counts a
#: cut. On the five CVC-ClinicDB sample frames, frames of one sequence are at most 0.20 apart and
#: frames of different sequences at least 0.77. The threshold leans to the second: a missed cut
#: only merges two sequences into one group (a coarser split), while a false cut would split a
#: sequence across training and test.
CUT_DISTANCE = 0.6

_THUMBNAIL = (32, 24)  # (width, height): the frame's layout, without its texture


def frame_signature(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A small summary of an RGB frame: a standardised 32x24 thumbnail and a colour histogram."""
    thumb = cv2.resize(image, _THUMBNAIL, interpolation=cv2.INTER_AREA).astype(np.float32).ravel()
    thumb = (thumb - thumb.mean()) / (thumb.std() + 1e-6)
    hist = cv2.calcHist([np.ascontiguousarray(image)], [0, 1, 2], None, [8, 8, 8],
                        [0, 256] * 3).ravel()
    return thumb, hist / max(float(hist.sum()), 1.0)


def frame_distance(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray]) -> float:
    """How unlike two frames are: thumbnail decorrelation (1 - Pearson r) + colour
    Bhattacharyya distance; about 0 for consecutive video frames, near 1 or above across cuts."""
    decorrelation = 1.0 - float(np.mean(a[0] * b[0]))
    colour = float(np.sqrt(max(0.0, 1.0 - float(np.sum(np.sqrt(a[1] * b[1]))))))
    return decorrelation + colour


def recover_sequences(
    numbers: Sequence[int],
    load: Callable[[int], np.ndarray],
    n_sequences: int | None = None,
    threshold: float = CUT_DISTANCE,
) -> tuple[list[int], np.ndarray]:
    """Assign frames to video sequences from their numbers and the jumps between them.

    Frames are visited in number order; a cut falls between two successive frames (numbered
    consecutively or not) when they are unlike each other. With ``n_sequences`` known (a complete
    data set), the ``n_sequences - 1`` largest jumps are the cuts; otherwise (a partial copy)
    every jump above ``threshold``.

    Args:
        numbers: Frame number of each sample, in the data set's index order.
        load: Returns the RGB image of sample ``i`` (index into ``numbers``).
        n_sequences: Number of sequences, when known.
        threshold: Cut distance used when ``n_sequences`` is ``None``.

    Returns:
        The first frame number of each sample's sequence (its group label), in index order, and
        the distances between successive frames in number order.
    """
    order = sorted(range(len(numbers)), key=lambda i: numbers[i])
    signatures = [frame_signature(load(i)) for i in order]
    jumps = np.array([frame_distance(a, b) for a, b in pairwise(signatures)])
    if n_sequences is not None:
        n_cuts = max(0, min(n_sequences - 1, len(jumps)))
        cut = np.zeros(len(jumps), dtype=bool)
        cut[np.argsort(-jumps, kind="stable")[:n_cuts]] = True
    else:
        cut = jumps > threshold
    first = numbers[order[0]] if order else 0
    label = [0] * len(numbers)
    for position, i in enumerate(order):
        if position and cut[position - 1]:
            first = numbers[i]
        label[i] = first
    return label, jumps
