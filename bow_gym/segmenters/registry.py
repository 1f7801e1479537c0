"""Segmentation networks by name."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bow_gym.segmenters.config import SegmenterConfig


def _light(*, pretrained: bool = False, checkpoint: str | Path | None = None,
           width: int = 16, **kwargs: Any) -> nn.Module:
    from bow_gym.segmenters.light import LightSegmenter

    if pretrained or checkpoint is not None:
        raise ValueError("the 'light' segmenter has no pretrained weights: use pretrained=False "
                         "and checkpoint=None (or name='hsnet')")
    return LightSegmenter(width=width, **kwargs)


def _hsnet(*, pretrained: bool = False, checkpoint: str | Path | None = None,
           width: int | None = None, **kwargs: Any) -> nn.Module:
    # width belongs to the light network; accepted and ignored so one call builds either.
    from bow_gym.segmenters.hsnet import HSNet

    return HSNet(pretrained=pretrained, checkpoint=checkpoint, **kwargs)


#: Registry name -> factory taking ``pretrained``, ``checkpoint``, ``width`` and model kwargs.
SEGMENTERS: dict[str, Callable[..., nn.Module]] = {"light": _light, "hsnet": _hsnet}


def list_segmenters() -> list[str]:
    """Sorted names accepted by :func:`create_segmenter`."""
    return sorted(SEGMENTERS)


def create_segmenter(
    name: str,
    *,
    pretrained: bool = False,
    checkpoint: str | Path | None = None,
    width: int = 16,
    seed: int | None = 0,
    **kwargs: Any,
) -> nn.Module:
    """Builds a segmentation network by name.

    Every network maps ``(B, 3, H, W)`` ImageNet-normalised images (sides multiples of 32) to
    logits: in eval mode one ``(B, 1, H, W)`` map; in training mode HSNet returns a list of
    such maps (deep supervision), the light network a single map. The model carries its registry
    name as ``segmenter_name`` and its constructor arguments as ``init_kwargs()``.

    Args:
        name: ``"light"`` or ``"hsnet"`` (:func:`list_segmenters`).
        pretrained: HSNet: ImageNet encoder weights from the timm hub. ``"light"`` has none.
        checkpoint: HSNet: local encoder weights file, used instead of the hub.
        width: Stem channels of ``"light"``; ignored by HSNet.
        seed: Seeds the random initialisation (the caller's CPU RNG state is left alone);
            ``None`` uses the global torch RNG.
        **kwargs: Passed to the network's constructor.

    Raises:
        ValueError: Unknown name (the message lists the valid ones), or weights for ``"light"``.
        FileNotFoundError: ``checkpoint`` does not exist.
        RuntimeError: Encoder weights could not be loaded (see :class:`HSNet`).
    """
    factory = SEGMENTERS.get(name)
    if factory is None:
        raise ValueError(f"unknown segmenter {name!r}; valid names: {', '.join(list_segmenters())}")
    if seed is None:
        return factory(pretrained=pretrained, checkpoint=checkpoint, width=width, **kwargs)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        return factory(pretrained=pretrained, checkpoint=checkpoint, width=width, **kwargs)


def build_segmenter(config: SegmenterConfig) -> nn.Module:
    """The untrained network ``config`` describes (name, weights, width, seeded with its seed)."""
    return create_segmenter(config.name, pretrained=config.pretrained,
                            checkpoint=config.checkpoint, width=config.width, seed=config.seed)
