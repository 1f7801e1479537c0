"""``Generator.integers(high)`` of many generators at once, bit-identical to one call on each.

A vector env whose sub-env ``i`` must draw its images exactly as a single env seeded the same
way does (``np_random.integers(n_images)`` at each reset) would call ``integers`` once per
resetting sub-env. Those calls are bound by Python's call overhead (about 1.1 microseconds each on
the reference machine, 70 of a 64-sub-env reset), not by the arithmetic. :class:`BatchedIntegers`
reads the generators' raw 64-bit outputs instead (``BitGenerator.random_raw``, several times
cheaper per call, and needed only every other draw) and does numpy's bounded draw in numpy over
the whole batch.

What it reproduces (numpy's ``random_bounded_uint64`` for a range below ``2**32``, and PCG64's
``next_uint32``; stable in numpy 1.17 to 2.x, and a test compares against ``integers`` itself):

* a 32-bit word is the low half of a fresh 64-bit output, whose high half the generator keeps
  for its next 32-bit word (``has_uint32``/``uinteger`` in its state);
* the draw from ``[0, high)`` is Lemire's: ``m = word * high``; when ``m``'s low 32 bits are below
  ``(2**32 - high) % high`` the word is rejected and another is taken; the value is ``m >> 32``;
* a range of one value (``high == 1``) draws nothing.

The kept half is tracked here (:attr:`BatchedIntegers.buffered`, :attr:`~BatchedIntegers.word`)
rather than in the generator, whose own ``has_uint32`` ``random_raw`` leaves untouched. A
generator is drawn from here only while nothing else can draw from it ("owned": adopted fresh,
with nothing kept): :meth:`BatchedIntegers.publish` writes the kept halves into the generators'
states and gives them up before they are handed out; from then on they are drawn from with
``integers`` until adopted again (re-seeded).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["BatchedIntegers"]

_LOW32 = np.uint64(0xFFFFFFFF)
_SHIFT32 = np.uint64(32)


class BatchedIntegers:
    """Draws ``integers(high)`` for many PCG64 generators as each one's own call would.

    Args:
        n: How many generators (sub-envs).
    """

    def __init__(self, n: int):
        self.owned = np.zeros(n, bool)
        self.buffered = np.zeros(n, bool)  # a generator keeps the high half of its last output
        self.word = np.zeros(n, np.uint64)  # that half

    def adopt(self, i: int, rng: np.random.Generator) -> None:
        """Draw for generator ``i`` here from now on, if it is a PCG64 that keeps no half-word
        (a freshly seeded one); otherwise leave it to ``integers``."""
        bg = rng.bit_generator
        self.owned[i] = type(bg) is np.random.PCG64 and not bg.state["has_uint32"]
        self.buffered[i] = False

    def publish(self, rngs: Sequence[np.random.Generator | None]) -> None:
        """Write each owned generator's kept half-word into its state and give it up: from now on
        any draw from it, here or elsewhere, is the one a single env would make."""
        for i in np.flatnonzero(self.owned).tolist():
            bg = rngs[i].bit_generator  # type: ignore[union-attr]
            state = bg.state
            # The last high half stays in the state once used, as the generator's own does.
            state["has_uint32"], state["uinteger"] = int(self.buffered[i]), int(self.word[i])
            bg.state = state
        self.owned[:] = False
        self.buffered[:] = False

    def draw(self, rngs: Sequence[np.random.Generator], envs: np.ndarray, high: int) -> np.ndarray:
        """``[rngs[i].integers(high) for i in envs]`` as an int64 array (``envs`` distinct).

        Args:
            rngs: Every generator, indexed by ``envs``.
            envs: Which generators draw, one value each.
            high: Exclusive upper bound, ``1 <= high < 2**32``.
        """
        envs = np.asarray(envs, np.int64)
        if not 1 <= high < 2**32:
            raise ValueError(f"high must be in [1, 2**32), got {high!r}")
        out = np.zeros(len(envs), np.int64)
        if high == 1:
            return out  # numpy draws nothing for a range of one value
        own = self.owned[envs]
        if not own.all():
            others = np.flatnonzero(~own)
            out[others] = [rngs[i].integers(high) for i in envs[others].tolist()]
            if not own.any():
                return out
            mine = envs[own]
        else:
            mine = envs
        span = np.uint64(high)
        m = self._words(rngs, mine) * span
        # Rejection is rare (a low part below (2**32 - high) % high < high): those redraw alone.
        threshold = (2**32 - high) % high
        for k in np.flatnonzero((m & _LOW32) < span).tolist():
            i = int(mine[k])
            while int(m[k]) & 0xFFFFFFFF < threshold:
                m[k] = self._words(rngs, np.array([i]))[0] * span
        values = (m >> _SHIFT32).astype(np.int64)
        if own.all():
            return values
        out[own] = values
        return out

    def _words(self, rngs: Sequence[np.random.Generator], envs: np.ndarray) -> np.ndarray:
        """The next 32-bit word of each generator of ``envs`` (as uint64)."""
        fresh = ~self.buffered[envs]
        take = envs[fresh]
        raw = np.fromiter((rngs[i].bit_generator.random_raw() for i in take.tolist()),
                          np.uint64, len(take))
        word = self.word[envs]  # the kept halves (a copy: fancy indexing)
        word[fresh] = raw & _LOW32
        self.word[take] = raw >> _SHIFT32
        self.buffered[envs] = fresh  # a fresh output leaves its high half; a used half, nothing
        return word
