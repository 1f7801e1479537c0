"""The structure loss of PraNet and HSNet: boundary-weighted BCE plus weighted IoU."""

from __future__ import annotations

import torch
import torch.nn.functional as F

#: Side of the box filter that finds the region around the mask boundary (PraNet's 31 x 31).
BOUNDARY_KERNEL = 31


def _box_mean(x: torch.Tensor, k: int) -> torch.Tensor:
    # Equals F.avg_pool2d(x, k, stride=1, padding=k // 2) (zero padding counted, as by default),
    # computed as two 1-D passes: O(k) instead of O(k^2) per pixel, which matters on a CPU.
    p = k // 2
    x = F.avg_pool2d(x, (k, 1), stride=1, padding=(p, 0))
    return F.avg_pool2d(x, (1, k), stride=1, padding=(0, p))


def structure_weight(mask: torch.Tensor) -> torch.Tensor:
    """Pixel weights ``1 + 5 * |avg_pool(mask, 31, stride 1, pad 15) - mask|``.

    1 where the 31 x 31 neighbourhood is uniform, up to 6 near the boundary (and at the image
    border, whose zero padding counts as background, as in the original).

    Args:
        mask: ``(B, 1, H, W)`` float target in ``[0, 1]``.
    """
    return 1.0 + 5.0 * torch.abs(_box_mean(mask, BOUNDARY_KERNEL) - mask)


def structure_loss(logits: torch.Tensor, mask: torch.Tensor,
                   pixel_weight: torch.Tensor | None = None, *, weighted_bce: bool = True
                   ) -> torch.Tensor:
    """Weighted BCE + weighted IoU loss (PraNet, Fan et al. 2020; used by HSNet), batch mean.

    Per image, with ``w = structure_weight(mask)`` and ``p = sigmoid(logits)``::

        wbce = sum(w * bce(logits, mask)) / sum(w)
        wiou = 1 - (sum(w * p * mask) + 1) / (sum(w * (p + mask)) - sum(w * p * mask) + 1)

    The released code passes ``reduce='none'`` to ``binary_cross_entropy_with_logits``, a truthy
    legacy flag that makes its BCE term the plain unweighted mean (``weighted_bce=False``
    reproduces it); by default this is the weighted BCE the papers describe.

    ``pixel_weight`` multiplies ``w`` in both terms: how much each pixel's label is trusted (for
    pseudo-masks, 0 ignores a pixel whose label nobody verified). An image whose weights are all
    0 contributes 0 to the batch mean.

    Args:
        logits: ``(B, 1, H, W)`` raw network outputs.
        mask: ``(B, 1, H, W)`` target in ``[0, 1]`` (soft values allowed, e.g. after resizing).
        pixel_weight: Optional ``(B, 1, H, W)`` non-negative trust per pixel.
        weighted_bce: Weight the BCE term by ``w``; ``False`` gives the plain mean BCE.

    Returns:
        Scalar tensor: mean over the batch of ``wbce + wiou``.

    Raises:
        ValueError: The shapes differ or are not ``(B, 1, H, W)``.
    """
    if logits.shape != mask.shape or logits.ndim != 4 or logits.shape[1] != 1:
        raise ValueError(
            f"logits and mask must both be (B, 1, H, W), got {tuple(logits.shape)} and "
            f"{tuple(mask.shape)}")
    mask = mask.to(logits.dtype)
    weight = structure_weight(mask)
    if pixel_weight is not None:
        if pixel_weight.shape != mask.shape:
            raise ValueError(f"pixel_weight must have the mask's shape {tuple(mask.shape)}, got "
                             f"{tuple(pixel_weight.shape)}")
        weight = weight * pixel_weight.to(logits.dtype)
    bce = F.binary_cross_entropy_with_logits(logits, mask, reduction="none")
    total = weight.sum(dim=(2, 3))
    if weighted_bce:
        wbce = (weight * bce).sum(dim=(2, 3)) / total.clamp_min(1e-6)
    elif pixel_weight is not None:
        pw = pixel_weight.to(logits.dtype)
        wbce = (pw * bce).sum(dim=(2, 3)) / pw.sum(dim=(2, 3)).clamp_min(1e-6)
    else:
        wbce = bce.mean(dim=(2, 3))
    prob = torch.sigmoid(logits)
    inter = (prob * mask * weight).sum(dim=(2, 3))
    union = ((prob + mask) * weight).sum(dim=(2, 3))
    wiou = 1.0 - (inter + 1.0) / (union - inter + 1.0)
    if pixel_weight is not None:
        wiou = torch.where(total > 0, wiou, torch.zeros_like(wiou))
    return (wbce + wiou).mean()
