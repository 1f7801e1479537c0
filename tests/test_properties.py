"""Property-based tests (Hypothesis) of the pure parts: metrics, propagation, oracles, mask
decoding and action encoding.

Examples are few and small so the file runs in seconds; ``derandomize=True`` makes every run (and
CI) try the same examples, so a failure reproduces.
"""

from __future__ import annotations

import itertools
import math
import tempfile
from pathlib import Path

import cv2
import numpy as np
import pytest
import tifffile
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from PIL import Image

from bow_gym.backbones.base import Backbone
from bow_gym.datasets import DatasetError, read_mask
from bow_gym.datasets.base import Sample, SegmentationDataset
from bow_gym.envs.better_worse_seg import EVAL_ONLY_KEY, BetterWorseSegEnv
from bow_gym.metrics import dice, hd95, iou
from bow_gym.oracles import DiceOracle, MarginOracle, Overlap
from bow_gym.propagation import propagate

PROPERTY = settings(max_examples=40, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow])
SLOWER = settings(PROPERTY, max_examples=20)


def masks():
    return st.tuples(st.integers(2, 12), st.integers(2, 12)).flatmap(
        lambda hw: arrays(np.bool_, hw))


def mask_pairs():
    return st.tuples(st.integers(2, 12), st.integers(2, 12)).flatmap(
        lambda hw: st.tuples(arrays(np.bool_, hw), arrays(np.bool_, hw)))


# --------------------------------------------------------------------------------------------
# Metrics


@PROPERTY
@given(mask_pairs())
def test_metrics_symmetric_and_bounded(pair):
    a, b = pair
    d, j = dice(a, b), iou(a, b)
    assert d == dice(b, a) and j == iou(b, a)
    assert 0.0 <= j <= d <= 1.0
    assert d == pytest.approx(2 * j / (1 + j))  # Dice and IoU are one function of each other
    assert hd95(a, b) == pytest.approx(hd95(b, a))
    assert 0.0 <= hd95(a, b) <= math.hypot(*a.shape) + 1e-9


@PROPERTY
@given(masks())
def test_metrics_identity_and_empty_cases(m):
    empty = np.zeros_like(m)
    assert dice(m, m) == 1.0 and iou(m, m) == 1.0 and hd95(m, m) == 0.0
    if m.any():
        assert dice(m, empty) == 0.0 and iou(empty, m) == 0.0
        assert hd95(m, empty) == pytest.approx(math.hypot(*m.shape))
    else:
        assert dice(m, empty) == 1.0 and hd95(m, empty) == 0.0


@PROPERTY
@given(mask_pairs(), st.tuples(*[st.integers(0, 3)] * 4))
def test_metrics_invariant_to_background_padding(pair, pad):
    a, b = pair
    assume(a.any() and b.any())  # with an empty mask HD95 is the image diagonal, which grows
    width = ((pad[0], pad[1]), (pad[2], pad[3]))
    pa, pb = np.pad(a, width), np.pad(b, width)
    assert dice(pa, pb) == dice(a, b) and iou(pa, pb) == iou(a, b)
    assert hd95(pa, pb) == pytest.approx(hd95(a, b))


# --------------------------------------------------------------------------------------------
# Oracles


def overlaps():
    return st.tuples(st.integers(0, 50), st.integers(0, 50), st.integers(0, 50)).map(
        lambda t: Overlap(min(t[0], t[1], t[2]), t[1], t[2]))


@PROPERTY
@given(overlaps(), overlaps())
def test_dice_oracle_antisymmetric_with_ties_worse(before, after):
    after = Overlap(min(after.tp, after.pred, before.gt), after.pred, before.gt)  # one image
    forward, backward = DiceOracle().judge(before, after), DiceOracle().judge(after, before)
    if before.gt == 0:
        tie = before.pred == after.pred
    else:
        tie = before.dice == after.dice
    if tie:
        assert forward == backward == -1
    else:
        assert forward == -backward


@PROPERTY
@given(overlaps(), overlaps(), st.floats(0.0, 0.5))
def test_margin_oracle_never_better_both_ways(before, after, delta):
    after = Overlap(min(after.tp, after.pred, before.gt), after.pred, before.gt)
    oracle = MarginOracle(delta)
    assert not (oracle.judge(before, after) == oracle.judge(after, before) == 1)
    if delta == 0.0:
        assert oracle.judge(before, after) == DiceOracle().judge(before, after)


# --------------------------------------------------------------------------------------------
# Propagation: the env's per-patch bookkeeping equals the pure function, click after click


class _Fixed(Backbone):
    """Backbone returning preset features: any similarity graph the test wants."""

    name, dim = "fixed", 3

    def __init__(self, feats: np.ndarray):
        self.grid = feats.shape[:2]
        self.feats = feats

    @property
    def cache_key(self) -> str:
        return "fixed"

    def _extract(self, images):
        return np.stack([self.feats] * len(images))


class _One(SegmentationDataset):
    name = "one"

    def __init__(self, image, mask):
        self.sample = Sample(image, mask, "only")

    @property
    def ids(self):
        return ["only"]

    def _load(self, index):
        return self.sample


@SLOWER
@given(st.integers(0, 2**32 - 1), st.floats(-1.0, 1.0), st.sampled_from(["keep", "revert"]),
       st.lists(st.tuples(st.integers(0, 1), st.integers(0, 15), st.integers(0, 15)),
                min_size=1, max_size=6))
def test_env_steps_equal_pure_propagation(seed, threshold, on_worse, clicks):
    rng = np.random.default_rng(seed)
    feats = rng.normal(size=(4, 4, 3))
    feats /= np.linalg.norm(feats, axis=-1, keepdims=True)
    image = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    gt = rng.random((16, 16)) < rng.random()
    start = rng.random((16, 16)) < rng.random()
    env = BetterWorseSegEnv(_One(image, gt), backbone=_Fixed(feats), threshold=threshold,
                            obs_size=16, clicks_per_episode=len(clicks), on_worse=on_worse,
                            feature_cache=None)
    obs, _ = env.reset(seed=0, options={"initial_mask": start})
    used = env.features.get(image).reshape(4, 4, 3)  # float16-rounded, as the env uses them
    mask = start
    for label, y, x in clicks:
        obs, reward, _, _, info = env.step(env.encode_action(label, y, x))
        new = propagate(mask, used, (y, x), bool(label), threshold)
        answer = DiceOracle().judge_masks(mask, new, gt)
        assert reward == answer
        assert info["pixels_changed"] == int(np.count_nonzero(new != mask))
        if answer > 0 or on_worse == "keep":
            mask = new
        np.testing.assert_array_equal(obs[3] > 127, mask)
        assert info[EVAL_ONLY_KEY]["dice"] == pytest.approx(dice(mask, gt))


# --------------------------------------------------------------------------------------------
# Action encoding


@PROPERTY
@given(st.integers(0, 1), st.integers(0, 127), st.integers(0, 127))
def test_action_encoding_round_trip(label, y, x):
    env = _ENV
    action = env.encode_action(label, y, x)
    assert 0 <= action < env.action_space.n
    for form in (action, np.int64(action), np.array(action)):
        assert env.decode_action(form) == (label, y, x)


@PROPERTY
@given(st.integers(0, 2 * 128 * 128 - 1))
def test_action_decoding_round_trip(action):
    assert _ENV.encode_action(*_ENV.decode_action(action)) == action


@PROPERTY
@given(st.one_of(st.floats(allow_nan=True), st.booleans(), st.integers(2 * 128 * 128, 2**40),
                 st.integers(-(2**40), -1), st.text(max_size=3)))
def test_action_decoding_refuses_what_is_not_an_action(bad):
    with pytest.raises(ValueError, match="action must be an integer"):
        _ENV.decode_action(bad)


_ENV = BetterWorseSegEnv(dataset_kwargs={"n_images": 1, "size": 64}, feature_cache=None)


# --------------------------------------------------------------------------------------------
# Mask decoding: every documented encoding round-trips, every ambiguous one is refused


# One folder for the whole module (removed when the interpreter exits); a fresh file per example.
_TMP = tempfile.TemporaryDirectory(prefix="bow-mask-")
_COUNT = itertools.count()


def _fresh(name: str) -> Path:
    return Path(_TMP.name) / f"{next(_COUNT)}-{name}"


def _write(array: np.ndarray, name: str, **kwargs) -> Path:
    path = _fresh(name)
    if name.endswith(".tif"):
        tifffile.imwrite(path, array, **kwargs)
    elif array.dtype == np.uint16:
        cv2.imwrite(str(path), array)
    else:
        Image.fromarray(array, **kwargs).save(path)
    return path


def _palette(m: np.ndarray) -> Path:
    image = Image.fromarray(m.astype(np.uint8), mode="P")
    image.putpalette([0, 0, 0, 128, 0, 0])  # VOC: class 1 is dark red
    path = _fresh("voc.png")
    image.save(path)
    return path


def _alpha(m: np.ndarray) -> np.ndarray:
    rgba = np.zeros((*m.shape, 4), np.uint8)
    rgba[..., 3] = m * 255
    return rgba


ENCODINGS = {
    "1-bit png": lambda m: _write(m, "m.png"),
    "8-bit 0/255": lambda m: _write(m.astype(np.uint8) * 255, "m.png"),
    "16-bit 0/65535": lambda m: _write(m.astype(np.uint16) * 65535, "m.png"),
    "16-bit 0/255": lambda m: _write(m.astype(np.uint16) * 255, "m.png"),
    "rgb white": lambda m: _write(np.dstack([m.astype(np.uint8) * 255] * 3), "m.png"),
    "rgb red": lambda m: _write(np.dstack([m.astype(np.uint8) * 200] + [np.zeros_like(
        m, np.uint8)] * 2), "m.png"),
    "rgba alpha": lambda m: _write(_alpha(m), "m.png"),
    "voc palette": _palette,
    "tiff 0/255": lambda m: _write(m.astype(np.uint8) * 255, "m.tif", photometric="minisblack"),
}


@pytest.mark.parametrize("encoding", sorted(ENCODINGS))
@settings(PROPERTY, max_examples=15)
@given(m=masks())
def test_documented_mask_encodings_round_trip(encoding, m):
    # All-opaque black is an empty mask drawn in colour, the same file as a full alpha mask: the
    # colour decides (documented), so alpha masks round-trip when some pixel is transparent.
    assume(encoding != "rgba alpha" or not m.all())
    np.testing.assert_array_equal(read_mask(ENCODINGS[encoding](m)), m)


@PROPERTY
@given(masks(), st.integers(1, 3))
def test_label_images_read_with_their_foreground_value(m, label):
    path = _write(m.astype(np.uint8) * label, "labels.png")
    assume(m.any())
    np.testing.assert_array_equal(read_mask(path, foreground=label), m)
    np.testing.assert_array_equal(read_mask(path, foreground="nonzero"), m)


@PROPERTY
@given(masks(), st.one_of(st.integers(1, 127).map(lambda v: (np.uint8, v)),
                          st.integers(256, 32767).map(lambda v: (np.uint16, v))))
def test_low_valued_masks_are_refused(m, kind):
    dtype, value = kind
    assume(m.any())
    path = _write(m.astype(dtype) * dtype(value), "faint.png")
    with pytest.raises(DatasetError, match=rf"faint\.png.*ambiguous.*{value} \("):
        read_mask(path)


@PROPERTY
@given(masks())
def test_noisy_binary_masks_threshold_at_half_scale(m):
    rng = np.random.default_rng(m.size)
    grey = np.where(m, 255 - rng.integers(0, 40, m.shape), rng.integers(0, 40, m.shape))
    grey.ravel()[0] = 255  # one full-scale value, as a binary mask has
    expected = grey > 127
    np.testing.assert_array_equal(read_mask(_write(grey.astype(np.uint8), "noisy.png")),
                                  expected)
