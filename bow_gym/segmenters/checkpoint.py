"""Saving and loading trained segmenters: one safetensors file with the config in its metadata."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bow_gym.io_utils import atomic_path
from bow_gym.segmenters.config import SegmenterConfig, resolve_device
from bow_gym.segmenters.registry import create_segmenter

#: ``format`` entry of the safetensors metadata written by :func:`save_segmenter`.
SEGMENTER_FORMAT = "bow_gym.segmenter"
#: Version of that format; bumped if the layout ever changes.
SEGMENTER_FORMAT_VERSION = "1"


def save_segmenter(model: nn.Module, path: str | os.PathLike, config: SegmenterConfig) -> None:
    """Writes the model's weights and buffers atomically to a safetensors file.

    The metadata holds ``format``/``version``, the registry ``model`` name, its constructor
    arguments (``model_kwargs``, JSON) and ``config`` (:meth:`SegmenterConfig.to_json`), so
    :func:`load_segmenter` rebuilds the same architecture without downloading anything.

    Args:
        model: A network from :func:`~bow_gym.segmenters.create_segmenter`.
        path: Destination file (parent folders are created).
        config: The settings it was trained with.

    Raises:
        ValueError: ``model`` is not a registered segmenter, or ``config.name`` names another.
    """
    name = getattr(model, "segmenter_name", None)
    if name is None or not callable(getattr(model, "init_kwargs", None)):
        raise ValueError(f"{type(model).__name__} is not a bow_gym segmenter (no segmenter_name "
                         "/ init_kwargs); build it with create_segmenter")
    if name != config.name:
        raise ValueError(f"config.name is {config.name!r} but the model is a {name!r} segmenter")
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    metadata = {
        "format": SEGMENTER_FORMAT,
        "version": SEGMENTER_FORMAT_VERSION,
        "model": name,
        "model_kwargs": json.dumps(model.init_kwargs(), sort_keys=True),
        "config": config.to_json(),
    }
    from safetensors.torch import save_file

    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata=metadata)


def read_segmenter_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The metadata of a file written by :func:`save_segmenter` (no tensors are read).

    Raises:
        FileNotFoundError: No such file.
        ValueError: The file is not a safetensors file, or not a bow_gym segmenter.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"segmenter checkpoint not found: {str(path)!r}")
    from bow_gym.io_utils import read_checked_metadata

    return read_checked_metadata(path, fmt=SEGMENTER_FORMAT, version=SEGMENTER_FORMAT_VERSION,
                                 what="segmenter checkpoint", version_key="version")


def load_segmenter(path: str | os.PathLike, device: str = "cpu"
                   ) -> tuple[nn.Module, SegmenterConfig]:
    """Rebuilds a segmenter saved by :func:`save_segmenter`.

    The architecture is built without pretrained weights (the file holds all of them), so
    loading works offline.

    Args:
        path: File written by :func:`save_segmenter`.
        device: Where to put the model (``"cpu"``, ``"cuda"``, ``"auto"``, ...).

    Returns:
        ``(model, config)``: the model in eval mode on ``device``, and its training settings.

    Raises:
        FileNotFoundError: No such file.
        ValueError: Not a segmenter checkpoint, or its tensors do not fit the architecture.
    """
    metadata = read_segmenter_metadata(path)
    try:
        config = SegmenterConfig.from_json(metadata["config"])
        kwargs: dict[str, Any] = json.loads(metadata["model_kwargs"])
        name = metadata["model"]
    except (KeyError, ValueError, TypeError) as e:
        raise ValueError(f"{str(path)!r} has malformed segmenter metadata: {e}") from e
    try:
        model = create_segmenter(name, pretrained=False, checkpoint=None, **kwargs)
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{str(path)!r}: its metadata model={name!r}, model_kwargs={kwargs} "
                         f"do not build a segmenter: {e}") from e
    from safetensors.torch import load_file

    from bow_gym.io_utils import state_mismatches

    try:
        state = load_file(str(path), device="cpu")
    except Exception as e:  # the header was read: the tensors are damaged
        raise ValueError(f"{str(path)!r}: the segmenter's tensors cannot be read ({e}); "
                         "the file is damaged") from e
    problems = state_mismatches(model.state_dict(), state)
    if problems:
        raise ValueError(f"{str(path)!r} does not fit the {name!r} architecture its metadata "
                         f"describes (model_kwargs={kwargs}): {'; '.join(problems[:3])}; a "
                         "damaged file, or one written by another version")
    model.load_state_dict(state, strict=True)
    model.to(torch.device(resolve_device(device)))
    model.eval()
    return model, config
