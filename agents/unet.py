"""A small U-Net that maps an observation to ``(2, H, W)`` click logits (label x pixel)."""

from __future__ import annotations

import torch
from torch import nn

from agents.common import lazy_init_seed, seeded_lazy_init


def _block(c_in: int | None, c_out: int) -> nn.Sequential:
    first = (nn.Conv2d(c_in, c_out, 3, padding=1, bias=False) if c_in is not None else
             nn.LazyConv2d(c_out, 3, padding=1, bias=False))  # sized by the first input
    return nn.Sequential(
        first, nn.GroupNorm(4, c_out), nn.SiLU(),
        nn.Conv2d(c_out, c_out, 3, padding=1, bias=False), nn.GroupNorm(4, c_out), nn.SiLU(),
    )


class ClickUNet(nn.Module):
    """U-Net over a BetterWorseSeg observation.

    Input ``(B, C, H, W)`` uint8 (or float in [0, 255]; divided by ``input_scale``); two
    coordinate channels are appended (lesions are not uniformly placed, and a convolution alone
    cannot see where it is). Output
    ``(B, 2, H, W)`` logits whose flattened index is the env's action index, and, from the
    bottleneck, a scalar value estimate per image (used as a learned REINFORCE baseline).

    The last layer starts at zero, so an untrained policy clicks uniformly at random.

    Args:
        in_channels: Observation channels (4, or 5 with the clicks channel); ``None``: sized by
            the first input (a lazy first convolution).
        width: Channels of the first level (doubled at each of the ``depth`` levels).
        depth: Number of 2x down-samplings.
        downsample: The observation is average-pooled by this factor first and the logits are
            repeated back to full size: all pixels of an 8 x 8 patch cell propagate alike, so
            pixel-exact logits buy nothing and cost ``downsample**2`` times the compute.
        out_channels: Output maps (2 for click logits; other agents use the body for other maps).
        input_scale: The input is divided by this (255 for pixels; 1 for inputs already scaled).
    """

    def __init__(self, in_channels: int | None = 4, width: int = 16, depth: int = 3,
                 downsample: int = 2, out_channels: int = 2, input_scale: float = 255.0):
        super().__init__()
        self.downsample = int(downsample)
        self.input_scale = float(input_scale)
        chans = [width * 2**i for i in range(depth + 1)]
        self.down = nn.ModuleList()
        c = in_channels + 2 if in_channels is not None else None
        for ch in chans:
            self.down.append(_block(c, ch))
            c = ch
        self.up = nn.ModuleList()
        self.merge = nn.ModuleList()
        for ch_skip, ch_in in zip(reversed(chans[:-1]), reversed(chans[1:]), strict=True):
            self.up.append(nn.ConvTranspose2d(ch_in, ch_skip, 2, stride=2))
            self.merge.append(_block(2 * ch_skip, ch_skip))
        self.head = nn.Conv2d(chans[0], out_channels, 1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)
        self.value = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(chans[-1], 1))
        self.in_channels = in_channels
        # The lazy first convolution draws its weights at the first input, from this seed.
        self._lazy_seed = lazy_init_seed() if in_channels is None else 0

    @property
    def input_channels(self) -> int | None:
        """Channels of the input it reads (``None`` while a lazy first convolution is unsized)."""
        weight = self.down[0][0].weight
        return None if nn.parameter.is_lazy(weight) else int(weight.shape[1]) - 2

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with seeded_lazy_init(self.input_channels is None, self._lazy_seed):
            return self._forward(obs)

    def _forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = obs.float() / self.input_scale
        if self.downsample > 1:
            x = nn.functional.avg_pool2d(x, self.downsample)
        b, _, h, w = x.shape
        ys = torch.linspace(-1, 1, h, device=x.device).view(1, 1, h, 1).expand(b, 1, h, w)
        xs = torch.linspace(-1, 1, w, device=x.device).view(1, 1, 1, w).expand(b, 1, h, w)
        x = torch.cat([x, ys, xs], dim=1)
        skips = []
        for i, block in enumerate(self.down):
            if i:
                x = nn.functional.max_pool2d(x, 2)
            x = block(x)
            skips.append(x)
        value = self.value(x).squeeze(1)
        for up, merge, skip in zip(self.up, self.merge, reversed(skips[:-1]), strict=True):
            x = merge(torch.cat([up(x), skip], dim=1))
        logits = self.head(x)
        if self.downsample > 1:
            logits = logits.repeat_interleave(self.downsample, dim=2)
            logits = logits.repeat_interleave(self.downsample, dim=3)
        return logits, value
