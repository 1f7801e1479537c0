"""BetterWorseSeg as a native Gymnasium vector environment: N sub-envs batched in numpy.

``gym.make_vec("BetterWorseSeg-v0", num_envs=N)`` builds it: every registered variant names
:class:`BetterWorseSegVectorEnv` as its spec's ``vector_entry_point``, and Gymnasium 1.x's
``make_vec`` uses a spec's vector entry point whenever ``vectorization_mode`` is left unset (it
falls back to ``SyncVectorEnv`` only for specs without one). ``vectorization_mode="sync"`` (or
``"async"``) still gives ``N`` wrapped single envs.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.utils import seeding
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from bow_gym.datasets.base import SegmentationDataset
from bow_gym.envs.better_worse_seg import EVAL_ONLY_KEY, BetterWorseSegEnv, requested_index
from bow_gym.envs.draws import BatchedIntegers
from bow_gym.oracles import Oracle, Overlap, dice_of_counts, judge_batch_with_dice

__all__ = ["BetterWorseSegVectorEnv", "SubEnvView"]

#: Unsigned integers as wide as a cell row of 1, 2, 4 or 8 pixels (see ``_make_views``).
_WIDE = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}
#: Attributes that are views of ``_obs`` or ``_counts`` (rebuilt after unpickling, not pickled).
_VIEWS = ("_cells", "_count", "_tp", "_counts_wide")


class _ImageStore:
    """Prepared state of the images that sub-envs are on (and a few they were on), stacked.

    Row ``s`` ("slot") of every array belongs to one image, so a batch of sub-envs reads its
    rows with one fancy index instead of a Python loop over per-image objects. Slots are
    reference-counted by the sub-envs on them; an image no sub-env is on stays cached until its
    slot is the least recently used free one and another image needs it.

    Args:
        env: The shared single env that prepares an image (resize, features, similarity graph).
        capacity: Most slots; at least the number of sub-envs (or of images, if fewer), so a
            resetting sub-env always finds one.
    """

    def __init__(self, env: BetterWorseSegEnv, capacity: int):
        self.env = env
        self.capacity = int(capacity)
        h = w = env.obs_size
        p = env.n_patches
        member_dtype = np.uint8 if p <= 256 else np.uint16 if p <= 65536 else np.int64
        self._shapes: dict[str, tuple[tuple[int, ...], Any]] = {
            "image": ((3, h, w), np.uint8),
            "gt": ((h, w), bool),  # evaluation and oracle only
            "selects": ((p, p), bool),
            # Row p lists, in ascending order, the patches a click on p selects (the first
            # selection_size[p] entries; the rest is padding): a step visits only those.
            "members": ((p, p), member_dtype),
            "gt_count": ((p,), np.float32),
            "selection_size": ((p,), np.int64),
            "selection_gt": ((p,), np.int64),
            "gt_sum": ((), np.int64),
            "index": ((), np.int64),
            "sample_id": ((), object),
        }
        self.size = 0  # slots allocated
        self.used = 0  # slots ever filled
        for name, (shape, dtype) in self._shapes.items():
            setattr(self, name, np.empty((0, *shape), dtype))
        self.features: list[np.ndarray | None] = []
        self.refs = np.zeros(0, np.int64)
        self.stamp = np.zeros(0, np.int64)
        self.clock = 0
        self.slot_of = np.full(len(env.dataset), -1, np.int64)  # image index -> slot

    def _grow(self) -> None:
        new = min(self.capacity, max(8, 2 * self.size))
        for name, (shape, dtype) in self._shapes.items():
            old = getattr(self, name)
            arr = np.empty((new, *shape), dtype)
            arr[: self.size] = old
            setattr(self, name, arr)
        self.features += [None] * (new - self.size)
        self.refs = np.concatenate([self.refs, np.zeros(new - self.size, np.int64)])
        self.stamp = np.concatenate([self.stamp, np.zeros(new - self.size, np.int64)])
        self.size = new

    def _free_slot(self) -> int:
        if self.used == self.size and self.size < self.capacity:
            self._grow()
        if self.used < self.size:
            self.used += 1
            return self.used - 1
        free = np.flatnonzero(self.refs[: self.used] == 0)
        if len(free) == 0:  # cannot happen while capacity >= min(num_envs, images)
            raise RuntimeError("no free image slot: capacity below the number of sub-envs")
        slot = int(free[np.argmin(self.stamp[free])])
        self.slot_of[self.index[slot]] = -1  # evicted
        return slot

    def _fill(self, slot: int, index: int) -> None:
        ctx = self.env._context(index)  # the single env's preparation, so both see the same state
        self.image[slot] = ctx.image
        self.gt[slot] = ctx.gt
        self.selects[slot] = ctx.selects
        self.members[slot] = np.argsort(~ctx.selects, axis=1, kind="stable")
        self.gt_count[slot] = ctx.gt_count
        self.selection_size[slot] = ctx.selection_size
        self.selection_gt[slot] = ctx.selection_gt
        self.gt_sum[slot] = int(ctx.gt_count.sum())
        self.index[slot] = index
        self.sample_id[slot] = ctx.sample_id
        self.features[slot] = ctx.features
        self.slot_of[index] = slot

    def acquire(self, indices: np.ndarray) -> np.ndarray:
        """Slots of images ``indices`` (one per resetting sub-env), preparing missing ones."""
        slots = self.slot_of[indices]
        hit = slots >= 0
        if hit.all():  # the usual case: every image is in the store
            self.refs += np.bincount(slots, minlength=len(self.refs))
        else:
            np.add.at(self.refs, slots[hit], 1)
            missing, inverse = np.unique(indices[~hit], return_inverse=True)
            wanted = np.bincount(inverse)
            new = np.empty(len(missing), np.int64)
            for k, index in enumerate(missing.tolist()):
                new[k] = slot = self._free_slot()
                self._fill(slot, index)
                self.refs[slot] += wanted[k]  # held at once, so the next miss cannot evict it
            slots[~hit] = new[inverse]
        self.clock += 1
        self.stamp[slots] = self.clock
        return slots

    def release(self, slots: np.ndarray) -> None:
        # bincount: one pass, several times faster than np.subtract.at on a batch of slots
        self.refs -= np.bincount(slots[slots >= 0], minlength=len(self.refs))

    def compact(self, keep: np.ndarray) -> np.ndarray:
        """Drop every slot but ``keep`` (sorted, unique); returns the old -> new slot map."""
        remap = np.full(max(self.size, 1), -1, np.int64)
        remap[keep] = np.arange(len(keep))
        for name in self._shapes:
            setattr(self, name, getattr(self, name)[keep].copy())
        self.features = [self.features[s] for s in keep.tolist()]
        self.refs, self.stamp = self.refs[keep].copy(), self.stamp[keep].copy()
        self.size = self.used = len(keep)
        self.slot_of = np.full_like(self.slot_of, -1)  # a new array: the original store keeps its own
        self.slot_of[self.index] = np.arange(len(keep))
        return remap


class BetterWorseSegVectorEnv(VectorEnv):
    """``num_envs`` BetterWorseSeg episodes stepped at once, batched in numpy.

    Sub-env ``i`` behaves exactly as a :class:`~bow_gym.envs.BetterWorseSegEnv` made with the
    same arguments inside Gymnasium's ``SyncVectorEnv``: the same observations, rewards,
    terminations and (batched) infos, ``info["eval_only"]`` included, under the same seeds and
    actions. What it saves is the per-env work: one data set, backbone, feature cache and store of
    prepared images serve every sub-env; a step reads each sub-env's propagation row with one
    fancy index, judges every click with one array expression (:meth:`Oracle.judge_batch`) and
    rewrites only the mask cells that change, in place.

    ## Action Space

    ``MultiDiscrete([2 * H * W] * num_envs)``: one action of the single env per sub-env
    (``single_action_space`` is its ``Discrete(2 * H * W)``). Actions must be an integer array
    of shape ``(num_envs,)``; anything else is refused with a ``ValueError`` naming what was
    expected.

    ## Observation Space

    ``Box(0, 255, (num_envs, C, H, W), uint8)``: the single env's observations stacked. With
    ``copy=True`` (default) every call returns a fresh array; with ``copy=False`` it returns the
    env's own buffer, which the next ``step``/``reset`` overwrites (``SyncVectorEnv``'s meaning).

    ## Rewards

    ``(num_envs,)`` float64, the oracle's +1 / -1, 0.0 for a sub-env that autoresets this step.

    ## Starting State

    As the single env, drawn per sub-env from its own generator. ``reset(seed=s)`` seeds sub-env
    ``i`` with ``s + i`` (a list gives one seed per sub-env), as ``SyncVectorEnv`` does; options
    (``index``, ``image_id``, ``initial_mask``) apply to every sub-env reset, and
    ``options={"reset_mask": m}`` (bool ``(num_envs,)``) resets only some.

    ## Episode End

    Terminated after ``clicks_per_episode`` clicks, never truncated. ``autoreset_mode``
    (``metadata["autoreset_mode"]``): ``NEXT_STEP`` (default; the step after the last click
    resets, ignoring its action, with reward 0), ``SAME_STEP`` (the last click's step returns the
    reset observation and puts the episode's last observation and info in ``info["final_obs"]``
    and ``info["final_info"]``) or ``DISABLED`` (step a finished sub-env and it raises; reset it
    with ``reset_mask``).

    ## Info

    The single env's keys, batched as Gymnasium's vector envs batch them: each key holds a
    ``(num_envs,)`` array (nested dicts stay dicts) and ``"_key"`` a bool mask of the sub-envs
    that reported it (a sub-env that was just reset has no ``click``, ``answer``, ...).
    ``info["eval_only"]`` is computed from the ground truth, for evaluation only, as in the
    single env.

    ## Arguments

    * ``num_envs``: sub-envs (>= 1).
    * ``copy``: return a fresh observation batch (``True``) or the env's buffer (``False``).
    * ``autoreset_mode``: an :class:`~gymnasium.vector.AutoresetMode` or its value
      (``"NextStep"``, ``"SameStep"``, ``"Disabled"``).
    * every other argument is the single env's (see :class:`~bow_gym.envs.BetterWorseSegEnv`);
      ``context_cache_size`` counts the prepared images kept beyond the ones sub-envs are on.

    ## Version History

    * v0: initial release.
    """

    metadata: dict[str, Any] = {"render_modes": ["rgb_array", "human"], "render_fps": 2,
                                "autoreset_mode": AutoresetMode.NEXT_STEP}

    def __init__(
        self,
        num_envs: int = 1,
        dataset: str | SegmentationDataset = "synthetic",
        root: str | Path | None = None,
        *,
        copy: bool = True,
        autoreset_mode: str | AutoresetMode = AutoresetMode.NEXT_STEP,
        render_mode: str | None = None,
        **env_kwargs: Any,
    ):
        if isinstance(num_envs, bool) or not isinstance(num_envs, (int, np.integer)) or num_envs < 1:
            raise ValueError(f"num_envs must be an int >= 1, got {num_envs!r}")
        try:
            mode = autoreset_mode if isinstance(autoreset_mode, AutoresetMode) else AutoresetMode(
                autoreset_mode)
        except ValueError:
            raise ValueError(f"autoreset_mode must be one of {[m.value for m in AutoresetMode]} "
                             f"or an AutoresetMode, got {autoreset_mode!r}") from None
        # The shared single env: it checks every argument, owns the data set, backbone, feature
        # cache and oracle, and prepares images; it is never stepped itself.
        env = BetterWorseSegEnv(dataset, root, render_mode=render_mode, **env_kwargs)
        self._env = env
        self.num_envs = n = int(num_envs)
        self.copy = bool(copy)
        self.autoreset_mode = mode
        self.metadata = {**type(self).metadata, "autoreset_mode": mode}
        self.render_mode = render_mode

        self.dataset, self.backbone, self.features = env.dataset, env.backbone, env.features
        self.oracle: Oracle = env.oracle
        self.grid, self.cell, self.obs_size = env.grid, env.cell, env.obs_size
        self.n_patches, self.patch_area = env.n_patches, env.patch_area
        self.clicks_per_episode, self.include_clicks = env.clicks_per_episode, env.include_clicks
        self.on_worse, self.image_order, self.threshold = env.on_worse, env.image_order, env.threshold
        self.n_channels = env.n_channels

        self.single_observation_space = env.observation_space
        self.single_action_space = env.action_space
        self.observation_space = batch_space(self.single_observation_space, n)
        self.action_space = batch_space(self.single_action_space, n)
        self._n_actions = env._n_actions

        # Prepared images live in the store only (the shared env keeps none of its own).
        cache = env.context_cache_size
        env.context_cache_size = 0
        self._store = _ImageStore(env, min(len(env.dataset), n + cache))

        h = w = self.obs_size
        p, k = self.n_patches, self.clicks_per_episode
        self._obs = np.zeros((n, self.n_channels, h, w), np.uint8)
        # Per patch: foreground pixels (column 0) and true-positive pixels (column 1), side by
        # side so a click gathers, sums and writes both at once.
        self._counts = np.zeros((n, p, 2), np.float32)
        self._pred_sum = np.zeros(n, np.int64)
        self._tp_sum = np.zeros(n, np.int64)
        self._gt_sum = np.zeros(n, np.int64)
        self._initial_dice = np.zeros(n, np.float64)
        self._dice = np.zeros(n, np.float64)  # of the current mask: kept, not recomputed per step
        self._clicks = np.zeros(n, np.int64)  # made so far in the episode
        self._click_log = np.zeros((n, k, 5), np.int64)  # y, x, label, answer, accepted
        self._slot = np.full(n, -1, np.int64)
        self._image_id = np.full(n, None, object)  # per sub-env, updated at reset only
        self._index = np.zeros(n, np.int64)
        self._ids = np.arange(n)
        self._all = np.ones(n, bool)
        self._ready = False  # every sub-env reset at least once
        self._next_index = np.zeros(n, np.int64)
        self._autoreset = np.zeros(n, bool)
        self._rngs: list[np.random.Generator | None] = [None] * n
        self._seeds: list[int | None] = [None] * n
        self._figure = None
        self._make_views()
        self._cell_values = np.array([0, np.iinfo(self._cells.dtype).max], self._cells.dtype)
        yy, xx = np.divmod(np.arange(h * w), w)
        patch_of_pixel = (yy // self.cell[0]) * self.grid[1] + xx // self.cell[1]
        self._patch_row, self._patch_col = np.divmod(np.arange(p), self.grid[1])
        # Per action: its label, pixel row and column, and patch (the click's decoding).
        label_of, pixel = np.divmod(np.arange(self._n_actions), h * w)
        # One (4, actions) table: a single take gathers all four.
        self._action_table = np.stack([label_of, yy[pixel], xx[pixel], patch_of_pixel[pixel]])
        self._element_offsets = np.arange(n * p)  # 0, 1, 2, ... for the flat element lists
        self._oracle_draws = _draws(self.oracle)
        # The resets' image draws, batched over the generators while only this env draws from
        # them (an oracle that draws shares them, so then each generator draws for itself).
        self._image_draws = BatchedIntegers(n)

    # ------------------------------------------------------------------ seeding
    def _rng(self, i: int) -> np.random.Generator:
        rng = self._rngs[i]
        if rng is None:  # as gym.Env.np_random: an unseeded sub-env gets a random seed
            rng, self._seeds[i] = seeding.np_random()
            self._set_rng(i, rng)
        return rng

    def _set_rng(self, i: int, rng: np.random.Generator) -> None:
        self._rngs[i] = rng
        if not self._oracle_draws:
            self._image_draws.adopt(i, rng)

    @property
    def np_random(self) -> tuple[np.random.Generator, ...]:
        """The sub-envs' generators (``SyncVectorEnv`` returns its sub-envs' too), each in the
        state its single env would be in (so drawing from them draws what it would)."""
        rngs = tuple(self._rng(i) for i in range(self.num_envs))
        self._image_draws.publish(rngs)  # from now on each draws for itself (until re-seeded)
        return rngs

    @property
    def np_random_seed(self) -> tuple[int | None, ...]:
        """The seeds of the sub-envs' generators."""
        for i in range(self.num_envs):  # creates the missing ones, as SyncVectorEnv's sub-envs do
            self._rng(i)
        return tuple(self._seeds)

    # ------------------------------------------------------------------ actions
    def encode_actions(self, label: Any, y: Any, x: Any) -> np.ndarray:
        """Action indices of clicks (arrays of labels 0/1 and working-resolution pixels)."""
        label, y, x = (np.asarray(v, np.int64) for v in (label, y, x))
        s = self.obs_size
        if ((label != 0) & (label != 1)).any() or ((y < 0) | (y >= s) | (x < 0) | (x >= s)).any():
            raise ValueError(f"clicks outside labels 0/1 x {s}x{s}")
        return label * s * s + y * s + x

    def decode_actions(self, actions: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(label, y, x)`` int64 arrays of a batch of actions (checked as :meth:`step` does)."""
        a = self._check_actions(actions)
        s = self.obs_size
        label, rest = np.divmod(a, s * s)
        y, x = np.divmod(rest, s)
        return label, y, x

    def _check_actions(self, actions: Any) -> np.ndarray:
        n, top = self.num_envs, self._n_actions
        a = np.asarray(actions)
        if a.shape != (n,) or a.dtype.kind not in "iu":
            raise ValueError(
                f"actions must be an integer array of shape ({n},) (one action of Discrete({top}) "
                f"per sub-env), got {a.dtype} array of shape {a.shape}")
        if a.dtype == np.int64:
            # One pass: seen as unsigned, a negative action is huge, so max() catches both ends.
            if a.view(np.uint64).max() < top:
                return a
        elif a.min() >= 0 and a.max() < top:
            return a.astype(np.int64)
        bad = np.flatnonzero((a < 0) | (a >= top))
        if len(bad):
            raise ValueError(f"actions must be in [0, {top}); sub-envs {bad[:8].tolist()} got "
                             f"{a[bad[:8]].tolist()}")
        return a.astype(np.int64, copy=False)

    # ------------------------------------------------------------------ gym API
    def reset(self, *, seed: int | Sequence[int | None] | None = None,
              options: dict[str, Any] | None = None):
        """Reset every sub-env (or those of ``options["reset_mask"]``).

        Args:
            seed: ``None`` (keep the generators), an int ``s`` (sub-env ``i`` gets ``s + i``) or
                one seed (or ``None``) per sub-env.
            options: The single env's reset options, for every sub-env reset, and
                ``"reset_mask"``: a bool array of shape ``(num_envs,)``.

        Returns:
            The observation batch and the batched info.
        """
        self._check_open()
        n = self.num_envs
        if seed is None:
            seeds: list[int | None] = [None] * n
        elif isinstance(seed, (int, np.integer)) and not isinstance(seed, bool):
            seeds = [int(seed) + i for i in range(n)]
        else:
            seeds = list(seed)
            if len(seeds) != n:
                raise ValueError(f"seed as a list must have one entry per sub-env ({n}), got "
                                 f"{len(seeds)}")
        options = dict(options or {})
        mask = options.pop("reset_mask", None)
        if mask is not None:
            if not isinstance(mask, np.ndarray) or mask.dtype != np.bool_ or mask.shape != (n,):
                raise ValueError(f"options['reset_mask'] must be a bool numpy array of shape "
                                 f"({n},), got {mask!r}")
            if not mask.any():
                raise ValueError("options['reset_mask'] must select at least one sub-env")
            envs = np.flatnonzero(mask)
        else:
            envs = np.arange(n)
        for i in envs.tolist():
            if seeds[i] is not None:
                rng, self._seeds[i] = seeding.np_random(seeds[i])
                self._set_rng(i, rng)
        self._reset_envs(envs, options)
        self._autoreset[envs] = False
        self._ready = bool((self._slot >= 0).all())
        info = self._state_info(None if mask is None else mask)
        if self.render_mode == "human":
            self.render()
        return self._observations(), info

    def step(self, actions: Any):
        """Click once in every sub-env (autoresetting finished ones, per ``autoreset_mode``).

        Args:
            actions: ``(num_envs,)`` integer array, one action of the single env per sub-env.

        Returns:
            ``(observations, rewards, terminations, truncations, info)``, batched.
        """
        self._check_open()
        if not self._ready:
            raise RuntimeError("call reset() before step()")
        a = self._check_actions(actions)
        n = self.num_envs
        rewards = np.zeros(n, np.float64)
        terminated = np.zeros(n, bool)
        resetting = self._autoreset
        any_reset = bool(resetting.any())
        if self.autoreset_mode == AutoresetMode.DISABLED and any_reset:
            raise RuntimeError(
                f"sub-envs {np.flatnonzero(resetting).tolist()} ended their episode after "
                f"{self.clicks_per_episode} clicks; with autoreset_mode DISABLED reset them with "
                "options={'reset_mask': ...}")
        # Usually no sub-env resets: a slice keeps every per-env array a view.
        stepping: slice | np.ndarray = np.flatnonzero(~resetting) if any_reset else slice(None)
        click = self._click(a, stepping)
        final: dict[str, Any] = {}
        reported = np.zeros(n, bool)  # sub-envs whose info is this click's
        if click is not None:
            ids, answers, click_info = click
            rewards[ids] = answers
            terminated[ids] = self._clicks[ids] >= self.clicks_per_episode
            reported[ids] = True
            if self.autoreset_mode == AutoresetMode.SAME_STEP and terminated.any():
                done = terminated.copy()
                final_obs = np.full(n, None, object)
                # Copies (the reset rewrites the buffer), one array per sub-env as Gymnasium has.
                for i, obs in zip(np.flatnonzero(done).tolist(), self._obs[done], strict=True):
                    final_obs[i] = obs
                final_info = self._state_info(done)
                _merge(final_info, ids, click_info, done)
                final = {"final_obs": final_obs, "_final_obs": done.copy(),
                         "final_info": final_info, "_final_info": done.copy()}
                reported &= ~done  # their info is the new episode's
                self._reset_envs(np.flatnonzero(done), {})
        if self.autoreset_mode == AutoresetMode.NEXT_STEP and any_reset:
            self._reset_envs(np.flatnonzero(resetting), {})
        if self.autoreset_mode == AutoresetMode.SAME_STEP:
            self._autoreset = np.zeros(n, bool)
        else:
            self._autoreset = terminated.copy()
        if click is not None and not final and len(ids) == n:
            info = self._click_info_of_all(click_info)  # the usual step, in one pass
        else:
            info = self._state_info(None)
            if click is not None and reported.any():
                _merge(info, ids, click_info, reported)
        info.update(final)
        if self.render_mode == "human":
            self.render()
        return self._observations(), rewards, terminated, np.zeros(n, bool), info

    def _observations(self) -> np.ndarray:
        return self._obs.copy() if self.copy else self._obs

    def _check_open(self) -> None:
        if self.closed:
            raise RuntimeError("this vector env is closed")

    # ------------------------------------------------------------------ the batched step
    def _click(self, actions: np.ndarray, e: slice | np.ndarray):
        """Apply the clicks of sub-envs ``e``; returns their answers and the click info.

        Work is O(patches the clicks select), not O(patches): the selected patches of all
        clicks are gathered into one flat list ("elements") from the store's member lists, and
        Dice needs only their per-patch counts, never a pixel mask.
        """
        ids = self._ids[e]
        n = len(ids)
        if n == 0:
            return None
        store, area, p_all = self._store, self.patch_area, self.n_patches
        a = actions[e]
        # A table lookup is cheaper than two divmods and an index.
        label, y, x, patch = self._action_table.take(a, axis=1)
        slot_base = self._slot[e] * p_all
        slot_patch = slot_base + patch  # row of the store's (slots * P, ...) arrays
        lengths = store.selection_size.reshape(-1).take(slot_patch)  # >= 1: the clicked patch
        ends = np.cumsum(lengths)
        starts = ends - lengths
        pos = np.repeat(slot_patch * p_all - starts, lengths)
        pos += self._element_offsets[: ends[-1]]
        members = store.members.reshape(-1).take(pos)  # the selected patches, click after click
        owner = np.repeat(self._ids[:n], lengths)  # which click each element belongs to
        env_of = owner if n == self.num_envs else ids[owner]
        flat = env_of * p_all + members  # into the (num_envs * P) count rows
        # Each patch's two float32 counts are gathered as one 8-byte element: a 1-D take is
        # several times faster than a row gather of a 2-D array.
        counts = self._counts_wide.take(flat).view(np.float32).reshape(-1, 2)

        # float32 sums of integer counts < 2**24 are exact, as in the single env.
        old = np.add.reduceat(counts, starts).astype(np.int64)
        new_count = label * lengths * area
        new_tp = label * store.selection_gt.reshape(-1)[slot_patch]
        pred_sum, tp_sum, gt_sum = self._pred_sum[e], self._tp_sum[e], self._gt_sum[e]
        delta = new_count - old[:, 0]
        pred_after = pred_sum + delta
        tp_after = tp_sum + new_tp - old[:, 1]
        rngs = [self._rngs[i] for i in ids.tolist()] if self._oracle_draws else [None] * n
        dice_before = self._dice[e].copy()  # e may be a slice: a view would change below
        dice_after = dice_of_counts(tp_after, pred_after, gt_sum)
        answers = judge_batch_with_dice(self.oracle, Overlap(tp_sum, pred_sum, gt_sum),
                                        Overlap(tp_after, pred_after, gt_sum), dice_before,
                                        dice_after, rngs)
        accepted = answers > 0 if self.on_worse == "revert" else np.ones(n, bool)

        # Only the patches whose pixels change are written (a selected patch already all
        # foreground, or all background, keeps its counts and its cell).
        changes = (counts[:, 0] != (label * area)[owner]) & accepted[owner]
        changed, member, changed_owner = flat[changes], members[changes], owner[changes]
        fg = label[changed_owner]
        # Where a patch becomes all foreground its true positives are its ground-truth pixels.
        written = np.empty((len(changed), 2), np.float32)
        written[:, 0] = fg * area
        written[:, 1] = store.gt_count.reshape(-1).take(slot_base[changed_owner] + member) * fg
        self._counts_wide[changed] = written.view(np.uint64).reshape(-1)
        if isinstance(e, slice):  # the usual step: the per-env arrays' views take the new values
            np.copyto(pred_sum, pred_after, where=accepted)
            np.copyto(tp_sum, tp_after, where=accepted)
            np.copyto(self._dice[e], dice_after, where=accepted)
        else:
            self._pred_sum[e] = np.where(accepted, pred_after, pred_sum)
            self._tp_sum[e] = np.where(accepted, tp_after, tp_sum)
            self._dice[e] = np.where(accepted, dice_after, dice_before)
        self._set_cells(env_of[changes], member, fg)
        if self.include_clicks:
            d, s = np.arange(-1, 2), self.obs_size
            yy = np.clip(y[:, None] + d, 0, s - 1)
            xx = np.clip(x[:, None] + d, 0, s - 1)
            dot = np.where(label > 0, 255, 128).astype(np.uint8)
            self._obs[ids[:, None, None], 4, yy[:, :, None], xx[:, None, :]] = dot[:, None, None]
        k = self._clicks[e]
        if self.render_mode is not None:  # only render() reads the clicks
            self._click_log[ids, k] = np.stack([y, x, label, answers, accepted], axis=1)
        self._clicks[e] = k + 1

        click_info = {
            "click": {"y": y, "x": x, "label": label},
            "patch": patch,
            "patches_selected": lengths,
            "pixels_changed": np.abs(delta),
            "answer": answers,
            "accepted": accepted,
            EVAL_ONLY_KEY: {"dice_before": dice_before},
        }
        return ids, answers, click_info

    def _reset_envs(self, envs: np.ndarray, options: Mapping[str, Any]) -> None:
        """Start a new episode in sub-envs ``envs`` (their generators already seeded)."""
        if len(envs) == 0:
            return
        n_images = len(self.dataset)
        # Usually every sub-env resets at once: a slice is cheaper than indexing by envs.
        every = len(envs) == self.num_envs
        rows: slice | np.ndarray = slice(None) if every else envs
        index = requested_index(options, self.dataset)
        if index is not None:
            indices = np.full(len(envs), index, np.int64)
        elif self.image_order == "sequential":
            indices = self._next_index[envs].copy()
        else:
            # Each sub-env draws from its own generator, as a single env with its seed would
            # (bit-identical, batched: bow_gym.envs.draws).
            if None in self._rngs:
                for i in envs.tolist():
                    self._rng(i)
            indices = self._image_draws.draw(self._rngs, envs, n_images)  # type: ignore[arg-type]
        self._next_index[rows] = (indices + 1) % n_images

        store = self._store
        store.release(self._slot[rows])
        slots = store.acquire(indices)
        self._slot[rows] = slots
        self._image_id[rows] = store.sample_id[slots]
        self._index[rows] = indices
        for i, slot in zip(envs.tolist(), slots.tolist(), strict=True):
            # One copy per image; a fancy-indexed gather would copy every image twice.
            self._obs[i, :3] = store.image[slot]
        # The mask channels are cleared whole: a memset costs about what scattering zeros into
        # six patches' cells does, and after a few clicks far more cells than that hold foreground.
        self._obs[rows, 3] = 0
        self._counts[rows] = 0
        if self.include_clicks:
            self._obs[envs, 4] = 0
        if "initial_mask" in options or self._env.initial_masks is not None:
            self._initial_masks(envs, slots, options)
            self._pred_sum[envs] = self._count[envs].sum(1).astype(np.int64)
            self._tp_sum[envs] = self._tp[envs].sum(1).astype(np.int64)
        else:
            self._pred_sum[rows] = 0
            self._tp_sum[rows] = 0
        self._gt_sum[rows] = store.gt_sum[slots]
        self._initial_dice[rows] = self._dice[rows] = dice_of_counts(
            self._tp_sum[rows], self._pred_sum[rows], self._gt_sum[rows])
        self._clicks[rows] = 0

    def _initial_masks(self, envs: np.ndarray, slots: np.ndarray,
                       options: Mapping[str, Any]) -> None:
        # Off the hot path: initial masks come from a mapping or callable per image.
        store, env = self._store, self._env
        for i, slot in zip(envs.tolist(), slots.tolist(), strict=True):
            # What the single env's _initial_mask reads of an image context.
            ctx = SimpleNamespace(sample_id=store.sample_id[slot], image=store.image[slot])
            mask = env._initial_mask(ctx, options)  # type: ignore[arg-type]
            if mask is None:
                continue
            self._obs[i, 3] = mask * np.uint8(255)
            self._count[i] = env._per_patch(mask)
            self._tp[i] = env._per_patch(mask & store.gt[slot])

    def _state_info(self, mask: np.ndarray | None) -> dict[str, Any]:
        """The keys every single-env info has, for all sub-envs or those of ``mask``."""
        values: dict[str, Any] = {
            "image_id": self._image_id.copy(),
            "index": self._index.copy(),
            "clicks": self._clicks.copy(),
            EVAL_ONLY_KEY: {
                "dice": self._dice.copy(),
                "initial_dice": self._initial_dice.copy(),
            },
        }
        info: dict[str, Any] = {}
        _merge(info, self._ids, values, self._all if mask is None else mask)
        return info

    def _click_info_of_all(self, click_info: dict[str, Any]) -> dict[str, Any]:
        """``_state_info(None)`` merged with the click info of every sub-env: what ``_merge``
        gives when every sub-env clicked, built in one pass over the keys."""
        values = {"image_id": self._image_id.copy(), "index": self._index.copy(),
                  "clicks": self._clicks.copy(), **click_info}
        values[EVAL_ONLY_KEY] = {"dice": self._dice.copy(),
                                 "initial_dice": self._initial_dice.copy(),
                                 **click_info[EVAL_ONLY_KEY]}
        info: dict[str, Any] = {}
        _merge_whole(info, values, self._all)
        return info

    # ------------------------------------------------------------------ helpers for users
    def current_masks(self) -> np.ndarray:
        """``(num_envs, H, W)`` bool: each sub-env's current mask (what its agent also sees)."""
        return self._obs[:, 3] > 127

    def propagation_graphs(self) -> np.ndarray:
        """``(num_envs, P, P)`` bool: each sub-env's
        :meth:`~bow_gym.envs.BetterWorseSegEnv.propagation_graph` (no ground truth)."""
        self._check_reset()
        return self._store.selects[self._slot]

    def patch_features(self) -> np.ndarray:
        """``(num_envs, P, D)`` float32: each sub-env's image's backbone features."""
        self._check_reset()
        return np.stack([self._store.features[s] for s in self._slot.tolist()])

    def ground_truth_for_evaluation(self) -> np.ndarray:
        """``(num_envs, H, W)`` bool ground truth of each sub-env's image. **Evaluation only.**"""
        self._check_reset()
        return self._store.gt[self._slot]

    def changing_clicks(self) -> np.ndarray:
        """``(num_envs, 2P)`` bool: :func:`bow_gym.wrappers.changing_clicks` of every sub-env
        (patch actions ``label * P + p`` that would change its mask), in one batched product."""
        self._check_reset()
        graph = self._store.selects[self._slot].astype(np.float32)
        has_fg = (self._count > 0).astype(np.float32)[:, :, None]
        has_bg = (self._count < self.patch_area).astype(np.float32)[:, :, None]
        clears = (graph @ has_fg)[:, :, 0] > 0
        fills = (graph @ has_bg)[:, :, 0] > 0
        return np.concatenate([clears, fills], axis=1)

    def sub_env(self, i: int) -> SubEnvView:
        """Sub-env ``i`` seen as a single env by code that reads one env's geometry and current
        image (an agent's policy inputs): see :class:`SubEnvView`."""
        if isinstance(i, bool) or not isinstance(i, (int, np.integer)) or not 0 <= i < self.num_envs:
            raise ValueError(f"sub-env index must be an int in [0, {self.num_envs}), got {i!r}")
        return SubEnvView(self, int(i))

    def _check_reset(self) -> None:
        if (self._slot < 0).any():
            raise RuntimeError("call reset() first")

    # ------------------------------------------------------------------ rendering
    def _frame(self, i: int) -> np.ndarray:
        from bow_gym.render import render_frame

        slot = int(self._slot[i])
        k = int(self._clicks[i])
        clicks = [(y, x, label, answer, bool(acc))
                  for y, x, label, answer, acc in self._click_log[i, :k].tolist()]
        return render_frame(
            self._store.image[slot].transpose(1, 2, 0), self._obs[i, 3] > 127, clicks,
            title=f"{self._store.sample_id[slot]}  click {k}/{self.clicks_per_episode}",
            ground_truth=self._store.gt[slot] if self._env.render_ground_truth else None,
            scale=self._env.render_scale,
        )

    def render(self) -> tuple[np.ndarray, ...] | None:
        """One frame per sub-env (``rgb_array``), or all of them tiled in one window (``human``)."""
        if self.render_mode is None:
            gym.logger.warn("render() called without render_mode; pass render_mode='rgb_array'")
            return None
        self._check_reset()
        frames = tuple(self._frame(i) for i in range(self.num_envs))
        if self.render_mode == "rgb_array":
            return frames
        from bow_gym.render import frame_grid, show_human

        grid = frame_grid(list(frames), columns=math.ceil(math.sqrt(self.num_envs)))
        self._figure = show_human(grid, self._figure, self.metadata["render_fps"])
        return None

    def close_extras(self, **kwargs: Any) -> None:
        if self._figure is not None:
            import matplotlib.pyplot as plt

            plt.close(self._figure)
            self._figure = None
        self._env.close()

    # ------------------------------------------------------------------ pickling
    def __getstate__(self) -> dict[str, Any]:
        # Only the images sub-envs are on travel; the rest of the store is rebuilt on demand.
        state = self.__dict__.copy()
        store = _ImageStore.__new__(_ImageStore)
        store.__dict__.update(self._store.__dict__)
        keep = np.unique(self._slot[self._slot >= 0])
        remap = store.compact(keep)
        state["_slot"] = np.where(self._slot >= 0, remap[np.maximum(self._slot, 0)], -1)
        state["_store"] = store
        state["_figure"] = None
        for view in _VIEWS:  # rebuilt by __setstate__
            del state[view]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._make_views()

    def _make_views(self) -> None:
        """Views of ``_obs`` and ``_counts`` the hot path writes through (see ``_VIEWS``).

        When a cell row is 1, 2, 4 or 8 bytes wide it is seen as one unsigned integer of that
        width, so filling a cell writes ``ch`` integers instead of ``ch * cw`` bytes (8x fewer at
        the defaults): ``_cells`` is the mask channel as ``(env, grid row, cell row, grid col)``
        of them (otherwise ``(env, grid row, cell row, grid col, cell col)`` bytes).
        ``_counts_wide`` sees each patch's two float32 counts as one 8-byte element.
        """
        (gh, gw), (ch, cw) = self.grid, self.cell
        n, c = self.num_envs, self.n_channels
        self._count, self._tp = self._counts[..., 0], self._counts[..., 1]
        self._counts_wide = self._counts.view(np.uint64).reshape(-1)
        if cw in _WIDE:
            self._cells = self._obs.view(_WIDE[cw]).reshape(n, c, gh, ch, gw)[:, 3]
        else:
            self._cells = self._obs.reshape(n, c, gh, ch, gw, cw)[:, 3]

    def _set_cells(self, envs: np.ndarray, patches: np.ndarray, foreground: np.ndarray) -> None:
        """Fill the cells of ``patches`` of sub-envs ``envs`` with 255 (``foreground`` 1) or 0."""
        r, c = self._patch_row[patches], self._patch_col[patches]
        values = self._cell_values[foreground]
        if self._cells.ndim == 4:
            self._cells[envs, r, :, c] = values[:, None]
        else:
            self._cells[envs, r, :, c, :] = values[:, None, None]


class SubEnvView:
    """One sub-env of a :class:`BetterWorseSegVectorEnv`, read as a single env is read by agents.

    It has what agents read of a :class:`~bow_gym.envs.BetterWorseSegEnv` besides its
    observation: the geometry (``grid``, ``cell``, ``obs_size``, ``n_patches``, ``n_channels``,
    ``include_clicks``, ``backbone``, ``observation_space``, ``action_space``), ``encode_action``,
    and the current image's ``patch_features()`` and ``propagation_graph()``, which follow the
    sub-env across its resets. It cannot be stepped or reset (the vector env does that), and,
    like the single env's methods, it exposes no ground truth.

    Args:
        vec: The vector env.
        i: The sub-env's index.
    """

    def __init__(self, vec: BetterWorseSegVectorEnv, i: int):
        self._vec, self.index = vec, i
        single = vec._env  # shares the sub-envs' geometry; never stepped
        self.grid, self.cell, self.obs_size = single.grid, single.cell, single.obs_size
        self.n_patches, self.n_channels = single.n_patches, single.n_channels
        self.include_clicks, self.backbone = single.include_clicks, single.backbone
        self.observation_space, self.action_space = single.observation_space, single.action_space
        self.encode_action = single.encode_action
        self.unwrapped = self

    def _slot(self) -> int:
        slot = int(self._vec._slot[self.index])
        if slot < 0:
            raise RuntimeError("call reset() on the vector env first")
        return slot

    def patch_features(self) -> np.ndarray:
        """The sub-env's current image's ``(P, D)`` float32 backbone features (a copy)."""
        return self._vec._store.features[self._slot()].copy()

    def propagation_graph(self) -> np.ndarray:
        """The sub-env's current image's ``(P, P)`` bool propagation graph (a copy)."""
        return self._vec._store.selects[self._slot()].copy()

    def __repr__(self) -> str:
        return f"SubEnvView({self.index} of {self._vec.num_envs})"


def _draws(oracle: Oracle) -> bool:
    """Whether ``oracle`` may draw random numbers (only then are the generators gathered)."""
    from bow_gym.oracles import DiceOracle, MarginOracle

    return type(oracle) not in (DiceOracle, MarginOracle)


def _merge(info: dict[str, Any], ids: np.ndarray, values: dict[str, Any],
           mask: np.ndarray) -> None:
    """Add the values of sub-envs ``ids`` (sorted) selected by ``mask`` to a batched info, as
    ``VectorEnv._add_info`` would add the single envs' infos one by one.

    A key's array over every sub-env has the dtype ``_add_info`` gives the single env's Python
    value (int -> int64, float -> float64, bool -> bool, str -> object), holds zeros (``None``)
    where a sub-env did not report the key, and ``"_key"`` marks who did.
    """
    if len(ids) == len(mask) and mask.all():
        _merge_whole(info, values, mask)
    else:
        keep = mask[ids]
        _merge_some(info, ids[keep], keep, values, len(mask))


def _merge_whole(info: dict[str, Any], values: dict[str, Any], mask: np.ndarray) -> None:
    # Every sub-env reports every key (the usual step): the arrays are taken as they are.
    for key, v in values.items():
        if isinstance(v, dict):
            _merge_whole(info.setdefault(key, {}), v, mask)
        elif key in info:
            info[key][:] = v
        else:
            info[key] = v
        info[f"_{key}"] = mask.copy()


def _merge_some(info: dict[str, Any], to: np.ndarray, keep: np.ndarray, values: dict[str, Any],
                n: int) -> None:
    for key, v in values.items():
        if isinstance(v, dict):
            _merge_some(info.setdefault(key, {}), to, keep, v, n)
        else:
            if key not in info:
                info[key] = np.full(n, None, object) if v.dtype == object else np.zeros(n, v.dtype)
            info[key][to] = v[keep]
        m = info.setdefault(f"_{key}", np.zeros(n, bool))
        m[to] = True
