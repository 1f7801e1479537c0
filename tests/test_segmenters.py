"""Segmenters: structure loss, paired augmentation, the light U-Net and HSNet, training, I/O.

No pretrained weights exist here: HSNet is built with a seeded random encoder, and the
checkpoint path (``checkpoint=`` -> timm's ``pretrained_cfg_overlay=dict(file=...)``) is tested
with a random ``pvt_v2_b2`` state dict this file writes. Sizes are tiny (64-96 px) so the whole
file runs in well under a minute on two CPU cores.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("timm")

import torch.nn.functional as F  # noqa: E402

from bow_gym.datasets import make_dataset  # noqa: E402
from bow_gym.metrics import dice  # noqa: E402
from bow_gym.segmenters import (  # noqa: E402
    HSNet,
    LightSegmenter,
    SegmenterConfig,
    augment_pair,
    build_segmenter,
    create_segmenter,
    list_segmenters,
    load_segmenter,
    predict_probabilities,
    preset,
    resolve_device,
    save_segmenter,
    scaled_size,
    structure_loss,
    structure_weight,
    train_segmenter,
)
from bow_gym.segmenters import hsnet as hsnet_module  # noqa: E402

# --------------------------------------------------------------------------- structure loss


def _square_mask(size: int = 96, lo: int = 43, hi: int = 53) -> torch.Tensor:
    m = torch.zeros(1, 1, size, size)
    m[..., lo:hi, lo:hi] = 1.0
    return m


def test_structure_loss_prefers_the_right_prediction():
    mask = _square_mask()
    perfect = structure_loss((mask * 2 - 1) * 10, mask)
    inverted = structure_loss((1 - mask * 2) * 10, mask)
    unsure = structure_loss(torch.zeros_like(mask), mask)
    assert perfect.ndim == 0
    assert float(perfect) < 0.01
    assert float(inverted) > 5.0
    assert float(perfect) < float(unsure) < float(inverted)


def test_structure_loss_is_a_batch_mean():
    mask = torch.cat([_square_mask(), _square_mask(lo=10, hi=40)])
    logits = torch.randn_like(mask)
    each = [float(structure_loss(logits[i:i + 1], mask[i:i + 1])) for i in range(2)]
    assert float(structure_loss(logits, mask)) == pytest.approx(np.mean(each), rel=1e-6)


def test_structure_weight_known_values():
    mask = _square_mask()  # a 10 x 10 square in the middle of 96 x 96
    w = structure_weight(mask)[0, 0]
    # Far from the square (no 31 x 31 window reaches it) the neighbourhood is uniform.
    assert torch.all(w[:28, :] == 1.0) and torch.all(w[:, 69:] == 1.0)
    # The centre pixel's window holds the whole square: |100/961 - 1| * 5 + 1.
    assert float(w[48, 48]) == pytest.approx(1 + 5 * (1 - 100 / 961), rel=1e-5)
    # Just outside the square, the window holds part of it, so the weight exceeds 1.
    assert float(w[42, 48]) > 1.0
    # The separable box filter equals the published 31 x 31 average pool.
    rnd = (torch.rand(2, 1, 40, 50) > 0.5).float()
    ref = 1 + 5 * torch.abs(F.avg_pool2d(rnd, 31, stride=1, padding=15) - rnd)
    torch.testing.assert_close(structure_weight(rnd), ref, rtol=1e-5, atol=1e-5)


def test_structure_loss_rejects_bad_shapes():
    with pytest.raises(ValueError, match=r"\(B, 1, H, W\)"):
        structure_loss(torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 8, 9))
    with pytest.raises(ValueError, match=r"\(B, 1, H, W\)"):
        structure_loss(torch.zeros(1, 2, 8, 8), torch.zeros(1, 2, 8, 8))


# ----------------------------------------------------------------------------- augmentation


def _blob_masks(n: int = 4, size: int = 80) -> list[np.ndarray]:
    return [s.mask for s in make_dataset("synthetic", n_images=n, size=size, flavour="skin")]


def test_augment_pair_keeps_image_and_mask_aligned():
    agreements, changed = [], 0
    for k, mask in enumerate(_blob_masks()):
        image = np.repeat((mask * 255).astype(np.uint8)[..., None], 3, axis=2)
        for seed in range(25):
            img_a, mask_a = augment_pair(image, mask, np.random.default_rng([k, seed]),
                                         colour_jitter=False)
            assert img_a.dtype == np.uint8 and mask_a.dtype == bool
            assert img_a.shape[:2] == mask_a.shape
            agreements.append(np.mean((img_a[..., 0] > 127) == mask_a))
            # The image's channels were equal and stay equal (only geometry was applied).
            assert np.array_equal(img_a[..., 0], img_a[..., 2])
            changed += not np.array_equal(mask_a, mask)
    assert min(agreements) >= 0.99, min(agreements)
    assert changed >= 90  # of 100: identity needs no flip, no rotation and no zoom (p = 1/32)


def test_augment_pair_colour_jitter_touches_the_image_only():
    rng_image = np.random.default_rng(0)
    image = rng_image.integers(40, 200, (64, 64, 3), dtype=np.uint8)
    mask = _blob_masks(1, 64)[0]
    plain = augment_pair(image, mask, np.random.default_rng(7), colour_jitter=False)
    jittered = augment_pair(image, mask, np.random.default_rng(7))
    again = augment_pair(image, mask, np.random.default_rng(7))
    assert np.array_equal(plain[1], jittered[1])  # same geometry, same mask
    assert not np.array_equal(plain[0], jittered[0])
    assert np.array_equal(jittered[0], again[0]) and np.array_equal(jittered[1], again[1])


def test_augment_pair_rejects_mismatched_inputs():
    with pytest.raises(ValueError, match="mask must be"):
        augment_pair(np.zeros((8, 8, 3), np.uint8), np.zeros((8, 9), bool),
                     np.random.default_rng(0))
    with pytest.raises(ValueError, match="uint8"):
        augment_pair(np.zeros((8, 8, 3), np.float32), np.zeros((8, 8), bool),
                     np.random.default_rng(0))


# ---------------------------------------------------------------------------------- config


@pytest.mark.parametrize("field, value, match", [
    ("name", "unet", "name must be one of"),
    ("size", 100, "multiple of 32"),
    ("size", 0, "multiple of 32"),
    ("epochs", 0, "epochs must be"),
    ("batch_size", 1.5, "batch_size must be"),
    ("lr", -1e-3, "lr must be"),
    ("lr", float("nan"), "lr must be"),
    ("weight_decay", -1.0, "weight_decay"),
    ("grad_clip", -0.5, "grad_clip"),
    ("scales", (), "scales"),
    ("scales", (1.0, 0.0), "scales"),
    ("scales", 1.0, "scales"),
    ("scales", (0.1,), "rounds to a side below 32"),
    ("lr_schedule", "step", "lr_schedule"),
    ("device", "gpu", "device must be"),
    ("num_threads", 0, "num_threads"),
    ("pretrained", True, "no pretrained weights"),
    ("checkpoint", "x.pth", "no pretrained weights"),
])
def test_config_rejects_bad_values(field, value, match):
    with pytest.raises(ValueError, match=match):
        SegmenterConfig(**{field: value})


def test_presets_and_json_round_trip():
    hs = preset("hsnet")
    assert (hs.name, hs.size, hs.lr, hs.weight_decay, hs.grad_clip) == ("hsnet", 352, 5e-5,
                                                                         1e-4, 0.5)
    assert hs.scales == (0.75, 1.0, 1.25) and hs.pretrained and hs.batch_size == 16
    assert [scaled_size(352, r) for r in hs.scales] == [256, 352, 448]
    light = preset("light", epochs=2, scales=[1.0, 1.25])
    assert light.epochs == 2 and light.scales == (1.0, 1.25)
    assert preset("light").epochs != 2  # the preset itself is untouched
    assert SegmenterConfig.from_json(hs.to_json()) == hs
    with pytest.raises(ValueError, match="unknown preset 'big'; valid names: hsnet, hsnet_released, light"):
        preset("big")
    with pytest.raises(TypeError, match="not SegmenterConfig fields: epoch"):
        preset("light", epoch=3)
    with pytest.raises(ValueError, match="unknown SegmenterConfig fields: colour"):
        SegmenterConfig.from_json(json.dumps({"colour": 1}))


def test_resolve_device():
    assert resolve_device("cpu") == "cpu"
    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="device must be"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA is not available"):
            resolve_device("cuda")


def test_registry():
    assert list_segmenters() == ["hsnet", "light"]
    with pytest.raises(ValueError, match="unknown segmenter 'unet'; valid names: hsnet, light"):
        create_segmenter("unet")
    with pytest.raises(ValueError, match="no pretrained weights"):
        create_segmenter("light", pretrained=True)
    a, b = create_segmenter("light", width=4, seed=3), create_segmenter("light", width=4, seed=3)
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb)
    assert isinstance(a, LightSegmenter) and a.init_kwargs() == {"width": 4, "in_chans": 3}


# ----------------------------------------------------------------------- light segmenter

TINY = 96  # training test image side (a multiple of 32)


@pytest.fixture(scope="module")
def polyps():
    ds = make_dataset("synthetic", n_images=24, size=TINY, flavour="polyp", contrast=2.5)
    return [s.image for s in ds], [s.mask for s in ds]


def _tiny_config(**kw) -> SegmenterConfig:
    return preset("light", size=TINY, epochs=12, batch_size=8, lr=3e-3, seed=0,
                  device="cpu", num_threads=2, **kw)


@pytest.fixture(scope="module")
def trained_light(polyps):
    images, masks = polyps
    config = _tiny_config()
    model = build_segmenter(config)
    history = train_segmenter(model, images, masks, config)
    return model, config, history


@pytest.mark.slow
def test_light_segmenter_learns(trained_light, polyps):
    model, config, history = trained_light
    images, masks = polyps
    assert history["n_images"] == 24 and history["steps"] == 12 * 3
    assert len(history["loss"]) == 12 and history["loss"][-1] < 0.8 * history["loss"][0]
    probs = predict_probabilities(model, images, size=TINY)
    assert probs.shape == (24, TINY, TINY) and probs.dtype == np.float32
    assert probs.min() >= 0.0 and probs.max() <= 1.0
    learnt = np.mean([dice(p >= 0.5, m) for p, m in zip(probs, masks, strict=True)])
    # Trivial baseline: the all-foreground mask (lesions cover a few percent of the image).
    everything = np.mean([dice(np.ones_like(m), m) for m in masks])
    assert everything < 0.3
    assert learnt > 0.75, learnt  # measured 0.90


@pytest.mark.slow
def test_light_training_is_deterministic(trained_light, polyps):
    model, config, history = trained_light
    images, masks = polyps
    again = build_segmenter(config)
    history2 = train_segmenter(again, images, masks, config)
    assert history2["loss"] == history["loss"]
    np.testing.assert_array_equal(predict_probabilities(model, images[:4], size=TINY),
                                  predict_probabilities(again, images[:4], size=TINY))


def test_training_resizes_masks_and_logs(polyps):
    images, masks = polyps
    # Images of two sizes; masks at twice the image size (pseudo-masks may come at any size).
    imgs = [images[0], images[1][:64, :80]]
    msks = [np.kron(masks[0], np.ones((2, 2), bool)), np.kron(masks[1][:64, :80],
                                                              np.ones((2, 2), bool))]

    class Writer:
        def __init__(self):
            self.calls = []

        def add_scalar(self, tag, value, step):
            self.calls.append((tag, value, step))

    writer = Writer()
    config = preset("light", size=32, epochs=2, batch_size=2, scales=(1.0, 2.0), width=4,
                    device="cpu")
    model = build_segmenter(config)
    history = train_segmenter(model, imgs, msks, config, writer=writer, global_step=100)
    assert history["steps"] == 2 * 1 * 2 and len(history["loss"]) == 2
    assert [c[0] for c in writer.calls] == ["losses/segmenter"] * 4
    assert [c[2] for c in writer.calls] == [100, 101, 102, 103]
    assert not model.training


def test_training_rejects_bad_inputs(polyps):
    images, masks = polyps
    config = preset("light", size=32, epochs=1, width=4)
    model = build_segmenter(config)
    with pytest.raises(ValueError, match="3 images but 2 masks"):
        train_segmenter(model, images[:3], masks[:2], config)
    with pytest.raises(ValueError, match="images is empty"):
        train_segmenter(model, [], [], config)
    with pytest.raises(ValueError, match=r"images\[1\] must be"):
        train_segmenter(model, [images[0], images[1].astype(np.float32)], masks[:2], config)
    with pytest.raises(ValueError, match=r"masks\[0\] must be"):
        train_segmenter(model, images[:1], [masks[0][None]], config)


def test_predict_restores_mode_and_checks_size(polyps):
    images, _ = polyps
    model = create_segmenter("light", width=4)
    model.train()
    probs = predict_probabilities(model, [images[0], images[1][:50, :70]], size=64,
                                  batch_size=1)
    assert probs.shape == (2, 64, 64) and model.training
    assert predict_probabilities(model, [], size=64).shape == (0, 64, 64)
    with pytest.raises(ValueError, match="multiple of 32"):
        predict_probabilities(model, images[:1], size=50)


# ---------------------------------------------------------------------------------- HSNet

SMALL = 64


def _decoder_features(model: HSNet, x: torch.Tensor) -> list[torch.Tensor]:
    x1, x2, x3, x4 = model.encoder(x)
    d4 = model.transfer(x4)
    d3 = model.hsc3(d4) * model.csa3(x3)
    d2 = model.hsc2(d3) * model.csa2(x2)
    return [model.hsc1(d2) * model.csa1(x1), d2, d3, d4]


@pytest.fixture(scope="module")
def hsnet() -> HSNet:
    return create_segmenter("hsnet", pretrained=False, seed=0)


@pytest.mark.slow
def test_hsnet_outputs(hsnet):
    x = torch.randn(2, 3, SMALL, SMALL)
    hsnet.train()
    side = hsnet(x)
    assert isinstance(side, list) and len(side) == 4
    assert all(o.shape == (2, 1, SMALL, SMALL) for o in side)
    hsnet.eval()
    with torch.no_grad():
        out = hsnet(x)
    assert isinstance(out, torch.Tensor) and out.shape == (2, 1, SMALL, SMALL)
    # Eval output is the sum of the side outputs (the published test-time fusion).
    with torch.no_grad():
        torch.testing.assert_close(out, torch.stack(hsnet.msp(
            _decoder_features(hsnet, x), (SMALL, SMALL))).sum(0))
    with pytest.raises(ValueError, match="multiples of 32"):
        hsnet(torch.randn(1, 3, 48, 64))


@pytest.mark.slow
def test_hsnet_trains_and_round_trips(hsnet, polyps, tmp_path):
    images, masks = polyps
    config = preset("hsnet", size=SMALL, epochs=1, batch_size=2, scales=(1.0, 1.5),
                    pretrained=False, augment=True, device="cpu", seed=0)
    history = train_segmenter(hsnet, images[:2], masks[:2], config)
    assert history["steps"] == 2 and np.isfinite(history["loss"][0]) and history["loss"][0] > 0
    assert not hsnet.training

    path = tmp_path / "round1.safetensors"
    save_segmenter(hsnet, path, config)
    loaded, loaded_config = load_segmenter(path)
    assert isinstance(loaded, HSNet) and not loaded.training
    assert loaded_config == config
    x = torch.randn(1, 3, SMALL, SMALL)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), hsnet(x), rtol=0, atol=0)
    with pytest.raises(ValueError, match="config.name is 'light' but the model is a 'hsnet'"):
        save_segmenter(hsnet, tmp_path / "x.safetensors", preset("light"))


@pytest.mark.slow
def test_hsnet_loads_a_local_encoder_checkpoint(hsnet, tmp_path):
    import timm

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1234)
        src = timm.create_model("pvt_v2_b2", pretrained=False)
    path = tmp_path / "pvt_v2_b2.pth"
    torch.save(src.state_dict(), path)
    model = create_segmenter("hsnet", checkpoint=path)
    key = "stages.2.blocks.0.attn.q.weight"  # features_only renames stages.2 -> stages_2
    saved = src.state_dict()[key]
    assert torch.equal(model.encoder.state_dict()[key.replace("stages.", "stages_")], saved)
    assert not torch.equal(hsnet.encoder.state_dict()[key.replace("stages.", "stages_")], saved)


def test_hsnet_weight_errors(tmp_path, monkeypatch):
    missing = tmp_path / "nope.pth"
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        HSNet(checkpoint=missing)
    broken = tmp_path / "broken.pth"
    broken.write_bytes(b"not a checkpoint")
    with pytest.raises(RuntimeError, match="could not load encoder checkpoint"):
        HSNet(checkpoint=broken)

    import timm

    def offline(*args, **kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co'")

    monkeypatch.setattr(timm, "create_model", offline)
    with pytest.raises(RuntimeError, match="pass checkpoint= a local weights file"):
        hsnet_module.HSNet(pretrained=True)


# -------------------------------------------------------------------------------- file I/O


def test_light_round_trip_and_load_errors(tmp_path):
    config = preset("light", width=4, size=64)
    model = build_segmenter(config)
    path = tmp_path / "sub" / "light.safetensors"
    save_segmenter(model, path, config)
    assert not list(path.parent.glob(".*.tmp"))  # written atomically, nothing left behind
    loaded, loaded_config = load_segmenter(path, device="cpu")
    assert loaded_config == config and isinstance(loaded, LightSegmenter) and loaded.width == 4
    x = torch.randn(1, 3, 64, 64)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)

    with pytest.raises(FileNotFoundError, match="missing.safetensors"):
        load_segmenter(tmp_path / "missing.safetensors")
    from safetensors.torch import save_file

    other = tmp_path / "other.safetensors"
    save_file({"w": torch.zeros(2)}, str(other), metadata={"format": "something"})
    with pytest.raises(ValueError, match="other.safetensors.*not a bow_gym segmenter"):
        load_segmenter(other)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00" * 64)
    with pytest.raises(ValueError, match="garbage.safetensors"):
        load_segmenter(garbage)
    with pytest.raises(ValueError, match="not a bow_gym segmenter"):
        save_segmenter(torch.nn.Conv2d(3, 1, 1), tmp_path / "conv.safetensors", config)


def test_config_is_a_dataclass_copy():
    a = preset("light")
    b = dataclasses.replace(a, epochs=1)
    assert a.epochs != b.epochs


def test_pixel_weights_ignore_what_they_zero():
    torch.manual_seed(0)
    mask = (torch.rand(2, 1, 32, 32) > 0.5).float()
    logits = torch.randn(2, 1, 32, 32)
    ones = torch.ones_like(mask)
    assert torch.allclose(structure_loss(logits, mask, ones), structure_loss(logits, mask))
    # Where the weight is 0, the logits do not matter.
    w = torch.zeros_like(mask)
    w[..., :16] = 1
    other = logits.clone()
    other[..., 16:] = -other[..., 16:] * 5
    assert torch.allclose(structure_loss(logits, mask, w), structure_loss(other, mask, w))
    assert not torch.allclose(structure_loss(logits, mask), structure_loss(other, mask))
    # An image with no trusted pixel adds nothing (and no NaN).
    w[1] = 0
    loss = structure_loss(logits, mask, w)
    assert torch.isfinite(loss)
    assert torch.allclose(loss * 2, structure_loss(logits[:1], mask[:1], w[:1]))
    with pytest.raises(ValueError, match="pixel_weight"):
        structure_loss(logits, mask, w[:, :, :8])


def test_augment_pair_moves_the_extra_map_with_the_mask():
    rng0, rng1 = np.random.default_rng(5), np.random.default_rng(5)
    image = np.random.default_rng(0).integers(0, 255, (40, 40, 3), dtype=np.uint8)
    mask = np.zeros((40, 40), bool)
    mask[5:20, 8:30] = True
    for _ in range(10):
        a = augment_pair(image, mask, rng0)
        b = augment_pair(image, mask, rng1, extra=mask.astype(np.uint8) * 200)
        # Same draws: the extra map does not change the transform of image and mask ...
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], b[1])
        # ... and it is transformed exactly like the mask.
        np.testing.assert_array_equal(b[2] == 200, b[1])
    with pytest.raises(ValueError, match="extra"):
        augment_pair(image, mask, rng0, extra=np.zeros((40, 40), np.float32))


def test_zero_weights_on_a_wrong_region_make_training_ignore_it():
    """Masks that are wrong in one half teach far less of their error with weight 0 there.

    Not nothing: the boundary emphasis of the structure loss (a 31-pixel window) still sees the
    wrong labels next to the trusted half, and the right half is never taught its own look."""
    ds = make_dataset("synthetic", n_images=32, size=64, flavour="polyp")
    images = [ds[i].image for i in range(len(ds))]
    truth = [ds[i].mask for i in range(len(ds))]
    wrong = [m.copy() for m in truth]
    weights = []
    for m in wrong:
        m[:, 32:] = True  # the right half is labelled foreground everywhere: wrong
        w = np.ones(m.shape, np.float32)
        w[:, 32:] = 0.0
        weights.append(w)
    cfg = SegmenterConfig(size=64, epochs=8, batch_size=8, augment=False, seed=0, device="cpu")
    fg = []
    for wts in (None, weights):
        model = build_segmenter(cfg)
        train_segmenter(model, images, wrong, cfg, weights=wts)
        p = predict_probabilities(model, images, size=64)
        fg.append(float((p[:, :, 40:] > 0.5).mean()))
    assert fg[0] > 0.9 and fg[1] < 0.5 * fg[0], fg
    with pytest.raises(ValueError, match="weights"):
        train_segmenter(build_segmenter(cfg), images, wrong, cfg, weights=weights[:3])
