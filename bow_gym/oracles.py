"""Simulated experts: they see the ground truth and answer only "better" (+1) or "worse" (-1).

Oracles are pure: they judge two :class:`Overlap` summaries (before and after a click) of one
prediction against the ground truth, and take randomness only from the generator they are given.
Working on counts instead of masks keeps a judgement O(1); :meth:`Oracle.judge_masks` is the
convenience form on boolean masks.

Decisions, for every oracle:

* **Ties are "worse".** The expert says "better" only for a strict improvement, so a click that
  changes nothing (or trades errors evenly) is answered -1. A binary expert has no "same" button.
* **Empty ground truth** (e.g. a BUSI ``normal`` image): Dice cannot rank two masks there (it is 1
  for an empty prediction and 0 for any other), so the answer compares false-positive pixels
  instead: "better" iff the click strictly reduced them.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import ClassVar, NamedTuple

import numpy as np

BETTER = 1
WORSE = -1


class Overlap(NamedTuple):
    """Counts that summarise a prediction against the ground truth.

    A named tuple rather than a dataclass because the environment builds two per step.

    Attributes:
        tp: Pixels in both.
        pred: Pixels in the prediction.
        gt: Pixels in the ground truth.
    """

    tp: int
    pred: int
    gt: int

    @classmethod
    def of(cls, pred: np.ndarray, gt: np.ndarray) -> Overlap:  # noqa: D102
        """Counts of two same-shaped boolean masks."""
        if pred.shape != gt.shape:
            raise ValueError(f"pred shape {pred.shape} != gt shape {gt.shape}")
        p, g = pred.astype(bool, copy=False), gt.astype(bool, copy=False)
        return cls(int(np.count_nonzero(p & g)), int(np.count_nonzero(p)), int(np.count_nonzero(g)))

    @property
    def dice(self) -> float:
        """Dice coefficient; 1.0 when both are empty."""
        denom = self.pred + self.gt
        return 1.0 if denom == 0 else 2.0 * self.tp / denom


def dice_of_counts(tp: np.ndarray, pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """:attr:`Overlap.dice` of many count triples at once (float64; 1.0 where both are empty).

    The same float64 operations in the same order as the scalar property, so the values are
    bit-identical to it.
    """
    denom = np.asarray(pred, np.int64) + gt
    if denom.all():  # the usual case, one division
        return 2.0 * np.asarray(tp) / denom
    out = np.ones(denom.shape, np.float64)
    np.divide(2.0 * np.asarray(tp), denom, out=out, where=denom != 0)
    return out


class Oracle(abc.ABC):
    """Base class: ``judge(before, after, rng) -> +1 | -1``."""

    name: str = "oracle"
    #: Whether its answers come from the ground truth (the simulated experts); an env refuses
    #: such an oracle on a data set without ground truth.
    reads_ground_truth: ClassVar[bool] = True

    @abc.abstractmethod
    def judge(self, before: Overlap, after: Overlap, rng: np.random.Generator | None = None) -> int:
        """+1 ("better") or -1 ("worse") for a change from ``before`` to ``after``."""

    def judge_batch(
        self,
        before: Overlap,
        after: Overlap,
        rngs: Sequence[np.random.Generator | None],
    ) -> np.ndarray:
        """:meth:`judge` of many changes at once, as a vector environment needs.

        Args:
            before: An :class:`Overlap` whose fields are ``(n,)`` integer arrays.
            after: The same after each change.
            rngs: One generator per change; change ``i`` draws from ``rngs[i]`` exactly what
                :meth:`judge` would draw, so batched and one-at-a-time answers are identical.

        Returns:
            ``(n,)`` int64 array of +1 / -1.

        The default calls :meth:`judge` once per change; the built-in oracles override it with
        array operations.
        """
        b = [np.asarray(f) for f in before]
        a = [np.asarray(f) for f in after]
        out = np.empty(len(b[0]), np.int64)
        for i, rng in enumerate(rngs):
            out[i] = self.judge(Overlap(*(int(f[i]) for f in b)),
                                Overlap(*(int(f[i]) for f in a)), rng)
        return out

    def judge_masks(
        self,
        before: np.ndarray,
        after: np.ndarray,
        gt: np.ndarray,
        rng: np.random.Generator | None = None,
    ) -> int:
        """:meth:`judge` on boolean masks."""
        return self.judge(Overlap.of(before, gt), Overlap.of(after, gt), rng)

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({fields})"


def _gain(before: Overlap, after: Overlap) -> float:
    """Improvement in Dice, or (empty ground truth) in removed false-positive share."""
    if after.gt == 0:
        return (before.pred - after.pred) / max(before.pred, 1)
    return after.dice - before.dice


def _gain_batch(before: Overlap, after: Overlap) -> np.ndarray:
    """:func:`_gain` of array-valued overlaps (float64, bit-identical to the scalar form)."""
    dice_gain = dice_of_counts(*after) - dice_of_counts(*before)
    gt = np.asarray(after.gt)
    if gt.all():  # the usual case: no empty ground truth in the batch
        return dice_gain
    b_pred = np.asarray(before.pred, np.int64)
    fp_share = (b_pred - after.pred) / np.maximum(b_pred, 1)
    return np.where(gt == 0, fp_share, dice_gain)


_ANSWER_OF = np.array([WORSE, BETTER], np.int64)


def _answers(better: np.ndarray) -> np.ndarray:
    # A lookup by each bool's byte: several times faster than np.where with two scalars.
    return _ANSWER_OF.take(np.asarray(better, bool).view(np.uint8))


class DiceOracle(Oracle):
    """The method's expert: "better" iff Dice against the ground truth strictly increased."""

    name = "dice"

    def judge(self, before: Overlap, after: Overlap, rng: np.random.Generator | None = None) -> int:
        return BETTER if _gain(before, after) > 0.0 else WORSE

    def judge_batch(self, before: Overlap, after: Overlap,
                    rngs: Sequence[np.random.Generator | None]) -> np.ndarray:
        return _answers(_gain_batch(before, after) > 0.0)


class MarginOracle(Oracle):
    """A less attentive expert: "better" only if the gain exceeds ``delta``.

    The gain is the Dice increase (empty ground truth: the share of false-positive pixels removed).

    Args:
        delta: Smallest gain the expert notices, ``>= 0``; 0 is :class:`DiceOracle`.
    """

    name = "margin"

    def __init__(self, delta: float = 0.01):
        if not delta >= 0.0:
            raise ValueError(f"delta must be >= 0, got {delta!r}")
        self.delta = float(delta)

    def judge(self, before: Overlap, after: Overlap, rng: np.random.Generator | None = None) -> int:
        return BETTER if _gain(before, after) > self.delta else WORSE

    def judge_batch(self, before: Overlap, after: Overlap,
                    rngs: Sequence[np.random.Generator | None]) -> np.ndarray:
        return _answers(_gain_batch(before, after) > self.delta)


class NoisyOracle(Oracle):
    """An expert who answers like ``base`` but flips the answer with probability ``p``.

    Args:
        p: Flip probability in ``[0, 1]``.
        base: The oracle whose answer is flipped (default :class:`DiceOracle`).
    """

    name = "noisy"

    def __init__(self, p: float = 0.1, base: Oracle | None = None):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p must be a probability in [0, 1], got {p!r}")
        self.p = float(p)
        self.base = base if base is not None else DiceOracle()

    def judge(self, before: Overlap, after: Overlap, rng: np.random.Generator | None = None) -> int:
        answer = self.base.judge(before, after, rng)
        if self.p > 0.0:
            if rng is None:
                raise ValueError("NoisyOracle needs a random generator (rng) to flip answers")
            if rng.random() < self.p:
                answer = -answer
        return answer

    def judge_batch(self, before: Overlap, after: Overlap,
                    rngs: Sequence[np.random.Generator | None]) -> np.ndarray:
        answers = self.base.judge_batch(before, after, rngs)
        if self.p > 0.0:
            if any(rng is None for rng in rngs):
                raise ValueError("NoisyOracle needs a random generator (rng) to flip answers")
            # One draw per change from its own generator, as judge() draws: a sub-env of a
            # vector env then hears the same answers as the single env with its seed.
            draws = np.fromiter((rng.random() for rng in rngs), np.float64, len(rngs))
            answers = np.where(draws < self.p, -answers, answers)
        return answers


class PersonOracle(Oracle):
    """A real expert: the answers come from outside (a person in ``bow-gym annotate``).

    The env asks its oracle during :meth:`~bow_gym.envs.BetterWorseSegEnv.step`; whoever holds
    the person's answer hands it over first with :meth:`give`, so ``on_worse``, the reward and
    every agent work exactly as with a simulated expert. It never reads the ground truth (the
    counts it is given are ignored), so it also works on data sets without one.

    Example:
        >>> env = BetterWorseSegEnv(oracle="person")  # doctest: +SKIP
        >>> env.unwrapped.oracle.give(+1); env.step(action)  # doctest: +SKIP
    """

    name = "person"
    reads_ground_truth: ClassVar[bool] = False

    def __init__(self) -> None:
        self._answer: int | None = None

    def give(self, answer: int) -> None:
        """The person's answer to the next click: +1 ("better") or -1 ("worse").

        Raises:
            ValueError: ``answer`` is not +1 or -1.
            RuntimeError: An earlier answer was not used by a step yet.
        """
        if isinstance(answer, bool) or answer not in (BETTER, WORSE):
            raise ValueError(f"an answer is +1 (better) or -1 (worse), got {answer!r}")
        if self._answer is not None:
            raise RuntimeError("the previous answer was not used yet: call env.step first")
        self._answer = int(answer)

    def judge(self, before: Overlap, after: Overlap, rng: np.random.Generator | None = None) -> int:
        if self._answer is None:
            raise RuntimeError(
                "the person oracle has no answer for this click: hand it over with "
                "env.unwrapped.oracle.give(+1 or -1) before env.step (these clicks need a "
                "person: label them with `bow-gym annotate`)")
        answer, self._answer = self._answer, None
        return answer

    def judge_batch(self, before: Overlap, after: Overlap,
                    rngs: Sequence[np.random.Generator | None]) -> np.ndarray:
        raise RuntimeError("a person answers one click at a time: use a single env, not a "
                           "vector env, with the person oracle")


ORACLES: dict[str, type[Oracle]] = {"dice": DiceOracle, "margin": MarginOracle, "noisy": NoisyOracle,
                                    "person": PersonOracle}


def judge_batch_with_dice(
    oracle: Oracle,
    before: Overlap,
    after: Overlap,
    dice_before: np.ndarray,
    dice_after: np.ndarray,
    rngs: Sequence[np.random.Generator | None],
) -> np.ndarray:
    """:meth:`Oracle.judge_batch`, given each change's Dice before and after as well.

    A vector env keeps every sub-env's Dice and needs the Dice after each click anyway; for the
    Dice-threshold experts (:class:`DiceOracle`, :class:`MarginOracle`) the answer is their
    difference, so the two are not computed again. ``dice_before`` and ``dice_after`` must be
    :func:`dice_of_counts` of ``before`` and ``after`` (then the answers are identical); every
    other oracle, and a batch with an empty ground truth, goes through ``judge_batch``.
    """
    kind = type(oracle)
    if (kind is DiceOracle or kind is MarginOracle) and np.asarray(after.gt).all():
        delta = 0.0 if kind is DiceOracle else oracle.delta  # type: ignore[attr-defined]
        return _answers(dice_after - dice_before > delta)
    return oracle.judge_batch(before, after, rngs)


def make_oracle(oracle: str | Oracle = "dice", **kwargs: float) -> Oracle:
    """An oracle by name (``"dice"``, ``"margin"``, ``"noisy"``, ``"person"``) or passed through
    if already one."""
    if isinstance(oracle, Oracle):
        if kwargs:
            raise ValueError("oracle_kwargs are only used with an oracle given by name")
        return oracle
    try:
        cls = ORACLES[oracle]
    except (KeyError, TypeError):
        raise ValueError(f"unknown oracle {oracle!r}; expected one of {sorted(ORACLES)}") from None
    return cls(**kwargs)
