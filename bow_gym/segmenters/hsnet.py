"""HSNet (Zhang et al., "HSNet: A hybrid semantic network for polyp segmentation", Computers in
Biology and Medicine 150, 106173, 2022) on timm's ``pvt_v2_b2`` encoder.

The decoder follows the authors' released code (github.com/baiboat/HSNet, ``lib/pvt.py``):

* The encoder gives four PVTv2-B2 stages ``x1..x4`` (64, 128, 320, 512 channels at 1/4 .. 1/32).
* :class:`CrossSemanticAttention` (CSA, ``HybridAttention`` in the code) refines each encoder
  skip: its channels are split in two halves that attend to each other, the first half gated
  by a spatial map computed from the second, the second (after a 3x3 conv) by an ECA channel
  map computed from the first.
* :class:`HybridSemanticComplementary` (HSC, ``HybridSenmentic``) takes the decoder feature one
  level up: a transformer branch (3x3 overlapping patch embedding, one full-attention PVT block
  with a depthwise-conv MLP, its ``q * k`` map giving ECA channel and spatial attention) and a CNN
  branch (a residual bottleneck) are multiplied and upsampled x2.
* The decoder: ``d4 = conv1x1-BN(x4)``, ``d3 = HSC(d4) * CSA(x3)``, ``d2 = HSC(d3) * CSA(x2)``,
  ``d1 = HSC(d2) * CSA(x1)``.
* :class:`MultiScalePrediction` (MSP) predicts one logit map per level and learns per-image
  weights for them from the pooled features of all four levels.

Training mode returns the four weighted side outputs at input resolution (the structure loss is
summed over them, deep supervision); eval mode returns their sum, the published test-time
output. Differences from the released code, none of which changes the parameters:
``q * k`` is used where the code multiplies ``q`` by itself (``k = q.reshape(...)``, an evident
slip; the paper describes the product of query and key), the unused ``hb0`` block is left out,
and attention goes through ``scaled_dot_product_attention``. The encoder uses stochastic depth
0.1, as the PVTv2-B2 the authors loaded.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

#: timm name of the encoder.
ENCODER = "pvt_v2_b2"
#: Channels of the encoder's four stages.
ENCODER_CHANNELS = (64, 128, 320, 512)
#: Stochastic depth of the encoder, as in the PVTv2-B2 the authors used.
DROP_PATH_RATE = 0.1


class ConvBN(nn.Sequential):
    """Conv (no bias) + BatchNorm, no activation (the code's ``BasicConv2d``)."""

    def __init__(self, cin: int, cout: int, kernel: int, padding: int = 0) -> None:
        super().__init__(nn.Conv2d(cin, cout, kernel, padding=padding, bias=False),
                         nn.BatchNorm2d(cout))


class ECA(nn.Module):
    """Efficient channel attention: global average pool, 1-D conv (k=5) over channels, sigmoid.

    Returns the ``(B, C, 1, 1)`` gate (it broadcasts over the feature map).
    """

    def __init__(self, kernel: int = 5) -> None:
        super().__init__()
        self.conv = nn.Conv1d(1, 1, kernel, padding=kernel // 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x.mean(dim=(2, 3)).unsqueeze(1)  # (B, 1, C)
        return torch.sigmoid(self.conv(y)).transpose(1, 2).unsqueeze(-1)


class CrossSemanticAttention(nn.Module):
    """CSA: the two channel halves of a feature gate each other (``HybridAttention``)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        if channels % 2:
            raise ValueError(f"channels must be even, got {channels}")
        half = channels // 2
        self.eca = ECA()
        self.conv = ConvBN(half, half, 3, padding=1)
        self.spatial = ConvBN(half, 1, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_t, x_c = torch.chunk(x, 2, dim=1)
        spatial = torch.sigmoid(self.spatial(x_c))
        channel = self.eca(x_t)
        return torch.cat([x_t * spatial, self.conv(x_c) * channel], dim=1)


class _OverlapPatchEmbed(nn.Module):
    """3x3 stride-1 conv to tokens + LayerNorm; returns ``(tokens, H, W)``."""

    def __init__(self, cin: int, dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(cin, dim, 3, stride=1, padding=1)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        x = self.proj(x)
        h, w = x.shape[-2:]
        return self.norm(x.flatten(2).transpose(1, 2)), h, w


class _MixMlp(nn.Module):
    """PVTv2 feed-forward: Linear, 3x3 depthwise conv on the token grid, GELU, Linear."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.dwconv = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        x = self.fc1(x)
        b, n, c = x.shape
        x = self.dwconv(x.transpose(1, 2).reshape(b, c, h, w)).flatten(2).transpose(1, 2)
        return self.fc2(self.act(x))


class _Attention(nn.Module):
    """Multi-head self-attention without spatial reduction; also returns ``q`` and ``k``."""

    def __init__(self, dim: int, num_heads: int = 1) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim, bias=False)
        self.kv = nn.Linear(dim, 2 * dim, bias=False)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        b, n, c = x.shape
        heads = self.num_heads
        q = self.q(x).reshape(b, n, heads, c // heads).transpose(1, 2)
        k, v = self.kv(x).reshape(b, n, 2, heads, c // heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, c)), q, k


class _Block(nn.Module):
    """Pre-norm transformer block (attention + MixMLP, ratio 4), returning ``(x, q, k)``."""

    def __init__(self, dim: int, num_heads: int = 1, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = _Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = _MixMlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, h: int, w: int
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        a, q, k = self.attn(self.norm1(x))
        x = x + a
        return x + self.mlp(self.norm2(x), h, w), q, k


class _Bottleneck(nn.Module):
    """Residual bottleneck ``1x1 -> 3x3 -> 1x1`` (width out/4) with a 1x1 projection shortcut."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        mid = cout // 4
        self.shortcut = ConvBN(cin, cout, 1)
        self.body = nn.Sequential(
            ConvBN(cin, mid, 1), nn.ReLU(inplace=True),
            ConvBN(mid, mid, 3, padding=1), nn.ReLU(inplace=True),
            ConvBN(mid, cout, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.shortcut(x) + self.body(x))


class HybridSemanticComplementary(nn.Module):
    """HSC: transformer branch times CNN branch, upsampled x2 (``HybridSenmentic``)."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.patch_embed = _OverlapPatchEmbed(cin, cout)
        self.block = _Block(cout, num_heads=1)
        self.norm = nn.LayerNorm(cout)
        self.eca = ECA()
        self.spatial = ConvBN(cout, 1, 3, padding=1)
        self.cnn = _Bottleneck(cin, cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        tokens, h, w = self.patch_embed(x)
        tokens, q, k = self.block(tokens, h, w)

        def grid(t: torch.Tensor) -> torch.Tensor:  # (B, heads, N, d) or (B, N, C) -> (B, C, H, W)
            if t.ndim == 4:
                t = t.transpose(1, 2).flatten(2)
            return t.transpose(1, 2).reshape(b, -1, h, w)

        x_t = grid(self.norm(tokens))
        attn = grid(q) * grid(k)
        x_t = x_t * self.eca(attn) * torch.sigmoid(self.spatial(attn))
        y = x_t * self.cnn(x)
        return F.interpolate(y, scale_factor=2, mode="bilinear", align_corners=True)


class MultiScalePrediction(nn.Module):
    """MSP: one logit map per level, weighted by gates learnt from all levels' pooled features."""

    def __init__(self, channels: tuple[int, ...] = ENCODER_CHANNELS, hidden: int = 64) -> None:
        super().__init__()
        self.outs = nn.ModuleList(nn.Conv2d(c, 1, 1) for c in channels)
        self.reduce = nn.ModuleList(
            nn.Sequential(nn.Conv2d(c, hidden, 1), nn.BatchNorm2d(hidden)) for c in channels)
        self.fc1 = nn.Linear(hidden, hidden)
        self.fc2 = nn.Linear(hidden, len(channels))

    def forward(self, feats: list[torch.Tensor], size: tuple[int, int]) -> list[torch.Tensor]:
        pooled = sum(r(f).mean(dim=(2, 3)) for r, f in zip(self.reduce, feats, strict=True))
        gates = torch.sigmoid(self.fc2(F.relu(self.fc1(pooled))))  # (B, levels)
        return [
            F.interpolate(out(f) * gates[:, i, None, None, None], size=size, mode="bilinear",
                          align_corners=False)
            for i, (out, f) in enumerate(zip(self.outs, feats, strict=True))
        ]


#: Keys of the ImageNet classifier in PVTv2 weight files: the only tensors a checkpoint may hold
#: that the encoder does not use.
CLASSIFIER_KEYS = ("head.weight", "head.bias")


def _listed(keys: list[str], limit: int = 6) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


def _original_pvt_name(key: str) -> str:
    """timm's ``pvt_v2`` key in the original PVTv2 release's naming (for error messages)."""
    key = re.sub(r"^patch_embed\.", "patch_embed1.", key)
    key = re.sub(r"^stages\.(\d)\.downsample\.", lambda m: f"patch_embed{int(m[1]) + 1}.", key)
    key = re.sub(r"^stages\.(\d)\.blocks\.", lambda m: f"block{int(m[1]) + 1}.", key)
    key = re.sub(r"^stages\.(\d)\.norm\.", lambda m: f"norm{int(m[1]) + 1}.", key)
    return key.replace("mlp.dwconv.", "mlp.dwconv.dwconv.")


@functools.cache
def _encoder_shapes() -> dict[str, tuple[int, ...]]:
    """Key -> shape of the ``features_only`` encoder's state dict (built on the meta device)."""
    import timm

    with torch.device("meta"):
        encoder = timm.create_model(ENCODER, pretrained=False, features_only=True)
    return {k: tuple(v.shape) for k, v in encoder.state_dict().items()}


def read_encoder_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a ``pvt_v2_b2`` weights file, keyed as the HSNet encoder's, checked strictly.

    The file is read by timm (``.pth``/``.bin`` through ``torch.load`` with ``weights_only``,
    or ``.safetensors``; ``state_dict``/``model`` wrappers and ``module.`` prefixes removed) and
    the original PVTv2 names (``patch_embed1``, ``block1.0``, ``norm1``, ``dwconv.dwconv``) are
    mapped to timm's by timm's own filter. Every encoder tensor must be there with its shape, and
    nothing else may be, except the ImageNet classifier :data:`CLASSIFIER_KEYS`, which is dropped.
    (timm's ``features_only`` loading is not strict: it would start from a random encoder after
    an INFO-level log line.) Checked before any model is built, so a bad file fails fast.

    Raises:
        RuntimeError: The file cannot be read, or does not fit; the message names the file and
            the missing, unexpected or mis-shaped keys.
    """
    from timm.models import load_state_dict
    from timm.models.pvt_v2 import checkpoint_filter_fn

    what = f"could not load encoder checkpoint {str(path)!r} into {ENCODER}"
    try:
        state = load_state_dict(str(path))
    except Exception as e:
        raise RuntimeError(f"{what}: {type(e).__name__}: {e} (expected a state dict of tensors "
                           "in a .pth/.bin/.safetensors file)") from e
    if not isinstance(state, dict) or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise RuntimeError(f"{what}: it holds a {type(state).__name__}, not a state dict of "
                           "tensors")
    # timm's filter only renames keys; run on the names, it tells each key's name in the file.
    renamed = checkpoint_filter_fn({k: k for k in state}, None)
    # features_only flattens the stage modules: stages.2.blocks... -> stages_2.blocks...
    found = {re.sub(r"^stages\.(\d+)\.", r"stages_\1.", k): state[name]
             for k, name in renamed.items() if k not in CLASSIFIER_KEYS}
    in_file = {re.sub(r"^stages\.(\d+)\.", r"stages_\1.", k): name for k, name in renamed.items()}
    expected = _encoder_shapes()
    missing = [re.sub(r"^stages_(\d+)\.", r"stages.\1.", k) for k in expected if k not in found]
    if any(k != name for k, name in renamed.items()):  # the file uses the original names
        missing = [_original_pvt_name(k) for k in missing]
    unexpected = sorted(in_file[k] for k in found if k not in expected)
    shapes = [f"{in_file[k]} {tuple(found[k].shape)} (expected {shape})"
              for k, shape in expected.items() if k in found and tuple(found[k].shape) != shape]
    if missing or unexpected or shapes:
        problems = [f"{len(missing)} encoder tensor(s) missing: {_listed(missing)}" if missing
                    else "", f"{len(unexpected)} unexpected key(s): {_listed(unexpected)}"
                    if unexpected else "", f"{len(shapes)} of another shape: {_listed(shapes)}"
                    if shapes else ""]
        raise RuntimeError(
            f"encoder checkpoint {str(path)!r} does not fit {ENCODER} ({len(state)} keys in the "
            f"file, {len(expected)} encoder tensors expected): "
            + "; ".join(p for p in problems if p)
            + ". Expected a pvt_v2_b2 state dict with timm's or the original PVTv2 key names (its "
            "ImageNet head.weight/head.bias may be present and is ignored)")
    return found


def _build_encoder(pretrained: bool, checkpoint: str | Path | None) -> nn.Module:
    import timm

    kwargs: dict[str, Any] = dict(features_only=True, drop_path_rate=DROP_PATH_RATE)
    if checkpoint is not None:
        path = Path(checkpoint).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"HSNet encoder checkpoint file not found: {str(path)!r}")
        state = read_encoder_checkpoint(path)
        encoder = timm.create_model(ENCODER, pretrained=False, **kwargs)
        encoder.load_state_dict(state, strict=True)
        return encoder
    if pretrained:
        try:
            return timm.create_model(ENCODER, pretrained=True, **kwargs)
        except Exception as e:
            first = str(e).splitlines()[0] if str(e) else ""
            message = (
                f"could not get pretrained {ENCODER} weights from the hub ({type(e).__name__}: "
                f"{first}). Offline, pass checkpoint= a local weights file (a state dict "
                f".pth/.bin/.safetensors, e.g. model.safetensors from huggingface.co/timm/"
                f"{ENCODER}.in1k or the original pvt_v2_b2.pth), or pretrained=False for a random "
                "init. Setting HF_HUB_OFFLINE=1 makes the hub fail at once instead of retrying")
            raise RuntimeError(message) from e
    return timm.create_model(ENCODER, pretrained=False, **kwargs)


class HSNet(nn.Module):
    """HSNet: PVTv2-B2 encoder, CSA/HSC decoder and multi-scale prediction (module docstring).

    Args:
        pretrained: Load ImageNet encoder weights from the timm hub (needs internet or a warm
            hub cache). Ignored when ``checkpoint`` is given.
        checkpoint: Local encoder weights file (``pvt_v2_b2`` state dict, timm or original key
            names), loaded strictly instead of the hub's (:func:`read_encoder_checkpoint`).

    Input ``(B, 3, H, W)`` ImageNet-normalised, ``H`` and ``W`` multiples of 32. Training mode:
    a list of four ``(B, 1, H, W)`` logit maps (levels 1/4 .. 1/32); eval mode: their sum.

    Raises:
        FileNotFoundError: ``checkpoint`` does not exist.
        RuntimeError: The weights could not be loaded (offline hub, or a file that does not
            fit: the message names the file and the keys).
    """

    segmenter_name = "hsnet"

    def __init__(self, *, pretrained: bool = False, checkpoint: str | Path | None = None) -> None:
        super().__init__()
        self.encoder = _build_encoder(pretrained, checkpoint)
        c1, c2, c3, c4 = ENCODER_CHANNELS
        self.transfer = ConvBN(c4, c4, 1)
        self.hsc3 = HybridSemanticComplementary(c4, c3)
        self.hsc2 = HybridSemanticComplementary(c3, c2)
        self.hsc1 = HybridSemanticComplementary(c2, c1)
        self.csa3 = CrossSemanticAttention(c3)
        self.csa2 = CrossSemanticAttention(c2)
        self.csa1 = CrossSemanticAttention(c1)
        self.msp = MultiScalePrediction(ENCODER_CHANNELS)

    def init_kwargs(self) -> dict[str, Any]:
        """Constructor arguments that rebuild this architecture without loading any weights."""
        return {}

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        h, w = x.shape[-2:]
        if h % 32 or w % 32:
            raise ValueError(f"HSNet input sides must be multiples of 32, got {h} x {w}")
        x1, x2, x3, x4 = self.encoder(x)
        d4 = self.transfer(x4)
        d3 = self.hsc3(d4) * self.csa3(x3)
        d2 = self.hsc2(d3) * self.csa2(x2)
        d1 = self.hsc1(d2) * self.csa1(x1)
        preds = self.msp([d1, d2, d3, d4], (h, w))
        if self.training:
            return preds
        return torch.stack(preds).sum(dim=0)
