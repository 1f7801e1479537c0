"""The feature head on the weight-free backbone: LoRA's CPU stand-in (bow_gym.backbones.head)."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from bow_gym.adaptation import (  # noqa: E402
    TripletConfig,
    adapt_backbone,
    load_adapter,
    mean_cosine_gap,
    save_adapter,
    triplet_loss,
)
from bow_gym.backbones import FeatureCache, create_backbone  # noqa: E402
from bow_gym.backbones.head import (  # noqa: E402
    HeadConfig,
    apply_head,
    get_head,
    load_head,
    save_head,
)
from bow_gym.datasets import make_dataset  # noqa: E402


@pytest.fixture(scope="module")
def data():
    ds = make_dataset("synthetic", n_images=24, flavour="polyp")
    return [ds[i].image for i in range(len(ds))], [ds[i].mask for i in range(len(ds))]


@pytest.mark.parametrize("image_width", [0, 4])
def test_fresh_head_is_a_no_op_with_its_own_cache_key(data, image_width):
    images, _ = data
    lab = create_backbone("lab_texture")
    base = lab.extract(images[:3])
    key = lab.cache_key
    handle = apply_head(lab, HeadConfig(image_width=image_width), seed=1)
    np.testing.assert_allclose(lab.extract(images[:3]), base, atol=1e-6)
    assert lab.cache_key != key and lab.cache_key.startswith(key)
    assert handle.adapter_id in lab.cache_key
    handle.remove()
    assert lab.cache_key == key and get_head(lab) is None


def test_head_adaptation_separates_the_pseudo_classes_and_round_trips(data, tmp_path):
    images, masks = data
    lab = create_backbone("lab_texture")
    cfg = TripletConfig(steps=150, batch_size=8, lr=3e-3, seed=0)
    gap0, loss0 = mean_cosine_gap(lab, images, masks), triplet_loss(lab, images, masks, cfg)
    hist = adapt_backbone(lab, images, masks, cfg, head=HeadConfig(), progress=False)
    gap1, loss1 = mean_cosine_gap(lab, images, masks), triplet_loss(lab, images, masks, cfg)
    assert gap1 > gap0 + 0.05 and loss1 < 0.7 * loss0
    assert hist.adapter_id == lab.adapter_id and lab.adapter_id.startswith("head-")
    adapted = lab.extract(images[:4])
    np.testing.assert_allclose(np.linalg.norm(adapted, axis=-1), 1.0, atol=1e-5)

    path = save_adapter(lab, tmp_path / "adapter.safetensors")
    fresh = create_backbone("lab_texture")
    load_adapter(fresh, path)
    assert fresh.cache_key == lab.cache_key
    np.testing.assert_array_equal(fresh.extract(images[:4]), adapted)
    # The cache (float16 on disk) keeps adapted and base features apart.
    cache = FeatureCache(fresh, tmp_path / "cache")
    np.testing.assert_allclose(cache.get(images[0]), adapted[0], atol=1e-3)
    fresh.head.remove()
    assert not np.allclose(cache.get(images[0]), adapted[0], atol=1e-2)


def test_head_training_is_seeded(data):
    images, masks = data
    feats = []
    for _ in range(2):
        lab = create_backbone("lab_texture")
        adapt_backbone(lab, images, masks, TripletConfig(steps=20, seed=3), progress=False)
        feats.append(lab.extract(images[:2]))
    np.testing.assert_array_equal(*feats)


def test_head_files_are_checked(data, tmp_path):
    lab = create_backbone("lab_texture")
    apply_head(lab, HeadConfig(hidden=8))
    path = save_head(lab, tmp_path / "h.safetensors")
    with pytest.raises(ValueError, match="trained on"):
        load_head(create_backbone("lab_texture", grid=8, cell=16), path)
    other = create_backbone("lab_texture")
    apply_head(other, HeadConfig(hidden=16))
    with pytest.raises(ValueError, match="differs"):
        load_head(other, path)
    (tmp_path / "junk.safetensors").write_bytes(b"not a file")
    with pytest.raises(ValueError, match="junk.safetensors"):
        load_head(create_backbone("lab_texture"), tmp_path / "junk.safetensors")
    with pytest.raises(FileNotFoundError):
        load_head(create_backbone("lab_texture"), tmp_path / "missing.safetensors")
    with pytest.raises(ValueError, match="image_width"):
        HeadConfig(image_width=-1)
