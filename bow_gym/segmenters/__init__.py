"""Segmentation networks trained round by round on pseudo-masks.

Each round of the multi-round pipeline trains a segmenter on the masks the previous round
produced and uses its predictions as the next round's starting masks. Two networks:

* ``"light"`` (:class:`LightSegmenter`): a 1 M-parameter U-Net trained from scratch; the CPU
  default. Its preset (128 px, 6 epochs, batch 8) trains on 1000 images in about two minutes on
  two CPU cores.
* ``"hsnet"`` (:class:`HSNet`): HSNet (Zhang et al. 2022) on an ImageNet PVTv2-B2 encoder
  (29.3 M parameters, 24.8 M of them the encoder's), with two presets: ``"hsnet_released"`` (what
  the authors' training script does) and ``"hsnet"`` (the recipe as written); 352 px,
  multi-scale, about 100 epochs; meant for a GPU.

:func:`train_segmenter` accepts either kind of output (a logit map, or a list of side outputs
whose structure losses are summed); :func:`predict_probabilities` uses the eval-mode map.

Example:
    >>> from bow_gym.segmenters import (build_segmenter, predict_probabilities, preset,
    ...                                 save_segmenter, train_segmenter)
    >>> config = preset("light", epochs=2)  # doctest: +SKIP
    >>> model = build_segmenter(config)  # doctest: +SKIP
    >>> train_segmenter(model, images, pseudo_masks, config)["loss"]  # doctest: +SKIP
    >>> probs = predict_probabilities(model, images, size=config.size)  # doctest: +SKIP
    >>> save_segmenter(model, "round1.safetensors", config)  # doctest: +SKIP
"""

from __future__ import annotations

from bow_gym.segmenters.augment import augment_pair
from bow_gym.segmenters.checkpoint import (
    SEGMENTER_FORMAT,
    load_segmenter,
    read_segmenter_metadata,
    save_segmenter,
)
from bow_gym.segmenters.config import (
    SEGMENTER_PRESETS,
    SegmenterConfig,
    preset,
    resolve_device,
    scaled_size,
)
from bow_gym.segmenters.hsnet import HSNet
from bow_gym.segmenters.light import LightSegmenter
from bow_gym.segmenters.losses import structure_loss, structure_weight
from bow_gym.segmenters.registry import (
    SEGMENTERS,
    build_segmenter,
    create_segmenter,
    list_segmenters,
)
from bow_gym.segmenters.training import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    predict_probabilities,
    segmentation_loss,
    train_segmenter,
)

__all__ = [
    "HSNet",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "LightSegmenter",
    "SEGMENTERS",
    "SEGMENTER_FORMAT",
    "SEGMENTER_PRESETS",
    "SegmenterConfig",
    "augment_pair",
    "build_segmenter",
    "create_segmenter",
    "list_segmenters",
    "load_segmenter",
    "predict_probabilities",
    "preset",
    "read_segmenter_metadata",
    "resolve_device",
    "save_segmenter",
    "scaled_size",
    "segmentation_loss",
    "structure_loss",
    "structure_weight",
    "train_segmenter",
]
