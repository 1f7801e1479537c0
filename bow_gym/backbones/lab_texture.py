"""A weight-free backbone: colour and texture statistics per patch, offline and fast.

What it computes, for an image resized to ``(grid * cell) x (grid * cell)`` pixels:

1. Per-pixel channels: CIELAB ``L``, ``a``, ``b`` (perceptual colour), gradient magnitude of ``L``
   (edges, vessels, hairs) and local standard deviation of ``L`` (texture, speckle).
2. Per-patch pooling: the mean of each channel over the patch's cell, and the same means over a
   Gaussian neighbourhood of about three patches (context, so that a patch's feature also says what
   surrounds it, as a ViT's does).
3. Per-image standardisation of each statistic (z-score over the patches of this image), so
   similarities adapt to the image's own contrast, and weights per group (colour counts most).
4. The feature is ``[scale * z, 1]`` (before L2 normalisation). The constant last component makes
   cosine similarity a smooth function of the descriptor distance: patches with near-identical
   statistics have similarity close to 1, patches ``~1/scale`` standard deviations apart fall below
   0.8 (the method's default threshold), and two patches that both lie far from the image's typical
   look in the same direction (e.g. two lesion patches) stay similar.
5. The patch position, weighted by ``position_weight``, which makes propagation prefer nearby
   patches, as lesions are compact.

The defaults (``scale=1.0``, ``position_weight=3.0``) were chosen by ground-truth-guided clicking
on 60 synthetic images and the first 60 Kvasir-SEG images: the position weight mattered much, the
scale little (see docs/backbones.md).

It has no weights of its own. What the method's adaptation stage trains on it is a small head on
top of the descriptors (:mod:`bow_gym.backbones.head`, the CPU stand-in for LoRA on DINOv2):
with a head attached, features are the head's output and ``adapter_id`` (part of the cache key)
names its weights. LoRA itself refuses it.
"""

from __future__ import annotations

import cv2
import numpy as np

from .base import Backbone

_GROUP_WEIGHTS = {"colour": 1.0, "colour_ctx": 0.7, "texture": 0.5, "texture_ctx": 0.35}


class LabTextureBackbone(Backbone):
    """Weight-free CIELAB colour + texture patch features (see the module docstring).

    Args:
        grid: Patches per side (``grid x grid`` features).
        cell: Pixels per patch side at which statistics are computed.
        scale: Sharpness of similarity (larger selects fewer patches at a given threshold).
        position_weight: Weight of the normalised patch coordinates (0 disables).
    """

    #: No LoRA (no weights); adapted through a feature head (:mod:`bow_gym.backbones.head`).
    adaptable = False

    def __init__(self, grid: int = 16, cell: int = 8, scale: float = 1.0,
                 position_weight: float = 3.0):
        if int(grid) < 1 or int(cell) < 2:
            raise ValueError(f"grid must be >= 1 and cell >= 2, got grid={grid!r}, cell={cell!r}")
        if not scale > 0:
            raise ValueError(f"scale must be > 0, got {scale!r}")
        self.name = "lab_texture"
        self.grid = (int(grid), int(grid))
        self.cell = int(cell)
        self.scale = float(scale)
        self.position_weight = float(position_weight)
        self.dim = 3 + 3 + 2 + 2 + 2 + 1
        self.head = None  # a HeadHandle once adapted (bow_gym.backbones.head)
        self.adapter_id: str | None = None

    @property
    def base_cache_key(self) -> str:
        """The cache key of the descriptors without any head."""
        return (f"lab_texture-v1-g{self.grid[0]}-c{self.cell}-s{self.scale:g}"
                f"-p{self.position_weight:g}")

    @property
    def cache_key(self) -> str:
        base = self.base_cache_key
        return base if self.adapter_id is None else f"{base}-{self.adapter_id}"

    def _extract(self, images: list[np.ndarray]) -> np.ndarray:
        desc = self.base_descriptors(images)
        if self.head is None:
            return desc
        import torch

        from bow_gym.backbones.head import image_tensor

        model = self.head.model
        b, g0, g1, d = desc.shape
        with torch.no_grad():
            x = torch.from_numpy(desc.reshape(b, g0 * g1, d))
            img = image_tensor(self.resized(images)) if model.cnn is not None else None
            out = model(x, img).numpy()
        return out.reshape(b, g0, g1, d)

    def resized(self, images: list[np.ndarray]) -> np.ndarray:
        """The images as the descriptors see them: ``(B, grid * cell, grid * cell, 3)`` uint8."""
        side = self.grid[0] * self.cell
        out = np.empty((len(images), side, side, 3), np.uint8)
        for i, image in enumerate(images):
            interp = cv2.INTER_AREA if min(image.shape[:2]) >= side else cv2.INTER_LINEAR
            out[i] = cv2.resize(image, (side, side), interpolation=interp)
        return out

    def base_descriptors(self, images: list[np.ndarray]) -> np.ndarray:
        """``(B, Hp, Wp, D)`` float32 descriptors before any head and L2 normalisation."""
        return np.stack([self._one(im) for im in self.resized(images)])

    def _one(self, image: np.ndarray) -> np.ndarray:
        g, c = self.grid[0], self.cell
        rgb = image.astype(np.float32) / 255.0
        lab = cv2.cvtColor(rgb, cv2.COLOR_RGB2Lab)
        lum = cv2.GaussianBlur(lab[..., 0], (0, 0), 1.0)
        gx = cv2.Sobel(lum, cv2.CV_32F, 1, 0, ksize=3)
        gy = cv2.Sobel(lum, cv2.CV_32F, 0, 1, ksize=3)
        grad = np.sqrt(gx * gx + gy * gy)
        mean = cv2.blur(lab[..., 0], (5, 5))
        local_std = np.sqrt(np.maximum(cv2.blur(lab[..., 0] ** 2, (5, 5)) - mean * mean, 0.0))
        pix = np.dstack([lab, grad, local_std])
        # Mean over each cell: reshape to (g, c, g, c, C) and average the cell axes.
        cells = pix.reshape(g, c, g, c, pix.shape[-1]).mean(axis=(1, 3))
        ctx = cv2.GaussianBlur(cells, (0, 0), sigmaX=1.0, borderType=cv2.BORDER_REFLECT)
        groups = {
            "colour": cells[..., :3], "colour_ctx": ctx[..., :3],
            "texture": cells[..., 3:], "texture_ctx": ctx[..., 3:],
        }
        parts = []
        for key, arr in groups.items():
            flat = arr.reshape(g * g, -1)
            z = (flat - flat.mean(axis=0)) / (flat.std(axis=0) + 1e-3)
            parts.append(z * _GROUP_WEIGHTS[key])
        yy, xx = np.mgrid[0:g, 0:g].astype(np.float32)
        pos = np.stack([yy.ravel(), xx.ravel()], axis=1) / max(g - 1, 1) * 2 - 1
        parts.append(pos * self.position_weight)
        feat = np.concatenate(parts, axis=1) * self.scale
        feat = np.concatenate([feat, np.ones((g * g, 1), np.float32)], axis=1)
        return feat.reshape(g, g, -1).astype(np.float32)
