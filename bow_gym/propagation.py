"""Click propagation: one click labels every patch that looks like the clicked one.

This module is pure (no environment state). Conventions used throughout bow-gym:

* A backbone maps an image to a grid of ``Hp x Wp`` L2-normalised patch features.
* Masks live at the **working resolution** ``H x W`` (the environment's ``obs_size``), which must
  be a multiple of the grid, so every patch owns one ``(H // Hp) x (W // Wp)`` cell of pixels.
* A click at pixel ``(y, x)`` belongs to patch ``(y // (H // Hp), x // (W // Wp))``.
* Propagation selects every patch whose cosine similarity with the clicked patch is strictly
  greater than ``threshold`` (the clicked patch itself is always selected) and sets **all pixels of
  the selected cells** to the click's label. Pixels of unselected cells keep their value, so a mask
  that came from elsewhere (a segmenter's prediction) keeps its pixel detail where no click reached.
"""

from __future__ import annotations

import numpy as np


def check_threshold(threshold: float) -> float:
    """Validate a cosine-similarity threshold; returns it as float.

    Raises:
        ValueError: unless ``-1 <= threshold <= 1``.
    """
    try:
        t = float(threshold)
    except (TypeError, ValueError):
        t = float("nan")  # refused below, with the argument's name
    if not -1.0 <= t <= 1.0 or np.isnan(t):
        raise ValueError(f"threshold must be a cosine similarity in [-1, 1], got {threshold!r}")
    return t


def cell_size(shape: tuple[int, int], grid: tuple[int, int]) -> tuple[int, int]:
    """Pixels per patch cell ``(ch, cw)`` for a working shape and a patch grid.

    Raises:
        ValueError: if the shape is not a positive multiple of the grid.
    """
    (h, w), (gh, gw) = shape, grid
    if gh <= 0 or gw <= 0 or h <= 0 or w <= 0 or h % gh or w % gw:
        raise ValueError(
            f"working size {h}x{w} must be a positive multiple of the patch grid {gh}x{gw} "
            f"(e.g. {gh * max(1, round(h / gh))}x{gw * max(1, round(w / gw))})"
        )
    return h // gh, w // gw


def patch_of(y: int, x: int, shape: tuple[int, int], grid: tuple[int, int]) -> int:
    """Flat index (row-major over the grid) of the patch that owns pixel ``(y, x)``."""
    ch, cw = cell_size(shape, grid)
    if not (0 <= y < shape[0] and 0 <= x < shape[1]):
        raise ValueError(f"pixel ({y}, {x}) is outside the {shape[0]}x{shape[1]} working mask")
    return (y // ch) * grid[1] + (x // cw)


def similarity_graph(features: np.ndarray, threshold: float) -> np.ndarray:
    """Which patches a click on each patch selects.

    Args:
        features: ``(Hp, Wp, D)`` or ``(P, D)`` L2-normalised features.
        threshold: Cosine-similarity threshold in ``[-1, 1]``.

    Returns:
        ``(P, P)`` bool matrix ``A`` with ``A[i, j]`` true iff a click on patch ``i`` selects patch
        ``j``: ``cos(f_i, f_j) > threshold``, and always ``A[i, i]`` (rounding can put a unit
        vector's self-similarity just below a threshold of 1).
    """
    t = check_threshold(threshold)
    f = features.reshape(-1, features.shape[-1]).astype(np.float32, copy=False)
    adj = (f @ f.T) > t
    np.fill_diagonal(adj, True)
    return adj


def select_patches(features: np.ndarray, patch: int, threshold: float) -> np.ndarray:
    """Bool ``(P,)`` vector of patches selected by a click on flat patch index ``patch``."""
    t = check_threshold(threshold)
    f = features.reshape(-1, features.shape[-1]).astype(np.float32, copy=False)
    if not 0 <= patch < f.shape[0]:
        raise ValueError(f"patch index {patch} out of range for {f.shape[0]} patches")
    sel = (f @ f[patch]) > t
    sel[patch] = True
    return sel


def cells_to_pixels(selected: np.ndarray, grid: tuple[int, int], shape: tuple[int, int]) -> np.ndarray:
    """Upsample a per-patch bool vector/grid to a pixel mask of ``shape`` (each patch fills its cell)."""
    ch, cw = cell_size(shape, grid)
    sel = np.asarray(selected, dtype=bool).reshape(grid)
    return np.repeat(np.repeat(sel, ch, axis=0), cw, axis=1)


def propagate(
    mask: np.ndarray,
    features: np.ndarray,
    click: tuple[int, int],
    label: bool,
    threshold: float = 0.8,
) -> np.ndarray:
    """Apply one click to a mask (returns a new mask; inputs are not modified).

    Args:
        mask: ``(H, W)`` bool mask at working resolution.
        features: ``(Hp, Wp, D)`` L2-normalised patch features of the same image.
        click: Pixel ``(y, x)`` in working resolution.
        label: ``True`` for foreground, ``False`` for background.
        threshold: Cosine-similarity threshold (strictly greater selects).

    Returns:
        The new ``(H, W)`` bool mask.
    """
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D (H, W), got shape {mask.shape}")
    if features.ndim != 3:
        raise ValueError(f"features must be (Hp, Wp, D), got shape {features.shape}")
    grid = features.shape[:2]
    p = patch_of(int(click[0]), int(click[1]), mask.shape, grid)
    sel_px = cells_to_pixels(select_patches(features, p, threshold), grid, mask.shape)
    out = mask.astype(bool, copy=True)
    out[sel_px] = bool(label)
    return out
