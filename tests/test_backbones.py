"""Backbones (DINOv2 via timm, random-initialised or from checkpoints written here) and the cache.

No test downloads anything: the hub is monkeypatched away, and "pretrained" checkpoints are
random models the tests save themselves. The ViTs are ViT-S/14 at 56 px (a 4 x 4 grid) for speed.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from bow_gym.backbones import (
    BACKBONES,
    Backbone,
    DinoV2Backbone,
    FeatureCache,
    create_backbone,
    image_key,
    list_backbones,
)

torch = pytest.importorskip("torch")
pytest.importorskip("timm")

SIZE = 56  # 4 x 4 patches of 14 px


def _images(n: int, seed: int = 0, shape: tuple[int, int] = (70, 90)) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (*shape, 3), dtype=np.uint8) for _ in range(n)]


@pytest.fixture(scope="module")
def vit() -> DinoV2Backbone:
    return DinoV2Backbone("dinov2_vits14", pretrained=False, input_size=SIZE, seed=0, device="cpu")


@pytest.fixture(scope="module")
def vit_seed1() -> DinoV2Backbone:
    return DinoV2Backbone("dinov2_vits14", pretrained=False, input_size=SIZE, seed=1, device="cpu")


@pytest.fixture(scope="module")
def checkpoint(vit: DinoV2Backbone, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ckpt") / "vits14_seed0.pth"
    torch.save(vit.model.state_dict(), path)
    return path


@pytest.fixture(scope="module")
def loaded(checkpoint: Path) -> DinoV2Backbone:
    # seed=1: were the file ignored, the features would be those of vit_seed1.
    return DinoV2Backbone(checkpoint=checkpoint, input_size=SIZE, seed=1, device="cpu")


@pytest.fixture(scope="module")
def big(checkpoint: Path) -> DinoV2Backbone:
    return DinoV2Backbone(checkpoint=checkpoint, input_size=2 * SIZE, device="cpu")


# ---------------------------------------------------------------------------------------- DINOv2


def test_dinov2_shape_norms_and_prefix_tokens(vit: DinoV2Backbone) -> None:
    assert vit.grid == (4, 4) and vit.dim == 384 and vit.adaptable
    assert vit.num_prefix_tokens == 1
    ims = _images(3) + [np.zeros((20, 30, 3), np.uint8)]  # an upscaled one too
    feats = vit.extract(ims)
    assert feats.shape == (4, 4, 4, 384) and feats.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(feats, axis=-1), 1.0, atol=1e-5)
    single = vit.extract(ims[0])
    assert single.shape == (4, 4, 384)
    np.testing.assert_allclose(single, feats[0], atol=1e-5)

    # timm's own spatial path (drops prefix tokens, reshapes to a grid) must agree with ours.
    x = torch.from_numpy(vit.preprocess(ims[:2]))
    with torch.inference_mode():
        ref = vit.model.forward_intermediates(
            x, indices=1, norm=True, output_fmt="NCHW", intermediates_only=True)[-1]
    ref = ref.permute(0, 2, 3, 1).numpy()
    ref /= np.linalg.norm(ref, axis=-1, keepdims=True)
    np.testing.assert_allclose(feats[:2], ref, atol=1e-5)


def test_dinov2_batching_and_train_mode_do_not_change_features(vit: DinoV2Backbone) -> None:
    ims = _images(3, seed=3)
    ref = vit.extract(ims)
    old_bs = vit.batch_size
    vit.batch_size = 2
    vit.model.train()
    try:
        np.testing.assert_allclose(vit.extract(ims), ref, atol=1e-5)
        assert vit.model.training, "extract must hand the model back in the mode it found it"
    finally:
        vit.batch_size = old_bs
        vit.model.eval()


def test_dinov2_random_init_is_seeded(vit: DinoV2Backbone, vit_seed1: DinoV2Backbone) -> None:
    torch.manual_seed(123)
    state = torch.get_rng_state()
    again = DinoV2Backbone(pretrained=False, input_size=SIZE, seed=0, device="cpu")
    assert torch.equal(torch.get_rng_state(), state), "global RNG state must be restored"
    ims = _images(2)
    np.testing.assert_array_equal(again.extract(ims), vit.extract(ims))
    assert np.abs(vit_seed1.extract(ims) - vit.extract(ims)).max() > 1e-2


def test_dinov2_pretrained_offline_raises_helpful_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import timm.models._builder as builder

    calls = []

    def offline(model, pretrained_cfg=None, **kwargs):
        calls.append(dict(pretrained_cfg or {}))
        raise OSError("no network (test)")

    # Without this the real hub attempt retries for about a minute before failing.
    monkeypatch.setattr(builder, "load_pretrained", offline)
    with pytest.raises(RuntimeError) as info:
        DinoV2Backbone("dinov2_vits14", input_size=SIZE, device="cpu")
    msg = str(info.value)
    assert "checkpoint=" in msg and "pretrained=False" in msg and "safetensors" in msg
    assert isinstance(info.value.__cause__, OSError)
    assert len(calls) == 1 and not calls[0].get("file"), "must have tried the hub, not a file"


@pytest.mark.parametrize("fmt", ["pth", "safetensors"])
def test_dinov2_local_checkpoint_reproduces_saved_model(
    fmt: str, vit: DinoV2Backbone, vit_seed1: DinoV2Backbone, loaded: DinoV2Backbone,
    tmp_path: Path,
) -> None:
    if fmt == "safetensors":
        from safetensors.torch import save_file

        path = tmp_path / "w.safetensors"
        save_file({k: v.contiguous() for k, v in vit.model.state_dict().items()}, str(path))
        loaded = DinoV2Backbone(checkpoint=path, input_size=SIZE, seed=1, device="cpu")
    ims = _images(2, seed=5)
    feats = loaded.extract(ims)
    np.testing.assert_allclose(feats, vit.extract(ims), atol=1e-6)
    assert np.abs(feats - vit_seed1.extract(ims)).max() > 1e-2
    assert loaded.weights.startswith("file-") and len(loaded.weights) == len("file-") + 16


def test_dinov2_checkpoint_that_does_not_fit_names_the_file(
    vit: DinoV2Backbone, tmp_path: Path
) -> None:
    state = vit.model.state_dict()
    del state["blocks.0.attn.qkv.weight"]
    path = tmp_path / "broken.pth"
    torch.save(state, path)
    with pytest.raises(RuntimeError, match="broken.pth"):
        DinoV2Backbone(checkpoint=path, input_size=SIZE, device="cpu")


def test_dinov2_checkpoint_pos_embed_resampled_to_input_size(big: DinoV2Backbone) -> None:
    # The checkpoint was saved at 56 px (4 x 4 position embeddings); they are resized from there
    # by the official rule (tests/test_dinov2_fidelity.py checks the values).
    assert big.grid == (8, 8)
    assert big.model.pos_embed.shape[1] == 1 + 8 * 8
    assert big.extract(_images(1)[0]).shape == (8, 8, 384)


def test_dinov2_argument_errors(tmp_path: Path) -> None:
    missing = tmp_path / "nope.safetensors"
    with pytest.raises(FileNotFoundError, match="nope.safetensors"):
        DinoV2Backbone(checkpoint=missing, input_size=SIZE)
    with pytest.raises(ValueError, match=r"input_size.*210"):
        DinoV2Backbone(pretrained=False, input_size=200)
    for bad in (0, -14, 13):
        with pytest.raises(ValueError, match="input_size"):
            DinoV2Backbone(pretrained=False, input_size=bad)
    with pytest.raises(ValueError, match="dinov2_vits14"):
        DinoV2Backbone("dinov3_vits16", pretrained=False)
    with pytest.raises(ValueError, match="pretrained=False"):
        DinoV2Backbone(pretrained=False, checkpoint=missing)


def test_dinov2_cache_key_tracks_weights_size_and_adapter(
    vit: DinoV2Backbone, vit_seed1: DinoV2Backbone, loaded: DinoV2Backbone, big: DinoV2Backbone,
) -> None:
    keys = {vit.cache_key, vit_seed1.cache_key, loaded.cache_key, big.cache_key}
    assert len(keys) == 4
    # "officialpos": features from before position embeddings followed the official DINOv2
    # rule are never reused.
    assert vit.cache_key == "dinov2_vits14_56px_random-seed0_officialpos"
    assert loaded.cache_key == f"dinov2_vits14_56px_{loaded.weights}_officialpos"
    assert big.cache_key == f"dinov2_vits14_112px_{loaded.weights}_officialpos"  # same file
    try:
        vit.adapter_id = "lora r8/epoch 3"  # unsafe characters on purpose
        adapted = vit.cache_key
        vit.adapter_id = "lora r8/epoch 4"
        assert adapted != vit.cache_key and adapted not in keys
        assert os.sep not in adapted and " " not in adapted
    finally:
        vit.adapter_id = None
    assert vit.cache_key == "dinov2_vits14_56px_random-seed0_officialpos"


def test_registry_and_timm_names() -> None:
    names = list_backbones()
    assert "lab_texture" in names and "dinov2_vits14" in names and "dinov2_vitg14_reg" in names
    assert set(names) == set(BACKBONES)
    with pytest.raises(ValueError, match="dinov2_vits14"):
        create_backbone("resnet50")
    reg = create_backbone("vit_small_patch14_reg4_dinov2", pretrained=False, input_size=SIZE,
                          device="cpu")
    assert isinstance(reg, DinoV2Backbone) and reg.name == "dinov2_vits14_reg"
    assert reg.num_prefix_tokens == 5  # cls + 4 registers, all dropped
    assert reg.extract(_images(2)).shape == (2, 4, 4, 384)
    assert reg.cache_key == "dinov2_vits14_reg_56px_random-seed0_officialpos"


def test_registry_lab_texture() -> None:
    pytest.importorskip("bow_gym.backbones.lab_texture")
    lab = create_backbone("lab_texture", grid=8)
    assert isinstance(lab, Backbone) and lab.grid == (8, 8) and not lab.adaptable


# ---------------------------------------------------------------------------------------- cache


class FakeBackbone(Backbone):
    """Cheap deterministic features that depend on the image content; records its batches."""

    name = "fake"
    grid = (2, 3)
    dim = 4

    def __init__(self, batch_size: int = 2) -> None:
        self.batch_size = batch_size
        self.batches: list[int] = []
        self.key = "fake_v1"

    @property
    def cache_key(self) -> str:
        return self.key

    def _extract(self, images: list[np.ndarray]) -> np.ndarray:
        self.batches.append(len(images))
        out = np.empty((len(images), 2, 3, 4), np.float32)
        for i, im in enumerate(images):
            seed = int.from_bytes(image_key(im).encode()[:8], "little") % 2**32
            out[i] = np.random.default_rng(seed).normal(size=(2, 3, 4))
        return out


def _files(root: Path) -> list[Path]:
    """Cache files under ``root``, leaving out the lock files (``.locks/``)."""
    return sorted(p for p in root.rglob("*") if p.is_file() and ".locks" not in p.parts)


def test_cache_miss_then_hit_identical_and_on_disk(tmp_path: Path) -> None:
    fake = FakeBackbone()
    cache = FeatureCache(fake, tmp_path)
    im = _images(1)[0]
    first = cache.get(im)
    assert (cache.misses, cache.hits) == (1, 0)
    second = cache.get(im)
    assert (cache.misses, cache.hits) == (1, 1)
    assert first.dtype == np.float32 and first.shape == (2, 3, 4)
    np.testing.assert_array_equal(first, second)
    np.testing.assert_array_equal(first, fake.extract(im).astype(np.float16).astype(np.float32))

    path = tmp_path / "fake_v1" / f"{image_key(im)}.npz"
    assert cache.path_for(im) == path and path.is_file()
    assert np.load(path)["features"].dtype == np.float16

    # A fresh cache (cold memory) reads the disk, and the backbone is not run again.
    n_calls = len(fake.batches)
    cold = FeatureCache(fake, tmp_path)
    np.testing.assert_array_equal(cold.get(im), first)
    assert (cold.misses, cold.hits) == (0, 1) and len(fake.batches) == n_calls

    # Mutating a returned array must not corrupt the cache.
    second[:] = 0
    np.testing.assert_array_equal(cache.get(im), first)


def test_image_key_covers_bytes_shape_and_dtype() -> None:
    a = np.zeros((4, 6, 3), np.uint8)
    b = a.copy()
    b[0, 0, 0] = 1
    assert image_key(a) == image_key(a.copy()) and len(image_key(a)) == 64
    assert image_key(a) != image_key(b)
    assert image_key(a) != image_key(a.reshape(6, 4, 3))  # same bytes, other shape
    assert image_key(a) != image_key(a.view(np.int8))  # same bytes, other dtype
    big = np.arange(8 * 12 * 3, dtype=np.uint8).reshape(8, 12, 3)
    assert image_key(big[::2, ::2]) == image_key(np.ascontiguousarray(big[::2, ::2]))


def test_cache_adapter_change_uses_new_folder(tmp_path: Path) -> None:
    fake = FakeBackbone()
    cache = FeatureCache(fake, tmp_path)
    im = _images(1)[0]
    cache.get(im)
    fake.key = "fake_v1_lora-a"
    cache.get(im)
    assert cache.misses == 2
    assert (tmp_path / "fake_v1_lora-a" / f"{image_key(im)}.npz").is_file()


def _rewrite(path: Path, change) -> None:
    """Replace the features stored at ``path`` by ``change(features)``, keeping the rest."""
    if path.suffix == ".npz":
        with np.load(path) as entry:
            stored = dict(entry)
        stored["features"] = change(stored["features"])
        with open(path, "wb") as f:
            np.savez(f, **stored)
    else:  # the layout before checksums: a bare .npy
        np.save(path, change(np.load(path)))


def _flip_one_value(feats: np.ndarray) -> np.ndarray:
    out = feats.copy()
    out.reshape(-1).view(np.uint16)[5] ^= 0x0100  # one bit of one value
    return out


def _flip_file_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


DAMAGE = {
    "truncate": lambda p: p.write_bytes(p.read_bytes()[:60]),
    "garbage": lambda p: p.write_bytes(b"not a numpy file"),
    "wrong_shape": lambda p: _rewrite(p, lambda f: np.zeros((3, 3, 4), np.float16)),
    "zeros": lambda p: _rewrite(p, np.zeros_like),
    "nan": lambda p: _rewrite(p, lambda f: np.full_like(f, np.nan)),
    "flipped_value": lambda p: _rewrite(p, _flip_one_value),
    "flipped_byte": _flip_file_byte,
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_cache_bad_file_is_recomputed_with_warning(damage: str, tmp_path: Path) -> None:
    # Before: "zeros", "nan" and "flipped_value" (well-formed .npy files) were used silently.
    fake = FakeBackbone()
    im = _images(1)[0]
    good = FeatureCache(fake, tmp_path).get(im)
    path = FeatureCache(fake, tmp_path).path_for(im)
    DAMAGE[damage](path)
    cache = FeatureCache(fake, tmp_path)
    with pytest.warns(UserWarning, match=path.name):
        again = cache.get(im)
    assert cache.misses == 1
    np.testing.assert_array_equal(again, good)
    np.testing.assert_array_equal(FeatureCache(fake, tmp_path).get(im), good)  # rewritten, good
    assert _files(tmp_path) == [path]


def test_cache_entry_of_another_image_is_refused(tmp_path: Path) -> None:
    """A valid entry copied under another image's name fails its checksum (bound to the key)."""
    fake = FakeBackbone()
    a, b = _images(2, seed=3)
    cache = FeatureCache(fake, tmp_path)
    cache.get_many([a, b])
    cache.path_for(b).write_bytes(cache.path_for(a).read_bytes())
    fresh = FeatureCache(fake, tmp_path)
    with pytest.warns(UserWarning, match="checksum"):
        np.testing.assert_array_equal(fresh.get(b), cache.get(b))


def test_cache_content_checks_hold_even_with_a_valid_checksum(tmp_path: Path) -> None:
    from bow_gym.backbones.cache import features_checksum

    fake = FakeBackbone()
    im = _images(1)[0]
    cache = FeatureCache(fake, tmp_path)
    good = cache.get(im)
    path, key = cache.path_for(im), image_key(im)
    for bad, reason in ((np.full((2, 3, 4), np.nan, np.float16), "not finite"),
                        (np.full((2, 3, 4), 0.9, np.float16), "not unit-norm")):
        with open(path, "wb") as f:
            np.savez(f, features=bad, sha256=np.array(features_checksum("fake_v1", key, bad)))
        with pytest.warns(UserWarning, match=reason):
            np.testing.assert_array_equal(FeatureCache(fake, tmp_path).get(im), good)


def test_backbone_returning_nan_is_an_error_not_a_cache_entry(tmp_path: Path) -> None:
    fake = FakeBackbone()
    fake._extract = lambda images: np.full((len(images), 2, 3, 4), np.nan, np.float32)
    with pytest.raises(RuntimeError, match="fake.*not finite"):
        FeatureCache(fake, tmp_path).get(_images(1)[0])
    assert _files(tmp_path) == []


def test_cache_writes_are_atomic_and_leave_no_temp_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = FakeBackbone(batch_size=3)
    cache = FeatureCache(fake, tmp_path)
    ims = _images(7, seed=2)
    cache.get_many(ims)
    assert [p.name for p in _files(tmp_path)] == sorted(f"{image_key(i)}.npz" for i in ims)

    import bow_gym.backbones.cache as cache_mod

    def dies_mid_write(f, *arrays, **kwargs):
        f.write(b"\x93NUMPY partial")
        raise KeyboardInterrupt  # like a kill during the write

    monkeypatch.setattr(cache_mod.np, "savez", dies_mid_write)
    new = _images(1, seed=99)[0]
    with pytest.raises(KeyboardInterrupt):
        cache.get(new)
    assert len(_files(tmp_path)) == 7, "no temp file and no partial entry may remain"
    assert not cache.path_for(new).exists()


def test_cache_get_many_batches_dedupes_and_keeps_order(tmp_path: Path) -> None:
    fake = FakeBackbone(batch_size=2)
    cache = FeatureCache(fake, tmp_path)
    ims = _images(5, seed=4)
    cache.get(ims[2])
    fake.batches.clear()
    request = [ims[0], ims[1], ims[2], ims[0], ims[3], ims[4]]
    out = cache.get_many(request, progress=True)
    assert fake.batches == [2, 2]  # 4 distinct misses in batches of 2; the repeat is not recomputed
    assert cache.misses == 1 + 4 and cache.hits == 2  # ims[2] from memory, ims[0] repeated
    for im, f in zip(request, out, strict=True):
        np.testing.assert_array_equal(f, cache.get(im))


def test_cache_memory_only_writes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BOW_GYM_CACHE", str(tmp_path / "env"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert FeatureCache(FakeBackbone()).cache_dir == tmp_path / "env"

    fake = FakeBackbone()
    cache = FeatureCache(fake, None, memory_items=2)
    a, b, c = _images(3, seed=6)
    fa = cache.get(a)
    np.testing.assert_array_equal(cache.get(a), fa)
    assert (cache.misses, cache.hits) == (1, 1) and cache.path_for(a) is None
    cache.get(b)
    cache.get(c)  # evicts a (LRU of 2)
    cache.get(a)
    assert cache.misses == 4
    assert _files(tmp_path) == []


def test_cache_with_dinov2(vit: DinoV2Backbone, tmp_path: Path) -> None:
    cache = FeatureCache(vit, tmp_path)
    ims = _images(3, seed=8)
    miss = cache.get_many(ims)
    hit = FeatureCache(vit, tmp_path).get_many(ims)
    for m, h, im in zip(miss, hit, ims, strict=True):
        np.testing.assert_array_equal(m, h)
        np.testing.assert_allclose(m, vit.extract(im), atol=2e-3)  # float16 rounding only
    assert (tmp_path / vit.cache_key).is_dir() and len(_files(tmp_path)) == 3
