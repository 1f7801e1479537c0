"""Adapting a DINOv2 backbone to a data set: q/v LoRA trained with a triplet loss on pseudo-labels.

Between rounds the method adapts its foundation model to the data set it is labelling, using the
masks the previous round produced (pseudo-labels; never the ground truth): patches the pseudo-mask
calls foreground should look alike, and unlike the background patches of the same image, so that
a click's label propagates (cosine similarity above the threshold) to the lesion and stops at its
border. Without this step polyp Dice after round 3 fell from 80.45% to 76.51% in the original work.

Protocol of :func:`adapt_backbone`:

1. Each pseudo-mask (``(H, W)`` bool, any resolution) is mapped onto the backbone's patch grid by
   area fraction (:func:`patch_labels`): a patch is foreground if more than half of it is, and
   patches whose fraction lies strictly between ``1 - purity`` and ``purity`` (default 0.75) are
   skipped: boundary patches carry both labels, and forcing them to one side teaches the border
   wrongly.
2. Per image, :func:`sample_triplets` draws anchor and positive from one pseudo-class and the
   negative from the other, half with foreground anchors and half with background anchors (the
   reverse direction matters too: background clicks must not spread into the lesion). Triplets
   stay within an image, because propagation compares patches of one image only. An image whose
   pseudo-mask is empty or full (or has too few pure patches) gives no triplets and is skipped;
   if no image gives any, :func:`adapt_backbone` raises ``ValueError``.
3. Patch tokens are computed with gradients through the LoRA adapters only (base frozen, the
   backbone's own preprocessing, last-layer patch tokens as in feature extraction), L2-normalised,
   and trained with ``torch.nn.TripletMarginWithDistanceLoss`` using the *cosine distance*
   ``1 - cos(a, b)`` (what propagation thresholds), margin 0.2 by default: with ``1 - 0.8`` as the
   margin, a satisfied triplet keeps the negative below the env's default 0.8 threshold from its
   anchor, i.e. outside the anchor click's propagation.

Batched (``batch_size`` images per step), tqdm progress bar, ``torch.autocast`` mixed precision
when training on CUDA, seeded (numpy ``Generator`` for the triplets and image order; torch for the
adapter initialisation and dropout, with the caller's torch RNG state restored afterwards).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

if TYPE_CHECKING:
    import torch

    from bow_gym.backbones.head import HeadConfig, HeadHandle
    from bow_gym.backbones.lora import LoRAConfig, LoRAHandle

#: Triplet settings for the feature head (:mod:`bow_gym.backbones.head`) where the caller sets
#: none: the head sees precomputed descriptors, so a step costs milliseconds and it takes more of
#: them, on larger batches, than LoRA's 100 steps through a ViT. Chosen on Kvasir-SEG training
#: images (see docs/multi-round.md).
HEAD_TRIPLET_DEFAULTS: dict[str, Any] = {"steps": 1000, "batch_size": 32, "lr": 3e-3}


@dataclass
class TripletConfig:
    """Settings of the triplet adaptation (:func:`adapt_backbone`).

    Attributes:
        margin: Triplet margin in cosine distance (default 0.2 = 1 - the env's 0.8 threshold; see
            the module docstring).
        steps: Optimiser steps (default 100: ~2.5 passes over 300 images at the default batch).
        batch_size: Images per step; each contributes ``triplets_per_image`` triplets (default 8).
        triplets_per_image: Triplets drawn per image and step (default 64; half foreground-
            anchored, half background-anchored when both are possible).
        lr: AdamW learning rate of the adapters (default 5e-4, inside the 1e-4..1e-3 range usual
            for LoRA; not tuned on pretrained weights, which are not available where this was
            written).
        weight_decay: AdamW weight decay (default 0.0).
        purity: Patches whose pseudo-foreground fraction is strictly between ``1 - purity`` and
            ``purity`` are skipped; 0.5 keeps every patch (default 0.75).
        seed: Seed of the adapter initialisation, image order, triplet sampling and dropout.
        device: Where to train; ``None`` (default) keeps the backbone's device. Another value
            moves the backbone there (and it stays there).
        amp: Mixed precision: ``None`` (default) enables it exactly when training on CUDA
            (bfloat16 where supported, else float16 with gradient scaling); ``True`` on a CPU is
            an error.
    """

    margin: float = 0.2
    steps: int = 100
    batch_size: int = 8
    triplets_per_image: int = 64
    lr: float = 5e-4
    weight_decay: float = 0.0
    purity: float = 0.75
    seed: int = 0
    device: str | None = None
    amp: bool | None = None

    def __post_init__(self) -> None:
        if not (self.margin >= 0 and math.isfinite(self.margin)):
            raise ValueError(f"margin must be a finite number >= 0, got {self.margin!r}")
        for name in ("steps", "batch_size", "triplets_per_image"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int | np.integer) or v < 1:
                raise ValueError(f"{name} must be an int >= 1, got {v!r}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"lr must be a finite number > 0, got {self.lr!r}")
        if not 0.5 <= self.purity <= 1.0:
            raise ValueError(f"purity must be in [0.5, 1], got {self.purity!r}")


@dataclass
class AdaptationHistory:
    """What :func:`adapt_backbone` did.

    Attributes:
        losses: Mean triplet loss of each step.
        active_fraction: Per step, the fraction of triplets that still violated the margin.
        images_used: Indices of the images that gave triplets.
        images_skipped: Indices of the images whose pseudo-mask gave none (empty, full, or too
            few pure patches).
        seconds: Wall time of the training loop.
        device: Device trained on.
        amp: Mixed-precision dtype name (``"bfloat16"``/``"float16"``) or ``None``.
        adapter_id: The adapter's id after training (also ``backbone.adapter_id``).
        handle: The trained adapter (merge, save or remove it through this).
    """

    losses: list[float] = field(default_factory=list)
    active_fraction: list[float] = field(default_factory=list)
    images_used: list[int] = field(default_factory=list)
    images_skipped: list[int] = field(default_factory=list)
    seconds: float = 0.0
    device: str = "cpu"
    amp: str | None = None
    adapter_id: str = ""
    handle: LoRAHandle | HeadHandle | None = field(default=None, repr=False)


def patch_labels(mask: np.ndarray, grid: tuple[int, int], purity: float = 0.75) -> np.ndarray:
    """Pseudo-labels of the patch grid from a pixel mask, by area fraction.

    Args:
        mask: ``(H, W)`` pseudo-mask (bool or 0/1), any resolution.
        grid: ``(Hp, Wp)`` patch grid of the backbone (it sees the whole image resized, so patch
            ``(i, j)`` covers the same fraction of the mask whatever its size).
        purity: Patches with foreground fraction strictly between ``1 - purity`` and ``purity``
            get ``-1`` (skipped); 0.5 labels every patch.

    Returns:
        ``(Hp, Wp)`` int8: 1 foreground (fraction > 0.5), 0 background, -1 skipped.
    """
    m = np.asarray(mask)
    if m.ndim != 2 or m.size == 0:
        raise ValueError(f"pseudo-mask must be a non-empty 2-D array, got shape {m.shape}")
    gh, gw = int(grid[0]), int(grid[1])
    m = (m != 0).astype(np.float32)
    if m.shape == (gh, gw):
        frac = m
    else:
        # INTER_AREA averages exactly the pixels under each patch (non-integer ratios included);
        # for masks coarser than the grid it would not, so bilinear takes over there.
        big = m.shape[0] >= gh and m.shape[1] >= gw
        frac = cv2.resize(m, (gw, gh), interpolation=cv2.INTER_AREA if big else cv2.INTER_LINEAR)
    labels = (frac > 0.5).astype(np.int8)
    labels[(frac > 1.0 - purity) & (frac < purity)] = -1
    return labels


def sample_triplets(labels: np.ndarray, rng: np.random.Generator, n: int = 64) -> np.ndarray:
    """Anchor / positive / negative patch indices of one image.

    Anchor and positive are two *different* patches of one pseudo-class, the negative a patch of
    the other; half of the triplets are foreground-anchored and half background-anchored when
    both are possible (a class needs two patches to anchor, the other class one).

    Args:
        labels: ``(Hp, Wp)`` pseudo-labels from :func:`patch_labels` (1 fg, 0 bg, -1 skipped), or
            a bool patch mask.
        rng: NumPy generator.
        n: Number of triplets wanted.

    Returns:
        ``(n, 3)`` int64 flat patch indices, or ``(0, 3)`` when the image gives no triplet
        (empty or full pseudo-mask).
    """
    flat = np.asarray(labels).astype(np.int8).ravel()
    fg, bg = np.flatnonzero(flat == 1), np.flatnonzero(flat == 0)
    directions = [(same, other) for same, other in ((fg, bg), (bg, fg))
                  if len(same) >= 2 and len(other) >= 1]
    if not directions or n < 1:
        return np.zeros((0, 3), np.int64)
    counts = [n // len(directions)] * len(directions)
    counts[0] += n - sum(counts)
    out = []
    for (same, other), m in zip(directions, counts, strict=True):
        a = rng.integers(0, len(same), m)
        # An offset in [1, len) makes the positive a different patch from the anchor.
        p = (a + rng.integers(1, len(same), m)) % len(same)
        neg = rng.integers(0, len(other), m)
        out.append(np.stack([same[a], same[p], other[neg]], axis=1))
    return np.concatenate(out).astype(np.int64)


def gives_triplets(labels: np.ndarray) -> bool:
    """Whether :func:`sample_triplets` can draw from these patch labels (both classes present,
    one of them with at least two patches)."""
    flat = np.asarray(labels).astype(np.int8).ravel()
    n_fg, n_bg = int((flat == 1).sum()), int((flat == 0).sum())
    return (n_fg >= 2 and n_bg >= 1) or (n_bg >= 2 and n_fg >= 1)


def cosine_gap(features: np.ndarray, labels: np.ndarray) -> float:
    """Foreground/background separation: mean within-class minus mean cross-class cosine.

    The within-class term averages the foreground-foreground and background-background means
    with equal weight, so the (usually much larger) background does not dominate it.

    Args:
        features: ``(Hp, Wp, D)`` L2-normalised patch features.
        labels: ``(Hp, Wp)`` pseudo-labels (1 fg, 0 bg, -1 ignored).

    Returns:
        ``(mean cos(fg, fg') + mean cos(bg, bg')) / 2 - mean cos(fg, bg)`` over distinct patches
        (larger: better separated), ``nan`` if a class has fewer than two patches.
    """
    f = np.asarray(features, np.float64).reshape(-1, features.shape[-1])
    lab = np.asarray(labels).ravel()
    fg, bg = f[lab == 1], f[lab == 0]
    if len(fg) < 2 or len(bg) < 2:
        return math.nan

    def within(x: np.ndarray) -> float:
        s = x.sum(axis=0)
        # Mean over ordered pairs i != j: |sum|^2 minus the n self-similarities.
        return float(s @ s - (x * x).sum()) / (len(x) * (len(x) - 1))

    cross = float(fg.sum(axis=0) @ bg.sum(axis=0)) / (len(fg) * len(bg))
    return 0.5 * (within(fg) + within(bg)) - cross


def mean_cosine_gap(backbone: Any, images: Sequence[np.ndarray], pseudo_masks: Sequence[np.ndarray],
                    purity: float = 0.75) -> float:
    """:func:`cosine_gap` averaged over the images where it is defined (features extracted now)."""
    feats = backbone.extract(list(images))
    gaps = [cosine_gap(f, patch_labels(m, backbone.grid, purity))
            for f, m in zip(feats, pseudo_masks, strict=True)]
    gaps = [g for g in gaps if not math.isnan(g)]
    return float(np.mean(gaps)) if gaps else math.nan


def triplet_loss(backbone: Any, images: Sequence[np.ndarray], pseudo_masks: Sequence[np.ndarray],
                 config: TripletConfig | None = None, seed: int = 12345) -> float:
    """The training objective on a fixed set of triplets, with features extracted now.

    The same ``seed`` draws the same triplets whatever the backbone's weights, so values before
    and after :func:`adapt_backbone` compare like with like (unlike the per-step training losses,
    which see different batches). ``config`` supplies margin, purity and triplets per image.

    Returns:
        Mean ``max(0, d(a, p) - d(a, n) + margin)`` with ``d = 1 - cos``; ``nan`` if no image
        gives triplets.
    """
    config = config or TripletConfig()
    rng = np.random.default_rng(seed)
    feats = backbone.extract(list(images))
    losses = []
    for f, m in zip(feats, pseudo_masks, strict=True):
        t = sample_triplets(patch_labels(m, backbone.grid, config.purity), rng,
                            config.triplets_per_image)
        if len(t):
            flat = f.reshape(-1, f.shape[-1]).astype(np.float64)
            a, p, n = flat[t[:, 0]], flat[t[:, 1]], flat[t[:, 2]]
            d_ap, d_an = 1 - (a * p).sum(-1), 1 - (a * n).sum(-1)
            losses.append(np.maximum(0.0, d_ap - d_an + config.margin))
    return float(np.concatenate(losses).mean()) if losses else math.nan


def _cosine_distance(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``1 - cos(x, y)`` along the last axis: the distance propagation thresholds."""
    import torch.nn.functional as F

    return 1.0 - F.cosine_similarity(x, y, dim=-1)


def _record_step(history: AdaptationHistory, a: torch.Tensor, p: torch.Tensor, n: torch.Tensor,
                 loss: torch.Tensor, margin: float, bar: Any) -> None:
    """Logs one triplet step: its loss and the share of triplets still violating the margin."""
    import torch

    with torch.no_grad():
        active = (_cosine_distance(a, p) - _cosine_distance(a, n) + margin > 0)
    history.losses.append(float(loss.detach()))
    history.active_fraction.append(float(active.float().mean()))
    bar.set_postfix(loss=f"{history.losses[-1]:.4f}")


def adapt_backbone(
    backbone: Any,
    images: Sequence[np.ndarray],
    pseudo_masks: Sequence[np.ndarray],
    config: TripletConfig | None = None,
    *,
    lora: LoRAConfig | None = None,
    head: HeadConfig | None = None,
    progress: bool = True,
) -> AdaptationHistory:
    """Trains q/v LoRA adapters of ``backbone`` with a triplet loss on pseudo-labelled patches.

    A backbone without weights that can carry a feature head (the weight-free ``lab_texture``)
    gets its head trained instead, with the same loss, pseudo-labels and triplets
    (:mod:`bow_gym.backbones.head`; ``head`` gives its shape when it has none yet).

    See the module docstring for the protocol. The backbone keeps its adapter afterwards (merged
    again if it was merged before), and its ``adapter_id``, hence its feature-cache key, names
    the trained weights. An env built earlier on this backbone still holds similarity graphs of
    the old features in its per-image context cache: build a new env for the adapted backbone
    (as ``benchmarks/adaptation.py`` does).

    Args:
        backbone: A :class:`~bow_gym.backbones.dinov2.DinoV2Backbone`, with or without an
            adapter; without one, ``lora`` (default :class:`LoRAConfig()`) is applied, seeded
            with ``config.seed``.
        images: RGB uint8 ``(H, W, 3)`` images.
        pseudo_masks: One ``(H', W')`` pseudo-mask per image (any resolution): the previous
            round's output, never the ground truth.
        config: Training settings (default :class:`TripletConfig()`).
        lora: Adapter shape when the backbone has none yet; must match an existing adapter.
            Refused for a backbone that carries a feature head.
        head: Feature-head shape (weight-free backbones only) when the backbone has none yet.
        progress: Show a tqdm bar with the running loss.

    Returns:
        The :class:`AdaptationHistory` (per-step losses, images used and skipped, the handle).

    Raises:
        NotAdaptableError: The backbone has no weights and cannot carry a feature head.
        ValueError: ``lora`` for a feature-head backbone or ``head`` for DINOv2, mismatched inputs, no image gives a triplet, ``lora`` differs from the
            existing adapter, or ``amp=True`` without CUDA.
    """
    import torch
    from torch import nn
    from tqdm.auto import tqdm

    from bow_gym.backbones.head import supports_head
    from bow_gym.backbones.lora import LoRAConfig, _resolve_target, apply_lora, get_lora

    config = config or TripletConfig()
    if supports_head(backbone):
        if lora is not None:
            raise ValueError(f"lora={lora} given for a backbone without weights "
                             f"({type(backbone).__name__}): it is adapted through a feature "
                             "head (head=HeadConfig(...)), LoRA needs DINOv2")
    else:
        _resolve_target(backbone)  # NotAdaptableError for weight-free backbones, before any work
        if head is not None:
            raise ValueError(f"head={head} given for {type(backbone).__name__}: a feature head "
                             "is the weight-free backbone's stand-in; this one takes lora=")
    if len(images) != len(pseudo_masks):
        raise ValueError(f"{len(images)} images but {len(pseudo_masks)} pseudo-masks")
    if not len(images):
        raise ValueError("no images to adapt on")
    grid = tuple(backbone.grid)
    labels = [patch_labels(m, grid, config.purity) for m in pseudo_masks]
    usable = [i for i, lab in enumerate(labels) if gives_triplets(lab)]
    skipped = sorted(set(range(len(images))) - set(usable))
    if not usable:
        raise ValueError(
            f"none of the {len(images)} pseudo-masks gives a triplet: each is empty, full, or has "
            f"fewer than two pure patches of one class and one of the other on the {grid} grid "
            f"(purity={config.purity}); adaptation needs images with both pseudo-foreground and "
            "pseudo-background")
    if supports_head(backbone):
        return _adapt_head(backbone, images, labels, usable, skipped, config, head, progress)

    handle = get_lora(backbone)
    if handle is None:
        handle = apply_lora(backbone, lora or LoRAConfig(), seed=config.seed)
    elif lora is not None and lora.resolve(len(handle.model.blocks)) != handle.config:
        raise ValueError(f"lora={lora} differs from the backbone's adapter {handle.config}; "
                         "remove it first or pass lora=None")

    model = handle.model
    if config.device is not None and str(config.device) != str(backbone.device):
        model.to(config.device)
        backbone.device = str(config.device)
    device = torch.device(backbone.device)
    cuda = device.type == "cuda"
    if config.amp and not cuda:
        raise ValueError("amp=True needs a CUDA device; leave amp=None to use it when available")
    amp_dtype = None
    if (config.amp is None and cuda) or config.amp:
        amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)

    was_merged, was_training = handle.merged, model.training
    handle.unmerge()  # merged factors get no gradient
    loss_fn = nn.TripletMarginWithDistanceLoss(distance_function=_cosine_distance,
                                               margin=config.margin)
    optimizer = torch.optim.AdamW(handle.parameters(), lr=config.lr,
                                  weight_decay=config.weight_decay)
    rng = np.random.default_rng(config.seed)
    n_prefix = int(getattr(backbone, "num_prefix_tokens", getattr(model, "num_prefix_tokens", 1)))
    history = AdaptationHistory(images_used=usable, images_skipped=skipped, device=str(device),
                                amp=None if amp_dtype is None else str(amp_dtype).split(".")[-1],
                                handle=handle)
    order: list[int] = []
    start = time.perf_counter()
    try:
        # Base in eval mode (no drop-path or dropout in the frozen ViT, as in extraction); the
        # adapters in train mode for their own dropout.
        model.eval()
        handle.train(True)
        cuda_ids = ([device.index if device.index is not None else torch.cuda.current_device()]
                    if cuda else [])
        with torch.random.fork_rng(devices=cuda_ids):
            torch.manual_seed(config.seed)
            bar = tqdm(range(config.steps), desc="adapt (triplet LoRA)", unit="step",
                       disable=not progress)
            for _ in bar:
                batch = []
                while len(batch) < min(config.batch_size, len(usable)):
                    if not order:
                        order = [usable[j] for j in rng.permutation(len(usable))]
                    i = order.pop()
                    if i not in batch:
                        batch.append(i)
                trip = [sample_triplets(labels[i], rng, config.triplets_per_image) for i in batch]
                b_idx = torch.from_numpy(np.concatenate(
                    [np.full(len(t), b) for b, t in enumerate(trip)])).to(device)
                t_idx = torch.from_numpy(np.concatenate(trip)).to(device)
                x = torch.from_numpy(backbone.preprocess([images[i] for i in batch])).to(device)
                with torch.autocast(device.type, dtype=amp_dtype or torch.float32,
                                    enabled=amp_dtype is not None):
                    tokens = model.forward_features(x)[:, n_prefix:]
                feats = nn.functional.normalize(tokens.float(), dim=-1)
                a, p, n = (feats[b_idx, t_idx[:, k]] for k in range(3))
                loss = loss_fn(a, p, n)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                _record_step(history, a, p, n, loss, config.margin, bar)
    finally:
        handle.train(False)
        model.train(was_training)
        if was_merged:
            handle.merge()
        history.adapter_id = handle.refresh()
        history.seconds = time.perf_counter() - start
    return history


def _adapt_head(backbone: Any, images: Sequence[np.ndarray], labels: list[np.ndarray],
                usable: list[int], skipped: list[int], config: TripletConfig,
                head: HeadConfig | None, progress: bool) -> AdaptationHistory:
    """:func:`adapt_backbone` for a backbone that carries a feature head (CPU, float32)."""
    import torch
    from torch import nn
    from tqdm.auto import tqdm

    from bow_gym.backbones.head import apply_head, get_head, image_tensor

    if config.amp:
        raise ValueError("amp=True: the feature head trains in float32 on the CPU")
    handle = get_head(backbone)
    if handle is None:
        handle = apply_head(backbone, head, seed=config.seed)
    elif head is not None and head != handle.config:
        raise ValueError(f"head={head} differs from the backbone's head {handle.config}; "
                         "remove it first or pass head=None")
    model = handle.model
    # The descriptors do not depend on the head: computed once, the steps only run the head.
    desc = backbone.base_descriptors([images[i] for i in usable])
    b, g0, g1, d = desc.shape
    desc_t = torch.from_numpy(desc.reshape(b, g0 * g1, d))
    img_t = (image_tensor(backbone.resized([images[i] for i in usable]))
             if model.cnn is not None else None)
    loss_fn = nn.TripletMarginWithDistanceLoss(distance_function=_cosine_distance,
                                               margin=config.margin)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr,
                                  weight_decay=config.weight_decay)
    rng = np.random.default_rng(config.seed)
    history = AdaptationHistory(images_used=usable, images_skipped=skipped, device="cpu",
                                amp=None, handle=handle)
    order: list[int] = []
    start = time.perf_counter()
    try:
        model.train()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            bar = tqdm(range(config.steps), desc="adapt (triplet feature head)", unit="step",
                       disable=not progress)
            for _ in bar:
                batch: list[int] = []
                while len(batch) < min(config.batch_size, len(usable)):
                    if not order:
                        order = list(rng.permutation(len(usable)))
                    j = int(order.pop())
                    if j not in batch:
                        batch.append(j)
                trip = [sample_triplets(labels[usable[j]], rng, config.triplets_per_image)
                        for j in batch]
                b_idx = torch.from_numpy(np.concatenate(
                    [np.full(len(t), k) for k, t in enumerate(trip)]))
                t_idx = torch.from_numpy(np.concatenate(trip))
                sel = torch.as_tensor(batch)
                feats = model(desc_t[sel], None if img_t is None else img_t[sel])
                a, p, n = (feats[b_idx, t_idx[:, k]] for k in range(3))
                loss = loss_fn(a, p, n)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                _record_step(history, a, p, n, loss, config.margin, bar)
    finally:
        model.eval()
        history.adapter_id = handle.refresh()
        history.seconds = time.perf_counter() - start
    return history


def save_adapter(backbone: Any, path: str | Any) -> Any:
    """Writes the backbone's adapter (LoRA or feature head) to a safetensors file, atomically."""
    from bow_gym.backbones.head import save_head, supports_head

    if supports_head(backbone):
        return save_head(backbone, path)
    from bow_gym.backbones.lora import save_lora

    return save_lora(backbone, path)


def load_adapter(backbone: Any, path: str | Any) -> Any:
    """Loads an adapter file (:func:`save_adapter`) of the backbone's kind onto it."""
    from bow_gym.backbones.head import load_head, supports_head

    if supports_head(backbone):
        return load_head(backbone, path)
    from bow_gym.backbones.lora import load_lora

    return load_lora(backbone, path)
