"""LoRA on the query and value projections of a timm DINOv2 ViT, for per-data-set adaptation.

The method adapts its foundation model to each data set between rounds (:mod:`bow_gym.adaptation`
trains the adapters with a triplet loss on pseudo-labels). This module holds the adapter itself:

* :class:`QVLoRA` wraps one fused ``attn.qkv`` Linear. timm computes q, k and v with a single
  ``Linear(C, 3 * C)`` whose output rows are ``[q | k | v]`` (``Attention.forward`` reshapes it to
  ``(B, N, 3, heads, head_dim)`` and unbinds axis 2), so the adapter adds low-rank deltas to the
  first and last thirds only: ``qkv(x) + [s * B_q A_q drop(x), 0, s * B_v A_v drop(x)]`` with
  ``s = alpha / r``. The k third is passed through untouched, bit for bit.
* :func:`apply_lora` freezes every base weight and wraps the chosen blocks; it returns a
  :class:`LoRAHandle` that merges, saves and removes the adapters, and that keeps the backbone's
  ``adapter_id`` (part of its feature-cache key) in step with the adapter weights.
* :func:`save_lora` / :func:`load_lora`: one safetensors file whose metadata records the
  configuration and the base model, so a file is never silently loaded onto other weights.
* :func:`export_peft` / :func:`import_peft`: the same adapter in peft's on-disk layout.

Why the module is not peft's: peft's LoRA replaces a whole target module and adapts *all* its
output features, so targeting timm's fused ``qkv`` would adapt k as well, and peft has no option
to adapt row slices of one Linear (``target_modules`` names modules, ``target_parameters`` whole
parameters; the old ``MergedLinear``/``enable_lora`` mechanism was removed, and peft's maintainers
confirm that q-and-v-only LoRA on a fused qkv "is currently not possible", huggingface/peft#1705).
Unfusing qkv into three Linears so peft could target q and v would change the model class that
timm's checkpoint loading and fused attention expect. peft is still used where it fits, for the
exchange format: a q/v-only adapter of rank ``r`` *is* an ordinary LoRA on ``qkv`` of rank
``2 r`` whose ``B`` is block-structured (``[[B_q, 0], [0, 0], [0, B_v]]``, ``A = [A_q; A_v]``,
``lora_alpha = 2 alpha`` keeps the scale), which peft loads and runs exactly (see
:func:`export_peft` for the one caveat: training it further in peft would fill the zero blocks).

The weight-free :class:`~bow_gym.backbones.lab_texture.LabTextureBackbone` has nothing to adapt:
:func:`apply_lora` raises :class:`NotAdaptableError` for it, so no ablation can report a "with
LoRA" number that is really the unadapted backbone's.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from bow_gym.io_utils import atomic_write_bytes

#: ``format`` entry of the safetensors metadata written by :func:`save_lora`.
LORA_FORMAT = "bow_gym.qv_lora"
#: Version of that format; bumped if the tensor layout ever changes.
LORA_FORMAT_VERSION = "1"

# Attribute of the adapted timm model that holds its handle (one adapter per model).
_HANDLE_ATTR = "_bow_gym_lora"
_PARAM_NAMES = ("lora_A_q", "lora_B_q", "lora_A_v", "lora_B_v")


class NotAdaptableError(TypeError):
    """The backbone has no weights LoRA could adapt (e.g. the weight-free ``lab_texture``)."""


@dataclass
class LoRAConfig:
    """Shape of a q/v LoRA adapter.

    Attributes:
        r: Rank of each low-rank update (default 8, the LoRA paper's and SAM/DINOv2 adapters'
            usual choice for ViT-S/B).
        alpha: Scale numerator; updates are multiplied by ``alpha / r`` (float division, so
            ``r=3, alpha=4`` gives 4/3). Default 16.0, i.e. a scale of 2 at ``r=8``.
        dropout: Dropout on the adapter's input during training (default 0.0: the triplet
            objective is already noisy through its sampling).
        blocks: Indices of the transformer blocks to adapt (negative counts from the end);
            ``None`` (default) adapts every block.
    """

    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    blocks: list[int] | None = None

    def __post_init__(self) -> None:
        if isinstance(self.r, bool) or not isinstance(self.r, int) or self.r < 1:
            raise ValueError(f"LoRA rank r must be an int >= 1, got {self.r!r}")
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, int | float) \
                or not math.isfinite(self.alpha) or self.alpha <= 0:
            raise ValueError(f"LoRA alpha must be a finite number > 0, got {self.alpha!r}")
        self.alpha = float(self.alpha)
        if not 0.0 <= float(self.dropout) < 1.0:
            raise ValueError(f"LoRA dropout must be in [0, 1), got {self.dropout!r}")
        self.dropout = float(self.dropout)
        if self.blocks is not None:
            blocks = list(self.blocks)
            if not blocks or any(isinstance(b, bool) or not isinstance(b, int) for b in blocks):
                raise ValueError(f"LoRA blocks must be None or a non-empty list of ints, got "
                                 f"{self.blocks!r}")
            self.blocks = blocks

    @property
    def scale(self) -> float:
        """``alpha / r``, the factor applied to every low-rank update."""
        return self.alpha / self.r

    def resolve(self, depth: int) -> LoRAConfig:
        """This configuration with :attr:`blocks` as sorted, non-negative indices < ``depth``.

        Raises:
            ValueError: A block index is out of range for a model with ``depth`` blocks.
        """
        wanted = range(depth) if self.blocks is None else self.blocks
        resolved = set()
        for b in wanted:
            if not -depth <= b < depth:
                raise ValueError(f"LoRA block {b} out of range: the model has {depth} blocks")
            resolved.add(b % depth)
        return LoRAConfig(self.r, self.alpha, self.dropout, sorted(resolved))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary (inverse of :meth:`from_dict`)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> LoRAConfig:
        """Configuration from :meth:`to_dict`'s output; unknown keys are an error."""
        unknown = set(d) - {"r", "alpha", "dropout", "blocks"}
        if unknown:
            raise ValueError(f"unknown LoRA config keys {sorted(unknown)}")
        return cls(**dict(d))


class QVLoRA(nn.Module):
    """A fused ``qkv`` Linear with LoRA updates on its q and v output slices only.

    ``forward(x) = [q + s * B_q A_q drop(x), k, v + s * B_v A_v drop(x)]`` where
    ``[q, k, v] = base(x)`` and ``s = alpha / r``. ``B`` starts at zero, so a fresh adapter is an
    exact no-op; ``A`` is Kaiming-uniform, as in the LoRA paper and peft. When merged, the updates
    live in ``base.weight`` and forward is the base Linear alone.

    Attributes:
        base: The wrapped ``Linear(in_features, 3 * d)``; frozen by :func:`apply_lora`.
        d: Width of each of the q, k, v slices.
        r, alpha, scale: Rank, alpha and ``alpha / r``.
        merged: Whether the updates are currently folded into ``base.weight``.
    """

    def __init__(self, base: nn.Linear, r: int, alpha: float, dropout: float = 0.0) -> None:
        """Wraps ``base``.

        Args:
            base: The fused qkv Linear; its output features must divide by 3.
            r: Rank of the updates.
            alpha: Scale numerator (scale ``alpha / r``).
            dropout: Dropout probability on the adapters' input (training mode only).

        Raises:
            TypeError: ``base`` is not an ``nn.Linear``.
            ValueError: Its output width is not a multiple of 3.
        """
        super().__init__()
        if not isinstance(base, nn.Linear):
            raise TypeError(f"QVLoRA wraps an nn.Linear (a fused qkv), got {type(base).__name__}")
        if base.out_features % 3:
            raise ValueError(f"fused qkv output width {base.out_features} is not a multiple of 3")
        self.base = base
        self.in_features = base.in_features
        self.d = base.out_features // 3
        self.r = int(r)
        self.alpha = float(alpha)
        self.scale = self.alpha / self.r
        w = base.weight
        # float32 adapters even on a half-precision base: their updates are small and would
        # round away; autocast still runs the matmuls in half precision.
        dtype = w.dtype if w.dtype in (torch.float32, torch.float64) else torch.float32
        kw = dict(device=w.device, dtype=dtype)
        self.lora_A_q = nn.Parameter(torch.empty(self.r, self.in_features, **kw))
        self.lora_B_q = nn.Parameter(torch.empty(self.d, self.r, **kw))
        self.lora_A_v = nn.Parameter(torch.empty(self.r, self.in_features, **kw))
        self.lora_B_v = nn.Parameter(torch.empty(self.d, self.r, **kw))
        # One dropout mask shared by the q and v paths, as peft's single lora_dropout on a
        # rank-2r adapter: this is what makes export_peft exact in training mode too.
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.merged = False
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """``A`` Kaiming-uniform (``a = sqrt(5)``, as nn.Linear, LoRA and peft), ``B`` zero.

        Args:
            generator: CPU generator to draw ``A`` from (default: the global one). ``A`` is drawn
                on the CPU and copied, so one seed gives the same adapter on every device.
        """
        for a in (self.lora_A_q, self.lora_A_v):
            tmp = torch.empty(a.shape, dtype=torch.float32)
            nn.init.kaiming_uniform_(tmp, a=math.sqrt(5), generator=generator)
            a.copy_(tmp)
        for b in (self.lora_B_q, self.lora_B_v):
            nn.init.zeros_(b)

    def delta_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(s * B_q A_q, s * B_v A_v)``, each ``(d, in_features)``: what merging adds."""
        return (self.scale * (self.lora_B_q @ self.lora_A_q),
                self.scale * (self.lora_B_v @ self.lora_A_v))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)
        if self.merged:
            return out
        h = self.dropout(x)
        dq = F.linear(F.linear(h, self.lora_A_q), self.lora_B_q) * self.scale
        dv = F.linear(F.linear(h, self.lora_A_v), self.lora_B_v) * self.scale
        q, k, v = out.split(self.d, dim=-1)
        # k is concatenated as computed (not "+ 0"): its slice stays bit-identical to base(x).
        return torch.cat([q + dq.to(q.dtype), k, v + dv.to(v.dtype)], dim=-1)

    @torch.no_grad()
    def merge(self) -> None:
        """Folds the updates into the q and v rows of ``base.weight`` (k rows untouched)."""
        if self.merged:
            return
        dq, dv = self.delta_weights()
        w = self.base.weight
        w[: self.d] += dq.to(w.dtype)
        w[2 * self.d:] += dv.to(w.dtype)
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Subtracts the merged updates again (exact up to float rounding, ~1e-7 relative)."""
        if not self.merged:
            return
        dq, dv = self.delta_weights()
        w = self.base.weight
        w[: self.d] -= dq.to(w.dtype)
        w[2 * self.d:] -= dv.to(w.dtype)
        self.merged = False

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, d={self.d}, r={self.r}, alpha={self.alpha:g}, "
                f"scale={self.scale:g}, merged={self.merged}")


def _resolve_target(target: Any) -> tuple[Any, nn.Module]:
    """``(backbone or None, timm model)`` of a backbone, a timm ViT or a :class:`LoRAHandle`."""
    if isinstance(target, LoRAHandle):
        return target.backbone, target.model
    from bow_gym.backbones.base import Backbone

    if isinstance(target, Backbone):
        model = getattr(target, "model", None)
        if not getattr(target, "adaptable", False) or not isinstance(model, nn.Module):
            raise NotAdaptableError(
                f"the {target.name!r} backbone has no weights to adapt (adaptable=False): LoRA "
                "applies only to weight-based backbones such as DinoV2Backbone. Report its "
                "adaptation ablation as not applicable: a 'with LoRA' number for it would be the "
                "unadapted backbone's.")
        return target, model
    if isinstance(target, nn.Module):
        return None, target
    raise TypeError(f"expected a Backbone, a timm ViT (nn.Module) or a LoRAHandle, got "
                    f"{type(target).__name__}")


def _qkv_blocks(model: nn.Module) -> Sequence[nn.Module]:
    blocks = getattr(model, "blocks", None)
    if blocks is None or not len(blocks):
        raise TypeError(f"{type(model).__name__} has no .blocks: QV-LoRA needs a timm "
                        "VisionTransformer (blocks[i].attn.qkv)")
    for i, blk in enumerate(blocks):
        qkv = getattr(getattr(blk, "attn", None), "qkv", None)
        if not isinstance(qkv, nn.Linear | QVLoRA):
            raise TypeError(f"block {i} of {type(model).__name__} has no fused attn.qkv Linear "
                            f"(got {type(qkv).__name__}); QV-LoRA supports timm ViTs with "
                            "fused qkv (DINOv2)")
    return blocks


def base_model_identity(target: Any) -> str:
    """A string naming the base weights an adapter belongs to.

    For a :class:`~bow_gym.backbones.dinov2.DinoV2Backbone`: ``"<timm name>@<weights>"``, where
    ``weights`` is its hub tag, checkpoint hash or random seed. For a bare timm model: its
    architecture and a hash of its qkv weights (call it before merging an adapter).
    """
    backbone, model = _resolve_target(target)
    if isinstance(target, LoRAHandle):
        return target.base_identity
    if backbone is not None and hasattr(backbone, "timm_name") and hasattr(backbone, "weights"):
        return f"{backbone.timm_name}@{backbone.weights}"
    arch = (getattr(model, "pretrained_cfg", None) or {}).get("architecture") \
        or type(model).__name__
    h = hashlib.sha256()
    for blk in _qkv_blocks(model):
        qkv = blk.attn.qkv
        lin = qkv.base if isinstance(qkv, QVLoRA) else qkv
        h.update(lin.weight.detach().float().cpu().contiguous().numpy().tobytes())
    return f"{arch}@qkv-sha256-{h.hexdigest()[:16]}"


class LoRAHandle:
    """The q/v adapters applied to one model: train, merge, save, identify, remove.

    Obtained from :func:`apply_lora`, :func:`load_lora` or :func:`get_lora`.

    Attributes:
        model: The adapted timm model.
        backbone: The backbone owning it, or ``None`` when a bare model was adapted.
        config: The configuration, with :attr:`LoRAConfig.blocks` resolved to explicit indices.
        layers: Block index -> its :class:`QVLoRA`.
        base_identity: :func:`base_model_identity` of the base weights.
    """

    def __init__(self, model: nn.Module, backbone: Any, config: LoRAConfig,
                 layers: dict[int, QVLoRA], base_identity: str,
                 requires_grad_before: dict[str, bool]) -> None:
        self.model = model
        self.backbone = backbone
        self.config = config
        self.layers = layers
        self.base_identity = base_identity
        self._requires_grad_before = requires_grad_before
        self._removed = False

    # ------------------------------------------------------------------ parameters
    def named_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        """``("blocks.<i>.attn.qkv.lora_A_q", param)`` ... for every adapter parameter."""
        for i, layer in self.layers.items():
            for name in _PARAM_NAMES:
                yield f"blocks.{i}.attn.qkv.{name}", getattr(layer, name)

    def parameters(self) -> list[nn.Parameter]:
        """The trainable adapter parameters (everything else in the model is frozen)."""
        return [p for _, p in self.named_parameters()]

    def num_parameters(self) -> int:
        """Number of trainable adapter weights."""
        return sum(p.numel() for p in self.parameters())

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Detached CPU copies of the adapter weights, keyed as :meth:`named_parameters`."""
        return {k: p.detach().cpu().clone().contiguous() for k, p in self.named_parameters()}

    def load_state_dict(self, tensors: Mapping[str, torch.Tensor], source: str = "state dict"
                        ) -> None:
        """Copies adapter weights in (merged adapters are unmerged and re-merged around it).

        Raises:
            ValueError: Missing or extra keys, or a shape mismatch; ``source`` names the origin.
        """
        self._check_alive()
        expected = dict(self.named_parameters())
        missing = sorted(set(expected) - set(tensors))
        extra = sorted(set(tensors) - set(expected))
        if missing or extra:
            raise ValueError(f"{source}: adapter keys do not match this model's adapter: "
                             f"missing {missing[:4]}{'...' if len(missing) > 4 else ''}, "
                             f"unexpected {extra[:4]}{'...' if len(extra) > 4 else ''}")
        for k, p in expected.items():
            t = tensors[k]
            if tuple(t.shape) != tuple(p.shape):
                raise ValueError(f"{source}: {k} has shape {tuple(t.shape)}, this model's adapter "
                                 f"needs {tuple(p.shape)}")
        was_merged = self.merged
        self.unmerge()
        with torch.no_grad():
            for k, p in expected.items():
                p.copy_(tensors[k].to(device=p.device, dtype=p.dtype))
        if was_merged:
            self.merge()
        self.refresh()

    # ------------------------------------------------------------------ identity
    @property
    def adapter_id(self) -> str:
        """``"qvlora-r<r>-<sha256[:16]>"`` of the base identity, config and adapter weights.

        Merging does not change it: merged and unmerged adapters compute the same function.
        """
        h = hashlib.sha256()
        h.update(f"{LORA_FORMAT}/{LORA_FORMAT_VERSION}|{self.base_identity}|".encode())
        h.update(json.dumps(self.config.to_dict(), sort_keys=True).encode())
        for k, p in self.named_parameters():
            h.update(f"|{k}{tuple(p.shape)}|".encode())
            h.update(p.detach().float().cpu().contiguous().numpy().tobytes())
        return f"qvlora-r{self.config.r}-{h.hexdigest()[:16]}"

    def refresh(self) -> str:
        """Recomputes :attr:`adapter_id` and stores it as ``backbone.adapter_id``.

        Training (:func:`bow_gym.adaptation.adapt_backbone`) and loading call it; call it yourself
        after changing adapter weights by hand, or the feature cache would keep serving the
        features of the old weights under the old key.
        """
        self._check_alive()
        aid = self.adapter_id
        if self.backbone is not None and hasattr(self.backbone, "adapter_id"):
            self.backbone.adapter_id = aid
        return aid

    # ------------------------------------------------------------------ merge
    @property
    def merged(self) -> bool:
        """Whether the updates are folded into the qkv weights (fast inference path)."""
        return any(layer.merged for layer in self.layers.values())

    def merge(self) -> LoRAHandle:
        """Folds every update into its qkv weight (q and v rows only); forward then costs exactly
        the base model's. Reversible with :meth:`unmerge`. Returns ``self``."""
        self._check_alive()
        for layer in self.layers.values():
            layer.merge()
        return self

    def unmerge(self) -> LoRAHandle:
        """Takes the updates out of the qkv weights again (needed before training)."""
        self._check_alive()
        for layer in self.layers.values():
            layer.unmerge()
        return self

    def merged_base_state_dict(self) -> dict[str, torch.Tensor]:
        """The model's state dict with the adapter merged, under the base model's own keys.

        Save it with ``torch.save`` and load it as an ordinary DINOv2 checkpoint
        (``DinoV2Backbone(checkpoint=...)``): no adapter code is needed at inference time, and
        the file hashes differently, so its feature-cache key differs from the base weights'.
        """
        self._check_alive()
        was_merged = self.merged
        self.merge()
        try:
            out = {}
            for k, v in self.model.state_dict().items():
                if k.rsplit(".", 1)[-1] in _PARAM_NAMES:
                    continue
                out[k.replace(".attn.qkv.base.", ".attn.qkv.")] = v.detach().cpu().clone()
        finally:
            if not was_merged:
                self.unmerge()
        return out

    def train(self, mode: bool = True) -> LoRAHandle:
        """Training mode for the adapters only (their dropout); the base model's mode is kept."""
        for layer in self.layers.values():
            layer.train(mode)
            layer.base.train(self.model.training)
        return self

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | Path) -> Path:
        """See :func:`save_lora`."""
        return save_lora(self, path)

    def export_peft(self, directory: str | Path) -> Path:
        """See :func:`export_peft`."""
        return export_peft(self, directory)

    # ------------------------------------------------------------------ removal
    def remove(self) -> None:
        """Restores the original qkv Linears (unmerged) and ``requires_grad`` flags, and resets
        ``backbone.adapter_id`` to ``None``. The handle is unusable afterwards."""
        if self._removed:
            return
        self.unmerge()
        for i in self.layers:
            attn = self.model.blocks[i].attn
            attn.qkv = attn.qkv.base
        for name, p in self.model.named_parameters():
            if name in self._requires_grad_before:
                p.requires_grad_(self._requires_grad_before[name])
        if getattr(self.model, _HANDLE_ATTR, None) is self:
            delattr(self.model, _HANDLE_ATTR)
        if self.backbone is not None and hasattr(self.backbone, "adapter_id"):
            self.backbone.adapter_id = None
        self._removed = True

    def _check_alive(self) -> None:
        if self._removed:
            raise RuntimeError("this LoRA adapter was removed from its model")

    def __repr__(self) -> str:
        c = self.config
        return (f"LoRAHandle(r={c.r}, alpha={c.alpha:g}, dropout={c.dropout:g}, "
                f"blocks={c.blocks}, params={self.num_parameters()}, merged={self.merged}, "
                f"base={self.base_identity!r})")


def get_lora(target: Any) -> LoRAHandle | None:
    """The adapter applied to ``target`` (backbone or timm model), or ``None``.

    Raises:
        NotAdaptableError: ``target`` is a weight-free backbone.
    """
    if isinstance(target, LoRAHandle):
        return target
    _, model = _resolve_target(target)
    handle = getattr(model, _HANDLE_ATTR, None)
    return handle if isinstance(handle, LoRAHandle) else None


def apply_lora(target: Any, config: LoRAConfig | None = None, *, seed: int | None = 0
               ) -> LoRAHandle:
    """Freezes every base weight and wraps the chosen blocks' ``attn.qkv`` in :class:`QVLoRA`.

    The fresh adapter is an exact no-op (``B = 0``), but it has its own ``adapter_id``, so the
    feature cache keeps its features apart from the unadapted backbone's from the start.

    Args:
        target: A :class:`~bow_gym.backbones.dinov2.DinoV2Backbone` (its ``adapter_id`` is kept
            up to date) or a bare timm ViT with fused qkv.
        config: Rank, alpha, dropout and blocks; default :class:`LoRAConfig()`.
        seed: Seed of the ``A`` initialisation (the caller's torch RNG state is left alone);
            ``None`` draws from the global RNG.

    Returns:
        The :class:`LoRAHandle`.

    Raises:
        NotAdaptableError: ``target`` is a weight-free backbone (``adaptable = False``).
        TypeError: ``target`` is not a ViT with fused qkv.
        ValueError: A block index is out of range.
        RuntimeError: The model already carries an adapter (``remove()`` it first, or
            :func:`load_lora` weights into it).
    """
    backbone, model = _resolve_target(target)
    existing = get_lora(model)
    blocks = _qkv_blocks(model)
    if existing is not None or any(isinstance(b.attn.qkv, QVLoRA) for b in blocks):
        raise RuntimeError(f"{type(model).__name__} already has a LoRA adapter "
                           f"({existing!r}); call .remove() on it first")
    config = (config or LoRAConfig()).resolve(len(blocks))
    identity = base_model_identity(target)
    requires_grad_before = {n: p.requires_grad for n, p in model.named_parameters()}
    gen = torch.Generator().manual_seed(int(seed)) if seed is not None else None
    layers: dict[int, QVLoRA] = {}
    for i in config.blocks or []:
        layer = QVLoRA(blocks[i].attn.qkv, config.r, config.alpha, config.dropout)
        layer.reset_parameters(gen)
        layers[i] = layer
    for p in model.parameters():
        p.requires_grad_(False)
    for i, layer in layers.items():
        layer.train(model.training)
        for name in _PARAM_NAMES:
            getattr(layer, name).requires_grad_(True)
        blocks[i].attn.qkv = layer
    handle = LoRAHandle(model, backbone, config, layers, identity, requires_grad_before)
    # A plain attribute (the handle is no nn.Module): found again by get_lora and load_lora.
    setattr(model, _HANDLE_ATTR, handle)
    handle.refresh()
    return handle


def merge_lora(target: Any) -> LoRAHandle:
    """Merges the adapter of ``target`` for fast inference (see :meth:`LoRAHandle.merge`)."""
    return _require(target).merge()


def unmerge_lora(target: Any) -> LoRAHandle:
    """Unmerges the adapter of ``target`` (see :meth:`LoRAHandle.unmerge`)."""
    return _require(target).unmerge()


def remove_lora(target: Any) -> None:
    """Removes the adapter of ``target`` if any (see :meth:`LoRAHandle.remove`)."""
    handle = get_lora(target)
    if handle is not None:
        handle.remove()


def lora_state_dict(target: Any) -> dict[str, torch.Tensor]:
    """The adapter weights of ``target`` (see :meth:`LoRAHandle.state_dict`)."""
    return _require(target).state_dict()


def _require(target: Any) -> LoRAHandle:
    handle = get_lora(target)
    if handle is None:
        raise ValueError("no LoRA adapter on this model: call apply_lora() or load_lora() first")
    return handle


def save_lora(target: Any, path: str | Path) -> Path:
    """Writes the adapter to a safetensors file, atomically.

    The metadata holds ``format``, ``format_version``, ``config`` (JSON of the resolved
    :class:`LoRAConfig`), ``base_model`` (:func:`base_model_identity`), ``in_features``,
    ``qkv_slice``, ``depth`` and ``adapter_id``. Merged adapters are saved as their factors.

    Args:
        target: A :class:`LoRAHandle`, or a backbone / model carrying one.
        path: Destination file (conventionally ``*.safetensors``).

    Returns:
        The path written.
    """
    from safetensors.torch import save

    handle = _require(target)
    handle._check_alive()
    path = Path(path).expanduser()
    layer = next(iter(handle.layers.values()))
    metadata = {
        "format": LORA_FORMAT,
        "format_version": LORA_FORMAT_VERSION,
        "config": json.dumps(handle.config.to_dict(), sort_keys=True),
        "base_model": handle.base_identity,
        "in_features": str(layer.in_features),
        "qkv_slice": str(layer.d),
        "depth": str(len(handle.model.blocks)),
        "adapter_id": handle.adapter_id,
    }
    atomic_write_bytes(path, save(handle.state_dict(), metadata=metadata))
    return path


def read_lora_metadata(path: str | Path) -> dict[str, str]:
    """The safetensors metadata of an adapter file written by :func:`save_lora`.

    Raises:
        FileNotFoundError: No such file.
        ValueError: Not a safetensors file, or not a bow_gym QV-LoRA adapter.
    """
    from bow_gym.io_utils import read_checked_metadata

    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"LoRA adapter file not found: {str(path)!r}")
    return read_checked_metadata(path, fmt=LORA_FORMAT, version=LORA_FORMAT_VERSION,
                                 what="QV-LoRA adapter")


def _config_differences(a: LoRAConfig, b: LoRAConfig, names: tuple[str, str]) -> list[str]:
    return [f"{k} {getattr(a, k)!r} ({names[0]}) vs {getattr(b, k)!r} ({names[1]})"
            for k in ("r", "alpha", "dropout", "blocks") if getattr(a, k) != getattr(b, k)]


def load_lora(target: Any, path: str | Path, *, allow_other_base: bool = False) -> LoRAHandle:
    """Loads an adapter file written by :func:`save_lora` onto ``target``.

    An unadapted ``target`` gets the file's adapter; an adapted one must carry an adapter of the
    same configuration, whose weights are replaced. ``backbone.adapter_id`` is updated.

    Args:
        target: A DINOv2 backbone or timm ViT (adapted or not), or a :class:`LoRAHandle`.
        path: The safetensors file.
        allow_other_base: Load even if the file records other base weights (e.g. the same
            DINOv2 weights once from the hub and once from a local file, which hash differently).

    Returns:
        The handle of the loaded adapter.

    Raises:
        FileNotFoundError: No such file.
        NotAdaptableError: ``target`` is a weight-free backbone.
        ValueError: The file is not an adapter, was trained on other base weights, does not fit
            the model's width or depth, or differs from the adapter already on the model; the
            message names the file and what differs.
    """
    from safetensors.torch import load_file

    path = Path(path).expanduser()
    meta = read_lora_metadata(path)
    try:
        config = LoRAConfig.from_dict(json.loads(meta["config"]))
    except (KeyError, ValueError, TypeError) as e:
        raise ValueError(f"{path}: unreadable LoRA config in its metadata ({e})") from e
    _, model = _resolve_target(target)
    blocks = _qkv_blocks(model)
    handle = get_lora(target)

    here = handle.base_identity if handle is not None else base_model_identity(target)
    saved = meta.get("base_model", "?")
    if saved != here and not allow_other_base:
        raise ValueError(f"{path}: adapter was trained on base model {saved!r}, but this model is "
                         f"{here!r}; load it onto those weights, or pass allow_other_base=True")
    qkv0 = blocks[0].attn.qkv
    lin = qkv0.base if isinstance(qkv0, QVLoRA) else qkv0
    shape_here = (len(blocks), lin.in_features, lin.out_features // 3)
    shape_file = (int(meta.get("depth", -1)), int(meta.get("in_features", -1)),
                  int(meta.get("qkv_slice", -1)))
    if shape_here != shape_file:
        raise ValueError(f"{path}: adapter is for a ViT with (depth, width, qkv slice) "
                         f"{shape_file}, this model has {shape_here}")
    created = handle is None
    if handle is None:
        try:
            handle = apply_lora(target, config)
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from e
    elif handle.config != config.resolve(len(blocks)):
        diff = _config_differences(config, handle.config, ("file", "model"))
        raise ValueError(f"{path}: adapter differs from the one already on this model: "
                         f"{'; '.join(diff)}. Remove the model's adapter first "
                         "(handle.remove()) or load a matching file")
    try:
        handle.load_state_dict(load_file(str(path), device="cpu"), source=str(path))
    except Exception:
        if created:  # leave the model as it was, not with a randomly initialised adapter
            handle.remove()
        raise
    return handle


# ---------------------------------------------------------------------- peft exchange format
PEFT_WEIGHTS_NAME = "adapter_model.safetensors"
PEFT_CONFIG_NAME = "adapter_config.json"


def export_peft(target: Any, directory: str | Path) -> Path:
    """Writes the adapter in peft's layout: ``adapter_config.json`` + ``adapter_model.safetensors``.

    A q/v adapter of rank ``r`` is written, exactly, as a peft LoRA of rank ``2 r`` on each
    ``blocks.<i>.attn.qkv`` with ``lora_A = [A_q; A_v]``, ``lora_B = [[B_q, 0], [0, 0], [0, B_v]]``
    and ``lora_alpha = 2 alpha`` (so peft's ``lora_alpha / r`` equals ``alpha / r``); peft's one
    dropout before ``lora_A`` matches :class:`QVLoRA`'s shared dropout. ``PeftModel.from_pretrained
    (timm_model, directory)`` therefore computes the same features (tested). Caveat: training it
    further *in peft* would let the zero blocks of ``lora_B`` grow, i.e. adapt k too; train here,
    export for inference and exchange. The base weights' identity is only recorded as
    ``base_model_name_or_path`` (the timm name).

    Returns:
        The directory.
    """
    from peft import LoraConfig
    from safetensors.torch import save

    handle = _require(target)
    handle._check_alive()
    directory = Path(directory).expanduser()
    directory.mkdir(parents=True, exist_ok=True)
    c = handle.config
    timm_name = getattr(handle.backbone, "timm_name", None) or (
        getattr(handle.model, "pretrained_cfg", None) or {}).get("architecture")
    peft_cfg = LoraConfig(
        r=2 * c.r, lora_alpha=2 * c.alpha, lora_dropout=c.dropout, bias="none",
        target_modules=[f"blocks.{i}.attn.qkv" for i in c.blocks or []],
        base_model_name_or_path=timm_name, init_lora_weights=True)
    tensors: dict[str, torch.Tensor] = {}
    for i, layer in handle.layers.items():
        r, d = c.r, layer.d
        a = torch.cat([layer.lora_A_q.detach(), layer.lora_A_v.detach()]).float().cpu()
        b = torch.zeros(3 * d, 2 * r)
        b[:d, :r] = layer.lora_B_q.detach().float().cpu()
        b[2 * d:, r:] = layer.lora_B_v.detach().float().cpu()
        prefix = f"base_model.model.blocks.{i}.attn.qkv"
        tensors[f"{prefix}.lora_A.weight"] = a.contiguous()
        tensors[f"{prefix}.lora_B.weight"] = b.contiguous()
    with tempfile.TemporaryDirectory(dir=directory, prefix=".peft-export.") as tmp:
        peft_cfg.save_pretrained(tmp)
        Path(tmp, PEFT_WEIGHTS_NAME).write_bytes(save(tensors, metadata={"format": "pt"}))
        for name in (PEFT_CONFIG_NAME, PEFT_WEIGHTS_NAME):
            os.replace(Path(tmp, name), directory / name)
    return directory


def import_peft(target: Any, directory: str | Path) -> LoRAHandle:
    """Loads a peft LoRA written by :func:`export_peft` (or of the same q/v-only shape).

    Only adapters a :class:`QVLoRA` represents exactly are accepted: plain LoRA (no DoRA, rsLoRA,
    bias, rank or alpha patterns) of even rank ``2 r`` on ``blocks.<i>.attn.qkv`` whose ``lora_B``
    is zero on the k rows and block-diagonal on q and v. Anything else would adapt k or mix the
    q and v factors, and is refused rather than approximated. The base weights cannot be checked
    (peft records only a model name), so load it onto the weights it was trained on.

    Raises:
        FileNotFoundError: The directory lacks ``adapter_config.json`` or the weights.
        ValueError: The adapter is not representable as q/v LoRA; the message names the file.
    """
    from safetensors.torch import load_file

    directory = Path(directory).expanduser()
    cfg_path, w_path = directory / PEFT_CONFIG_NAME, directory / PEFT_WEIGHTS_NAME
    for p in (cfg_path, w_path):
        if not p.is_file():
            raise FileNotFoundError(f"peft adapter file not found: {str(p)!r}")
    cfg = json.loads(cfg_path.read_text())
    problems = []
    if cfg.get("peft_type", "LORA") != "LORA":
        problems.append(f"peft_type {cfg.get('peft_type')!r}")
    for key, ok in (("use_dora", False), ("use_rslora", False), ("bias", "none")):
        if cfg.get(key, ok) != ok:
            problems.append(f"{key}={cfg.get(key)!r}")
    for key in ("rank_pattern", "alpha_pattern"):
        if cfg.get(key):
            problems.append(f"{key} set")
    r2 = int(cfg.get("r", 0))
    if r2 < 2 or r2 % 2:
        problems.append(f"rank {r2} is not 2 x a q/v rank")
    if problems:
        raise ValueError(f"{cfg_path}: not representable as q/v LoRA: {', '.join(problems)}")
    tensors = load_file(str(w_path), device="cpu")
    pattern = re.compile(r"base_model\.model\.blocks\.(\d+)\.attn\.qkv\.lora_([AB])\.weight")
    blocks = set()
    for key in tensors:
        m = pattern.fullmatch(key)
        if m is None:
            raise ValueError(f"{w_path}: unexpected tensor {key!r}; only LoRA weights of "
                             "blocks.<i>.attn.qkv are representable as q/v LoRA")
        blocks.add(int(m.group(1)))
    r = r2 // 2
    config = LoRAConfig(r=r, alpha=float(cfg.get("lora_alpha", r2)) / 2,
                        dropout=float(cfg.get("lora_dropout", 0.0)), blocks=sorted(blocks))
    ours: dict[str, torch.Tensor] = {}
    for i in config.blocks or []:
        prefix = f"base_model.model.blocks.{i}.attn.qkv"
        a, b = tensors[f"{prefix}.lora_A.weight"], tensors.get(f"{prefix}.lora_B.weight")
        if b is None or b.shape[0] % 3 or a.shape[0] != r2 or b.shape[1] != r2:
            raise ValueError(f"{w_path}: block {i} has LoRA shapes {tuple(a.shape)}, "
                             f"{None if b is None else tuple(b.shape)}; expected (2r, C), (3d, 2r)")
        d = b.shape[0] // 3
        if b[d:2 * d].any() or b[:d, r:].any() or b[2 * d:, :r].any():
            raise ValueError(f"{w_path}: block {i}'s lora_B adapts the k slice or mixes the q and "
                             "v factors; a q/v LoRA cannot represent it")
        key = f"blocks.{i}.attn.qkv"
        ours[f"{key}.lora_A_q"], ours[f"{key}.lora_A_v"] = a[:r], a[r:]
        ours[f"{key}.lora_B_q"], ours[f"{key}.lora_B_v"] = b[:d, :r], b[2 * d:, r:]
    handle = get_lora(target)
    if handle is None:
        handle = apply_lora(target, config)
    else:
        _, model = _resolve_target(target)
        if handle.config != config.resolve(len(model.blocks)):
            diff = _config_differences(config, handle.config, ("file", "model"))
            raise ValueError(f"{directory}: adapter differs from the one already on this model: "
                             f"{'; '.join(diff)}")
    handle.load_state_dict(ours, source=str(w_path))
    return handle
