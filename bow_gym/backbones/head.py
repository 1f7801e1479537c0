"""A trainable feature head on the weight-free backbone: the CPU stand-in for LoRA on DINOv2.

The method adapts its foundation model to the data set between rounds (q/v LoRA on DINOv2,
trained with a triplet loss on pseudo-labelled patches; :mod:`bow_gym.adaptation`). The weight-free
:class:`~bow_gym.backbones.lab_texture.LabTextureBackbone` has no weights to adapt, so on a machine
without DINOv2 weights that half of the method could not be run or ablated. This module gives it
something to adapt, plugged in exactly where LoRA is:

* :class:`PatchHead` maps each patch's descriptor (and, with ``image_width > 0``, the output of a
  small CNN on the image at the patch's position) to a new feature through a residual MLP whose
  last layer starts at zero. A fresh head is an exact no-op, as a fresh LoRA adapter (``B = 0``)
  is: the adapted backbone starts from the base backbone's features.
* :func:`apply_head` attaches one to a backbone and returns a :class:`HeadHandle`; the backbone's
  ``adapter_id``, part of its feature-cache key, then names the head's weights, so cached
  features of different heads never mix (as for LoRA).
* :func:`save_head` / :func:`load_head`: one safetensors file whose metadata records the
  configuration and the base backbone (:attr:`~bow_gym.backbones.base.Backbone.cache_key`).
* Training is :func:`bow_gym.adaptation.adapt_backbone`, with the same triplet loss, sampling and
  pseudo-labels as LoRA's.

It is a stand-in, not a claim about DINOv2: a few thousand weights on colour and texture
statistics, not a foundation model. What it measures is whether adapting the features that
propagation compares, from the method's own pseudo-labels, helps the rounds.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

#: ``format`` entry of the safetensors metadata written by :func:`save_head`.
HEAD_FORMAT = "bow_gym.feature_head"
#: Version of that format.
HEAD_FORMAT_VERSION = "1"

_IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
_IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)


@dataclass(frozen=True)
class HeadConfig:
    """Shape of a :class:`PatchHead`.

    Attributes:
        hidden: Hidden units of each MLP layer (default 64).
        depth: Linear layers of the MLP, the zero-initialised output layer included (default 2).
        image_width: Channels of the optional CNN branch on the image (0, the default, disables
            it: the head then sees only the patch descriptors).
    """

    hidden: int = 64
    depth: int = 2
    image_width: int = 0

    def __post_init__(self) -> None:
        for name, low in (("hidden", 1), ("depth", 1), ("image_width", 0)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise ValueError(f"HeadConfig.{name} must be an int >= {low}, got {v!r}")

    def to_dict(self) -> dict[str, int]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> HeadConfig:
        unknown = sorted(set(d) - {"hidden", "depth", "image_width"})
        if unknown:
            raise ValueError(f"unknown HeadConfig fields {unknown}")
        return cls(**d)


def _conv(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True))


class PatchHead(nn.Module):
    """``feature = descriptor + MLP([descriptor, cnn(image) at the patch])`` per patch.

    Args:
        dim: Descriptor dimension ``D`` (input and output).
        grid: The patch grid ``(Hp, Wp)``; the CNN branch expects images of ``8 * grid`` pixels.
        config: Layer sizes.
    """

    def __init__(self, dim: int, grid: tuple[int, int], config: HeadConfig) -> None:
        super().__init__()
        self.dim, self.grid, self.config = dim, tuple(grid), config
        c = config.image_width
        # Three stride-2 stages: 8 pixels per patch, the weight-free backbone's cell.
        self.cnn = (nn.Sequential(_conv(3, c, 2), _conv(c, c, 1), _conv(c, 2 * c, 2),
                                  _conv(2 * c, 2 * c, 1), _conv(2 * c, 2 * c, 2))
                    if c else None)
        layers: list[nn.Module] = []
        width = dim + 2 * c
        for _ in range(config.depth - 1):
            layers += [nn.Linear(width, config.hidden), nn.ReLU(inplace=True)]
            width = config.hidden
        self.mlp = nn.Sequential(*layers)
        self.out = nn.Linear(width, dim)
        # Zero output layer: a fresh head returns its input unchanged (LoRA's B = 0).
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, desc: torch.Tensor, image: torch.Tensor | None = None) -> torch.Tensor:
        """``(B, P, D)`` descriptors (and ``(B, 3, 8 Hp, 8 Wp)`` normalised images) -> features."""
        x = desc
        if self.cnn is not None:
            if image is None:
                raise ValueError("this head has a CNN branch: pass the images")
            f = self.cnn(image).flatten(2).transpose(1, 2)
            x = torch.cat([desc, f], dim=-1)
        return desc + self.out(self.mlp(x))


def image_tensor(images: np.ndarray) -> torch.Tensor:
    """``(B, H, W, 3)`` uint8 -> ``(B, 3, H, W)`` ImageNet-normalised float32."""
    x = (images.astype(np.float32) / 255.0 - _IMAGENET_MEAN) / _IMAGENET_STD
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


class HeadHandle:
    """The head attached to one backbone: train, identify, save, remove.

    Attributes:
        model: The :class:`PatchHead`.
        backbone: The backbone it adapts.
        config: Its :class:`HeadConfig`.
        base_identity: The base backbone's cache key (what the head was trained on).
    """

    def __init__(self, model: PatchHead, backbone: Any, config: HeadConfig) -> None:
        self.model, self.backbone, self.config = model, backbone, config
        self.base_identity = backbone.base_cache_key

    def parameters(self) -> list[nn.Parameter]:
        return list(self.model.parameters())

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu().clone().contiguous()
                for k, v in self.model.state_dict().items()}

    def load_state_dict(self, tensors: dict[str, torch.Tensor], source: str = "state dict"
                        ) -> None:
        """Copies weights in; missing, extra or misshapen tensors raise ``ValueError``."""
        expected = self.model.state_dict()
        missing, extra = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
        if missing or extra:
            raise ValueError(f"{source}: head keys do not match: missing {missing[:4]}, "
                             f"unexpected {extra[:4]}")
        for k, v in expected.items():
            if tuple(tensors[k].shape) != tuple(v.shape):
                raise ValueError(f"{source}: {k} has shape {tuple(tensors[k].shape)}, this head "
                                 f"needs {tuple(v.shape)}")
        self.model.load_state_dict(tensors)
        self.refresh()

    @property
    def adapter_id(self) -> str:
        """``"head-<sha256[:16]>"`` of the base, the configuration and the weights."""
        h = hashlib.sha256()
        h.update(f"{HEAD_FORMAT}/{HEAD_FORMAT_VERSION}|{self.base_identity}|".encode())
        h.update(json.dumps(self.config.to_dict(), sort_keys=True).encode())
        for k, v in self.model.state_dict().items():
            h.update(f"|{k}{tuple(v.shape)}|".encode())
            h.update(v.detach().float().cpu().contiguous().numpy().tobytes())
        return f"head-{h.hexdigest()[:16]}"

    def refresh(self) -> str:
        """Recomputes :attr:`adapter_id` into ``backbone.adapter_id`` (call after training)."""
        aid = self.adapter_id
        self.backbone.adapter_id = aid
        return aid

    def train(self, mode: bool = True) -> HeadHandle:
        self.model.train(mode)
        return self

    def remove(self) -> None:
        """Detaches the head: the backbone computes its base features again."""
        self.backbone.head = None
        self.backbone.adapter_id = None

    def __repr__(self) -> str:
        return f"HeadHandle({self.config}, {self.num_parameters()} weights, {self.adapter_id})"


def supports_head(backbone: Any) -> bool:
    """Whether ``backbone`` can carry a :class:`PatchHead` (the weight-free backbone can)."""
    return hasattr(backbone, "head") and hasattr(backbone, "base_descriptors")


def get_head(backbone: Any) -> HeadHandle | None:
    """The head attached to ``backbone``, or ``None``."""
    return getattr(backbone, "head", None)


def apply_head(backbone: Any, config: HeadConfig | None = None, *, seed: int = 0) -> HeadHandle:
    """Attaches a fresh (no-op) head to ``backbone`` and returns its handle.

    Raises:
        TypeError: The backbone cannot carry a head (DINOv2 is adapted with LoRA instead).
        RuntimeError: It already carries one (``remove()`` it first).
    """
    if not supports_head(backbone):
        raise TypeError(f"{getattr(backbone, 'name', backbone)!r} cannot carry a feature head "
                        "(DINOv2 backbones are adapted with LoRA: bow_gym.backbones.lora)")
    if get_head(backbone) is not None:
        raise RuntimeError("the backbone already carries a feature head; remove() it first")
    config = config or HeadConfig()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        model = PatchHead(backbone.dim, tuple(backbone.grid), config)
    model.eval()
    handle = HeadHandle(model, backbone, config)
    backbone.head = handle
    handle.refresh()
    return handle


def save_head(backbone: Any, path: str | Path) -> Path:
    """Writes the backbone's head to a safetensors file, atomically."""
    from bow_gym.io_utils import save_tensors

    handle = get_head(backbone)
    if handle is None:
        raise ValueError("no feature head on this backbone: apply_head() or load_head() first")
    path = Path(path).expanduser()
    metadata = {"format": HEAD_FORMAT, "format_version": HEAD_FORMAT_VERSION,
                "config": json.dumps(handle.config.to_dict(), sort_keys=True),
                "base_model": handle.base_identity, "dim": str(backbone.dim),
                "grid": json.dumps(list(backbone.grid)), "adapter_id": handle.adapter_id}
    save_tensors(path, handle.state_dict(), metadata)
    return path


def read_head_metadata(path: str | Path) -> dict[str, str]:
    """The metadata of a head file (:func:`save_head`); ``ValueError`` for other files."""
    from bow_gym.io_utils import read_checked_metadata

    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"feature head file not found: {str(path)!r}")
    return read_checked_metadata(path, fmt=HEAD_FORMAT, version=HEAD_FORMAT_VERSION,
                                 what="feature head")


def load_head(backbone: Any, path: str | Path) -> HeadHandle:
    """Loads a head file onto ``backbone`` (replacing the weights of a head of the same shape).

    Raises:
        FileNotFoundError: No such file.
        ValueError: Not a head file, trained on another base backbone, or of another shape;
            the message names the file and what differs.
    """
    from safetensors.torch import load_file

    path = Path(path).expanduser()
    meta = read_head_metadata(path)
    config = HeadConfig.from_dict(json.loads(meta["config"]))
    if meta.get("base_model") != backbone.base_cache_key:
        raise ValueError(f"{path}: head was trained on {meta.get('base_model')!r}, this backbone "
                         f"is {backbone.base_cache_key!r}")
    handle = get_head(backbone)
    if handle is not None and handle.config != config:
        raise ValueError(f"{path}: head config {config} differs from the backbone's "
                         f"{handle.config}; remove() it first")
    created = handle is None
    if handle is None:
        handle = apply_head(backbone, config)
    try:
        handle.load_state_dict(load_file(str(path), device="cpu"), source=str(path))
    except Exception:
        if created:
            handle.remove()
        raise
    return handle
