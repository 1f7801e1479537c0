"""Intervals over seeds (Student t) and over images (bootstrap, :func:`bow_gym.metrics.bootstrap_ci`)."""

from __future__ import annotations

import math

import numpy as np

from bow_gym.metrics import bootstrap_ci

__all__ = ["bootstrap_ci", "paired", "t_interval"]

# Student-t 97.5% quantiles for 1..10 degrees of freedom (beyond: the normal 1.96 is close enough).
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228)


def t_interval(values: list[float]) -> tuple[float, float, float]:
    """Mean and 95% Student-t interval over seeds.

    One value has no interval: its bounds are NaN, so that no caller reads a zero-width interval
    as certainty. Identical values (a deterministic reference clicker) have a zero-width one.
    """
    v = np.asarray(values, dtype=np.float64)
    m = float(v.mean())
    if len(v) < 2:
        return m, float("nan"), float("nan")
    if np.allclose(v, v[0]):
        return m, m, m
    t = _T975[len(v) - 2] if len(v) - 1 <= len(_T975) else 1.96
    half = float(t * v.std(ddof=1) / math.sqrt(len(v)))
    return m, m - half, m + half


def paired(a: list[dict[str, float]], b: list[dict[str, float]], seed: int = 0
           ) -> dict[str, float]:
    """Mean of ``a - b`` (Dice points) over images and seeds, with 95% intervals.

    Args:
        a, b: Per seed, ``image id -> Dice`` (fractions) of the two sides on the same images.

    Returns:
        ``mean``, ``images_low``/``images_high`` (bootstrap over images of each image's
        difference averaged over the seeds), ``seeds_low``/``seeds_high`` (Student t of the
        per-seed mean differences; NaN with one seed), ``n_images``, ``n_seeds``, ``wins``
        (seeds where ``a`` is ahead).
    """
    ids = sorted(set.intersection(*(set(x) for x in a + b))) if a else []
    if not ids:
        return {"mean": math.nan, "images_low": math.nan, "images_high": math.nan,
                "seeds_low": math.nan, "seeds_high": math.nan, "n_images": 0, "n_seeds": 0,
                "wins": 0}
    diff = np.array([[x[i] - y[i] for i in ids] for x, y in zip(a, b, strict=True)]) * 100
    per_image = diff.mean(axis=0)
    lo, hi = bootstrap_ci(per_image, seed=seed)
    per_seed = diff.mean(axis=1)
    _, slo, shi = t_interval(list(per_seed))
    return {"mean": float(per_image.mean()), "images_low": lo, "images_high": hi,
            "seeds_low": slo, "seeds_high": shi, "n_images": len(ids),
            "n_seeds": int(diff.shape[0]), "wins": int((per_seed > 0).sum())}
