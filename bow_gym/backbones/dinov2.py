"""DINOv2 ViT patch features through :mod:`timm`.

Weights come from one of three places, and :attr:`DinoV2Backbone.cache_key` records which:

* the Hugging Face hub (``pretrained=True``, the default; needs internet or a warm hub cache),
* a local weights file (``checkpoint=...``; a state dict as timm loads it: ``.pth``/``.bin`` via
  ``torch.load`` or ``.safetensors``; timm also converts the original Meta DINOv2 ``.pth`` files),
* random initialisation (``pretrained=False``), seeded, for tests only: its similarities are
  meaningless.

Position embeddings follow the official DINOv2 code at every input size. The official ViT keeps the
37 x 37 embedding of its 518 px training size and resizes it on every forward pass
(``interpolate_pos_encoding``): bicubic, for the models without registers with ``antialias=False``
and a scale factor ``(grid + 0.1) / 37`` (its ``interpolate_offset`` of 0.1, so the sampling
positions are not those of a plain resize to ``grid``), for the ``_reg`` models with
``antialias=True`` to the size ``grid``. timm instead resizes once at load time with its own rule
(bicubic, ``antialias=True``, to the size ``grid``), which equals the ``_reg`` rule only. So the
model is always built at the embedding's own grid (37 x 37 for hub weights, Meta's files and random
initialisation; a checkpoint's own grid otherwise) and :func:`official_pos_embed` puts the
officially resized embedding in it; features then equal the official
``forward_features(x)["x_norm_patchtokens"]`` up to float32 rounding.
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bow_gym.backbones.base import Backbone

#: Short name -> timm model name (with pretrained tag). Pretrained configuration as data, like timm.
DINOV2_MODELS: dict[str, str] = {
    "dinov2_vits14": "vit_small_patch14_dinov2.lvd142m",
    "dinov2_vitb14": "vit_base_patch14_dinov2.lvd142m",
    "dinov2_vitl14": "vit_large_patch14_dinov2.lvd142m",
    "dinov2_vitg14": "vit_giant_patch14_dinov2.lvd142m",
    "dinov2_vits14_reg": "vit_small_patch14_reg4_dinov2.lvd142m",
    "dinov2_vitb14_reg": "vit_base_patch14_reg4_dinov2.lvd142m",
    "dinov2_vitl14_reg": "vit_large_patch14_reg4_dinov2.lvd142m",
    "dinov2_vitg14_reg": "vit_giant_patch14_reg4_dinov2.lvd142m",
}

#: Every DINOv2 model has 14 x 14 pixel patches; checked against the built model too.
PATCH_SIZE = 14

#: Part of every DINOv2 cache key: features with officially resized position embeddings.
POS_KEY = "officialpos"

#: Side of the position-embedding grid of every released DINOv2 model (518 px training size / 14).
NATIVE_GRID = 37


@dataclass(frozen=True)
class PosEmbedRule:
    """How the official DINOv2 code resizes the patch position embedding to another grid.

    Attributes:
        antialias: ``antialias`` of the bicubic ``F.interpolate`` call.
        offset: The official ``interpolate_offset``: when non-zero, the interpolation is given the
            scale factor ``(grid + offset) / old_grid`` instead of the output size, which moves
            the sampling positions; 0 resizes to ``grid`` directly.
    """

    antialias: bool
    offset: float


#: Short name -> the official hub constructor's interpolation settings (facebookresearch/dinov2,
#: ``dinov2/hub/backbones.py``): defaults without registers, ``antialias=True`` and no offset with.
POS_EMBED_RULES: dict[str, PosEmbedRule] = {
    short: PosEmbedRule(antialias=True, offset=0.0) if short.endswith("_reg")
    else PosEmbedRule(antialias=False, offset=0.1)
    for short in DINOV2_MODELS
}

_INSTALL_HINT = "DinoV2Backbone needs torch and timm: pip install torch timm (or pip install bow-gym)"


def resolve_dinov2_name(name: str) -> tuple[str, str]:
    """Maps a short or timm DINOv2 name to ``(short_name, timm_name_with_tag)``.

    Args:
        name: A key of :data:`DINOV2_MODELS` (``"dinov2_vits14"``) or a timm name, with or without
            its pretrained tag (``"vit_small_patch14_dinov2"``, ``"vit_small_patch14_dinov2.lvd142m"``).

    Raises:
        ValueError: ``name`` is none of those; the message lists the valid names.
    """
    if name in DINOV2_MODELS:
        return name, DINOV2_MODELS[name]
    for short, timm_name in DINOV2_MODELS.items():
        if name in (timm_name, timm_name.split(".", 1)[0]):
            # One canonical short name, so the same weights share one cache folder.
            return short, timm_name
    valid = sorted(DINOV2_MODELS) + sorted(DINOV2_MODELS.values())
    raise ValueError(f"unknown DINOv2 backbone {name!r}; valid names: {', '.join(valid)}")


def _check_input_size(input_size: int) -> None:
    if isinstance(input_size, int) and not isinstance(input_size, bool) and input_size > 0 \
            and input_size % PATCH_SIZE == 0:
        return
    if isinstance(input_size, int | float) and not isinstance(input_size, bool):
        below = max(PATCH_SIZE, int(input_size) // PATCH_SIZE * PATCH_SIZE)
        hint = f"{below} or {below + PATCH_SIZE}"
    else:
        hint = "224"
    raise ValueError(
        f"input_size must be a positive multiple of the patch size {PATCH_SIZE}, got "
        f"{input_size!r}; nearest valid values: {hint}")


def official_pos_embed(patch_pos_embed: Any, grid: int, rule: PosEmbedRule) -> Any:
    """Resizes a square patch position embedding to ``grid x grid`` the way official DINOv2 does.

    Args:
        patch_pos_embed: ``(1, M * M, D)`` tensor, the patch positions only (no class token).
        grid: Target side in patches.
        rule: The model's :class:`PosEmbedRule` (:data:`POS_EMBED_RULES`).

    Returns:
        ``(1, grid * grid, D)`` tensor of the input's dtype; the input itself when ``grid == M``
        (the official code skips the interpolation then, even with an offset).

    Raises:
        ValueError: The embedding is not a square grid, or ``grid < 1``.
    """
    import torch.nn.functional as F

    n, dim = int(patch_pos_embed.shape[1]), int(patch_pos_embed.shape[2])
    m = math.isqrt(n)
    if m * m != n or patch_pos_embed.ndim != 3 or patch_pos_embed.shape[0] != 1:
        raise ValueError(f"patch_pos_embed must be (1, M*M, D), got {tuple(patch_pos_embed.shape)}")
    if int(grid) < 1:
        raise ValueError(f"grid must be >= 1, got {grid!r}")
    if grid == m:
        return patch_pos_embed
    x = patch_pos_embed.float().reshape(1, m, m, dim).permute(0, 3, 1, 2)
    if rule.offset:
        # The scale factor, not the output size, sets the sampling positions: src = (dst + 0.5)
        # * m / (grid + offset) - 0.5; the output side is floor(grid + offset) = grid.
        scale = float(grid + rule.offset) / m
        x = F.interpolate(x, scale_factor=(scale, scale), mode="bicubic",
                          antialias=rule.antialias)
    else:
        x = F.interpolate(x, size=(grid, grid), mode="bicubic", antialias=rule.antialias)
    if tuple(x.shape[-2:]) != (grid, grid):  # pragma: no cover - guards torch's size rounding
        raise RuntimeError(f"position embedding resized to {tuple(x.shape[-2:])}, not {grid}")
    return x.permute(0, 2, 3, 1).reshape(1, grid * grid, dim).to(patch_pos_embed.dtype)


def _square_side(n: int) -> int | None:
    m = math.isqrt(n)
    return m if m > 0 and m * m == n else None


def checkpoint_pos_grid(path: Path) -> int | None:
    """Side of the patch position-embedding grid stored in a DINOv2 weights file, if readable.

    Reads only the shape of ``pos_embed`` (safetensors header, or a memory-mapped zip ``.pth``;
    ``{"model": ...}``/``{"state_dict": ...}`` wrappers as timm unwraps them). Meta's files
    hold ``1 + M * M`` tokens (class position first, also with registers), timm's ``1 + M * M``
    without registers and ``M * M`` with them.

    Returns:
        ``M``, or ``None`` when the file has no readable square ``pos_embed`` (timm's loader
        then reports what is wrong with it).
    """
    shape: tuple[int, ...] | None = None
    try:
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as f:
                if "pos_embed" in f.keys():
                    shape = tuple(f.get_slice("pos_embed").get_shape())
        else:
            import torch

            state = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
            for wrapper in ("model", "state_dict"):
                if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
                    state = state[wrapper]
            pos = state.get("pos_embed") if isinstance(state, dict) else None
            shape = tuple(pos.shape) if pos is not None else None
    except Exception:  # unreadable or legacy format: timm's loader reports it
        return None
    if shape is None or len(shape) != 3:
        return None
    n = int(shape[1])
    return _square_side(n) or _square_side(n - 1)


def _sha256_prefix(path: Path, n_hex: int = 16, chunk: int = 1 << 20) -> str:
    # Streaming: checkpoints can be gigabytes (ViT-g is ~4.5 GB).
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()[:n_hex]


def _safe_name(text: str) -> str:
    """``text`` usable in a directory name; a hash suffix keeps sanitised strings distinct."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip(".-") or "x"
    if safe != text:
        safe = f"{safe[:64]}-{hashlib.sha256(text.encode()).hexdigest()[:8]}"
    return safe


def _set_official_pos_embed(model: Any, grid: int, rule: PosEmbedRule) -> None:
    """Sets a timm DINOv2 model's input size to ``grid`` patches, resizing by the official rule."""
    import torch

    if tuple(model.patch_embed.grid_size) == (grid, grid):
        return
    old = model.pos_embed.detach()
    # Class position first without registers; timm's register models keep it in cls_token.
    n_prefix = 0 if model.no_embed_class else model.num_prefix_tokens
    patch_pos = official_pos_embed(old[:, n_prefix:], grid, rule)
    model.set_input_size(img_size=(grid * PATCH_SIZE, grid * PATCH_SIZE))
    with torch.no_grad():
        # set_input_size resampled with timm's rule; the official values replace them.
        model.pos_embed.copy_(torch.cat([old[:, :n_prefix], patch_pos], dim=1))


class DinoV2Backbone(Backbone):
    """A DINOv2 ViT (timm) whose last-layer patch tokens are the features.

    Each image is resized to ``input_size x input_size`` pixels, so the grid is
    ``(input_size // 14, input_size // 14)`` whatever the image size.

    Attributes:
        model: The timm ``VisionTransformer``, in eval mode, on :attr:`device`.
        timm_name: The timm model name, with pretrained tag.
        input_size: Side in pixels of the square model input.
        device: Torch device string the model runs on.
        batch_size: Images per forward pass.
        weights: ``"hub-<tag>"``, ``"file-<sha256[:16]>"`` or ``"random-seed<seed>"``.
        pos_embed_rule: The official interpolation of the position embedding this model uses.
        adapter_id: Identifies an adapter (LoRA) applied to :attr:`model`, or ``None``. Whoever
            adapts the model sets it, so that :attr:`cache_key` changes with the adapter.
    """

    adaptable = True

    def __init__(
        self,
        name: str = "dinov2_vits14",
        *,
        pretrained: bool = True,
        checkpoint: str | Path | None = None,
        input_size: int = 224,
        device: str | None = None,
        batch_size: int = 8,
        seed: int = 0,
    ) -> None:
        """Builds the model; offline, pass ``checkpoint=`` or ``pretrained=False``.

        Args:
            name: Short name (``"dinov2_vits14"``, ``"dinov2_vitb14_reg"``, ... see
                :data:`DINOV2_MODELS`) or the timm name, with or without tag.
            pretrained: Load pretrained weights: from ``checkpoint`` if given, else the hub.
                ``False`` gives a seeded random init (reproducible but meaningless similarities).
            checkpoint: Local weights file (state dict ``.pth``/``.bin``/``.safetensors``, as timm
                loads it: timm's or Meta's key names). Its position embedding is resized to
                ``input_size`` by the official rule (module docstring) if needed.
            input_size: Model input side in pixels, a positive multiple of 14.
            device: Torch device; ``None`` picks ``"cuda"`` when available, else ``"cpu"``.
            batch_size: Images per forward pass in :meth:`extract`.
            seed: Seed of the random initialisation (used when weights are not loaded).

        Raises:
            ValueError: Unknown ``name``, bad ``input_size``/``batch_size``, or ``checkpoint``
                together with ``pretrained=False``.
            FileNotFoundError: ``checkpoint`` does not exist.
            RuntimeError: Hub weights could not be loaded (e.g. offline), or the checkpoint does
                not fit the model.
        """
        short, timm_name = resolve_dinov2_name(name)
        _check_input_size(input_size)
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size!r}")
        ckpt: Path | None = None
        if checkpoint is not None:
            if not pretrained:
                raise ValueError(
                    "checkpoint= loads weights, which contradicts pretrained=False; drop one of them")
            ckpt = Path(checkpoint).expanduser()
            if not ckpt.is_file():
                raise FileNotFoundError(f"DINOv2 checkpoint file not found: {str(ckpt)!r}")

        try:
            import timm
            import torch
        except ImportError as e:  # pragma: no cover - depends on the environment
            raise ImportError(_INSTALL_HINT) from e

        self.name = short
        self.timm_name = timm_name
        self.input_size = int(input_size)
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.adapter_id: str | None = None
        if ckpt is not None:
            # Hash before loading, so the key names exactly the bytes we load.
            self.weights = f"file-{_sha256_prefix(ckpt)}"
        elif pretrained:
            self.weights = f"hub-{timm_name.split('.', 1)[1]}"
        else:
            self.weights = f"random-seed{self.seed}"

        # Built at the embedding's own grid, so timm's load-time resampling never runs; the
        # official rule resizes it below.
        native = (checkpoint_pos_grid(ckpt) if ckpt is not None else None) or NATIVE_GRID
        kwargs: dict[str, Any] = dict(
            pretrained=pretrained, num_classes=0, img_size=native * PATCH_SIZE,
            # 'file' outranks hub and url in timm's weight-source resolution, so nothing is
            # downloaded; timm's checkpoint filter converts Meta-format files.
            pretrained_cfg_overlay=dict(file=str(ckpt)) if ckpt is not None else None,
        )
        # Seeded even when weights get loaded: nothing then depends on the global RNG. fork_rng
        # restores the caller's CPU RNG state (the model is built on the CPU).
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            try:
                model = timm.create_model(timm_name, **kwargs)
            except Exception as e:
                if ckpt is not None:
                    raise RuntimeError(
                        f"could not load checkpoint {str(ckpt)!r} into {timm_name}: {e}") from e
                if pretrained:
                    raise RuntimeError(
                        f"could not get pretrained {timm_name} weights from the hub ({type(e).__name__}:"
                        f" {str(e).splitlines()[0] if str(e) else ''}). Offline, pass checkpoint= a "
                        "local weights file (a state dict .pth/.bin/.safetensors as timm loads it, "
                        "e.g. model.safetensors from huggingface.co/timm/" + timm_name + " or Meta's "
                        "dinov2 .pth), or pretrained=False for a random init (reproducible, but its "
                        "similarities are meaningless). Setting HF_HUB_OFFLINE=1 makes the hub "
                        "attempt fail fast instead of retrying.") from e
                raise

        patch = tuple(model.patch_embed.patch_size)
        if patch != (PATCH_SIZE, PATCH_SIZE):  # pragma: no cover - guards the table's assumption
            raise RuntimeError(f"{timm_name} has patch size {patch}, expected {PATCH_SIZE}")
        self.pos_embed_rule = POS_EMBED_RULES[short]
        _set_official_pos_embed(model, self.input_size // PATCH_SIZE, self.pos_embed_rule)
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = str(device)
        self.model = model.to(self.device).eval()
        self.grid = tuple(int(g) for g in model.patch_embed.grid_size)
        self.dim = int(model.embed_dim)
        self.num_prefix_tokens = int(model.num_prefix_tokens)  # cls (+ 4 registers for _reg)
        cfg = model.pretrained_cfg
        self.mean = np.asarray(cfg["mean"], dtype=np.float32)
        self.std = np.asarray(cfg["std"], dtype=np.float32)

    @property
    def cache_key(self) -> str:
        """``<name>_<input_size>px_<weights>_<POS_KEY>[_<adapter_id>]``, safe as a directory name.

        :data:`POS_KEY` keeps features computed before position embeddings followed the
        official rule (they differ below and above 518 px) out of reuse.
        """
        key = f"{self.name}_{self.input_size}px_{self.weights}_{POS_KEY}"
        if self.adapter_id is not None:
            key += f"_{_safe_name(str(self.adapter_id))}"
        return key

    def preprocess(self, images: list[np.ndarray]) -> np.ndarray:
        """Resized, ImageNet-normalised ``(B, 3, S, S)`` float32 model input."""
        import cv2

        s = self.input_size
        out = np.empty((len(images), 3, s, s), dtype=np.float32)
        for i, im in enumerate(images):
            h, w = im.shape[:2]
            # INTER_AREA averages when shrinking (no aliasing); it degenerates to nearest when
            # enlarging, where bilinear is smoother.
            interp = cv2.INTER_AREA if h >= s and w >= s else cv2.INTER_LINEAR
            if (h, w) != (s, s):
                im = cv2.resize(np.ascontiguousarray(im), (s, s), interpolation=interp)
            x = (im.astype(np.float32) / 255.0 - self.mean) / self.std
            out[i] = x.transpose(2, 0, 1)
        return out

    def _extract(self, images: list[np.ndarray]) -> np.ndarray:
        import torch

        hp, wp = self.grid
        feats = np.empty((len(images), hp, wp, self.dim), dtype=np.float32)
        # A LoRA trainer may have the model in train mode; features must not depend on that
        # (dropout, drop-path), but its mode is handed back untouched.
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.inference_mode():
                for start in range(0, len(images), self.batch_size):
                    batch = images[start:start + self.batch_size]
                    x = torch.from_numpy(self.preprocess(batch)).to(self.device)
                    tokens = self.model.forward_features(x)[:, self.num_prefix_tokens:]
                    feats[start:start + len(batch)] = (
                        tokens.float().reshape(len(batch), hp, wp, self.dim).cpu().numpy())
        finally:
            self.model.train(was_training)
        return feats
