"""BetterWorseSeg: learn where to click from nothing but "better" / "worse" answers."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import gymnasium as gym
import numpy as np
from gymnasium import spaces

from bow_gym.backbones.base import Backbone
from bow_gym.datasets.base import SegmentationDataset
from bow_gym.oracles import Oracle, Overlap, make_oracle
from bow_gym.propagation import cell_size, check_threshold, similarity_graph

InitialMasks = Mapping[str, np.ndarray] | Callable[[str, np.ndarray], np.ndarray | None]

#: Key of ``info`` under which values computed from the ground truth are reported.
EVAL_ONLY_KEY = "eval_only"

LABEL_NAMES = ("background", "foreground")

_NAN = float("nan")

_WIDE_ONES = {
    1: np.uint8(0xFF), 2: np.uint16(0xFFFF), 4: np.uint32(0xFFFFFFFF),
    8: np.uint64(0xFFFFFFFFFFFFFFFF),
}


@dataclass
class _ImageContext:
    """Everything about one image that does not change during an episode."""

    sample_id: str
    index: int
    image: np.ndarray  # (3, H, W) uint8, working resolution
    gt: np.ndarray  # (H, W) bool, working resolution; evaluation and oracle only
    gt_count: np.ndarray  # (P,) float32 ground-truth pixels per patch
    # (P, P) float32 0/1: which patches a click on each patch selects. Float so that a step's
    # count sums are single BLAS dot products; integer counts stay exact in float32 (< 2**24).
    adjacency: np.ndarray
    features: np.ndarray  # (P, D) float32 backbone features (no ground truth; agents may read)
    selects: np.ndarray  # the same as bool, for masked writes
    selection_size: np.ndarray  # (P,) patches selected by a click on each patch
    selection_gt: np.ndarray  # (P,) ground-truth pixels inside each click's selection


class BetterWorseSegEnv(gym.Env):
    """Click on an image, and an expert says whether the segmentation got better or worse.

    An episode labels one image with ``clicks_per_episode`` clicks. Each click has a pixel and a
    label (foreground or background). The label is propagated to every patch whose backbone feature
    has cosine similarity above ``threshold`` with the clicked patch's feature (see
    :mod:`bow_gym.propagation`). A simulated expert (the oracle), who alone sees the ground truth,
    answers +1 ("better") or -1 ("worse"); with ``on_worse="revert"`` the expert keeps the better
    version, so a "worse" click is undone.

    ## Action Space

    ``Discrete(2 * H * W)`` with ``H = W = obs_size``. Action ``a`` is the click
    ``label = a // (H * W)`` (0 background, 1 foreground) at pixel ``y = (a % (H * W)) // W``,
    ``x = a % W``: the flattened index of a ``(2, H, W)`` logit map, so a U-Net policy's output maps
    to actions one-to-one (:meth:`encode_action` / :meth:`decode_action`).

    ## Observation Space

    ``Box(0, 255, (C, H, W), uint8)``, channel first (SB3's ``CnnPolicy`` accepts it):

    * channels 0-2: the RGB image resized to ``obs_size x obs_size`` (``cv2.INTER_AREA``);
    * channel 3: the current mask (255 foreground, 0 background);
    * channel 4 (only with ``include_clicks=True``): the clicks so far, a 3x3 dot of 255 for a
      foreground click and 128 for a background click.

    The ground truth never enters the observation; only the expert's answers do, through the mask
    that ``on_worse="revert"`` keeps.

    ## Rewards

    The oracle's answer, +1 or -1 per click (:mod:`bow_gym.oracles`; ties are -1). The default
    ``"dice"`` oracle answers +1 iff Dice against the ground truth strictly increased.

    ## Starting State

    An image drawn with ``self.np_random`` (or the next one with ``image_order="sequential"``, or
    ``options={"index": i}`` / ``{"image_id": s}``), with an initial mask from ``initial_masks``
    (empty by default; later rounds of the method pass a segmenter's predictions) or
    ``options={"initial_mask": m}``. An initial mask is bool, or numbers all 0/1 or all 0/255;
    NaN, probabilities and other values are refused (:func:`check_mask_values`).

    ## Episode End

    Terminated after ``clicks_per_episode`` clicks: the budget is part of the task, not a time
    limit. Never truncated.

    ## Info

    ``image_id``, ``index``, ``clicks`` (made so far), ``click`` (``{"y", "x", "label"}``),
    ``patch``, ``patches_selected``, ``pixels_changed`` (pixels the click would flip), ``answer``,
    ``accepted``. Under ``info["eval_only"]``: ``dice`` (current mask) and ``dice_before`` (before
    this click), computed from the ground truth, for evaluation and logging only: an agent that
    reads them reads the ground truth. On a data set without ground truth (``images``, labelled
    by a person) they are NaN.

    ## Arguments

    * ``dataset``: a name from :func:`bow_gym.datasets.list_datasets` (default ``"synthetic"``, the
      embedded generator) or a :class:`~bow_gym.datasets.SegmentationDataset`.
    * ``root``: data-set folder for file-based data sets.
    * ``dataset_kwargs``: extra arguments of the data set (e.g. ``{"flavour": "polyp"}``, ``split``,
      ``limit``).
    * ``backbone``: a name from :func:`bow_gym.backbones.list_backbones` (default ``"lab_texture"``,
      weight-free) or a :class:`~bow_gym.backbones.Backbone`; ``backbone_kwargs`` are passed to it.
    * ``threshold``: cosine-similarity threshold in ``[-1, 1]`` (default 0.8).
    * ``clicks_per_episode``: clicks per image (default 5).
    * ``obs_size``: working resolution of observations, masks and actions; a multiple of the
      backbone's patch grid (default 128 = 8 x 16).
    * ``include_clicks``: add the clicks channel (default ``False``).
    * ``initial_masks``: ``None`` (empty), a mapping ``image_id -> mask`` (any size, resized with
      nearest neighbour; missing ids start empty) or a callable ``(image_id, image) -> mask | None``.
    * ``on_worse``: ``"revert"`` (default: the expert keeps the better version) or ``"keep"``.
    * ``oracle``: ``"dice"`` (default), ``"margin"``, ``"noisy"``, ``"person"`` (a real expert's
      answers, handed over before each step: :class:`~bow_gym.oracles.PersonOracle`; the only
      one a data set without ground truth takes) or an :class:`~bow_gym.oracles.Oracle`;
      ``oracle_kwargs`` are passed to it.
    * ``feature_cache``: folder of the on-disk feature cache, ``"default"`` (``$BOW_GYM_CACHE`` or
      ``~/.cache/bow_gym/features``) or ``None`` (memory only).
    * ``image_order``: ``"random"`` (default) or ``"sequential"``.
    * ``context_cache_size``: images whose prepared state (resized image, similarity graph) is
      kept in memory (default 256, about 0.3 MB each at the defaults).
    * ``render_mode``: ``"rgb_array"`` or ``"human"``; ``render_scale`` enlarges the frame
      (default 3); ``render_ground_truth`` draws the ground-truth outline (default ``False``).

    ## Version History

    * v0: initial release.
    """

    metadata = {"render_modes": ["rgb_array", "human"], "render_fps": 2}

    def __init__(
        self,
        dataset: str | SegmentationDataset = "synthetic",
        root: str | Path | None = None,
        *,
        dataset_kwargs: Mapping[str, Any] | None = None,
        backbone: str | Backbone = "lab_texture",
        backbone_kwargs: Mapping[str, Any] | None = None,
        threshold: float = 0.8,
        clicks_per_episode: int = 5,
        obs_size: int = 128,
        include_clicks: bool = False,
        initial_masks: InitialMasks | None = None,
        on_worse: str = "revert",
        oracle: str | Oracle = "dice",
        oracle_kwargs: Mapping[str, Any] | None = None,
        feature_cache: str | Path | None = "default",
        image_order: str = "random",
        context_cache_size: int = 256,
        render_mode: str | None = None,
        render_scale: int = 3,
        render_ground_truth: bool = False,
    ):
        from bow_gym.backbones import FeatureCache, create_backbone
        from bow_gym.datasets import make_dataset

        self.threshold = check_threshold(threshold)
        # bool is an int in Python: True would silently mean 1 click, so it is refused here.
        for name, value, low in (("clicks_per_episode", clicks_per_episode, 1),
                                 ("obs_size", obs_size, 1), ("render_scale", render_scale, 1),
                                 ("context_cache_size", context_cache_size, 0)):
            if not _is_integer(value) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
        if on_worse not in ("revert", "keep"):
            raise ValueError(f"on_worse must be 'revert' or 'keep', got {on_worse!r}")
        if image_order not in ("random", "sequential"):
            raise ValueError(f"image_order must be 'random' or 'sequential', got {image_order!r}")
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(
                f"render_mode must be one of {self.metadata['render_modes']} or None, got {render_mode!r}"
            )
        if initial_masks is not None and not (
            isinstance(initial_masks, Mapping) or callable(initial_masks)
        ):
            raise TypeError("initial_masks must be None, a mapping id -> mask, or a callable")

        if isinstance(dataset, SegmentationDataset):
            if root is not None or dataset_kwargs:
                raise ValueError("root/dataset_kwargs apply only when dataset is given by name")
            self.dataset = dataset
        else:
            self.dataset = make_dataset(dataset, root, **dict(dataset_kwargs or {}))
        if len(self.dataset) == 0:
            raise ValueError(f"data set {self.dataset.name!r} is empty")

        if isinstance(backbone, Backbone):
            if backbone_kwargs:
                raise ValueError("backbone_kwargs apply only when backbone is given by name")
            self.backbone = backbone
        else:
            self.backbone = create_backbone(backbone, **dict(backbone_kwargs or {}))
        self.grid = tuple(self.backbone.grid)
        self.obs_size = int(obs_size)
        self.cell = cell_size((self.obs_size, self.obs_size), self.grid)
        self.n_patches = self.grid[0] * self.grid[1]
        self.patch_area = self.cell[0] * self.cell[1]

        self.features = FeatureCache(self.backbone, feature_cache)
        self.oracle = make_oracle(oracle, **dict(oracle_kwargs or {}))
        # Images without ground truth (a person labels them): nothing may be judged or scored
        # against their placeholder masks.
        self.has_ground_truth = bool(self.dataset.has_ground_truth)
        if not self.has_ground_truth and self.oracle.reads_ground_truth:
            raise ValueError(
                f"data set {self.dataset.name!r} has no ground truth: the {self.oracle.name!r} "
                "oracle cannot answer; use oracle='person' (a person answers, "
                "bow_gym.oracles.PersonOracle)")
        self.clicks_per_episode = int(clicks_per_episode)
        self.include_clicks = bool(include_clicks)
        self.initial_masks = initial_masks
        self.on_worse = on_worse
        self.image_order = image_order
        self.context_cache_size = int(context_cache_size)
        self.render_mode = render_mode
        self.render_scale = int(render_scale)
        self.render_ground_truth = bool(render_ground_truth)

        h = w = self.obs_size
        self.n_channels = 5 if self.include_clicks else 4
        self.observation_space = spaces.Box(0, 255, (self.n_channels, h, w), np.uint8)
        self.action_space = spaces.Discrete(2 * h * w)
        self._n_actions = 2 * h * w

        self._contexts: OrderedDict[int, _ImageContext] = OrderedDict()
        self._next_index = 0
        self._ctx: _ImageContext | None = None
        self._obs = np.zeros((self.n_channels, h, w), np.uint8)
        self._count = np.zeros(self.n_patches, np.float32)  # foreground pixels per patch
        self._tp = np.zeros(self.n_patches, np.float32)  # true-positive pixels per patch
        self._pred_sum = self._tp_sum = self._gt_sum = 0
        self._initial_dice = 0.0
        self._clicks: list[tuple[int, int, int, int, bool]] = []  # y, x, label, answer, accepted
        self._figure = None

    # ------------------------------------------------------------------ actions
    def encode_action(self, label: int, y: int, x: int) -> int:
        """Action index of a click with ``label`` (0/1) at working-resolution pixel ``(y, x)``."""
        h = w = self.obs_size
        if label not in (0, 1) or not (0 <= y < h and 0 <= x < w):
            raise ValueError(f"click (label={label}, y={y}, x={x}) outside labels 0/1 x {h}x{w}")
        return int(label) * h * w + int(y) * w + int(x)

    def decode_action(self, action: int) -> tuple[int, int, int]:
        """``(label, y, x)`` of an action index."""
        n = self._n_actions
        # Only integers: 3.0 or True would be a caller's bug that int() hides. NumPy integer
        # scalars and 0-d integer arrays are integers too (SB3 and model.predict pass those).
        if not _is_integer(action) or not 0 <= action < n:
            raise ValueError(
                f"action must be an integer in [0, {n}) (int, NumPy integer or 0-d integer "
                f"array), got {action!r} of type {type(action).__name__}"
            )
        a = int(action)
        s = self.obs_size
        label, rest = divmod(a, s * s)
        y, x = divmod(rest, s)
        return label, y, x

    # ------------------------------------------------------------------ per-image context
    def _context(self, index: int) -> _ImageContext:
        ctx = self._contexts.get(index)
        if ctx is not None:
            self._contexts.move_to_end(index)
            return ctx
        sample = self.dataset[index]
        size = (self.obs_size, self.obs_size)
        interp = cv2.INTER_AREA if min(sample.image.shape[:2]) >= self.obs_size else cv2.INTER_LINEAR
        image = cv2.resize(sample.image, size, interpolation=interp)
        gt = resize_mask(sample.mask, self.obs_size)
        feats = self.features.get(sample.image)
        if tuple(feats.shape[:2]) != self.grid:
            raise RuntimeError(f"backbone gave a {feats.shape[:2]} grid, expected {self.grid}")
        adjacency = similarity_graph(feats, self.threshold).astype(np.float32)
        gt_count = self._per_patch(gt).astype(np.float32)
        ctx = _ImageContext(
            sample_id=sample.id,
            index=index,
            image=np.ascontiguousarray(image.transpose(2, 0, 1)),
            gt=gt,
            gt_count=gt_count,
            adjacency=adjacency,
            features=np.asarray(feats, dtype=np.float32).reshape(len(adjacency), -1),
            selects=adjacency > 0,
            selection_size=adjacency.sum(axis=1).astype(np.int64),
            selection_gt=adjacency @ gt_count,
        )
        self._contexts[index] = ctx
        while len(self._contexts) > self.context_cache_size:
            self._contexts.popitem(last=False)
        return ctx

    def _cells_to_pixels(self, selected: np.ndarray) -> np.ndarray:
        """(P,) bool -> (H, W) uint8 with 255 on the selected patches' cells.

        When a cell row is 1, 2, 4 or 8 bytes wide, one all-ones integer of that width per patch,
        repeated down the cell, *is* the cell's pixels: 4x faster than two ``np.repeat`` calls,
        and this is the costliest part of a step.
        """
        (gh, gw), (ch, cw) = self.grid, self.cell
        wide = _WIDE_ONES.get(cw)
        if wide is not None:
            rows = selected.reshape(gh, gw) * wide
            return rows.repeat(ch, axis=0).view(np.uint8).reshape(self.obs_size, self.obs_size)
        sel = selected.reshape(gh, gw).astype(np.uint8) * np.uint8(255)
        return sel.repeat(ch, axis=0).repeat(cw, axis=1)

    def _per_patch(self, mask: np.ndarray) -> np.ndarray:
        (gh, gw), (ch, cw) = self.grid, self.cell
        return mask.reshape(gh, ch, gw, cw).sum(axis=(1, 3), dtype=np.int64).ravel()

    def _initial_mask(self, ctx: _ImageContext, options: Mapping[str, Any]) -> np.ndarray | None:
        mask = options.get("initial_mask")
        source = "options['initial_mask']"
        if mask is None and self.initial_masks is not None:
            if isinstance(self.initial_masks, Mapping):
                mask = self.initial_masks.get(ctx.sample_id)
            else:
                mask = self.initial_masks(ctx.sample_id, ctx.image.transpose(1, 2, 0))
            source = f"initial_masks[{ctx.sample_id!r}]"
        if mask is None:
            return None
        return resize_mask(check_mask_values(mask, source), self.obs_size)

    # ------------------------------------------------------------------ gym API
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        options = dict(options or {})
        n = len(self.dataset)
        index = requested_index(options, self.dataset)
        if index is None:
            index = (self._next_index if self.image_order == "sequential"
                     else int(self.np_random.integers(n)))
        self._next_index = (index + 1) % n

        ctx = self._ctx = self._context(index)
        mask = self._initial_mask(ctx, options)
        obs = self._obs
        obs[:3] = ctx.image
        if mask is None:
            obs[3] = 0
            self._count[:] = 0
            self._tp[:] = 0
        else:
            obs[3] = mask * np.uint8(255)
            self._count[:] = self._per_patch(mask)
            self._tp[:] = self._per_patch(mask & ctx.gt)
        if self.include_clicks:
            obs[4] = 0
        self._pred_sum = int(self._count.sum())
        self._tp_sum = int(self._tp.sum())
        self._gt_sum = int(ctx.gt_count.sum())
        self._initial_dice = Overlap(self._tp_sum, self._pred_sum, self._gt_sum).dice
        self._clicks = []
        self._last_info = self._get_info()
        if self.render_mode == "human":
            self.render()
        return self._get_obs(), dict(self._last_info)

    def step(self, action):
        if self._ctx is None:
            raise RuntimeError("call reset() before step()")
        if len(self._clicks) >= self.clicks_per_episode:
            raise RuntimeError(
                f"the episode ended after {self.clicks_per_episode} clicks; call reset()"
            )
        label, y, x = self.decode_action(action)
        ctx = self._ctx
        (ch, cw), gw = self.cell, self.grid[1]
        patch = (y // ch) * gw + x // cw
        row = ctx.adjacency[patch]

        # O(patches): Dice only needs per-patch counts, never the pixel mask.
        old_count = float(row @ self._count)
        old_tp = float(row @ self._tp)
        if label:
            new_count = float(ctx.selection_size[patch] * self.patch_area)
            new_tp = float(ctx.selection_gt[patch])
        else:
            new_count = new_tp = 0.0
        changed = int(abs(new_count - old_count))
        pred_after = self._pred_sum + int(new_count - old_count)
        tp_after = self._tp_sum + int(new_tp - old_tp)
        before = Overlap(self._tp_sum, self._pred_sum, self._gt_sum)
        after = Overlap(tp_after, pred_after, self._gt_sum)
        answer = int(self.oracle.judge(before, after, self.np_random))
        accepted = answer > 0 or self.on_worse == "keep"

        if accepted:
            selected = ctx.selects[patch]
            np.copyto(self._count, self.patch_area if label else 0, where=selected)
            np.copyto(self._tp, ctx.gt_count if label else 0, where=selected)
            self._pred_sum, self._tp_sum = pred_after, tp_after
            pixels = self._cells_to_pixels(selected)
            mask = self._obs[3]
            if label:
                np.bitwise_or(mask, pixels, out=mask)
            else:
                np.bitwise_and(mask, ~pixels, out=mask)
        if self.include_clicks:
            self._obs[4, max(y - 1, 0) : y + 2, max(x - 1, 0) : x + 2] = 255 if label else 128
        self._clicks.append((y, x, label, answer, accepted))

        info = self._get_info()
        info.update(
            click={"y": y, "x": x, "label": label}, patch=int(patch),
            patches_selected=int(ctx.selection_size[patch]), pixels_changed=changed, answer=answer,
            accepted=accepted,
        )
        info[EVAL_ONLY_KEY]["dice_before"] = before.dice if self.has_ground_truth else _NAN
        self._last_info = info
        terminated = len(self._clicks) >= self.clicks_per_episode
        if self.render_mode == "human":
            self.render()
        return self._get_obs(), float(answer), terminated, False, info

    def _get_obs(self) -> np.ndarray:
        return self._obs.copy()

    def _get_info(self) -> dict[str, Any]:
        ctx = self._ctx
        assert ctx is not None
        return {
            "image_id": ctx.sample_id,
            "index": ctx.index,
            "clicks": len(self._clicks),
            EVAL_ONLY_KEY: {
                "dice": Overlap(self._tp_sum, self._pred_sum, self._gt_sum).dice
                if self.has_ground_truth else _NAN,
                "initial_dice": self._initial_dice if self.has_ground_truth else _NAN,
            },
        }

    # ------------------------------------------------------------------ helpers for users
    def current_mask(self) -> np.ndarray:
        """The current ``(H, W)`` bool mask at working resolution (what the agent also sees)."""
        return self._obs[3] > 127

    def propagation_graph(self) -> np.ndarray:
        """Which patches a click on each patch of the current image would select.

        Row ``p`` of the ``(P, P)`` bool matrix is the selection of a click in patch ``p`` (patches
        in row-major order of ``grid``). It is computed from the image's backbone features alone,
        as an annotation tool could preview a click's reach, so agents may use it: it holds no
        ground truth.
        """
        if self._ctx is None:
            raise RuntimeError("call reset() first")
        return self._ctx.selects.copy()

    def patch_features(self) -> np.ndarray:
        """The current image's ``(P, D)`` float32 backbone features (patches in row-major order).

        The features propagation compares, so agents may use them: they hold no ground truth.
        """
        if self._ctx is None:
            raise RuntimeError("call reset() first")
        return self._ctx.features.copy()

    def ask(self, current: np.ndarray, proposal: np.ndarray) -> int:
        """The expert's answer to a whole proposed mask of the current image: is ``proposal``
        better than ``current``? +1 or -1, from the env's oracle and random state.

        The method's other question: instead of one click's change, the expert compares two
        whole masks (e.g. a segmenter's prediction against the mask the last round left). It
        changes nothing in the episode; the caller decides what to do with the answer.

        Args:
            current: ``(H, W)`` mask (any size; bool, 0/1 or 0/255), resized like initial masks.
            proposal: The same for the proposed mask.
        """
        if self._ctx is None:
            raise RuntimeError("call reset() first")
        a = resize_mask(check_mask_values(current, "current"), self.obs_size)
        b = resize_mask(check_mask_values(proposal, "proposal"), self.obs_size)
        return int(self.oracle.judge_masks(a, b, self._ctx.gt, self.np_random))

    def ground_truth_for_evaluation(self) -> np.ndarray:
        """The current image's ground truth at working resolution. **Evaluation only.**

        Reference clickers that are marked ``reads_ground_truth`` and metric code use it; a
        learning agent must not.
        """
        if self._ctx is None:
            raise RuntimeError("call reset() first")
        if not self.has_ground_truth:
            raise ValueError(f"data set {self.dataset.name!r} has no ground truth (images "
                             "without masks): nothing can read or score it")
        return self._ctx.gt.copy()

    def precompute_features(self, progress: bool = True) -> None:
        """Featurise every image of the data set into the feature cache (progress bar)."""
        from tqdm.auto import tqdm

        it = range(len(self.dataset))
        for i in tqdm(it, desc=f"features {self.backbone.name}", disable=not progress):
            self.features.get(self.dataset[i].image)

    # ------------------------------------------------------------------ rendering
    def render(self):
        if self.render_mode is None:
            gym.logger.warn("render() called without render_mode; pass render_mode='rgb_array'")
            return None
        from bow_gym.render import render_frame

        ctx = self._ctx
        if ctx is None:
            raise RuntimeError("call reset() before render()")
        frame = render_frame(
            ctx.image.transpose(1, 2, 0),
            self.current_mask(),
            self._clicks,
            title=f"{ctx.sample_id}  click {len(self._clicks)}/{self.clicks_per_episode}",
            ground_truth=ctx.gt if self.render_ground_truth else None,
            scale=self.render_scale,
        )
        if self.render_mode == "rgb_array":
            return frame
        from bow_gym.render import show_human

        self._figure = show_human(frame, self._figure, self.metadata["render_fps"])
        return None

    def close(self):
        if self._figure is not None:
            import matplotlib.pyplot as plt

            plt.close(self._figure)
            self._figure = None

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_contexts"] = OrderedDict()  # rebuilt on demand; can be hundreds of MB
        state["_figure"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        if self._ctx is not None:
            self._contexts[self._ctx.index] = self._ctx


def requested_index(options: Mapping[str, Any], dataset: SegmentationDataset) -> int | None:
    """The image ``reset(options=...)`` asks for (``image_id`` or ``index``), or ``None``.

    Shared by the single and the vector env, so both accept and refuse the same options.

    Raises:
        ValueError: An unknown option, or an ``index`` that is not an integer in range.
    """
    unknown = set(options) - {"index", "image_id", "initial_mask"}
    if unknown:
        raise ValueError(f"unknown reset options {sorted(unknown)}; "
                         "expected 'index', 'image_id', 'initial_mask'")
    if "image_id" in options:
        return dataset.index_of(options["image_id"])
    if "index" in options:
        index, n = options["index"], len(dataset)
        if not _is_integer(index) or not 0 <= index < n:
            raise ValueError(f"options['index'] must be an integer in [0, {n}), got {index!r}")
        return int(index)
    return None


def _is_integer(value: Any) -> bool:
    """An int, NumPy integer or 0-d integer array; never a bool, a float or a string."""
    if isinstance(value, np.ndarray):
        return value.ndim == 0 and value.dtype.kind in "iu"
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def check_mask_values(mask: Any, source: str = "mask") -> np.ndarray:
    """A user-given mask as ``(H, W)`` bool, refusing values that are not a mask's.

    Accepted: bool arrays, and numbers (integer or float) that are all 0 or 1, or all 0 or 255
    (the observation's mask channel). Anything else (NaN, infinities, probabilities such as 0.5,
    other grey levels) is refused rather than guessed: ``mask != 0`` would make NaN foreground.
    Threshold a probability map yourself, e.g. ``prob >= 0.5``.

    Raises:
        ValueError: naming ``source``, if the mask is not 2-D and non-empty or holds other values.
    """
    mask = np.asarray(mask)
    if mask.ndim != 2 or mask.size == 0:
        raise ValueError(f"{source} must be a 2-D mask, got shape {mask.shape}")
    if mask.dtype == np.bool_:
        return mask
    if mask.dtype.kind not in "iuf":
        raise ValueError(f"{source} must hold bool or numbers, got dtype {mask.dtype}")
    zero = mask == 0
    if (zero | (mask == 1)).all():
        return ~zero
    if (zero | (mask == 255)).all():
        return ~zero
    bad = np.unique(mask[~(zero | (mask == 1) | (mask == 255))])
    shown = ", ".join(str(v) for v in bad[:5]) + (" ..." if len(bad) > 5 else "")
    raise ValueError(
        f"{source} must be bool, or all 0/1, or all 0/255; found other values ({shown}). "
        "Threshold a probability map yourself (e.g. prob >= 0.5)"
    )


def resize_mask(mask: np.ndarray, size: int) -> np.ndarray:
    """A bool mask resized to ``size x size`` (nearest neighbour, so labels stay crisp):
    :func:`bow_gym.metrics.resize_mask` to a square."""
    from bow_gym.metrics import resize_mask as resize_to

    return resize_to(mask, (size, size))
