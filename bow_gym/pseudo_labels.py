"""Ranking pseudo-masks by a quality score built from feedback and model signals only.

After a round of clicks, some pseudo-masks are good and some are not (the agent was still
learning, the clicks propagated badly, the image is hard). Training the segmenter only on the
best ``top_k`` share can help. The ground truth cannot say which are best: nothing here reads it.
The signals are:

* ``feedback``: share of the image's clicks the expert called "better". With ``on_worse="revert"``
  an image whose clicks were all "worse" keeps its starting mask (empty in round 1), so this is
  the most direct signal there is.
* ``confidence``: mean of the agent's own confidence over the image's clicks (``1 -`` normalised
  entropy of its click distribution; ``NaN`` for agents without one, such as random clicking).
* ``agreement``: Dice between the pseudo-mask and the mask the image started from, which from
  round 2 on is the previous segmenter's prediction. A pseudo-mask close to an independent
  model's prediction is more plausible; but the expert also keeps a wrong prediction untouched
  when all clicks are rejected, so the signal is weak on its own. ``NaN`` where the starting mask
  is empty (round 1).

:func:`combined_score` averages the chosen signals after turning each into ranks in ``[0, 1]``
(they live on different scales), skipping signals that are ``NaN`` for every image.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from bow_gym.metrics import dice

#: Signals :func:`combined_score` knows, and the ones ``"combined"`` uses.
SIGNALS: tuple[str, ...] = ("feedback", "confidence", "agreement")


def quality_signals(
    rewards: np.ndarray,
    confidence: np.ndarray,
    pseudo: Sequence[np.ndarray],
    initial: Sequence[np.ndarray | None],
) -> dict[str, np.ndarray]:
    """Per-image quality signals (see the module docstring).

    Args:
        rewards: ``(N, clicks)`` expert answers (+1 / -1).
        confidence: ``(N, clicks)`` agent confidences in ``[0, 1]``; ``NaN`` where unknown.
        pseudo: ``N`` pseudo-masks (bool).
        initial: ``N`` starting masks (bool, same shapes as ``pseudo``) or ``None`` for empty.

    Returns:
        ``{"feedback": (N,), "confidence": (N,), "agreement": (N,)}`` float arrays.

    Raises:
        ValueError: On mismatched lengths or shapes.
    """
    rewards = np.asarray(rewards, dtype=np.float64)
    confidence = np.asarray(confidence, dtype=np.float64)
    n = len(pseudo)
    if rewards.ndim != 2 or rewards.shape[0] != n:
        raise ValueError(f"rewards must be (N={n}, clicks), got shape {rewards.shape}")
    if confidence.shape != rewards.shape:
        raise ValueError(f"confidence must have the shape of rewards {rewards.shape}, "
                         f"got {confidence.shape}")
    if len(initial) != n:
        raise ValueError(f"{n} pseudo-masks but {len(initial)} starting masks")
    agreement = np.full(n, np.nan)
    for i, (p, s) in enumerate(zip(pseudo, initial, strict=True)):
        if s is not None and np.any(s):
            if np.shape(s) != np.shape(p):
                raise ValueError(f"image {i}: starting mask {np.shape(s)} and pseudo-mask "
                                 f"{np.shape(p)} differ in shape")
            agreement[i] = dice(p, s)
    # nanmean over clicks, without a warning for all-NaN rows
    counts = (~np.isnan(confidence)).sum(axis=1)
    sums = np.nansum(confidence, axis=1)
    conf = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
    return {"feedback": (rewards > 0).mean(axis=1) if rewards.shape[1] else np.zeros(n),
            "confidence": conf.astype(np.float64), "agreement": agreement}


def average_ranks(x: np.ndarray) -> np.ndarray:
    """Average ranks (ties share their mean rank) scaled to ``[0, 1]``; NaN stays NaN."""
    out = np.full(len(x), np.nan)
    ok = np.isfinite(x)
    v = x[ok]
    if len(v) == 0:
        return out
    order = np.argsort(v, kind="stable")
    ranks = np.empty(len(v))
    ranks[order] = np.arange(len(v), dtype=np.float64)
    # ties share their mean rank, so equal signals give equal scores
    _, inverse = np.unique(v, return_inverse=True)
    sums = np.bincount(inverse, weights=ranks)
    counts = np.bincount(inverse)
    ranks = (sums / counts)[inverse]
    out[ok] = ranks / max(len(v) - 1, 1)
    return out


def combined_score(signals: dict[str, np.ndarray], use: str | Sequence[str] = "feedback"
                   ) -> np.ndarray:
    """One score per image: the mean rank of the chosen signals.

    Args:
        signals: As returned by :func:`quality_signals`.
        use: A signal name, ``"combined"`` (all of :data:`SIGNALS`) or a list of names.

    Returns:
        ``(N,)`` scores in ``[0, 1]`` (higher is better); 0.5 for every image when no chosen
        signal has a value (nothing to rank by).

    Raises:
        ValueError: On an unknown signal name.
    """
    names = list(SIGNALS) if use == "combined" else ([use] if isinstance(use, str) else list(use))
    unknown = [u for u in names if u not in SIGNALS]
    if unknown:
        raise ValueError(f"unknown quality signal(s) {unknown}; expected {list(SIGNALS)} "
                         "or 'combined'")
    n = len(next(iter(signals.values())))
    ranked = [average_ranks(np.asarray(signals[u], dtype=np.float64)) for u in names]
    ranked = [r for r in ranked if np.isfinite(r).any()]
    if not ranked:
        return np.full(n, 0.5)
    stack = np.stack(ranked)
    counts = np.isfinite(stack).sum(axis=0)
    score = np.where(counts > 0, np.nansum(stack, axis=0) / np.maximum(counts, 1), 0.0)
    return score


def select_top_k(score: np.ndarray, top_k: float, seed: int = 0) -> np.ndarray:
    """Boolean mask of the ``ceil(top_k * N)`` best-scored images (seeded random tie-breaks).

    Args:
        score: ``(N,)`` scores, higher is better.
        top_k: Share to keep, in ``(0, 1]``; 1 keeps everything.
        seed: Seed of the tie-breaking.

    Raises:
        ValueError: If ``top_k`` is outside ``(0, 1]``.
    """
    if not 0.0 < top_k <= 1.0:
        raise ValueError(f"top_k must be a share in (0, 1], got {top_k!r}")
    score = np.asarray(score, dtype=np.float64)
    n = len(score)
    keep = np.zeros(n, bool)
    if n == 0:
        return keep
    n_keep = int(np.ceil(top_k * n - 1e-9))
    tie = np.random.default_rng(seed).random(n)
    order = np.lexsort((tie, -np.nan_to_num(score, nan=-np.inf)))
    keep[order[:n_keep]] = True
    return keep
