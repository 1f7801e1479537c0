"""Reference clickers: uniform random (the floor) and two that read the ground truth.

``GroundTruthClicker`` is the RITM / SimpleClick protocol, the ceiling of the issue's ``gap_closed``;
``GreedyDiceClicker`` also knows how far each click propagates, and so bounds what any policy
can reach with greedy clicks under a given backbone and threshold.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from bow_gym.envs.better_worse_seg import BetterWorseSegEnv
from bow_gym.metrics import distance_to_background
from bow_gym.policy import ClickPolicy
from bow_gym.propagation import cells_to_pixels
from bow_gym.wrappers import patch_to_pixel_action


class RandomClicker(ClickPolicy):
    """Uniformly random label and pixel: the method's "random clicking" ablation.

    Args:
        seed: Seed of the policy's own generator (reseeded by ``reset(seed)``).
    """

    name: ClassVar[str] = "random"

    def __init__(self, seed: int | None = None):
        self.rng = np.random.default_rng(seed)

    @classmethod
    def for_env(cls, env: BetterWorseSegEnv, *, seed: int | None = None, device: str = "cpu",
                **kwargs: Any) -> RandomClicker:
        return cls(seed=seed, **kwargs)

    def reset(self, seed: int | None = None) -> None:
        if seed is not None:
            self.rng = np.random.default_rng(seed)

    def act(self, obs: np.ndarray, info: dict[str, Any], env: BetterWorseSegEnv,
            ground_truth: np.ndarray | None = None) -> int:
        return int(self.rng.integers(env.action_space.n))


def largest_error_click(pred: np.ndarray, gt: np.ndarray,
                        exclude: np.ndarray | None = None) -> tuple[int, int, int] | None:
    """The RITM / SimpleClick next click: centre of the largest error region.

    False negatives and false positives are distance-transformed separately (the image border
    counts as boundary); the click goes to the pixel farthest inside either kind of error, with
    the label that corrects it (foreground for a missed region, background for a false one).

    Args:
        pred: ``(H, W)`` bool current mask.
        gt: ``(H, W)`` bool ground truth.
        exclude: Optional bool mask of pixels not to click (e.g. patches already rejected).

    Returns:
        ``(label, y, x)``, or ``None`` when there is no error left to correct.
    """
    fn, fp = gt & ~pred, pred & ~gt
    if exclude is not None:
        fn, fp = fn & ~exclude, fp & ~exclude
    best = None
    for label, err in ((1, fn), (0, fp)):
        if not err.any():
            continue
        # Exact distances: cv2's float32 transform varies in the last bits with its thread
        # split, which can flip the argmax between near-equal centres from run to run.
        dist = distance_to_background(np.pad(err, 1))[1:-1, 1:-1]
        y, x = np.unravel_index(int(np.argmax(dist)), dist.shape)
        if best is None or dist[y, x] > best[0]:
            best = (float(dist[y, x]), label, int(y), int(x))
    return None if best is None else best[1:]


class GroundTruthClicker(ClickPolicy):
    """Clicks the centre of the largest error region with the corrective label. READS GROUND TRUTH.

    The protocol of RITM and SimpleClick (:func:`largest_error_click`), a ceiling for learned
    policies, not a learner. It does not know how far a click will propagate, so after a "worse"
    answer it excludes that click's patch and tries the next largest error (repeating a rejected
    click would change nothing). Once no error is left it repeats a harmless click.
    """

    name: ClassVar[str] = "gt"
    reads_ground_truth: ClassVar[bool] = True

    def __init__(self) -> None:
        self._rejected: set[int] = set()

    def reset(self, seed: int | None = None) -> None:
        self._rejected = set()

    def act(self, obs: np.ndarray, info: dict[str, Any], env: BetterWorseSegEnv,
            ground_truth: np.ndarray | None = None) -> int:
        if ground_truth is None:
            raise ValueError("GroundTruthClicker needs ground_truth (it is a reference clicker)")
        pred = obs[3] > 127
        exclude = None
        if self._rejected:
            sel = np.zeros(env.n_patches, bool)
            sel[list(self._rejected)] = True
            exclude = cells_to_pixels(sel, env.grid, (env.obs_size, env.obs_size))
        click = largest_error_click(pred, ground_truth, exclude)
        if click is None:
            click = largest_error_click(pred, ground_truth)
        if click is None:  # perfect already: a click that can only be answered "worse"
            return env.encode_action(int(pred[0, 0]), 0, 0)
        return env.encode_action(*click)

    def observe(self, action: int, reward: float, terminated: bool, info: dict[str, Any]) -> None:
        if reward < 0 and "patch" in info:
            self._rejected.add(int(info["patch"]))


def dice_after_clicks(pred: np.ndarray, gt: np.ndarray, graph: np.ndarray,
                      grid: tuple[int, int]) -> np.ndarray:
    """Exact Dice of the mask after every ``(label, patch)`` click: ``(2, P)`` float64.

    A click on patch ``p`` with label ``l`` sets every patch of ``graph[p]`` to ``l`` (the env's
    propagation); Dice is counted on pixels, so partly filled patches of ``pred`` are exact. An
    empty mask against an empty ground truth counts as Dice 1 (:func:`bow_gym.metrics.dice`).

    Args:
        pred: ``(H, W)`` bool current mask.
        gt: ``(H, W)`` bool ground truth, same shape.
        graph: ``(P, P)`` bool propagation graph (``env.propagation_graph()``).
        grid: Patch grid ``(rows, cols)``; ``H`` and ``W`` must be multiples of it.
    """
    gh, gw = grid
    h, w = pred.shape
    if gt.shape != pred.shape or h % gh or w % gw:
        raise ValueError(f"pred {pred.shape} and gt {gt.shape} must match and tile the {grid} grid")

    def per_patch(m: np.ndarray) -> np.ndarray:
        return m.reshape(gh, h // gh, gw, w // gw).sum(axis=(1, 3), dtype=np.float64).ravel()

    size, tp, truth = per_patch(pred), per_patch(pred & gt), per_patch(gt)
    area = float(h // gh * w // gw)
    g = graph.astype(np.float64)
    kept_size = size.sum() - g @ size  # pixels of the mask outside each click's selection
    kept_tp = tp.sum() - g @ tp
    sizes = np.stack([kept_size, kept_size + g.sum(1) * area])
    tps = np.stack([kept_tp, kept_tp + g @ truth])
    denom = sizes + truth.sum()
    return np.where(denom > 0, 2.0 * tps / np.maximum(denom, 1e-12), 1.0)


class GreedyDiceClicker(ClickPolicy):
    """Each click is the ``(label, patch)`` with the largest Dice after it. READS GROUND TRUTH.

    Unlike :class:`GroundTruthClicker` it knows each click's reach (``env.propagation_graph()``,
    which learned agents may also read), so it is a propagation-aware reference: what greedy
    clicking could reach if a policy's belief about the lesion were the truth. Not a learner and
    not the ``gap_closed`` ceiling of the benchmarks (that stays the RITM-style clicker). Ties go
    to the lowest action index; once no click raises Dice it takes the best one anyway (the
    expert answers "worse" and the env reverts it).
    """

    name: ClassVar[str] = "gt_greedy"
    reads_ground_truth: ClassVar[bool] = True

    def act(self, obs: np.ndarray, info: dict[str, Any], env: BetterWorseSegEnv,
            ground_truth: np.ndarray | None = None) -> int:
        if ground_truth is None:
            raise ValueError("GreedyDiceClicker needs ground_truth (it is a reference clicker)")
        dice = dice_after_clicks(obs[3] > 127, ground_truth, env.propagation_graph(), env.grid)
        return patch_to_pixel_action(env, int(np.argmax(dice)))  # (label, patch) row-major
