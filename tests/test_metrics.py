"""Known-answer and cross-check tests for :mod:`bow_gym.metrics`."""

from __future__ import annotations

import math
import re
from pathlib import Path

import cv2
import numpy as np
import pytest

from bow_gym.metrics import (
    dice,
    dice_from_counts,
    evaluate,
    fill_holes,
    hd95,
    iou,
    iou_from_counts,
    overlap_counts,
)

# --------------------------------------------------------------------------- helpers


def _mask(shape: tuple[int, int], *pixels: tuple[int, int]) -> np.ndarray:
    m = np.zeros(shape, dtype=bool)
    for y, x in pixels:
        m[y, x] = True
    return m


def _square(shape: tuple[int, int], top: int, left: int, size: int) -> np.ndarray:
    m = np.zeros(shape, dtype=bool)
    m[top : top + size, left : left + size] = True
    return m


def _reference_surface(mask: np.ndarray) -> np.ndarray:
    """Foreground pixels with a 4-neighbour that is background or outside, by explicit loops."""
    h, w = mask.shape
    out = np.zeros_like(mask)
    for y in range(h):
        for x in range(w):
            if not mask[y, x]:
                continue
            for dy, dx in ((-1, 0), (1, 0), (0, -1), (0, 1)):
                yy, xx = y + dy, x + dx
                if not (0 <= yy < h and 0 <= xx < w) or not mask[yy, xx]:
                    out[y, x] = True
                    break
    return out


def _reference_hd95(
    pred: np.ndarray, gt: np.ndarray, spacing: tuple[float, float] = (1.0, 1.0)
) -> float:
    """MedPy's hd95 by brute force: all pairwise surface distances."""
    ps = np.argwhere(_reference_surface(pred)) * np.asarray(spacing)
    gs = np.argwhere(_reference_surface(gt)) * np.asarray(spacing)
    d = np.sqrt(((ps[:, None, :] - gs[None, :, :]) ** 2).sum(axis=-1))
    return float(np.percentile(np.hstack((d.min(axis=1), d.min(axis=0))), 95))


def _random_blobs(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """Irregular, possibly multi-component, possibly border-touching, possibly holed mask."""
    if rng.random() < 0.5:
        noise = cv2.GaussianBlur(rng.random(shape).astype(np.float32), (0, 0), 2.5)
        mask = noise > np.quantile(noise, rng.uniform(0.5, 0.85))
    else:
        canvas = np.zeros(shape, dtype=np.uint8)
        for _ in range(rng.integers(1, 4)):
            center = (int(rng.integers(0, shape[1])), int(rng.integers(0, shape[0])))
            axes = (int(rng.integers(2, 12)), int(rng.integers(2, 12)))
            cv2.ellipse(canvas, center, axes, float(rng.uniform(0, 180)), 0, 360, 1, -1)
        if rng.random() < 0.5:
            center = (int(rng.integers(0, shape[1])), int(rng.integers(0, shape[0])))
            cv2.circle(canvas, center, int(rng.integers(1, 5)), 0, -1)
        mask = canvas.astype(bool)
    if not mask.any():
        mask[shape[0] // 2, shape[1] // 2] = True
    return mask


# --------------------------------------------------------------------------- dice / iou

# 4 px prediction, 6 px truth, 2 px overlap: dice = 4 / 10, iou = 2 / 8.
PRED_4 = np.array([[1, 1, 1, 1], [0, 0, 0, 0], [0, 0, 0, 0]], dtype=bool)
GT_6 = np.array([[0, 0, 1, 1], [0, 0, 1, 1], [0, 0, 1, 1]], dtype=bool)
EMPTY = np.zeros((3, 4), dtype=bool)


def test_overlap_counts_by_hand():
    assert overlap_counts(PRED_4, GT_6) == (2, 4, 6)
    assert all(type(c) is int for c in overlap_counts(PRED_4, GT_6))


def test_dice_iou_by_hand():
    assert dice(PRED_4, GT_6) == pytest.approx(0.4)
    assert iou(PRED_4, GT_6) == pytest.approx(0.25)
    assert dice(GT_6, PRED_4) == pytest.approx(0.4)
    assert iou(GT_6, PRED_4) == pytest.approx(0.25)


def test_dice_iou_identical_and_disjoint():
    assert dice(GT_6, GT_6) == 1.0
    assert iou(GT_6, GT_6) == 1.0
    disjoint = ~GT_6
    assert dice(GT_6, disjoint) == 0.0
    assert iou(GT_6, disjoint) == 0.0


@pytest.mark.parametrize(
    ("pred", "gt", "expected_dice", "expected_iou"),
    [
        (EMPTY, EMPTY, 1.0, 1.0),
        (EMPTY, GT_6, 0.0, 0.0),
        (PRED_4, EMPTY, 0.0, 0.0),
        (PRED_4, GT_6, 0.4, 0.25),
    ],
    ids=["both-empty", "pred-empty", "gt-empty", "both-present"],
)
def test_dice_iou_empty_cases(pred, gt, expected_dice, expected_iou):
    assert dice(pred, gt) == pytest.approx(expected_dice)
    assert iou(pred, gt) == pytest.approx(expected_iou)


@pytest.mark.parametrize(
    ("counts", "expected_dice", "expected_iou"),
    [((0, 0, 0), 1.0, 1.0), ((0, 0, 7), 0.0, 0.0), ((0, 7, 0), 0.0, 0.0), ((2, 4, 6), 0.4, 0.25)],
)
def test_from_counts_empty_cases(counts, expected_dice, expected_iou):
    assert dice_from_counts(*counts) == pytest.approx(expected_dice)
    assert iou_from_counts(*counts) == pytest.approx(expected_iou)


def test_from_counts_accept_numpy_scalars_and_return_python_float():
    for counts in [(np.int64(2), np.int64(4), np.int64(6)), (np.intp(0), np.intp(0), np.intp(0))]:
        d, j = dice_from_counts(*counts), iou_from_counts(*counts)
        assert type(d) is float and type(j) is float
    assert dice_from_counts(np.int64(2), np.int64(4), np.int64(6)) == pytest.approx(0.4)
    assert iou_from_counts(np.uint32(2), np.uint32(4), np.uint32(6)) == pytest.approx(0.25)


def test_integer_and_float_masks_match_bool():
    assert dice(PRED_4.astype(np.uint8), GT_6.astype(np.int64)) == pytest.approx(0.4)
    assert iou(PRED_4.astype(np.float32), GT_6.tolist()) == pytest.approx(0.25)
    # Any nonzero counts as foreground.
    assert dice(PRED_4.astype(np.int32) * 255, GT_6) == pytest.approx(0.4)


# --------------------------------------------------------------------------- hd95


def test_hd95_single_pixels_3_4_5():
    pred = _mask((12, 12), (2, 2))
    gt = _mask((12, 12), (5, 6))
    assert hd95(pred, gt) == pytest.approx(5.0)
    assert hd95(gt, pred) == pytest.approx(5.0)


def test_hd95_identical_masks_is_zero():
    m = _square((20, 20), 4, 5, 8)
    assert hd95(m, m) == 0.0
    assert hd95(m, m, spacing=(2.0, 0.5)) == 0.0


@pytest.mark.parametrize("k", [1, 2, 3])
def test_hd95_shifted_square(k):
    pred = _square((30, 30), 8, 8, 10)
    assert hd95(pred, _square((30, 30), 8, 8 + k, 10)) == pytest.approx(k)
    assert hd95(pred, _square((30, 30), 8 + k, 8, 10)) == pytest.approx(k)


@pytest.mark.parametrize("k", [1, 3])
def test_hd95_spacing_scales_the_right_axis(k):
    pred = _square((30, 30), 8, 8, 10)
    down = _square((30, 30), 8 + k, 8, 10)
    right = _square((30, 30), 8, 8 + k, 10)
    # spacing is (row, col): a vertical shift of k rows is 2k units, a horizontal one k units.
    assert hd95(pred, down, spacing=(2.0, 1.0)) == pytest.approx(2.0 * k)
    assert hd95(pred, right, spacing=(2.0, 1.0)) == pytest.approx(1.0 * k)
    # Isotropic spacing just scales (cv2 path).
    assert hd95(pred, down, spacing=(0.5, 0.5)) == pytest.approx(0.5 * k)


def test_hd95_border_counts_as_background():
    # A full 7x7 mask has its outer ring as surface; from there to the centre pixel the
    # distances are 3 (x4), sqrt(10) (x8), sqrt(13) (x8), sqrt(18) (x4), plus 3 back:
    # 25 values whose 95th percentile (index 22.8) is sqrt(18).
    full = np.ones((7, 7), dtype=bool)
    centre = _mask((7, 7), (3, 3))
    assert hd95(full, centre) == pytest.approx(math.sqrt(18.0))


@pytest.mark.parametrize("spacing", [None, (2.0, 1.0)])
def test_hd95_empty_cases(spacing):
    shape = (10, 20)
    sy, sx = spacing or (1.0, 1.0)
    diagonal = math.hypot(shape[0] * sy, shape[1] * sx)
    empty = np.zeros(shape, dtype=bool)
    present = _square(shape, 2, 3, 4)
    assert hd95(empty, empty, spacing) == 0.0
    assert hd95(empty, present, spacing) == pytest.approx(diagonal)
    assert hd95(present, empty, spacing) == pytest.approx(diagonal)
    assert hd95(present, present, spacing) == 0.0


def test_hd95_one_empty_is_worse_than_any_present_pair():
    shape = (9, 13)
    corner_a, corner_b = _mask(shape, (0, 0)), _mask(shape, (8, 12))
    empty = np.zeros(shape, dtype=bool)
    assert hd95(corner_a, empty) > hd95(corner_a, corner_b)


@pytest.mark.parametrize("shape", [(32, 40), (40, 28)])
@pytest.mark.parametrize("spacing", [(1.0, 1.0), (0.7, 0.7), (2.0, 1.0), (0.6, 1.7)])
def test_hd95_matches_brute_force_on_random_blobs(shape, spacing):
    for seed in range(6):
        rng = np.random.default_rng(seed)
        pred, gt = _random_blobs(rng, shape), _random_blobs(rng, shape)
        expected = _reference_hd95(pred, gt, spacing)
        if spacing == (1.0, 1.0):
            # integer squared distances: bit-for-bit the brute force, not merely close
            assert hd95(pred, gt, spacing) == expected, seed
        else:
            assert hd95(pred, gt, spacing) == pytest.approx(expected, rel=1e-12, abs=1e-12), seed


@pytest.mark.parametrize("shape", [(9, 14), (14, 9)])
def test_distance_to_background_known_values_and_brute_force(shape):
    from bow_gym.metrics import distance_to_background

    # One background pixel: the distance field is the distance to it.
    m = np.ones(shape, bool)
    m[2, 3] = False
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    np.testing.assert_array_equal(distance_to_background(m), np.hypot(yy - 2, xx - 3))
    rng = np.random.default_rng(0)
    for _ in range(5):
        m = _random_blobs(rng, shape)
        if m.all() or not m.any():
            continue
        bg = np.argwhere(~m)
        brute = np.zeros(shape)
        for y, x in np.argwhere(m):
            brute[y, x] = np.sqrt(((bg - (y, x)) ** 2).sum(1).min())
        np.testing.assert_array_equal(distance_to_background(m), brute)
    assert np.isinf(distance_to_background(np.ones(shape))).all()
    assert not distance_to_background(np.zeros(shape)).any()


def test_reference_libraries_are_dev_dependencies():
    """The SciPy reference tests below must run wherever the README's install runs the tests
    (``.[dev]``): a skipped reference checks nothing. Hypothesis drives tests/test_properties.py."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib

    with open(Path(__file__).resolve().parent.parent / "pyproject.toml", "rb") as f:
        dev = tomllib.load(f)["project"]["optional-dependencies"]["dev"]
    names = {re.split(r"[<>=!~ \[;]", d, maxsplit=1)[0].lower() for d in dev}
    assert {"scipy", "hypothesis", "pytest"} <= names


def test_hd95_matches_medpy_recipe_with_scipy():
    from scipy import ndimage  # a dev dependency: never skipped

    def medpy_hd95(result, reference, spacing):
        # MedPy's __surface_distances, both directions, then percentile 95.
        footprint = ndimage.generate_binary_structure(2, 1)

        def sds(a, b):
            a_border = a ^ ndimage.binary_erosion(a, structure=footprint, iterations=1)
            b_border = b ^ ndimage.binary_erosion(b, structure=footprint, iterations=1)
            return ndimage.distance_transform_edt(~b_border, sampling=spacing)[a_border]

        return np.percentile(np.hstack((sds(result, reference), sds(reference, result))), 95)

    for seed in range(10):
        rng = np.random.default_rng(100 + seed)
        pred, gt = _random_blobs(rng, (48, 56)), _random_blobs(rng, (48, 56))
        for spacing in [(1.0, 1.0), (1.5, 0.8)]:
            expected = medpy_hd95(pred, gt, spacing)
            assert hd95(pred, gt, spacing) == pytest.approx(expected, rel=1e-6), (seed, spacing)


@pytest.mark.parametrize("spacing", [(0.0, 1.0), (1.0, -2.0), (1.0,), (1.0, float("nan"))])
def test_hd95_rejects_bad_spacing(spacing):
    m = _square((10, 10), 2, 2, 3)
    with pytest.raises(ValueError, match="spacing"):
        hd95(m, m, spacing)


# --------------------------------------------------------------------------- evaluate


def test_evaluate_keys_and_values():
    pred = _square((30, 30), 8, 8, 10)
    gt = _square((30, 30), 8, 10, 10)
    result = evaluate(pred, gt)
    assert set(result) == {"dice", "iou", "hd95"}
    assert result["dice"] == pytest.approx(2 * 80 / 200)
    assert result["iou"] == pytest.approx(80 / 120)
    assert result["hd95"] == pytest.approx(2.0)
    assert all(type(v) is float for v in result.values())


def test_evaluate_empty_cases():
    empty = np.zeros((6, 8), dtype=bool)
    assert evaluate(empty, empty) == {"dice": 1.0, "iou": 1.0, "hd95": 0.0}
    present = _square((6, 8), 1, 1, 2)
    assert evaluate(empty, present) == pytest.approx(
        {"dice": 0.0, "iou": 0.0, "hd95": math.hypot(6, 8)}
    )


# --------------------------------------------------------------------------- fill_holes


def test_fill_holes_ring():
    ring = _square((11, 11), 2, 2, 7) & ~_square((11, 11), 4, 4, 3)
    filled = fill_holes(ring)
    assert filled.dtype == np.bool_
    np.testing.assert_array_equal(filled, _square((11, 11), 2, 2, 7))
    assert ring.sum() == 49 - 9  # input untouched


def test_fill_holes_open_ring_and_border_are_not_holes():
    ring = _square((11, 11), 2, 2, 7) & ~_square((11, 11), 4, 4, 3)
    ring[4, 2:4] = False  # a channel from the hole to the outside
    np.testing.assert_array_equal(fill_holes(ring), ring)
    # Background cut off by the object and the image border is outside, not a hole.
    bar = np.zeros((8, 8), dtype=bool)
    bar[:, 3] = True
    np.testing.assert_array_equal(fill_holes(bar), bar)


def test_fill_holes_diagonal_gaps_enclose():
    # An 8-connected diamond outline: its inside touches the outside only diagonally.
    diamond = _mask((7, 7), (1, 3), (2, 2), (2, 4), (3, 1), (3, 5), (4, 2), (4, 4), (5, 3))
    filled = fill_holes(diamond)
    assert filled[3, 3] and filled[2, 3] and filled[3, 2]
    assert filled.sum() == diamond.sum() + 5


def test_fill_holes_matches_scipy():
    from scipy import ndimage  # a dev dependency: never skipped
    for seed in range(8):
        mask = _random_blobs(np.random.default_rng(200 + seed), (40, 36))
        np.testing.assert_array_equal(fill_holes(mask), ndimage.binary_fill_holes(mask))


# --------------------------------------------------------------------------- input checks


@pytest.mark.parametrize("fn", [dice, iou, hd95, evaluate, overlap_counts])
def test_shape_mismatch_names_both_shapes(fn):
    with pytest.raises(ValueError, match=r"pred \(3, 4\).*gt \(4, 3\)"):
        fn(np.zeros((3, 4), dtype=bool), np.zeros((4, 3), dtype=bool))


@pytest.mark.parametrize("fn", [dice, iou, hd95, evaluate])
def test_non_2d_input_names_the_argument(fn):
    with pytest.raises(ValueError, match="gt must be a 2-D array"):
        fn(np.zeros((3, 4), dtype=bool), np.zeros((1, 3, 4), dtype=bool))
    with pytest.raises(ValueError, match="pred must be a 2-D array"):
        fn(np.zeros(12, dtype=bool), np.zeros((3, 4), dtype=bool))


def test_non_numeric_input_names_the_argument():
    with pytest.raises(ValueError, match="pred must be a bool or numeric"):
        dice(np.full((2, 2), "a"), np.zeros((2, 2), dtype=bool))
    with pytest.raises(ValueError, match="gt must be a bool or numeric"):
        hd95(np.zeros((2, 2), dtype=bool), np.zeros((2, 2), dtype=object))
    with pytest.raises(ValueError, match="mask must be a 2-D array"):
        fill_holes(np.zeros((2, 2, 2), dtype=bool))


def test_summarize_by_ground_truth_reports_empty_images_apart():
    from bow_gym.metrics import summarize_by_ground_truth

    dice_values = [0.5, 0.7, 1.0, 1.0, np.nan]
    empty = np.array([False, False, True, True, False])
    out = summarize_by_ground_truth(dice_values, empty, n_boot=200)
    assert out["non_empty"]["n"] == 3 and out["non_empty"]["mean"] == pytest.approx(0.6)
    assert out["empty"]["n"] == 2 and out["empty"]["mean"] == 1.0
    assert out["all"]["n"] == 5 and out["all"]["mean"] == pytest.approx(0.8)  # NaN dropped
    assert out["non_empty"]["ci_low"] <= 0.6 <= out["non_empty"]["ci_high"]
    assert out["empty"]["median"] == 1.0
    nested = summarize_by_ground_truth({"dice": dice_values, "noc": [3, 4, 0, 0, 5]}, empty)
    assert nested["noc"]["empty"]["mean"] == 0 and nested["noc"]["non_empty"]["mean"] == 4
    assert nested["dice"]["all"]["mean"] == out["all"]["mean"]
    none_empty = summarize_by_ground_truth([0.2, 0.4], np.array([False, False]))
    assert none_empty["empty"]["n"] == 0 and np.isnan(none_empty["empty"]["mean"])
    with pytest.raises(ValueError, match="gt_empty"):
        summarize_by_ground_truth([0.2, 0.4], [0, 1])
    with pytest.raises(ValueError, match="gt_empty"):
        summarize_by_ground_truth([0.2, 0.4], np.array([True]))


# --------------------------------------------------------------------------- mask thresholds
def test_probability_level_is_the_pipelines_old_cut_at_one_half():
    from bow_gym.metrics import probability_level

    assert probability_level(0.5) == 128  # what predictions were always cut at
    assert probability_level(0.75) == 192 and probability_level(1e-6) == 1
    for bad in (0, 1, 1.5, True, "0.5", None):
        with pytest.raises(ValueError, match="probability in \\(0, 1\\) or 'match_area'"):
            probability_level(bad)


def test_match_area_level_known_answers():
    from bow_gym.metrics import match_area_level

    ramp = np.arange(256, dtype=np.uint8).reshape(16, 16)  # share of >= L is (256 - L) / 256
    quarter = np.zeros((8, 8), bool)
    quarter[:4, :4] = True
    assert match_area_level([ramp], [quarter]) == 192
    half = np.zeros((32, 32), bool)  # another resolution: shares, not pixel counts, are matched
    half[:16] = True
    assert match_area_level([ramp, ramp], [quarter, half]) == 160  # mean share 3/8
    # A hard 0/255 map covers the same share at every level: the tie goes to 0.5's level.
    hard = np.where(ramp >= 100, 255, 0).astype(np.uint8)
    assert match_area_level([hard], [quarter]) == 128
    # Each image weighs the same: a tiny map counts as much as a large one.
    big = np.zeros((64, 64), np.uint8)
    assert match_area_level([ramp, big], [quarter, np.zeros((4, 4), bool)]) == 192
    with pytest.raises(ValueError, match="as many probability maps as training masks"):
        match_area_level([ramp], [])
    with pytest.raises(ValueError, match="must be uint8"):
        match_area_level([ramp / 255], [quarter])
