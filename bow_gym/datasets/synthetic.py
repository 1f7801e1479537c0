"""The embedded synthetic data set: lesion-like images generated from a seed, no files needed.

Each sample is generated from ``numpy.random.default_rng([seed, index])`` alone, so sample ``i`` is
the same whatever else is generated and in whatever order. Three flavours imitate the modalities
of the method's experiments:

* ``polyp``: reddish mucosa with vignetting, vessels and specular highlights; a dome-shaded polyp
  whose colour differs slightly from the mucosa.
* ``skin``: beige skin with hairs; a brown, variegated lesion with an irregular border.
* ``ultrasound``: grey speckle inside a sector; a hypoechoic (darker) lesion with posterior
  enhancement below it.

Every flavour adds lesion-coloured *distractor* blobs in the background, low-frequency texture and
noise, so that patch similarity alone does not separate lesion from background: a click in the
wrong place with the wrong label propagates widely, and random clicking is clearly worse than good
clicking. ``contrast`` scales how far the lesion's colour and texture are from the background's
(1.0 is the default difficulty; larger is easier; ``mixed`` cycles through the three flavours).
"""

from __future__ import annotations

import functools

import cv2
import numpy as np

from .base import Sample, SegmentationDataset

FLAVOURS = ("polyp", "skin", "ultrasound")


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Gaussian-blurred white noise with unit standard deviation."""
    n = rng.standard_normal(shape).astype(np.float32)
    n = cv2.GaussianBlur(n, (0, 0), sigmaX=max(sigma, 0.5), borderType=cv2.BORDER_REFLECT)
    return n / max(float(n.std()), 1e-6)


def _blob(rng: np.random.Generator, size: int, r_range: tuple[float, float],
          irregularity: float, margin: float = 0.2) -> tuple[np.ndarray, tuple[float, float, float]]:
    """A star-shaped blob with a smooth random Fourier boundary; returns (mask, (cy, cx, r0))."""
    r0 = rng.uniform(*r_range) * size
    lo, hi = margin * size + 0.5 * r0, (1 - margin) * size - 0.5 * r0
    cy, cx = rng.uniform(lo, max(lo + 1, hi), size=2)
    theta = np.linspace(0, 2 * np.pi, 128, endpoint=False)
    radius = np.ones_like(theta)
    for k in range(2, 7):
        radius += irregularity * rng.uniform(0, 1) / k * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
    radius *= r0
    pts = np.stack([cx + radius * np.cos(theta), cy + radius * np.sin(theta)], axis=1)
    mask = np.zeros((size, size), np.uint8)
    cv2.fillPoly(mask, [np.round(pts * 16).astype(np.int32)], 1, lineType=cv2.LINE_AA, shift=4)
    return mask.astype(bool), (float(cy), float(cx), float(r0))


def _curves(rng: np.random.Generator, size: int, n: int, thickness: tuple[int, int]) -> np.ndarray:
    """A float map in [0, 1] of ``n`` random smooth curves (vessels, hairs)."""
    canvas = np.zeros((size, size), np.float32)
    for _ in range(n):
        p = rng.uniform(0, size, 2)
        angle = rng.uniform(0, 2 * np.pi)
        pts = [p.copy()]
        for _ in range(24):
            angle += rng.normal(0, 0.25)
            p = p + size / 24 * np.array([np.cos(angle), np.sin(angle)])
            pts.append(p.copy())
        cv2.polylines(canvas, [np.round(np.array(pts) * 16).astype(np.int32)], False, 1.0,
                      int(rng.integers(*thickness)), lineType=cv2.LINE_AA, shift=4)
    return np.clip(canvas, 0, 1)


def _soft(mask: np.ndarray, sigma: float) -> np.ndarray:
    return cv2.GaussianBlur(mask.astype(np.float32), (0, 0), sigmaX=sigma)


def _distractors(rng: np.random.Generator, size: int, lesion: np.ndarray, n: int) -> np.ndarray:
    """Soft blobs outside the lesion that share its look (strength in [0, 1])."""
    out = np.zeros((size, size), np.float32)
    for _ in range(n):
        m, _ = _blob(rng, size, (0.04, 0.1), 0.5, margin=0.05)
        m &= ~cv2.dilate(lesion.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
        out = np.maximum(out, _soft(m, 1.5) * rng.uniform(0.4, 0.8))
    return out


def _polyp(rng: np.random.Generator, size: int, contrast: float) -> tuple[np.ndarray, np.ndarray]:
    lesion, (cy, cx, r0) = _blob(rng, size, (0.1, 0.24), 0.6)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    base = np.array([185, 95, 85], np.float32) + rng.normal(0, 12, 3)
    vignette = 1.0 - 0.45 * (((yy - size / 2) ** 2 + (xx - size / 2) ** 2) / (size / 2) ** 2)
    vignette += 0.12 * _smooth_noise(rng, (size, size), size / 6)
    img = base[None, None] * vignette[..., None]
    img += 9.0 * _smooth_noise(rng, (size, size), 2.0)[..., None] * np.array([1, 0.8, 0.8])
    img -= 45.0 * _curves(rng, size, int(rng.integers(2, 6)), (1, 3))[..., None] * np.array([0.4, 1, 1])
    shift = contrast * np.array([22.0, -12.0, 2.0], np.float32) * rng.uniform(0.7, 1.3)
    soft = _soft(lesion, 1.2)
    dome = np.clip(1.0 - ((yy - cy) ** 2 + (xx - cx) ** 2) / (1.3 * r0) ** 2, 0, 1)
    look = soft[..., None] * (shift[None, None] + 25.0 * contrast * dome[..., None] * 0.6)
    look += _distractors(rng, size, lesion, int(rng.integers(1, 4)))[..., None] * shift[None, None]
    img += look
    img += 6.0 * _smooth_noise(rng, (size, size), 0.6)[..., None] * soft[..., None]
    for _ in range(int(rng.integers(2, 7))):  # specular highlights
        y, x = rng.uniform(0, size, 2)
        cv2.circle(img, (int(x), int(y)), int(rng.integers(1, 3)), (255, 255, 255), -1, cv2.LINE_AA)
    img += rng.normal(0, 5.0, img.shape)
    return img, lesion


def _skin(rng: np.random.Generator, size: int, contrast: float) -> tuple[np.ndarray, np.ndarray]:
    lesion, (cy, cx, r0) = _blob(rng, size, (0.14, 0.3), 1.0)
    base = np.array([205, 160, 135], np.float32) + rng.normal(0, 10, 3)
    light = 1.0 + 0.08 * _smooth_noise(rng, (size, size), size / 4)
    img = base[None, None] * light[..., None]
    img += 6.0 * _smooth_noise(rng, (size, size), 1.5)[..., None]
    shift = -contrast * np.array([40.0, 45.0, 40.0], np.float32) * rng.uniform(0.6, 1.2)
    variegation = 0.75 + 0.35 * _smooth_noise(rng, (size, size), 3.0)
    soft = _soft(lesion, 2.0)  # skin lesions have fuzzy borders
    img += soft[..., None] * variegation[..., None] * shift[None, None]
    img += _distractors(rng, size, lesion, int(rng.integers(1, 4)))[..., None] * shift[None, None] * 0.8
    hairs = _curves(rng, size, int(rng.integers(0, 8)), (1, 2))
    img = img * (1 - 0.7 * hairs[..., None]) + 40 * 0.7 * hairs[..., None]
    img += rng.normal(0, 4.0, img.shape)
    return img, lesion


def _ultrasound(rng: np.random.Generator, size: int, contrast: float) -> tuple[np.ndarray, np.ndarray]:
    lesion, (cy, cx, r0) = _blob(rng, size, (0.1, 0.22), 0.5, margin=0.25)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    tissue = 110 + 25 * _smooth_noise(rng, (size, size), size / 10) + 15 * np.sin(yy / size * 9)
    soft = _soft(lesion, 1.0)
    tissue -= soft * contrast * 55 * rng.uniform(0.7, 1.2)
    below = (yy > cy) & (np.abs(xx - cx) < r0 * 0.8)
    tissue += _soft(below & ~lesion, 4.0) * 25 * contrast
    tissue -= _distractors(rng, size, lesion, int(rng.integers(1, 4))) * contrast * 50
    speckle = rng.rayleigh(1.0, (size, size)).astype(np.float32) / 1.25
    speckle = cv2.GaussianBlur(speckle, (0, 0), 0.7)
    grey = tissue * speckle
    apex, half = (-size * 0.3, size / 2), np.deg2rad(38)
    ang = np.arctan2(xx - apex[1], yy - apex[0])
    grey *= (np.abs(ang) < half).astype(np.float32)
    img = np.repeat(grey[..., None], 3, axis=2)
    return img, lesion & (np.abs(ang) < half)


_GENERATORS = {"polyp": _polyp, "skin": _skin, "ultrasound": _ultrasound}


def generate(index: int, *, size: int = 160, flavour: str = "mixed", seed: int = 0,
             contrast: float = 1.0) -> Sample:
    """Generate synthetic sample ``index`` (deterministic in all arguments).

    Args:
        index: Sample index, ``>= 0``.
        size: Side of the square image in pixels (``>= 32``).
        flavour: ``"polyp"``, ``"skin"``, ``"ultrasound"`` or ``"mixed"`` (cycles through them).
        seed: Data-set seed.
        contrast: Lesion/background contrast multiplier (``> 0``; 1 is the default difficulty).

    Returns:
        A :class:`~bow_gym.datasets.base.Sample` with id ``"<flavour>-<seed>-<index>"``.
    """
    kind = FLAVOURS[index % len(FLAVOURS)] if flavour == "mixed" else flavour
    rng = np.random.default_rng([seed, index])
    for _ in range(10):  # redraw in the rare case the lesion fell outside the visible sector
        img, mask = _GENERATORS[kind](rng, size, contrast)
        if mask.sum() >= 0.01 * size * size:
            break
    image = np.clip(np.round(img), 0, 255).astype(np.uint8)
    return Sample(image=image, mask=mask.astype(bool), id=f"{kind}-{seed}-{index:05d}")


class SyntheticDataset(SegmentationDataset):
    """Deterministic synthetic lesion images (the default data set; see the module docstring).

    Args:
        n_images: Number of samples.
        size: Side of each square image in pixels.
        flavour: ``"polyp"``, ``"skin"``, ``"ultrasound"`` or ``"mixed"``.
        seed: Data-set seed; sample ``i`` depends only on ``(seed, i)`` and the other arguments.
        contrast: Lesion/background contrast (1.0 default difficulty, higher is easier).
    """

    def __init__(self, n_images: int = 64, size: int = 160, flavour: str = "mixed",
                 seed: int = 0, contrast: float = 1.0):
        if flavour not in (*FLAVOURS, "mixed"):
            raise ValueError(f"flavour must be one of {[*FLAVOURS, 'mixed']}, got {flavour!r}")
        if int(n_images) < 1:
            raise ValueError(f"n_images must be >= 1, got {n_images!r}")
        if int(size) < 32:
            raise ValueError(f"size must be >= 32 pixels, got {size!r}")
        if not contrast > 0:
            raise ValueError(f"contrast must be > 0, got {contrast!r}")
        self.n_images, self.size, self.flavour = int(n_images), int(size), flavour
        self.seed, self.contrast = int(seed), float(contrast)
        self.name = f"synthetic-{flavour}"
        kinds = [FLAVOURS[i % 3] if flavour == "mixed" else flavour for i in range(self.n_images)]
        self._ids = [f"{k}-{self.seed}-{i:05d}" for i, k in enumerate(kinds)]
        self._cached = functools.lru_cache(maxsize=1024)(self._generate)

    @property
    def ids(self) -> list[str]:
        return self._ids

    def _generate(self, index: int) -> Sample:
        return generate(index, size=self.size, flavour=self.flavour, seed=self.seed,
                        contrast=self.contrast)

    def _load(self, index: int) -> Sample:
        return self._cached(index)

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state.pop("_cached")  # an lru_cache'd bound method does not pickle
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._cached = functools.lru_cache(maxsize=1024)(self._generate)
