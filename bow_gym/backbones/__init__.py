"""Patch-feature backbones and their registry.

``create_backbone("dinov2_vits14", checkpoint="weights.safetensors")`` or
``create_backbone("lab_texture")``; ``list_backbones()`` names them all. Heavy dependencies
(torch, timm) are imported only when a backbone that needs them is built; the LoRA names
(``apply_lora``, ``LoRAConfig``, ... from :mod:`bow_gym.backbones.lora`) are re-exported lazily
for the same reason.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

from bow_gym.backbones.base import Backbone, l2_normalize
from bow_gym.backbones.cache import FeatureCache, image_key
from bow_gym.backbones.dinov2 import DINOV2_MODELS, DinoV2Backbone, resolve_dinov2_name

# Re-exported from bow_gym.backbones.lora on first access (it imports torch).
_LORA_EXPORTS = (
    "LoRAConfig",
    "LoRAHandle",
    "NotAdaptableError",
    "QVLoRA",
    "apply_lora",
    "base_model_identity",
    "export_peft",
    "get_lora",
    "import_peft",
    "load_lora",
    "lora_state_dict",
    "merge_lora",
    "read_lora_metadata",
    "remove_lora",
    "save_lora",
    "unmerge_lora",
)

__all__ = [
    "BACKBONES",
    "Backbone",
    "DINOV2_MODELS",
    "DinoV2Backbone",
    "FeatureCache",
    "create_backbone",
    "image_key",
    "l2_normalize",
    "list_backbones",
    *_LORA_EXPORTS,
]


def _lab_texture(**kwargs: Any) -> Backbone:
    # Imported on demand: the module is optional here and may not exist in every checkout.
    from bow_gym.backbones.lab_texture import LabTextureBackbone

    return LabTextureBackbone(**kwargs)


def _dinov2(short_name: str, **kwargs: Any) -> Backbone:
    return DinoV2Backbone(short_name, **kwargs)


#: Registry name -> factory taking the backbone's keyword arguments.
BACKBONES: dict[str, Callable[..., Backbone]] = {
    "lab_texture": _lab_texture,
    **{short: partial(_dinov2, short) for short in DINOV2_MODELS},
}


def list_backbones() -> list[str]:
    """Sorted registry names (timm DINOv2 names are accepted by :func:`create_backbone` too)."""
    return sorted(BACKBONES)


def create_backbone(name: str, **kwargs: Any) -> Backbone:
    """Builds a backbone by registry name.

    Args:
        name: A name from :func:`list_backbones`, or a timm DINOv2 name
            (``"vit_small_patch14_dinov2"``, optionally with its ``.lvd142m`` tag).
        **kwargs: Passed to the backbone's constructor (e.g. ``grid=`` for ``"lab_texture"``;
            ``checkpoint=``, ``pretrained=``, ``input_size=`` ... for DINOv2).

    Raises:
        ValueError: Unknown name; the message lists the valid names.
    """
    factory = BACKBONES.get(name)
    if factory is not None:
        return factory(**kwargs)
    try:
        resolve_dinov2_name(name)
    except ValueError:
        raise ValueError(
            f"unknown backbone {name!r}; valid names: {', '.join(list_backbones())} "
            "(or a timm DINOv2 name such as 'vit_small_patch14_dinov2')") from None
    return DinoV2Backbone(name, **kwargs)


def __getattr__(name: str) -> Any:
    if name in _LORA_EXPORTS:
        from bow_gym.backbones import lora

        return getattr(lora, name)
    raise AttributeError(f"module 'bow_gym.backbones' has no attribute {name!r}")
