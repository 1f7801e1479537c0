"""The backbone interface: an image in, an L2-normalised ``(Hp, Wp, D)`` patch-feature grid out."""

from __future__ import annotations

import abc

import numpy as np


class Backbone(abc.ABC):
    """Computes one feature vector per patch of a fixed grid.

    Attributes:
        name: Registry name (e.g. ``"dinov2_vits14"``, ``"lab_texture"``).
        grid: ``(Hp, Wp)``, the patch grid every image is mapped to, whatever its size.
        dim: Feature dimension ``D``.
    """

    name: str
    grid: tuple[int, int]
    dim: int
    #: Whether :mod:`bow_gym` may adapt this backbone (LoRA); weight-free backbones say ``False``.
    adaptable: bool = False

    @property
    @abc.abstractmethod
    def cache_key(self) -> str:
        """A string that changes whenever features could change.

        It names the backbone, its weights (hub tag, checkpoint content hash or random-init seed),
        its input size and any adapter, so cached features are never reused across them. Must be
        safe as a directory name.
        """

    @abc.abstractmethod
    def _extract(self, images: list[np.ndarray]) -> np.ndarray:
        """Features of a batch, ``(B, Hp, Wp, D)`` float32, not necessarily normalised."""

    def extract(self, images: list[np.ndarray] | np.ndarray) -> np.ndarray:
        """Patch features of RGB uint8 images (any sizes), L2-normalised along the last axis.

        Args:
            images: One ``(H, W, 3)`` uint8 image or a list of them.

        Returns:
            ``(Hp, Wp, D)`` float32 for one image, ``(B, Hp, Wp, D)`` for a list.
        """
        single = isinstance(images, np.ndarray) and images.ndim == 3
        batch = [images] if single else list(images)
        for i, im in enumerate(batch):
            if not (isinstance(im, np.ndarray) and im.ndim == 3 and im.shape[2] == 3
                    and im.dtype == np.uint8):
                got = getattr(im, "shape", type(im).__name__), getattr(im, "dtype", "")
                raise ValueError(f"{self.name}: image {i} must be (H, W, 3) uint8, got {got}")
        feats = np.asarray(self._extract(batch), dtype=np.float32)
        feats = l2_normalize(feats)
        return feats[0] if single else feats

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, grid={self.grid}, dim={self.dim})"


def l2_normalize(x: np.ndarray, axis: int = -1, eps: float = 1e-8) -> np.ndarray:
    """``x`` divided by its L2 norm along ``axis`` (zero vectors stay zero)."""
    norm = np.linalg.norm(x, axis=axis, keepdims=True)
    return (x / np.maximum(norm, eps)).astype(np.float32, copy=False)
