"""Training settings of a segmenter, the two presets, and device resolution.

Torch-free (``resolve_device`` imports it on call), so presets can be listed and validated
without loading torch.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from typing import Any

#: Registry names a :class:`SegmenterConfig` may name (see :func:`bow_gym.segmenters.create_segmenter`).
SEGMENTER_NAMES = ("light", "hsnet")

#: Every network halves the resolution five times (HSNet's encoder) or four (LightSegmenter) and
#: multiplies skip features elementwise or concatenates them, so input sides must divide evenly.
SIZE_MULTIPLE = 32

_DEVICES = ("auto", "cpu", "cuda")
_SCHEDULES = ("constant", "cosine")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _finite(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _check_device_name(device: Any) -> None:
    ok = isinstance(device, str) and (
        device in _DEVICES or (device.startswith("cuda:") and device[5:].isdigit()))
    if not ok:
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:<index>', got {device!r}")


def scaled_size(size: int, rate: float) -> int:
    """Side of a multi-scale training batch: ``round(size * rate / 32) * 32`` (HSNet's rule)."""
    return int(round(size * rate / SIZE_MULTIPLE) * SIZE_MULTIPLE)


@dataclass
class SegmenterConfig:
    """How a segmenter is built and trained (:func:`~bow_gym.segmenters.train_segmenter`).

    Attributes:
        name: Network: ``"light"`` (:class:`~bow_gym.segmenters.LightSegmenter`, a small U-Net
            trained from scratch, for CPUs) or ``"hsnet"`` (:class:`~bow_gym.segmenters.HSNet`,
            PVTv2-B2 encoder, for GPUs).
        size: Side of the square training and prediction input, a positive multiple of 32.
            Every image and mask is resized to it once before training.
        epochs: Passes over the images (>= 1).
        batch_size: Images per optimiser step (>= 1).
        lr: AdamW learning rate (> 0).
        weight_decay: AdamW weight decay (>= 0).
        grad_clip: Maximal global gradient norm (``torch.nn.utils.clip_grad_norm_``); ``None``
            or 0 disables clipping.
        scales: Multi-scale training rates: every batch is trained once at each rate, resized to
            :func:`scaled_size` ``(size, rate)`` (one optimiser step per rate, as in HSNet and
            PraNet). ``(1.0,)`` trains at ``size`` only.
        augment: Random flips, 90-degree rotations, scale/shift and colour jitter
            (:func:`~bow_gym.segmenters.augment_pair`) on every sample of every epoch.
        pretrained: Start from ImageNet encoder weights from the timm hub (``"hsnet"`` only;
            needs internet or a warm hub cache). Ignored when ``checkpoint`` is given.
        checkpoint: Local encoder weights file (a ``pvt_v2_b2`` state dict, ``.pth``/``.bin``/
            ``.safetensors``, timm or original PVTv2 key names), loaded instead of the hub's
            (``"hsnet"`` only).
        width: Channels of the first LightSegmenter stage (doubled per level); ignored by HSNet.
        lr_schedule: ``"cosine"``: decays the learning rate to 0 over all optimiser steps
            (short runs from scratch converge better); ``"constant"``: HSNet's published recipe.
        seed: Seeds the network initialisation, the image order, the augmentations and dropout.
        device: ``"auto"`` (CUDA when available, else CPU), ``"cpu"``, ``"cuda"`` or
            ``"cuda:<index>"``.
        progress: Show tqdm progress bars.
        num_threads: Torch CPU threads while training (``None`` leaves torch's setting); the
            previous value is restored afterwards.
    """

    name: str = "light"
    size: int = 128
    epochs: int = 6
    batch_size: int = 8
    lr: float = 1e-3
    weight_decay: float = 1e-4
    grad_clip: float | None = 1.0
    scales: tuple[float, ...] = (1.0,)
    augment: bool = True
    pretrained: bool = False
    checkpoint: str | None = None
    width: int = 16
    lr_schedule: str = "cosine"
    seed: int = 0
    device: str = "auto"
    progress: bool = False
    num_threads: int | None = None

    def __post_init__(self) -> None:
        if self.name not in SEGMENTER_NAMES:
            raise ValueError(
                f"name must be one of {', '.join(map(repr, SEGMENTER_NAMES))}, got {self.name!r}")
        if not (_is_int(self.size) and self.size > 0 and self.size % SIZE_MULTIPLE == 0):
            raise ValueError(
                f"size must be a positive multiple of {SIZE_MULTIPLE}, got {self.size!r}")
        for field in ("epochs", "batch_size", "width"):
            v = getattr(self, field)
            if not (_is_int(v) and v >= 1):
                raise ValueError(f"{field} must be an int >= 1, got {v!r}")
        if not (_finite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a finite number > 0, got {self.lr!r}")
        if not (_finite(self.weight_decay) and self.weight_decay >= 0):
            raise ValueError(f"weight_decay must be a finite number >= 0, got {self.weight_decay!r}")
        if self.grad_clip is not None and not (_finite(self.grad_clip) and self.grad_clip >= 0):
            raise ValueError(f"grad_clip must be a finite number >= 0 or None, got {self.grad_clip!r}")
        # JSON round trips (and tyro) give lists; keep a hashable tuple.
        if isinstance(self.scales, int | float) and not isinstance(self.scales, bool):
            raise ValueError(f"scales must be a sequence of rates such as (1.0,), got {self.scales!r}")
        try:
            self.scales = tuple(float(r) for r in self.scales)
        except (TypeError, ValueError):
            raise ValueError(f"scales must be a sequence of positive rates, got {self.scales!r}") from None
        if not self.scales or not all(math.isfinite(r) and r > 0 for r in self.scales):
            raise ValueError(f"scales must be a non-empty sequence of positive rates, got {self.scales!r}")
        for rate in self.scales:
            if scaled_size(self.size, rate) < SIZE_MULTIPLE:
                raise ValueError(
                    f"scale {rate} of size {self.size} rounds to a side below {SIZE_MULTIPLE} px; "
                    "use a larger size or rate")
        if self.lr_schedule not in _SCHEDULES:
            raise ValueError(
                f"lr_schedule must be one of {', '.join(map(repr, _SCHEDULES))}, got {self.lr_schedule!r}")
        if not _is_int(self.seed):
            raise ValueError(f"seed must be an int, got {self.seed!r}")
        _check_device_name(self.device)
        if self.num_threads is not None and not (_is_int(self.num_threads) and self.num_threads >= 1):
            raise ValueError(f"num_threads must be an int >= 1 or None, got {self.num_threads!r}")
        if self.name == "light" and (self.pretrained or self.checkpoint is not None):
            raise ValueError(
                "the 'light' segmenter has no pretrained weights: pretrained must be False and "
                "checkpoint None (use name='hsnet' for a pretrained encoder)")
        if self.checkpoint is not None:
            self.checkpoint = str(self.checkpoint)

    def to_json(self) -> str:
        """The configuration as a JSON object (what checkpoints store)."""
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> SegmenterConfig:
        """Inverse of :meth:`to_json`; unknown keys are an error (a newer file format)."""
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError(f"a SegmenterConfig JSON must be an object, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown SegmenterConfig fields: {', '.join(unknown)}")
        return cls(**data)


#: Named starting points; :func:`preset` copies one with overrides.
#:
#: * ``"light"``: the CPU default. A 16-channel U-Net (1.0 M parameters) at 128 px trained from
#:   scratch: 6 epochs, batch 8, AdamW 1e-3 with cosine decay, one scale; a couple of minutes
#:   for 1000 images on two CPU cores (timings and Dice: see docs/multi-round.md).
#: * ``"hsnet"``: the published HSNet recipe (Zhang et al. 2022, github.com/baiboat/HSNet
#:   ``Train.py``): ImageNet PVTv2-B2, 352 px, rates 0.75/1/1.25, AdamW lr 5e-5 and weight decay
#:   1e-4 at a constant rate (its step decay only starts at epoch 200), 100 epochs (the script's
#:   default; its loop runs epochs 1..99), gradient clip 0.5, batch 16 (the script's default is 8).
#:   The released code clamps each gradient *element* to +-0.5; here 0.5 bounds the global norm.
#:   Meant for a GPU: on two CPU cores every 352 px image takes seconds forward and backward.
SEGMENTER_PRESETS: dict[str, SegmenterConfig] = {
    "light": SegmenterConfig(),
    "hsnet": SegmenterConfig(
        name="hsnet", size=352, epochs=100, batch_size=16, lr=5e-5, weight_decay=1e-4,
        grad_clip=0.5, scales=(0.75, 1.0, 1.25), augment=True, pretrained=True,
        lr_schedule="constant"),
}


def preset(name: str, **overrides: Any) -> SegmenterConfig:
    """A copy of ``SEGMENTER_PRESETS[name]`` with fields replaced (and validated again).

    Example:
        >>> preset("hsnet", checkpoint="pvt_v2_b2.pth", epochs=20).lr
        5e-05

    Raises:
        ValueError: Unknown preset name (the message lists them), or an invalid value.
        TypeError: An override that is not a :class:`SegmenterConfig` field.
    """
    if name not in SEGMENTER_PRESETS:
        raise ValueError(f"unknown preset {name!r}; valid names: {', '.join(sorted(SEGMENTER_PRESETS))}")
    known = {f.name for f in dataclasses.fields(SegmenterConfig)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise TypeError(f"not SegmenterConfig fields: {', '.join(unknown)}; valid: {', '.join(sorted(known))}")
    return dataclasses.replace(SEGMENTER_PRESETS[name], **overrides)


def resolve_device(device: str = "auto") -> str:
    """The torch device string to run on.

    Args:
        device: ``"auto"`` (``"cuda"`` when available, else ``"cpu"``), ``"cpu"``, ``"cuda"`` or
            ``"cuda:<index>"``.

    Raises:
        ValueError: Not one of those names.
        RuntimeError: CUDA was asked for but is not available.
    """
    import torch

    _check_device_name(device)
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise RuntimeError(f"device={device!r} but CUDA is not available; use 'cpu' or 'auto'")
        if ":" in device and int(device[5:]) >= torch.cuda.device_count():
            raise RuntimeError(
                f"device={device!r} but only {torch.cuda.device_count()} CUDA device(s) exist")
    return device
