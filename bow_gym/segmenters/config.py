"""Training settings of a segmenter, the presets, and device resolution.

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
_SCHEDULES = ("constant", "cosine", "multistep")
_CLIP_MODES = ("norm", "value")


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
        grad_clip: Gradient clipping threshold (see ``grad_clip_mode``); ``None`` or 0 disables
            clipping.
        grad_clip_mode: ``"norm"``: ``grad_clip`` bounds the global gradient norm
            (``torch.nn.utils.clip_grad_norm_``); ``"value"``: every gradient element is clamped
            to ``[-grad_clip, grad_clip]`` (``clip_grad_value_``, the released HSNet code's
            ``clip_gradient``).
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
            (short runs from scratch converge better); ``"constant"``; ``"multistep"``: ``lr``
            times ``lr_gamma`` to the power of the number of ``lr_milestones`` reached (torch's
            ``MultiStepLR``, per epoch).
        lr_milestones: ``"multistep"`` only: 1-based epochs from which the learning rate is
            multiplied by ``lr_gamma`` once more; ``(15, 30)`` with ``lr_gamma=0.5`` trains epochs
            1-14 at ``lr``, 15-29 at ``lr / 2`` and from 30 on at ``lr / 4``.
        lr_gamma: ``"multistep"`` only: the factor applied at each milestone, in ``(0, 1]``.
        weighted_bce: ``True``: the structure loss's BCE term is weighted by
            :func:`~bow_gym.segmenters.structure_weight` (the papers' definition); ``False``: the
            plain mean BCE, which is what the released PraNet/HSNet code computes (its legacy
            ``reduce='none'`` argument means "reduce"). The IoU term is weighted either way.
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
    lr_milestones: tuple[int, ...] = ()
    lr_gamma: float = 0.1
    grad_clip_mode: str = "norm"
    weighted_bce: bool = True
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
        if isinstance(self.lr_milestones, int | float | str):
            raise ValueError(f"lr_milestones must be a sequence of epochs such as (15, 30), got "
                             f"{self.lr_milestones!r}")
        self.lr_milestones = tuple(self.lr_milestones)  # JSON gives a list
        if not all(_is_int(m) and m >= 1 for m in self.lr_milestones) or list(
                self.lr_milestones) != sorted(set(self.lr_milestones)):
            raise ValueError(f"lr_milestones must be increasing epoch numbers >= 1, got "
                             f"{self.lr_milestones!r}")
        if (self.lr_schedule == "multistep") != bool(self.lr_milestones):
            raise ValueError(
                "lr_milestones go with lr_schedule='multistep' and it needs them: got "
                f"lr_schedule={self.lr_schedule!r} with lr_milestones={self.lr_milestones!r}")
        if not (_finite(self.lr_gamma) and 0 < self.lr_gamma <= 1):
            raise ValueError(f"lr_gamma must be a number in (0, 1], got {self.lr_gamma!r}")
        if self.grad_clip_mode not in _CLIP_MODES:
            raise ValueError(f"grad_clip_mode must be one of {', '.join(map(repr, _CLIP_MODES))}, "
                             f"got {self.grad_clip_mode!r}")
        if not isinstance(self.weighted_bce, bool):
            raise ValueError(f"weighted_bce must be True or False, got {self.weighted_bce!r}")
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
        """Inverse of :meth:`to_json`; unknown keys are an error (a newer file format).

        Fields missing from the text take their defaults, which keep the behaviour of the
        versions that did not have them (``grad_clip_mode="norm"``, ``weighted_bce=True``, no
        milestones), so configurations stored in older checkpoints read back unchanged.
        """
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
#:   for 1000 images on two CPU cores (timings and Dice: see docs/rounds.md).
#: * ``"hsnet_released"``: what the authors' released training script does (github.com/baiboat/
#:   HSNet ``Train.py`` and ``utils/``, HEAD 9d3986a, Train.py last changed in c455e78, 2023-07):
#:   ImageNet PVTv2-B2, 352 px, rates 0.75/1/1.25, AdamW weight decay 1e-4, batch 8 (its
#:   default), epochs 1..99 (``range(1, 100)``), lr 5e-5 halved before epochs 15 and 30
#:   (``adjust_lr(optimizer, 0.5)``), every gradient element clamped to +-0.5
#:   (``clip_gradient``), no augmentation (its loader compares the ``--augmentation`` default
#:   ``True`` with the string ``'True'``), plain mean BCE (``reduce='none'``). Not reproduced:
#:   its PIL resizing and soft (bilinearly resized, not thresholded) training masks, and its
#:   data order. The original experiments' configs use it.
#: * ``"hsnet"``: the recipe as written (the HSNet paper and the PraNet structure loss), as this
#:   package has trained HSNet from the start: the same network, sizes, rates, optimiser and lr
#:   5e-5, but 100 epochs, batch 16, a constant learning rate, the global gradient norm bounded
#:   by 0.5, flips/rotations/zoom/colour augmentation and the boundary-weighted BCE. Its
#:   constant lr is what the script did only from December 2022 (0f5c596: decay "every 200
#:   epochs"; a16f66f: also lr 1e-4) to July 2023; the first release (f1743d2, September 2022)
#:   and HEAD halve it at epochs 15 and 30.
#: Both HSNet presets are meant for a GPU: on two CPU cores every 352 px image takes seconds
#: forward and backward.
_HSNET_COMMON: dict[str, Any] = dict(
    name="hsnet", size=352, lr=5e-5, weight_decay=1e-4, grad_clip=0.5,
    scales=(0.75, 1.0, 1.25), pretrained=True)
SEGMENTER_PRESETS: dict[str, SegmenterConfig] = {
    "light": SegmenterConfig(),
    "hsnet": SegmenterConfig(
        **_HSNET_COMMON, epochs=100, batch_size=16, augment=True, lr_schedule="constant",
        grad_clip_mode="norm", weighted_bce=True),
    "hsnet_released": SegmenterConfig(
        **_HSNET_COMMON, epochs=99, batch_size=8, augment=False, lr_schedule="multistep",
        lr_milestones=(15, 30), lr_gamma=0.5, grad_clip_mode="value", weighted_bce=False),
}


def preset(name: str, **overrides: Any) -> SegmenterConfig:
    """A copy of ``SEGMENTER_PRESETS[name]`` with fields replaced (and validated again).

    Example:
        >>> preset("hsnet_released", checkpoint="pvt_v2_b2.pth", epochs=20).lr
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
