"""Training a segmenter on (pseudo-)masks and predicting foreground probabilities."""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bow_gym.segmenters.augment import augment_pair
from bow_gym.segmenters.config import SIZE_MULTIPLE, SegmenterConfig, resolve_device, scaled_size
from bow_gym.segmenters.losses import structure_loss

#: ImageNet channel statistics (RGB, 0..1 scale): every network here expects inputs normalised
#: with them (HSNet's encoder is ImageNet-pretrained; the light one uses them for consistency).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _check_image(image: Any, i: int) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8 or 0 in image.shape:
        raise ValueError(f"images[{i}] must be a non-empty (H, W, 3) uint8 RGB array, got "
                         f"shape {image.shape} dtype {image.dtype}")
    return image


def _resize_image(image: np.ndarray, size: int) -> np.ndarray:
    h, w = image.shape[:2]
    # Area averaging when shrinking avoids aliasing; bilinear when enlarging.
    interp = cv2.INTER_AREA if h >= size and w >= size else cv2.INTER_LINEAR
    return cv2.resize(image, (size, size), interpolation=interp)


def _resize_mask(mask: np.ndarray, size: int) -> np.ndarray:
    m = mask.astype(np.float32)
    h, w = m.shape
    interp = cv2.INTER_AREA if h >= size and w >= size else cv2.INTER_LINEAR
    # Thresholding the resampled coverage keeps the boundary where it is (nearest neighbour
    # would shift it by up to half a source pixel and drop thin parts when shrinking).
    return cv2.resize(m, (size, size), interpolation=interp) >= 0.5


def prepare_images(images: Sequence[np.ndarray], size: int, *, first_index: int = 0
                   ) -> np.ndarray:
    """Resizes RGB uint8 images of any size to one ``(N, size, size, 3)`` uint8 array.

    Raises:
        ValueError: An image is not a non-empty ``(H, W, 3)`` uint8 array (its index, counted
            from ``first_index``, is named).
    """
    out = np.empty((len(images), size, size, 3), np.uint8)
    for i, image in enumerate(images):
        out[i] = _resize_image(_check_image(image, first_index + i), size)
    return out


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """``(N, H, W, 3)`` uint8 -> ``(N, 3, H, W)`` float32 ImageNet-normalised."""
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div_(255.0)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (x - mean) / std


def _outputs(out: torch.Tensor | Sequence[torch.Tensor]) -> list[torch.Tensor]:
    return [out] if isinstance(out, torch.Tensor) else list(out)


def segmentation_loss(out: torch.Tensor | Sequence[torch.Tensor], mask: torch.Tensor,
                      pixel_weight: torch.Tensor | None = None, *,
                      weighted_bce: bool = True) -> torch.Tensor:
    """Structure loss summed over a model's outputs (one tensor or a list of side outputs).

    Each output is upsampled bilinearly to the mask's size first (deep supervision at any scale).
    ``pixel_weight`` (the mask's shape) and ``weighted_bce`` are passed to :func:`structure_loss`.
    """
    total = None
    for logits in _outputs(out):
        if logits.shape[-2:] != mask.shape[-2:]:
            logits = F.interpolate(logits, size=mask.shape[-2:], mode="bilinear",
                                   align_corners=False)
        loss = structure_loss(logits, mask, pixel_weight, weighted_bce=weighted_bce)
        total = loss if total is None else total + loss
    if total is None:
        raise ValueError("the model returned no output")
    return total


def lr_at(config: SegmenterConfig, step: int, total: int, epoch: int) -> float:
    """The learning rate of optimiser step ``step`` (of ``total``), in 0-based epoch ``epoch``.

    ``"constant"``: ``config.lr``; ``"cosine"``: decayed to 0 over the steps; ``"multistep"``:
    ``config.lr * lr_gamma ** k`` with ``k`` the number of ``lr_milestones`` (1-based epochs)
    ``<= epoch + 1``.
    """
    if config.lr_schedule == "multistep":
        reached = sum(epoch + 1 >= m for m in config.lr_milestones)
        return config.lr * config.lr_gamma ** reached
    if config.lr_schedule == "constant" or total <= 1:
        return config.lr
    return config.lr * (0.5 * (1.0 + math.cos(math.pi * step / total)))


def train_segmenter(
    model: nn.Module,
    images: Sequence[np.ndarray],
    masks: Sequence[np.ndarray],
    config: SegmenterConfig,
    *,
    weights: Sequence[np.ndarray] | None = None,
    writer: Any | None = None,
    global_step: int = 0,
) -> dict[str, Any]:
    """Trains ``model`` in place on images and (pseudo-)masks with the structure loss.

    Protocol: every image is resized once to ``config.size`` (area or bilinear) and every mask
    too (its resampled coverage thresholded at 0.5). Each epoch visits the images in a seeded
    random order in batches of ``config.batch_size``; each sample is augmented
    (:func:`augment_pair`, if ``config.augment``), and each batch is trained once per rate in
    ``config.scales`` (images and masks resized bilinearly to :func:`scaled_size`, masks becoming
    soft at the boundary; one AdamW step per rate, gradients clipped by ``config.grad_clip``:
    their global norm, or each element with ``grad_clip_mode="value"``). The learning rate is
    constant, follows a cosine decay to 0 over all steps, or drops at epoch milestones
    (``config.lr_schedule``, :func:`lr_at`). The loss is :func:`structure_loss` (weighted or plain
    BCE, ``config.weighted_bce``) summed over the model's outputs (:func:`segmentation_loss`).

    Several processes: started by ``torchrun`` or ``accelerate launch``, every process calls this
    with the same arguments and they train one model data-parallel (each takes its part of every
    global batch of ``config.batch_size``; :mod:`bow_gym.distributed`); the returned losses are
    the global batch's. In one process nothing of that runs.

    Seeded: a numpy ``Generator(config.seed)`` draws the order and augmentations; torch is seeded
    with ``config.seed`` for dropout/stochastic depth, inside ``torch.random.fork_rng`` so the
    caller's RNG state is left alone. The model is moved to ``resolve_device(config.device)``
    (and stays there) and is left in eval mode.

    Args:
        model: A network from :func:`create_segmenter` (any module mapping ``(B, 3, H, W)`` to
            logits, or a list of logits, works).
        images: RGB uint8 ``(H, W, 3)`` arrays of any sizes.
        masks: One bool ``(H', W')`` mask per image, any size (need not equal the image's).
        config: Training settings.
        weights: Optional trust per pixel, one float ``(H', W')`` map in ``[0, 1]`` per mask (the
            mask's size): multiplies the loss of each pixel (:func:`structure_loss`); 0 ignores a
            pixel. Resized like the masks and augmented with them (quantised to 1/255).
        writer: Optional TensorBoard ``SummaryWriter``; logs ``losses/segmenter`` every step.
        global_step: Step number of the first logged step (to continue a curve across calls).

    Returns:
        ``{"loss": [mean loss of each epoch], "seconds": wall time, "n_images": N,
        "steps": optimiser steps, "device": device string, "processes": 1, or the launch's}``.

    Raises:
        ValueError: No images, different numbers of images and masks, or a malformed array.
        FloatingPointError: The loss became NaN or infinite (the step is not taken).
    """
    if len(images) != len(masks):
        raise ValueError(f"images and masks differ in length: {len(images)} images but "
                         f"{len(masks)} masks")
    if len(images) == 0:
        raise ValueError("no images to train on: images is empty")
    size = config.size
    x_all = prepare_images(images, size)
    y_all = np.empty((len(masks), size, size), bool)
    for i, mask in enumerate(masks):
        mask = np.asarray(mask)
        if mask.ndim != 2 or 0 in mask.shape:
            raise ValueError(f"masks[{i}] must be a non-empty 2-D array, got shape {mask.shape}")
        y_all[i] = _resize_mask(mask != 0, size)
    w_all = None
    if weights is not None:
        if len(weights) != len(masks):
            raise ValueError(f"weights and masks differ in length: {len(weights)} weight maps "
                             f"but {len(masks)} masks")
        w_all = np.empty((len(masks), size, size), np.uint8)
        for i, w in enumerate(weights):
            w = np.asarray(w, dtype=np.float32)
            if w.shape != np.asarray(masks[i]).shape:
                raise ValueError(f"weights[{i}] must have the shape of masks[{i}] "
                                 f"{np.asarray(masks[i]).shape}, got {w.shape}")
            if not np.all(np.isfinite(w)) or w.min() < 0 or w.max() > 1:
                raise ValueError(f"weights[{i}] must hold values in [0, 1]")
            interp = cv2.INTER_AREA if min(w.shape) >= size else cv2.INTER_LINEAR
            w_all[i] = np.round(cv2.resize(w, (size, size), interpolation=interp) * 255)

    # Under torchrun / accelerate launch: data-parallel over the launch's processes
    # (bow_gym.distributed); in one process `dp` is None and nothing below changes.
    dp = _data_parallel(config.device)
    device = dp.accelerator.device if dp else torch.device(resolve_device(config.device))
    n = len(x_all)
    steps_per_epoch = math.ceil(n / config.batch_size)
    total_steps = config.epochs * steps_per_epoch * len(config.scales)
    sizes = [scaled_size(size, r) for r in config.scales]

    from tqdm.auto import tqdm

    model.to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr,
                                  weight_decay=config.weight_decay)
    net = model  # what the batches go through: the DDP wrapper of `model` under a launcher
    if dp is not None:
        net, optimizer = dp.prepare(model, optimizer)
    rng = np.random.default_rng(config.seed)
    old_threads = torch.get_num_threads()
    history: list[float] = []
    step = 0
    start = time.perf_counter()
    cuda_ids = []
    if device.type == "cuda":
        cuda_ids = [device.index if device.index is not None else torch.cuda.current_device()]
    try:
        if config.num_threads is not None:
            torch.set_num_threads(config.num_threads)
        with contextlib.ExitStack() as stack:
            stack.enter_context(torch.random.fork_rng(devices=cuda_ids))
            torch.manual_seed(config.seed)
            model.train()
            bar = stack.enter_context(tqdm(total=total_steps, desc=f"train {config.name}",
                                           unit="step", disable=not config.progress
                                           or (dp is not None and not dp.is_main)))
            for epoch in range(config.epochs):
                losses = []
                order = rng.permutation(n)
                for b in range(steps_per_epoch):
                    idx = order[b * config.batch_size:(b + 1) * config.batch_size]
                    xb, yb = x_all[idx], y_all[idx]
                    wb = None if w_all is None else w_all[idx]
                    if config.augment:
                        if wb is None:
                            pairs = [augment_pair(xb[j], yb[j], rng) for j in range(len(idx))]
                        else:
                            pairs = [augment_pair(xb[j], yb[j], rng, extra=wb[j])
                                     for j in range(len(idx))]
                            wb = np.stack([p[2] for p in pairs])
                        xb = np.stack([p[0] for p in pairs])
                        yb = np.stack([p[1] for p in pairs])
                    own = len(idx)
                    if dp is not None:  # augmented as a whole (one RNG stream); then our part
                        if wb is None:
                            (xb, yb), own = dp.take(xb, yb)
                        else:
                            (xb, yb, wb), own = dp.take(xb, yb, wb)
                    x = to_tensor(xb).to(device)
                    y = torch.from_numpy(yb).unsqueeze(1).float().to(device)
                    w = (None if wb is None else
                         torch.from_numpy(wb).unsqueeze(1).float().div_(255.0).to(device))
                    for side in sizes:
                        ws = w
                        if side != size:
                            xs = F.interpolate(x, size=(side, side), mode="bilinear",
                                               align_corners=True)
                            ys = F.interpolate(y, size=(side, side), mode="bilinear",
                                               align_corners=True)
                            if w is not None:
                                ws = F.interpolate(w, size=(side, side), mode="bilinear",
                                                   align_corners=True)
                        else:
                            xs, ys = x, y
                        for group in optimizer.param_groups:
                            group["lr"] = lr_at(config, step, total_steps, epoch)
                        loss = segmentation_loss(net(xs), ys, ws,
                                                 weighted_bce=config.weighted_bce)
                        value = (float(loss.detach()) if dp is None
                                 else dp.mean_loss(loss, own, len(idx)))
                        if not math.isfinite(value):  # before the step spoils the weights
                            raise FloatingPointError(
                                f"the training loss is {value} at step {step} (lr {config.lr}); "
                                "try a lower lr or grad_clip")
                        optimizer.zero_grad(set_to_none=True)
                        (loss if dp is None else dp.loss_to_backward(loss, own, len(idx))).backward()
                        if config.grad_clip and config.grad_clip_mode == "value":
                            nn.utils.clip_grad_value_(model.parameters(), config.grad_clip)
                        elif config.grad_clip:
                            nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
                        optimizer.step()
                        losses.append(value)
                        if writer is not None and (dp is None or dp.is_main):
                            writer.add_scalar("losses/segmenter", value, global_step + step)
                        step += 1
                        bar.update(1)
                        bar.set_postfix(loss=f"{value:.4f}")
                history.append(float(np.mean(losses)))
    finally:
        if dp is not None:
            dp.finish(model)
        model.eval()
        torch.set_num_threads(old_threads)
    return {"loss": history, "seconds": time.perf_counter() - start, "n_images": n,
            "steps": step, "device": str(device), "processes": dp.world if dp else 1}


def _data_parallel(device: str) -> Any | None:
    """:class:`bow_gym.distributed.DataParallel` under a launcher, else ``None``."""
    from bow_gym import distributed

    accelerator = distributed.accelerator_for(device)
    return None if accelerator is None else distributed.DataParallel(accelerator)


@torch.no_grad()
def predict_probabilities(
    model: nn.Module,
    images: Sequence[np.ndarray],
    *,
    size: int,
    batch_size: int = 16,
    device: str = "cpu",
    progress: bool = False,
) -> np.ndarray:
    """Foreground probabilities of ``model`` on images resized to ``size x size``.

    The model runs in eval mode without gradients (its previous training flag is restored); it
    is moved to ``device`` and stays there. Resize the result back to each image's size when
    needed (e.g. ``cv2.resize(p, (w, h)) >= 0.5``).

    Args:
        model: A segmentation network (eval output: ``(B, 1, H, W)`` logits, or a list whose
            last element is the final map).
        images: RGB uint8 ``(H, W, 3)`` arrays of any sizes.
        size: Input side, a positive multiple of 32 (normally the training ``config.size``).
        batch_size: Images per forward pass.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:<index>"`` or ``"auto"``.
        progress: Show a tqdm bar over the batches.

    Returns:
        ``(N, size, size)`` float32 array of sigmoid probabilities in ``[0, 1]``.

    Raises:
        ValueError: Bad ``size``/``batch_size``, or a malformed image.
    """
    if isinstance(size, bool) or not isinstance(size, int) or size <= 0 or size % SIZE_MULTIPLE:
        raise ValueError(f"size must be a positive multiple of {SIZE_MULTIPLE}, got {size!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    dev = torch.device(resolve_device(device))
    out = np.empty((len(images), size, size), np.float32)
    if len(images) == 0:
        return out
    from tqdm.auto import tqdm

    was_training = model.training
    model.to(dev)
    model.eval()
    try:
        for s in tqdm(range(0, len(images), batch_size), desc="predict", unit="batch",
                      disable=not progress):
            x = to_tensor(prepare_images(images[s:s + batch_size], size, first_index=s)).to(dev)
            logits = model(x)
            if not isinstance(logits, torch.Tensor):
                logits = _outputs(logits)[-1]
            if logits.shape[-2:] != (size, size):
                logits = F.interpolate(logits, size=(size, size), mode="bilinear",
                                       align_corners=False)
            out[s:s + len(x)] = torch.sigmoid(logits.float())[:, 0].cpu().numpy()
    finally:
        model.train(was_training)
    return out
