"""Segmentation metrics on 2-D boolean masks: Dice, IoU, HD95, plus hole filling and resizing.

The conventions follow nnU-Net's evaluation code: numpy on boolean masks, with every empty-mask
case decided explicitly rather than left to a ``0 / 0``.

Empty-mask conventions:

================  ==========  ==========  ========================================
pred / gt         Dice        IoU         HD95
================  ==========  ==========  ========================================
both empty        1.0         1.0         0.0
one empty         0.0         0.0         image diagonal (spacing-scaled)
both non-empty    usual       usual       usual (MedPy's ``hd95``)
================  ==========  ==========  ========================================

Masks may be ``bool`` or numeric (e.g. 0/1 integers); anything nonzero counts as foreground.
Thresholding soft predictions is the caller's job.

Images with empty ground truth (BUSI's ``normal`` images) are scored by other rules than lesion
images: an empty prediction gets Dice 1.0 there whatever the policy did, so a mean over both kinds
mixes two quantities. :func:`summarize_by_ground_truth` reports them apart (and together).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import cv2
import numpy as np

__all__ = [
    "GROUND_TRUTH_GROUPS",
    "GROUND_TRUTH_SUFFIXES",
    "dice",
    "dice_from_counts",
    "distance_to_background",
    "evaluate",
    "fill_holes",
    "ground_truth_groups",
    "ground_truth_label",
    "hd95",
    "iou",
    "iou_from_counts",
    "overlap_counts",
    "resize_mask",
    "summarize_by_ground_truth",
]

#: Keys of :func:`summarize_by_ground_truth`: lesion images, empty-ground-truth images, all.
GROUND_TRUTH_GROUPS = ("non_empty", "empty", "all")
#: How tables name a ground-truth group beside a data set or target (:func:`ground_truth_label`).
GROUND_TRUTH_SUFFIXES = {"non_empty": "non-empty-gt", "empty": "empty-gt"}

# Bounds the temporary (points x line length) array of the distance search, so huge
# surfaces cost time rather than memory.
_CHUNK_ELEMENTS = 1 << 21


def _as_mask(x: np.ndarray, name: str) -> np.ndarray:
    """``x`` as a 2-D bool array (no copy if it already is one).

    Raises:
        ValueError: If ``x`` is not 2-D or its dtype is neither bool nor a real number type.
    """
    arr = np.asarray(x)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array, got shape {arr.shape}")
    if arr.dtype == np.bool_:
        return arr
    if arr.dtype.kind not in "iuf":
        raise ValueError(f"{name} must be a bool or numeric array, got dtype {arr.dtype}")
    return arr != 0


def _as_mask_pair(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Validate and convert ``pred`` and ``gt`` together.

    Raises:
        ValueError: If either is invalid (see :func:`_as_mask`) or their shapes differ.
    """
    p = _as_mask(pred, "pred")
    g = _as_mask(gt, "gt")
    if p.shape != g.shape:
        raise ValueError(
            f"pred and gt must have the same shape, got pred {p.shape} and gt {g.shape}"
        )
    return p, g


def _check_spacing(spacing: Sequence[float] | None) -> tuple[float, float]:
    """``spacing`` as ``(row, col)`` floats; ``None`` means unit pixels.

    Raises:
        ValueError: If ``spacing`` is not two positive finite numbers.
    """
    if spacing is None:
        return 1.0, 1.0
    values = tuple(float(s) for s in spacing)
    if len(values) != 2 or not all(math.isfinite(s) and s > 0 for s in values):
        raise ValueError(f"spacing must be two positive finite numbers, got {spacing!r}")
    return values[0], values[1]


def overlap_counts(pred: np.ndarray, gt: np.ndarray) -> tuple[int, int, int]:
    """Pixel counts that Dice and IoU are computed from.

    Args:
        pred: Predicted 2-D mask (bool, or numeric with nonzero as foreground).
        gt: Ground-truth 2-D mask, same shape as ``pred``.

    Returns:
        ``(tp, pred_sum, gt_sum)``: foreground pixels in both masks, in ``pred``, and in ``gt``.

    Raises:
        ValueError: If either mask is not 2-D or not numeric, or their shapes differ.
    """
    p, g = _as_mask_pair(pred, gt)
    return (
        int(np.count_nonzero(p & g)),
        int(np.count_nonzero(p)),
        int(np.count_nonzero(g)),
    )


def dice_from_counts(tp: int, pred_sum: int, gt_sum: int) -> float:
    """Dice coefficient ``2 tp / (pred_sum + gt_sum)`` from :func:`overlap_counts`.

    Called in the environment's inner loop, so it does plain scalar arithmetic and no validation;
    python ints and numpy integer scalars both work.

    Args:
        tp: Pixels foreground in both masks.
        pred_sum: Foreground pixels of the prediction.
        gt_sum: Foreground pixels of the ground truth.

    Returns:
        Dice in ``[0, 1]``. Both masks empty gives 1.0: an empty prediction agrees perfectly with
        an empty truth. Exactly one empty gives 0.0 (``tp`` is then 0).
    """
    denominator = pred_sum + gt_sum
    if denominator == 0:
        return 1.0
    return float(2 * tp / denominator)


def iou_from_counts(tp: int, pred_sum: int, gt_sum: int) -> float:
    """Intersection over union ``tp / (pred_sum + gt_sum - tp)`` from :func:`overlap_counts`.

    Cheap like :func:`dice_from_counts`, with the same empty-mask convention.

    Args:
        tp: Pixels foreground in both masks.
        pred_sum: Foreground pixels of the prediction.
        gt_sum: Foreground pixels of the ground truth.

    Returns:
        IoU (Jaccard index) in ``[0, 1]``; 1.0 when both masks are empty, 0.0 when exactly one is.
    """
    union = pred_sum + gt_sum - tp
    if union == 0:
        return 1.0
    return float(tp / union)


def dice(pred: np.ndarray, gt: np.ndarray) -> float:
    """Dice coefficient of two masks (1.0 if both are empty, 0.0 if exactly one is).

    Args:
        pred: Predicted 2-D mask (bool, or numeric with nonzero as foreground).
        gt: Ground-truth 2-D mask, same shape as ``pred``.

    Returns:
        Dice in ``[0, 1]``.

    Raises:
        ValueError: If either mask is not 2-D or not numeric, or their shapes differ.
    """
    return dice_from_counts(*overlap_counts(pred, gt))


def iou(pred: np.ndarray, gt: np.ndarray) -> float:
    """Intersection over union of two masks (1.0 if both are empty, 0.0 if exactly one is).

    Args:
        pred: Predicted 2-D mask (bool, or numeric with nonzero as foreground).
        gt: Ground-truth 2-D mask, same shape as ``pred``.

    Returns:
        IoU in ``[0, 1]``.

    Raises:
        ValueError: If either mask is not 2-D or not numeric, or their shapes differ.
    """
    return iou_from_counts(*overlap_counts(pred, gt))


def _surface(mask: np.ndarray) -> np.ndarray:
    """Foreground pixels with at least one 4-connected background neighbour.

    This is MedPy's ``mask ^ binary_erosion(mask, cross)``. Padding with ``False`` makes the
    outside of the image background, as scipy's default ``border_value=0`` does, so an object
    touching the border has surface along it.
    """
    padded = np.pad(mask, 1)
    interior = mask & padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return mask & ~interior


def _surface_distances(
    source: np.ndarray, target: np.ndarray, spacing: tuple[float, float]
) -> np.ndarray:
    """Exact Euclidean distance from each ``source`` pixel to the nearest ``target`` pixel.

    Uses the separable form of the squared distance:
    ``d²(y, x) = min_x' [ (sx (x - x'))² + g(y, x') ]`` with ``g(y, x')`` the squared distance
    to the nearest target pixel in column ``x'``. ``g`` comes from cumulative scans (O(H W));
    the minimum over ``x'`` is then needed only at source pixels (O(points x W)), in chunks.

    With equal spacing the squared distances are integers and are computed as such, so the
    result is exact and the same on every run. (``cv2.distanceTransform`` with
    ``DIST_MASK_PRECISE`` is about 2x faster but neither: its float32 output changes in the last
    bits with the number of OpenCV threads, and is off by one in ``d²`` now and then.)
    """
    sy, sx = spacing
    # The per-point search runs along axis 1, so put the shorter image side there.
    if source.shape[1] > source.shape[0]:
        source, target, sy, sx = source.T, target.T, sx, sy
    h, w = target.shape
    isotropic = sy == sx
    if isotropic:
        # Sentinel gaps reach 2h + w, so d² < 10 h² (w <= h here): int32 holds that to h = 14,654.
        dtype = np.int32 if h < 14_000 else np.int64
        far = h + w  # a gap no real target row can produce
        rows = np.arange(h, dtype=dtype)[:, None]
        above = np.maximum.accumulate(np.where(target, rows, -far), axis=0)
        below = np.minimum.accumulate(np.where(target, rows, h + far)[::-1], axis=0)[::-1]
        g = np.minimum(rows - above, below - rows)
        g *= g
    else:
        dtype = np.float64
        rows = np.arange(h, dtype=dtype)[:, None]
        # Nearest target row at or above / at or below each pixel, +-inf where the column has none.
        above = np.maximum.accumulate(np.where(target, rows, -np.inf), axis=0)
        below = np.minimum.accumulate(np.where(target, rows, np.inf)[::-1], axis=0)[::-1]
        g = np.square(sy * np.minimum(rows - above, below - rows))

    ys, xs = np.nonzero(source)
    cols = np.arange(w, dtype=dtype)
    out = np.empty(ys.size, dtype=np.float64)
    step = max(1, _CHUNK_ELEMENTS // max(w, 1))
    for start in range(0, ys.size, step):
        y, x = ys[start : start + step], xs[start : start + step]
        candidates = x[:, None].astype(dtype) - cols
        if not isotropic:
            candidates *= sx
        candidates *= candidates
        candidates += g[y]
        out[start : start + step] = candidates.min(axis=1)
    return np.sqrt(out) * sy if isotropic else np.sqrt(out)


def distance_to_background(mask: np.ndarray) -> np.ndarray:
    """Exact Euclidean distance of every foreground pixel to the nearest background pixel.

    Like ``cv2.distanceTransform(mask, DIST_L2, DIST_MASK_PRECISE)`` or scipy's
    ``distance_transform_edt``, but exact and the same on every run (cv2's float32 result changes
    in the last bits with its thread split, which can change an argmax). Pixels outside the
    image do not count as background: pad the mask with ``False`` for that.

    Args:
        mask: 2-D mask (bool, or numeric with nonzero as foreground).

    Returns:
        ``float64`` array of ``mask``'s shape, 0 on background; ``inf`` everywhere on the
        foreground if the mask has no background pixel.

    Raises:
        ValueError: If ``mask`` is not 2-D or not numeric.
    """
    m = _as_mask(mask, "mask")
    out = np.zeros(m.shape, np.float64)
    if m.all():
        out[:] = np.inf
        return out
    if not m.any():
        return out
    # _surface_distances puts the shorter side on axis 1 and returns distances in its row-major
    # order of the source pixels, so hand it that orientation and scatter back in the same order.
    wide = m.shape[1] > m.shape[0]
    t = m.T if wide else m
    view = out.T if wide else out
    view[t] = _surface_distances(t, ~t, (1.0, 1.0))
    return out


def _image_diagonal(shape: tuple[int, ...], spacing: tuple[float, float]) -> float:
    """Length of the image's diagonal, edge to edge, in spacing units."""
    return math.hypot(shape[0] * spacing[0], shape[1] * spacing[1])


def hd95(pred: np.ndarray, gt: np.ndarray, spacing: tuple[float, float] | None = None) -> float:
    """95th-percentile symmetric Hausdorff distance, computed as MedPy's ``hd95``.

    The surface of a mask is the mask minus its erosion by a 4-connected cross, with the outside
    of the image counted as background. Distances are taken from every surface pixel of each mask
    to the nearest surface pixel of the other; the result is ``np.percentile`` (linear
    interpolation) at 95 of both directions stacked together. The distances are exact (integer
    squared distances for isotropic spacing), so the same masks always give the same number.

    Empty masks: both empty gives 0.0. Exactly one empty gives the image diagonal,
    ``hypot(H * row_spacing, W * col_spacing)``, which exceeds every distance two non-empty
    masks can produce, so a missed or hallucinated object always scores worst while means over
    a data set stay finite. (MedPy raises ``RuntimeError`` here; nnU-Net has no HD95.)

    Args:
        pred: Predicted 2-D mask (bool, or numeric with nonzero as foreground).
        gt: Ground-truth 2-D mask, same shape as ``pred``.
        spacing: Physical pixel size ``(row, col)``, i.e. along axis 0 then axis 1, like MedPy's
            ``voxelspacing``. ``None`` means ``(1.0, 1.0)``, distances in pixels.

    Returns:
        HD95 in the units of ``spacing`` (``>= 0``).

    Raises:
        ValueError: If either mask is not 2-D or not numeric, their shapes differ, or ``spacing``
            is not two positive finite numbers.
    """
    p, g = _as_mask_pair(pred, gt)
    spacing_yx = _check_spacing(spacing)
    p_empty, g_empty = not p.any(), not g.any()
    if p_empty and g_empty:
        return 0.0
    if p_empty or g_empty:
        return _image_diagonal(p.shape, spacing_yx)

    # Everything outside the joint bounding box is background in both masks, so cropping to it
    # changes no surface and no distance, and saves most of the work for small objects.
    union = p | g
    rows = np.flatnonzero(union.any(axis=1))
    cols = np.flatnonzero(union.any(axis=0))
    window = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
    # A non-empty mask always has surface (its topmost pixel, at least), so both are non-empty.
    p_surface, g_surface = _surface(p[window]), _surface(g[window])
    p_to_g = _surface_distances(p_surface, g_surface, spacing_yx)
    g_to_p = _surface_distances(g_surface, p_surface, spacing_yx)
    return float(np.percentile(np.hstack((p_to_g, g_to_p)), 95))


def evaluate(
    pred: np.ndarray, gt: np.ndarray, spacing: tuple[float, float] | None = None
) -> dict[str, float]:
    """All metrics of one prediction.

    Args:
        pred: Predicted 2-D mask (bool, or numeric with nonzero as foreground).
        gt: Ground-truth 2-D mask, same shape as ``pred``.
        spacing: Pixel size ``(row, col)`` for HD95; ``None`` means unit pixels.

    Returns:
        ``{"dice": ..., "iou": ..., "hd95": ...}``, with the empty-mask conventions of
        :func:`dice_from_counts`, :func:`iou_from_counts` and :func:`hd95`.

    Raises:
        ValueError: As :func:`hd95`.
    """
    p, g = _as_mask_pair(pred, gt)
    counts = overlap_counts(p, g)
    return {
        "dice": dice_from_counts(*counts),
        "iou": iou_from_counts(*counts),
        "hd95": hd95(p, g, spacing),
    }


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """Fill the holes of a mask: background regions not 4-connected to the image border.

    Matches ``scipy.ndimage.binary_fill_holes`` with its default (cross) structure, so background
    pixels touching only diagonally across a foreground line count as enclosed.

    Args:
        mask: 2-D mask (bool, or numeric with nonzero as foreground).

    Returns:
        A new bool array of the same shape: ``mask`` plus its holes.

    Raises:
        ValueError: If ``mask`` is not 2-D or not numeric.
    """
    m = _as_mask(mask, "mask")
    # A one-pixel background frame joins all border-touching background into one region, which
    # a single flood fill from the corner then reaches.
    padded = np.pad(m, 1).astype(np.uint8)
    cv2.floodFill(padded, None, (0, 0), 2, flags=4)
    return padded[1:-1, 1:-1] != 2


def resize_mask(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A mask resized to ``shape`` ``(H, W)`` as bool, nearest neighbour (labels stay crisp).

    A mask already of that shape is only converted.
    """
    m = np.asarray(mask)
    if m.shape == tuple(shape):
        return m.astype(bool)
    return cv2.resize(m.astype(np.uint8), (shape[1], shape[0]),
                      interpolation=cv2.INTER_NEAREST).astype(bool)


def bootstrap_ci(values: np.ndarray, n: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95% percentile-bootstrap interval of the mean of ``values`` (NaNs are dropped).

    Args:
        values: 1-D sample (e.g. per-image Dice).
        n: Bootstrap resamples.
        seed: Seed of the resampling, so tables repeat.

    Returns:
        ``(low, high)``; ``(nan, nan)`` when no finite value is left.
    """
    v = np.asarray(values, dtype=np.float64).ravel()
    v = v[np.isfinite(v)]
    if not len(v):
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, len(v), (n, len(v)))].mean(axis=1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def summarize_by_ground_truth(
    values: Sequence[float] | np.ndarray | Mapping[str, Sequence[float] | np.ndarray],
    gt_empty: Sequence[bool] | np.ndarray,
    *,
    n_boot: int = 2000,
    seed: int = 0,
) -> dict[str, Any]:
    """Per-image results summarised for non-empty and empty ground truth apart, and for all.

    Benchmarks report the two kinds separately because they measure different things: on an
    empty ground truth an empty prediction scores Dice 1.0 and every foreground pixel is a
    false positive, so a policy that never clicks looks perfect there.

    Args:
        values: One value per image (e.g. final Dice), or a mapping ``metric -> values``.
        gt_empty: Whether each image's ground truth is empty (same order and length).
        n_boot: Bootstrap resamples of the 95% interval (:func:`bootstrap_ci`).
        seed: Seed of the bootstrap.

    Returns:
        ``{group: {"n", "mean", "median", "ci_low", "ci_high"}}`` for each group of
        :data:`GROUND_TRUTH_GROUPS` (NaN statistics when a group has no finite value), or
        ``{metric: {group: {...}}}`` for a mapping.

    Raises:
        ValueError: if the lengths differ or ``gt_empty`` is not boolean.
    """
    if isinstance(values, Mapping):
        return {name: summarize_by_ground_truth(v, gt_empty, n_boot=n_boot, seed=seed)
                for name, v in values.items()}
    v = np.asarray(values, dtype=np.float64).ravel()
    empty = np.asarray(gt_empty)
    if empty.dtype != np.bool_ or empty.shape != v.shape:
        raise ValueError(f"gt_empty must be one bool per value ({v.shape[0]}), got "
                         f"{empty.dtype} of shape {empty.shape}")
    out: dict[str, Any] = {}
    for group, keep in zip(GROUND_TRUTH_GROUPS, (~empty, empty, np.ones_like(empty)),
                           strict=True):
        part = v[keep]
        finite = part[np.isfinite(part)]
        low, high = bootstrap_ci(finite, n=n_boot, seed=seed)
        out[group] = {
            "n": int(keep.sum()),
            "mean": float(finite.mean()) if len(finite) else float("nan"),
            "median": float(np.median(finite)) if len(finite) else float("nan"),
            "ci_low": low,
            "ci_high": high,
        }
    return out


def ground_truth_label(name: str, group: str) -> str:
    """How a table labels ``name`` (a data set, a target) restricted to a ground-truth group.

    ``"all"`` keeps the name; ``"non_empty"`` and ``"empty"`` append ``[non-empty-gt]`` and
    ``[empty-gt]`` (``busi[empty-gt]``: BUSI's images with empty ground truth).

    Raises:
        ValueError: Unknown group.
    """
    if group == "all":
        return name
    if group not in GROUND_TRUTH_SUFFIXES:
        raise ValueError(f"group must be one of {GROUND_TRUTH_GROUPS}, got {group!r}")
    return f"{name}[{GROUND_TRUTH_SUFFIXES[group]}]"


def ground_truth_groups(gt_empty: Sequence[bool] | np.ndarray) -> dict[str, np.ndarray]:
    """Which images each reported group holds: ``"all"``, and when any ground truth is empty,
    ``"non_empty"`` and ``"empty"`` apart (a group without images is left out).

    The rule every table follows: a set without empty ground truth is reported as before (one
    group); a set with some is reported three ways, with and without them.

    Args:
        gt_empty: Whether each image's ground truth is empty.

    Returns:
        ``group -> bool selection`` over the images, ``"all"`` first.
    """
    empty = np.asarray(gt_empty, dtype=bool).ravel()
    groups = {"all": np.ones_like(empty)}
    if empty.any():
        for group, keep in (("non_empty", ~empty), ("empty", empty)):
            if keep.any():
                groups[group] = keep
    return groups


#: ``mask_threshold`` values that are not a probability: see :func:`match_area_level`.
MATCH_AREA = "match_area"


def probability_level(threshold: float) -> int:
    """The uint8 level ``L`` with ``round(p * 255) >= L`` exactly when ``p >= threshold``
    (up to rounding): 0.5 gives 128, the level the pipeline has always used.

    Raises:
        ValueError: ``threshold`` is not a number in ``(0, 1)``.
    """
    if isinstance(threshold, bool) or not isinstance(threshold, int | float) \
            or not 0.0 < threshold < 1.0:
        raise ValueError(f"a mask threshold must be a probability in (0, 1) or "
                         f"{MATCH_AREA!r}, got {threshold!r}")
    return int(min(255, max(1, np.ceil(threshold * 255 - 1e-9))))


def match_area_level(probs: Sequence[np.ndarray], targets: Sequence[np.ndarray]) -> int:
    """The uint8 level at which the predictions cover as much as the masks they learnt from.

    Prior matching, with no ground truth: a segmenter trained on noisy pseudo-masks is not
    calibrated, and 0.5 need not be where its output has the foreground share of its own
    training masks. This is the level ``L`` (1..255) whose ``probs >= L`` has the mean
    per-image foreground share closest to that of ``targets`` (each image weighs the same,
    whatever its resolution); ties go to the level nearest 128 (probability 0.5).

    Args:
        probs: uint8 probability maps (``round(p * 255)``) of the training images.
        targets: The bool masks the segmenter was trained on, one per map, any resolution.

    Returns:
        The level; threshold the maps with ``prob >= level``.

    Raises:
        ValueError: No maps, unequal counts, or a map that is not uint8.
    """
    if len(probs) == 0 or len(probs) != len(targets):
        raise ValueError(f"match_area_level needs as many probability maps as training masks "
                         f"(at least one), got {len(probs)} and {len(targets)}")
    share_at = np.zeros(256)  # share_at[L]: mean share of pixels with prob >= L
    for p in probs:
        if p.dtype != np.uint8:
            raise ValueError(f"probability maps must be uint8 (round(p * 255)), got {p.dtype}")
        counts = np.bincount(p.ravel(), minlength=256)[::-1].cumsum()[::-1]
        share_at += counts / p.size
    share_at /= len(probs)
    want = float(np.mean([np.asarray(t, bool).mean() for t in targets]))
    levels = np.arange(1, 256)
    err = np.abs(share_at[1:] - want)
    best = levels[err <= err.min() + 1e-12]
    return int(best[np.argmin(np.abs(best - 128))])
