"""LightSegmenter: a small U-Net that trains from scratch on a CPU in minutes."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


def _conv_bn_relu(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class _Down(nn.Sequential):
    """Strided conv (halves the side) then a conv, both conv-BN-ReLU."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(_conv_bn_relu(cin, cout, stride=2), _conv_bn_relu(cout, cout))


class _Up(nn.Module):
    """Bilinear x2, concatenate the skip, conv-BN-ReLU."""

    def __init__(self, cin: int, cskip: int, cout: int) -> None:
        super().__init__()
        self.conv = _conv_bn_relu(cin + cskip, cout)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
        return self.conv(torch.cat([x, skip], dim=1))


class LightSegmenter(nn.Module):
    """A U-Net-like CNN (BatchNorm, ReLU) mapping ImageNet-normalised RGB to one logit map.

    The stem works at half resolution (a strided conv), then four levels at 1/4 .. 1/32 with
    ``width * (2, 4, 8, 8)`` channels, and a decoder with skip connections back to 1/2; the logits
    are upsampled bilinearly to the input size. Working at half resolution is what makes a
    training epoch over 1000 images at 128 px take seconds on two CPU cores; the loss is still
    computed at full resolution, and lesion boundaries are smooth at that scale.

    Args:
        width: Channels of the stem (default 16: 1.03 M parameters; the count grows as
            ``width ** 2``).
        in_chans: Input channels.

    Input ``(B, in_chans, H, W)`` with ``H`` and ``W`` multiples of 32; output ``(B, 1, H, W)``
    logits in both training and eval mode.
    """

    segmenter_name = "light"

    def __init__(self, width: int = 16, in_chans: int = 3) -> None:
        super().__init__()
        if isinstance(width, bool) or not isinstance(width, int) or width < 1:
            raise ValueError(f"width must be an int >= 1, got {width!r}")
        c = [width, 2 * width, 4 * width, 8 * width, 8 * width]
        self.width, self.in_chans = width, in_chans
        self.stem = nn.Sequential(_conv_bn_relu(in_chans, c[0], stride=2), _conv_bn_relu(c[0], c[0]))
        self.downs = nn.ModuleList(_Down(c[i], c[i + 1]) for i in range(4))
        self.ups = nn.ModuleList(_Up(c[i + 1], c[i], c[i]) for i in reversed(range(4)))
        self.head = nn.Conv2d(c[0], 1, 1)

    def init_kwargs(self) -> dict[str, Any]:
        """Constructor arguments that rebuild this architecture (stored in checkpoints)."""
        return {"width": self.width, "in_chans": self.in_chans}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        skips = [self.stem(x)]
        for down in self.downs:
            skips.append(down(skips[-1]))
        y = skips.pop()
        for up in self.ups:
            y = up(y, skips.pop())
        return F.interpolate(self.head(y), size=size, mode="bilinear", align_corners=False)
