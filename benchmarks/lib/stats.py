"""Intervals over seeds (Student t) and over images (bootstrap, :func:`bow_gym.metrics.bootstrap_ci`)."""

from __future__ import annotations

import math

import numpy as np

from bow_gym.metrics import bootstrap_ci

__all__ = ["bootstrap_ci", "t_interval"]

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
