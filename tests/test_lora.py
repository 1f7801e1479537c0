"""q/v LoRA on timm DINOv2 and its triplet adaptation on pseudo-labels.

No pretrained weights exist here: every ViT is a seeded random ViT-S/14, loaded from a checkpoint
this file writes (the path real DINOv2 weights take, ``checkpoint=`` -> timm's
``pretrained_cfg_overlay=dict(file=...)``). In that checkpoint the LayerScale gammas are set to
1.0: a fresh timm DINOv2 initialises them to 1e-5, which mutes every attention branch (nothing q/v
LoRA could change) and drives backward passes into denormal floats; trained DINOv2 gammas are of
order 0.1-1. The synthetic data set's ground-truth masks stand in for pseudo-masks in the training
test: it tests the optimiser, not the protocol (the benchmark feeds real pseudo-masks).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("timm")

from bow_gym.adaptation import (  # noqa: E402
    TripletConfig,
    adapt_backbone,
    cosine_gap,
    gives_triplets,
    mean_cosine_gap,
    patch_labels,
    sample_triplets,
    triplet_loss,
)
from bow_gym.backbones import DinoV2Backbone, FeatureCache  # noqa: E402
from bow_gym.backbones.lab_texture import LabTextureBackbone  # noqa: E402
from bow_gym.backbones.lora import (  # noqa: E402
    LoRAConfig,
    NotAdaptableError,
    QVLoRA,
    apply_lora,
    export_peft,
    get_lora,
    import_peft,
    load_lora,
    lora_state_dict,
    merge_lora,
    read_lora_metadata,
    save_lora,
)

SMALL = 56  # 4 x 4 patches: fast, for everything but training
TRAIN = 112  # 8 x 8 patches: enough to separate synthetic lesions


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    src = DinoV2Backbone("dinov2_vits14", pretrained=False, input_size=TRAIN, seed=0,
                         device="cpu")
    state = src.model.state_dict()
    for k in state:
        if k.endswith(".gamma"):  # LayerScale: see the module docstring
            state[k] = torch.ones_like(state[k])
    path = tmp_path_factory.mktemp("ckpt") / "vits14_seed0_ls1.pth"
    torch.save(state, path)
    return path


def _vit(checkpoint: Path, size: int = SMALL) -> DinoV2Backbone:
    return DinoV2Backbone("dinov2_vits14", checkpoint=checkpoint, input_size=size, device="cpu")


def _images(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (60, 75, 3), dtype=np.uint8) for _ in range(n)]


def _randomize(handle, seed: int = 1, std: float = 0.05) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in handle.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * std)
    handle.refresh()


# ---------------------------------------------------------------------- the adapter itself
def test_timm_qkv_layout_k_slice_untouched_q_v_changed(checkpoint: Path) -> None:
    bb = _vit(checkpoint)
    attn = bb.model.blocks[3].attn
    x = torch.randn(2, 17, bb.dim)
    with torch.no_grad():
        before = attn.qkv(x)
    handle = apply_lora(bb, LoRAConfig(r=4, alpha=8.0))
    _randomize(handle)
    with torch.no_grad():
        after = attn.qkv(x)

    def split(out):  # exactly timm's Attention.forward
        b, n, _ = out.shape
        return out.reshape(b, n, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4).unbind(0)

    (q0, k0, v0), (q1, k1, v1) = split(before), split(after)
    assert torch.equal(k0, k1)  # bit for bit
    assert not torch.allclose(q0, q1, atol=1e-4)
    assert not torch.allclose(v0, v1, atol=1e-4)


def test_zero_init_is_exact_noop_but_has_its_own_cache_key(checkpoint: Path) -> None:
    bb = _vit(checkpoint)
    ims = _images(3)
    base_feats, base_key = bb.extract(ims), bb.cache_key
    handle = apply_lora(bb)
    assert all(not layer.lora_B_q.any() and not layer.lora_B_v.any()
               for layer in handle.layers.values())
    assert np.array_equal(bb.extract(ims), base_feats)
    assert bb.adapter_id == handle.adapter_id and bb.cache_key != base_key


def test_scale_is_float_alpha_over_r(checkpoint: Path) -> None:
    cfg = LoRAConfig(r=3, alpha=4)
    assert cfg.scale == pytest.approx(4 / 3)
    bb = _vit(checkpoint)
    handle = apply_lora(bb, cfg)
    _randomize(handle)
    layer = handle.layers[0]
    assert layer.scale == pytest.approx(4 / 3)
    x = torch.randn(5, bb.dim)
    with torch.no_grad():
        got = layer(x)[:, : layer.d] - layer.base(x)[:, : layer.d]
        want = (4 / 3) * x @ layer.lora_A_q.T @ layer.lora_B_q.T
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


def test_only_chosen_blocks_adapted_and_only_lora_trains(checkpoint: Path) -> None:
    bb = _vit(checkpoint)
    flags = {n: p.requires_grad for n, p in bb.model.named_parameters()}
    handle = apply_lora(bb, LoRAConfig(r=2, blocks=[0, -1]))
    depth = len(bb.model.blocks)
    assert sorted(handle.layers) == handle.config.blocks == [0, depth - 1]
    for i, blk in enumerate(bb.model.blocks):
        assert isinstance(blk.attn.qkv, QVLoRA) == (i in (0, depth - 1))
    trainable = [n for n, p in bb.model.named_parameters() if p.requires_grad]
    assert trainable and all(n.rsplit(".", 1)[-1].startswith("lora_") for n in trainable)
    assert len(trainable) == 2 * 4
    assert sum(p.numel() for p in handle.parameters()) == handle.num_parameters() \
        == 2 * 2 * (2 * bb.dim * 2)
    with pytest.raises(RuntimeError, match="already has a LoRA adapter"):
        apply_lora(bb)
    handle.remove()
    assert all(isinstance(b.attn.qkv, torch.nn.Linear) for b in bb.model.blocks)
    assert {n: p.requires_grad for n, p in bb.model.named_parameters()} == flags
    assert bb.adapter_id is None and get_lora(bb) is None
    with pytest.raises(ValueError, match="out of range"):
        apply_lora(bb, LoRAConfig(blocks=[depth]))
    with pytest.raises(ValueError, match="rank"):
        LoRAConfig(r=0)


def test_merge_equals_unmerged_and_is_the_plain_linear(checkpoint: Path) -> None:
    bb = _vit(checkpoint)
    ims = _images(2)
    handle = apply_lora(bb, LoRAConfig(r=4, alpha=4.0, blocks=[1, 5, 9]))
    _randomize(handle)
    layer = handle.layers[5]
    w_before = layer.base.weight.detach().clone()
    unmerged, aid = bb.extract(ims), bb.adapter_id
    merge_lora(bb)
    assert handle.merged and bb.adapter_id == aid  # same function, same cache entries
    np.testing.assert_allclose(bb.extract(ims), unmerged, atol=1e-5)
    d = layer.d
    w = layer.base.weight.detach()
    assert torch.equal(w[d:2 * d], w_before[d:2 * d])  # k rows never touched
    assert not torch.equal(w[:d], w_before[:d]) and not torch.equal(w[2 * d:], w_before[2 * d:])
    x = torch.randn(3, bb.dim)
    with torch.no_grad():
        # The merged forward is the base Linear alone: no adapter matmuls left.
        assert torch.equal(layer(x), layer.base(x))
    handle.unmerge()
    torch.testing.assert_close(layer.base.weight.detach(), w_before, atol=1e-6, rtol=0)


def test_merged_weights_load_as_a_plain_checkpoint(checkpoint: Path, tmp_path: Path) -> None:
    bb = _vit(checkpoint)
    ims = _images(2)
    handle = apply_lora(bb, LoRAConfig(r=4, blocks=[0, 6]))
    _randomize(handle)
    path = tmp_path / "merged.pth"
    torch.save(handle.merged_base_state_dict(), path)
    assert not handle.merged  # left as it was
    plain = _vit(path)
    assert get_lora(plain) is None and plain.cache_key != _vit(checkpoint).cache_key
    np.testing.assert_allclose(plain.extract(ims), bb.extract(ims), atol=1e-5)


def test_save_load_round_trip(checkpoint: Path, tmp_path: Path) -> None:
    bb = _vit(checkpoint)
    ims = _images(2)
    handle = apply_lora(bb, LoRAConfig(r=3, alpha=5.0, dropout=0.1, blocks=[2, 4]))
    _randomize(handle)
    reference = bb.extract(ims)
    handle.merge()  # saved as factors either way
    path = save_lora(bb, tmp_path / "adapter.safetensors")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter.safetensors"]  # no temp left
    meta = read_lora_metadata(path)
    assert json.loads(meta["config"]) == {"r": 3, "alpha": 5.0, "dropout": 0.1, "blocks": [2, 4]}
    assert meta["base_model"] == f"{bb.timm_name}@{bb.weights}"
    assert meta["adapter_id"] == bb.adapter_id

    fresh = _vit(checkpoint)
    loaded = load_lora(fresh, path)
    assert loaded.config == handle.config and fresh.adapter_id == bb.adapter_id
    np.testing.assert_array_equal(fresh.extract(ims), reference)
    for k, v in lora_state_dict(fresh).items():
        assert torch.equal(v, handle.state_dict()[k])
    # Loading into an adapter of the same shape replaces its weights.
    other = _vit(checkpoint)
    h2 = apply_lora(other, LoRAConfig(r=3, alpha=5.0, dropout=0.1, blocks=[2, 4]), seed=7)
    assert load_lora(other, path) is h2 and other.adapter_id == bb.adapter_id


def test_load_errors_name_the_file_and_what_differs(checkpoint: Path, tmp_path: Path) -> None:
    bb = _vit(checkpoint)
    _randomize(apply_lora(bb, LoRAConfig(r=4, blocks=[0, 1])))
    path = save_lora(bb, tmp_path / "polyp_r4.safetensors")

    random_base = DinoV2Backbone("dinov2_vits14", pretrained=False, input_size=SMALL, seed=1,
                                 device="cpu")
    with pytest.raises(ValueError, match=r"polyp_r4\.safetensors.*base model") as e:
        load_lora(random_base, path)
    assert "random-seed1" in str(e.value) and bb.weights in str(e.value)
    assert get_lora(random_base) is None  # nothing half-applied
    assert load_lora(random_base, path, allow_other_base=True).config.r == 4

    other_cfg = _vit(checkpoint)
    apply_lora(other_cfg, LoRAConfig(r=2, blocks=[0, 1]))
    with pytest.raises(ValueError, match=r"polyp_r4\.safetensors.*r 4 \(file\) vs 2 \(model\)"):
        load_lora(other_cfg, path)

    not_adapter = tmp_path / "weights.safetensors"
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(not_adapter))
    with pytest.raises(ValueError, match=r"weights\.safetensors.*not a bow_gym QV-LoRA"):
        load_lora(_vit(checkpoint), not_adapter)
    with pytest.raises(FileNotFoundError, match="missing.safetensors"):
        load_lora(bb, tmp_path / "missing.safetensors")


def test_feature_cache_never_mixes_adapted_and_unadapted(checkpoint: Path,
                                                         tmp_path: Path) -> None:
    bb = _vit(checkpoint)
    cache = FeatureCache(bb, tmp_path / "cache")
    im = _images(1)[0]
    base = cache.get(im)
    base_dir = cache.directory
    handle = apply_lora(bb)
    _randomize(handle)
    adapted = cache.get(im)
    assert cache.directory != base_dir and cache.misses == 2
    assert not np.allclose(adapted, base, atol=1e-3)
    np.testing.assert_array_equal(adapted, bb.extract(im).astype(np.float16).astype(np.float32))
    # New weights, new key: training or loading refreshes it; by hand, refresh() does.
    _randomize(handle, seed=2)
    assert cache.get(im).tobytes() != adapted.tobytes()
    handle.remove()
    assert cache.directory == base_dir
    np.testing.assert_array_equal(cache.get(im), base)
    assert cache.hits == 1


def test_weight_free_backbone_refuses_lora_and_adapts_its_head_instead() -> None:
    lab = LabTextureBackbone()
    assert lab.adaptable is False
    with pytest.raises(NotAdaptableError, match="no weights to adapt"):
        apply_lora(lab)
    assert issubclass(NotAdaptableError, TypeError)
    image, mask = np.zeros((32, 32, 3), np.uint8), np.zeros((32, 32), bool)
    with pytest.raises(ValueError, match="adapted through a feature head"):
        adapt_backbone(lab, [image], [mask], lora=LoRAConfig())
    # its stand-in (bow_gym.backbones.head) is trained, but a blank pseudo-mask has no triplet
    with pytest.raises(ValueError, match="none of the 1 pseudo-masks gives a triplet"):
        adapt_backbone(lab, [image], [mask])
    assert lab.adapter_id is None  # nothing attached by a refused call


@pytest.mark.slow  # importing peft (and transformers) alone takes seconds
def test_peft_export_is_faithful_and_imports_back(checkpoint: Path, tmp_path: Path) -> None:
    from peft import PeftModel

    bb = _vit(checkpoint)
    handle = apply_lora(bb, LoRAConfig(r=2, alpha=3.0, blocks=[0, 7]))
    _randomize(handle)
    export_peft(bb, tmp_path / "peft")
    assert {p.name for p in (tmp_path / "peft").iterdir()} == {"adapter_config.json",
                                                               "adapter_model.safetensors"}
    peft_model = PeftModel.from_pretrained(_vit(checkpoint).model, str(tmp_path / "peft")).eval()
    timm_model = peft_model.base_model.model
    assert type(timm_model.blocks[0].attn.qkv).__module__.startswith("peft")
    assert isinstance(timm_model.blocks[1].attn.qkv, torch.nn.Linear)
    x = torch.randn(2, 3, SMALL, SMALL)
    with torch.no_grad():
        torch.testing.assert_close(timm_model.forward_features(x), bb.model.forward_features(x),
                                   atol=1e-5, rtol=1e-5)

    back = _vit(checkpoint)
    assert import_peft(back, tmp_path / "peft").adapter_id == handle.adapter_id

    # A peft LoRA that also adapts k is refused, not approximated.
    from safetensors.torch import load_file, save_file

    w = tmp_path / "peft" / "adapter_model.safetensors"
    tensors = load_file(str(w))
    key = "base_model.model.blocks.0.attn.qkv.lora_B.weight"
    d = tensors[key].shape[0] // 3
    tensors[key][d] = 1.0
    save_file(tensors, str(w))
    with pytest.raises(ValueError, match="k slice"):
        import_peft(_vit(checkpoint), tmp_path / "peft")


# ---------------------------------------------------------------------- triplet adaptation
def test_patch_labels_by_area_and_purity() -> None:
    mask = np.zeros((40, 40), bool)
    mask[:20, :20] = True  # patch (0, 0) full
    mask[:20, 20:28] = True  # patch (0, 1): 40% fg
    mask[20:40, 20:36] = True  # patch (1, 1): 80% fg
    lab = patch_labels(mask, (2, 2), purity=0.75)
    np.testing.assert_array_equal(lab, [[1, -1], [0, 1]])
    np.testing.assert_array_equal(patch_labels(mask, (2, 2), purity=0.5), [[1, 0], [0, 1]])
    np.testing.assert_array_equal(patch_labels(mask, (2, 2), purity=1.0), [[1, -1], [0, -1]])


def test_sample_triplets_classes_and_edge_cases() -> None:
    rng = np.random.default_rng(0)
    lab = np.zeros((6, 6), np.int8)
    lab[1:4, 1:4] = 1
    lab[0, 5] = -1
    t = sample_triplets(lab, rng, 100)
    flat = lab.ravel()
    assert t.shape == (100, 3)
    assert np.all(t[:, 0] != t[:, 1])
    assert np.all(flat[t[:, 0]] == flat[t[:, 1]]) and np.all(flat[t[:, 0]] != flat[t[:, 2]])
    assert np.all(flat[t] >= 0)  # skipped patches never drawn
    assert set(np.unique(flat[t[:, 0]])) == {0, 1}  # both directions
    for empty in (np.zeros((6, 6)), np.ones((6, 6)), -np.ones((6, 6))):
        assert sample_triplets(empty, rng, 10).shape == (0, 3) and not gives_triplets(empty)
    with pytest.raises(ValueError, match="none of the 2 pseudo-masks gives a triplet"):
        adapt_backbone(DinoV2Backbone(pretrained=False, input_size=SMALL, device="cpu"),
                       _images(2), [np.zeros((60, 75), bool), np.ones((60, 75), bool)],
                       progress=False)


def test_cosine_gap() -> None:
    lab = np.array([[1, 1], [0, 0]])
    feats = np.array([[[1.0, 0], [1, 0]], [[0, 1.0], [0, 1]]])
    assert cosine_gap(feats, lab) == pytest.approx(1.0)
    assert math.isnan(cosine_gap(feats, np.ones((2, 2))))
    rng = np.random.default_rng(0)
    f = rng.normal(size=(5, 5, 8))
    f /= np.linalg.norm(f, axis=-1, keepdims=True)
    lab = rng.integers(-1, 2, (5, 5))
    x, y = f.reshape(25, 8), lab.ravel()

    def mean_sim(a: int, b: int) -> float:
        return np.mean([x[i] @ x[j] for i in range(25) for j in range(25)
                        if y[i] == a and y[j] == b and i != j])

    want = 0.5 * (mean_sim(1, 1) + mean_sim(0, 0)) - mean_sim(1, 0)
    assert cosine_gap(f, lab) == pytest.approx(want)


def test_triplet_adaptation_separates_pseudo_classes(checkpoint: Path) -> None:
    from bow_gym.datasets.synthetic import SyntheticDataset

    data = SyntheticDataset(n_images=8, size=112)
    images = [s.image for s in data]
    pseudo_masks = [s.mask for s in data]  # stand-ins for pseudo-masks (see module docstring)
    bb = _vit(checkpoint, TRAIN)
    key_before = bb.cache_key
    cfg = TripletConfig(steps=12, batch_size=4, triplets_per_image=32, lr=3e-3, seed=0)
    loss_before = triplet_loss(bb, images, pseudo_masks, cfg)
    gap_before = mean_cosine_gap(bb, images, pseudo_masks)
    hist = adapt_backbone(bb, images, pseudo_masks, cfg, lora=LoRAConfig(r=4, alpha=8.0),
                          progress=False)
    loss_after = triplet_loss(bb, images, pseudo_masks, cfg)
    gap_after = mean_cosine_gap(bb, images, pseudo_masks)
    assert len(hist.losses) == 12 and hist.images_skipped == [] and hist.amp is None
    # Fixed triplets before vs after, and the noisier per-batch training losses.
    assert loss_after < 0.8 * loss_before
    assert np.mean(hist.losses[-4:]) < np.mean(hist.losses[:4])
    assert gap_after > gap_before + 0.05
    assert bb.cache_key != key_before and bb.adapter_id == hist.adapter_id
    assert not hist.handle.merged and bb.model.training is False


def test_adaptation_is_seeded(checkpoint: Path) -> None:
    from bow_gym.datasets.synthetic import SyntheticDataset

    data = SyntheticDataset(n_images=4, size=112)
    images, masks = [s.image for s in data], [s.mask for s in data]
    cfg = TripletConfig(steps=2, batch_size=2, triplets_per_image=16, lr=1e-3, seed=3)
    runs = []
    for _ in range(2):
        bb = _vit(checkpoint, TRAIN)
        runs.append(adapt_backbone(bb, images, masks, cfg, lora=LoRAConfig(r=2), progress=False))
    assert runs[0].losses == runs[1].losses and runs[0].adapter_id == runs[1].adapter_id
