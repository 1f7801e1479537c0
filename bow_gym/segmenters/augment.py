"""Paired image/mask augmentation for segmenter training (numpy + OpenCV, no torch)."""

from __future__ import annotations

import cv2
import numpy as np

#: Scale factor range of the random zoom (about the image centre).
SCALE_RANGE = (0.9, 1.1)
#: Largest random shift, as a fraction of the image side.
MAX_SHIFT = 0.08
#: Probability that the zoom/shift is applied (flips and rotations are drawn every time).
P_AFFINE = 0.5
#: Brightness offset range in grey levels, and contrast factor range (about the image mean).
BRIGHTNESS = 20.0
CONTRAST = (0.8, 1.2)


def augment_pair(
    image: np.ndarray,
    mask: np.ndarray,
    rng: np.random.Generator,
    *,
    colour_jitter: bool = True,
    extra: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray] | tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A random geometric transform applied identically to an image and its mask.

    In order: a horizontal flip (probability 1/2), a vertical flip (1/2), a rotation by a random
    multiple of 90 degrees, and with probability :data:`P_AFFINE` a zoom by a factor in
    :data:`SCALE_RANGE` about the centre plus a shift of up to :data:`MAX_SHIFT` of the side
    (``cv2.warpAffine``: bilinear for the image, nearest neighbour for the mask, the same
    reflected border for both, so the mask stays aligned with the image content). Then, if
    ``colour_jitter``, a brightness offset (+-:data:`BRIGHTNESS` grey levels) and a contrast
    factor (:data:`CONTRAST`) on the image only.

    Args:
        image: ``(H, W, 3)`` uint8 RGB image.
        mask: ``(H, W)`` bool mask.
        rng: Source of randomness (the same generator state gives the same transform).
        colour_jitter: Apply the brightness/contrast jitter to the image.
        extra: Optional ``(H, W)`` uint8 map transformed exactly like the mask (nearest
            neighbour), e.g. per-pixel label trust; it draws no extra random numbers.

    Returns:
        ``(image, mask)``, or ``(image, mask, extra)`` when ``extra`` is given: new uint8
        ``(H', W', 3)`` and bool ``(H', W')`` arrays (``H'``, ``W'`` swap with odd rotations of a
        non-square image).

    Raises:
        ValueError: ``image`` is not ``(H, W, 3)`` uint8 or ``mask`` not ``(H, W)`` of that size.
    """
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be (H, W, 3) uint8, got {image.shape} {image.dtype}")
    if mask.shape != image.shape[:2]:
        raise ValueError(f"mask must be (H, W) = {image.shape[:2]}, got {mask.shape}")
    mask = mask.astype(bool, copy=False)
    if extra is not None and (extra.shape != mask.shape or extra.dtype != np.uint8):
        raise ValueError(f"extra must be (H, W) = {mask.shape} uint8, got {extra.shape} "
                         f"{extra.dtype}")

    # Draw every number up front, so one transform's draws never depend on another's branch.
    flip_h, flip_v = rng.random(2) < 0.5
    k = int(rng.integers(4))
    do_affine = rng.random() < P_AFFINE
    scale = rng.uniform(*SCALE_RANGE)
    shift = rng.uniform(-MAX_SHIFT, MAX_SHIFT, size=2)
    brightness = rng.uniform(-BRIGHTNESS, BRIGHTNESS)
    contrast = rng.uniform(*CONTRAST)

    if flip_h:
        image, mask = image[:, ::-1], mask[:, ::-1]
        extra = None if extra is None else extra[:, ::-1]
    if flip_v:
        image, mask = image[::-1], mask[::-1]
        extra = None if extra is None else extra[::-1]
    if k:
        image, mask = np.rot90(image, k), np.rot90(mask, k)
        extra = None if extra is None else np.rot90(extra, k)
    image = np.ascontiguousarray(image)
    mask = np.ascontiguousarray(mask)
    if extra is not None:
        extra = np.ascontiguousarray(extra)

    if do_affine:
        h, w = mask.shape
        m = cv2.getRotationMatrix2D((w / 2 - 0.5, h / 2 - 0.5), 0.0, scale)
        m[:, 2] += shift * np.array([w, h])
        image = cv2.warpAffine(image, m, (w, h), flags=cv2.INTER_LINEAR,
                               borderMode=cv2.BORDER_REFLECT_101)
        mask = cv2.warpAffine(mask.view(np.uint8), m, (w, h), flags=cv2.INTER_NEAREST,
                              borderMode=cv2.BORDER_REFLECT_101).astype(bool)
        if extra is not None:
            extra = cv2.warpAffine(extra, m, (w, h), flags=cv2.INTER_NEAREST,
                                   borderMode=cv2.BORDER_REFLECT_101)

    if colour_jitter:
        img = image.astype(np.float32)
        mean = img.mean()
        img = (img - mean) * contrast + mean + brightness
        image = np.clip(img + 0.5, 0, 255).astype(np.uint8)
    if extra is not None:
        return image, mask, extra
    return image, mask
