"""The HSNet presets: as released (baiboat/HSNet ``Train.py`` at HEAD) and as written (paper).

One test per difference between them: the learning rate of every epoch, the clipping rule,
augmentation off/on and the BCE weighting; plus JSON round trips of old configurations. The
training-loop behaviour is checked on the light network with the presets' training fields (the
loop does not depend on the network), so the file runs in seconds.
"""

from __future__ import annotations

import dataclasses
import json
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import torch.nn.functional as F  # noqa: E402

from bow_gym.segmenters import (  # noqa: E402
    SEGMENTER_PRESETS,
    SegmenterConfig,
    build_segmenter,
    load_segmenter,
    preset,
    save_segmenter,
    structure_loss,
    structure_weight,
    train_segmenter,
)
from bow_gym.segmenters import training as training_module  # noqa: E402
from bow_gym.segmenters.training import lr_at  # noqa: E402


def _toy(n: int = 3, size: int = 40, seed: int = 0) -> tuple[list[np.ndarray], list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    images, masks = [], []
    for _ in range(n):
        im = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        m = np.zeros((size, size), bool)
        r, c = rng.integers(8, size - 16, 2)
        m[r:r + 12, c:c + 12] = True
        im[m] = (220, 60, 60)
        images.append(im)
        masks.append(m)
    return images, masks


def _on_light(name: str, **overrides) -> SegmenterConfig:
    """The preset's training fields on the light network, tiny."""
    base = dict(name="light", pretrained=False, size=32, width=4, scales=(1.0,), epochs=2,
                batch_size=2, device="cpu", seed=0)
    return dataclasses.replace(preset(name), **{**base, **overrides})


# ------------------------------------------------------------------------------ the presets


def test_released_preset_values() -> None:
    rel, paper = preset("hsnet_released"), preset("hsnet")
    assert (rel.name, rel.size, rel.scales, rel.pretrained) == ("hsnet", 352, (0.75, 1.0, 1.25), True)
    assert (rel.lr, rel.weight_decay, rel.batch_size, rel.epochs) == (5e-5, 1e-4, 8, 99)
    assert (rel.grad_clip, rel.grad_clip_mode, rel.augment, rel.weighted_bce) == (
        0.5, "value", False, False)
    assert (paper.epochs, paper.batch_size, paper.lr_schedule, paper.grad_clip_mode,
            paper.augment, paper.weighted_bce) == (100, 16, "constant", "norm", True, True)
    # The light preset is untouched by the new fields.
    light = preset("light")
    assert (light.lr_schedule, light.lr_milestones, light.grad_clip_mode, light.weighted_bce) == (
        "cosine", (), "norm", True)


def test_learning_rate_of_every_epoch_as_released() -> None:
    # Train.py: lr 5e-5; `for epoch in range(1, 100): if epoch in [15, 30]: adjust_lr(opt, 0.5)`
    # where adjust_lr multiplies every group's lr by 0.5, before training that epoch.
    lr, expected = 5e-5, []
    for epoch in range(1, 100):
        if epoch in (15, 30):
            lr *= 0.5
        expected.append(lr)
    cfg = preset("hsnet_released")
    got = [lr_at(cfg, step=0, total=1, epoch=e) for e in range(cfg.epochs)]
    assert got == expected
    assert got[13] == 5e-5 and got[14] == 2.5e-5 and got[28] == 2.5e-5 and got[29] == 1.25e-5
    assert got[-1] == 1.25e-5 and len(got) == 99
    paper = preset("hsnet")
    assert {lr_at(paper, s, 1000, e) for s, e in ((0, 0), (500, 50), (999, 99))} == {5e-5}


def test_training_applies_the_milestones(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[float] = []
    real_step = torch.optim.AdamW.step

    def step(self, *args, **kwargs):
        seen.append(self.param_groups[0]["lr"])
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", step)
    images, masks = _toy(4)
    cfg = _on_light("hsnet_released", epochs=4, lr_milestones=(2, 4), lr=1e-3, scales=(1.0, 1.25))
    train_segmenter(build_segmenter(cfg), images, masks, cfg)
    per_epoch = 2 * 2  # 4 images in batches of 2, two scales
    assert seen == [1e-3] * per_epoch + [5e-4] * 2 * per_epoch + [2.5e-4] * per_epoch


@pytest.mark.parametrize("mode", ["value", "norm"])
def test_clipping_rule(mode: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # A threshold far below the gradients' size, so clipping acts on every step.
    clip = 1e-5
    grads: list[torch.Tensor] = []
    real_step = torch.optim.AdamW.step

    def step(self, *args, **kwargs):
        grads.append(torch.cat([p.grad.flatten() for g in self.param_groups for p in g["params"]
                                if p.grad is not None]))
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", step)
    images, masks = _toy(2)
    name = "hsnet_released" if mode == "value" else "hsnet"
    cfg = _on_light(name, epochs=1, grad_clip=clip)
    assert cfg.grad_clip_mode == mode
    train_segmenter(build_segmenter(cfg), images, masks, cfg)
    for g in grads:
        if mode == "value":  # released clip_gradient: each element clamped to +-clip
            assert float(g.abs().max()) == pytest.approx(clip, rel=1e-6)
            assert float(g.norm()) > 10 * clip
        else:  # the global norm bounded, every element scaled alike
            assert float(g.norm()) == pytest.approx(clip, rel=1e-3)
            assert float(g.abs().max()) < clip


@pytest.mark.parametrize("name, calls", [("hsnet_released", False), ("hsnet", True)])
def test_augmentation_off_as_released_on_as_written(
    name: str, calls: bool, monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Released utils/dataloader.py: `if self.augmentations == 'True':` with the argparse default
    # True (a bool): the comparison is False, so the released script trains without augmentation.
    assert (True == "True") is False  # the released comparison
    count = []
    real = training_module.augment_pair

    def spy(*args, **kwargs):
        count.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(training_module, "augment_pair", spy)
    images, masks = _toy(2)
    cfg = _on_light(name, epochs=1)
    train_segmenter(build_segmenter(cfg), images, masks, cfg)
    assert (len(count) == 2) if calls else not count


def _released_structure_loss(pred: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The released loss's arithmetic: BCE reduced to the batch mean, then 'weighted' by w / w."""
    weit = structure_weight(mask)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy argument, on purpose
        bce = F.binary_cross_entropy_with_logits(pred, mask, reduce="none")
    assert bce.ndim == 0  # 'none' is truthy: the legacy flag means "reduce"
    wbce = (weit * bce).sum(dim=(2, 3)) / weit.sum(dim=(2, 3))
    p = torch.sigmoid(pred)
    inter = (p * mask * weit).sum(dim=(2, 3))
    union = ((p + mask) * weit).sum(dim=(2, 3))
    return (wbce + 1 - (inter + 1) / (union - inter + 1)).mean()


def test_bce_weighting(monkeypatch: pytest.MonkeyPatch) -> None:
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 1, 48, 48, generator=gen) * 3
    mask = torch.zeros(3, 1, 48, 48)
    mask[:, :, 10:30, 12:40] = 1.0
    plain = structure_loss(logits, mask, weighted_bce=False)
    torch.testing.assert_close(plain, _released_structure_loss(logits, mask))
    weighted = structure_loss(logits, mask)
    assert abs(float(weighted - plain)) > 1e-3  # the two definitions do differ here

    used = []
    real = training_module.structure_loss

    def spy(*args, **kwargs):
        used.append(kwargs["weighted_bce"])
        return real(*args, **kwargs)

    monkeypatch.setattr(training_module, "structure_loss", spy)
    images, masks = _toy(2)
    for name, expected in (("hsnet_released", False), ("hsnet", True), ("light", True)):
        used.clear()
        cfg = _on_light(name, epochs=1)
        train_segmenter(build_segmenter(cfg), images, masks, cfg)
        assert used and set(used) == {expected}, name


# ---------------------------------------------------------------------------- configuration


@pytest.mark.parametrize("field, value, match", [
    ("lr_schedule", "multistep", "lr_milestones go with lr_schedule='multistep'"),
    ("lr_milestones", (15, 30), "lr_milestones go with"),
    ("lr_milestones", 15, "sequence of epochs"),
    ("lr_milestones", (30, 15), "increasing"),
    ("lr_milestones", (0, 5), "increasing epoch numbers >= 1"),
    ("lr_gamma", 0.0, "lr_gamma"),
    ("lr_gamma", 1.5, "lr_gamma"),
    ("grad_clip_mode", "elementwise", "grad_clip_mode"),
    ("weighted_bce", "yes", "weighted_bce"),
])
def test_new_fields_are_validated(field: str, value, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        SegmenterConfig(**{field: value})


def test_json_round_trips_old_and_new(tmp_path) -> None:
    for name in SEGMENTER_PRESETS:
        cfg = preset(name)
        assert SegmenterConfig.from_json(cfg.to_json()) == cfg
    # A configuration stored before these fields existed reads back with the behaviour it had.
    old = json.loads(preset("hsnet").to_json())
    for key in ("lr_milestones", "lr_gamma", "grad_clip_mode", "weighted_bce"):
        del old[key]
    back = SegmenterConfig.from_json(json.dumps(old))
    assert back == preset("hsnet")
    assert (back.grad_clip_mode, back.weighted_bce, back.lr_milestones) == ("norm", True, ())

    # And through a checkpoint file written with the old metadata.
    cfg = preset("light", width=4, size=32)
    path = tmp_path / "old.safetensors"
    save_segmenter(build_segmenter(cfg), path, cfg)
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    with safe_open(str(path), framework="pt") as f:
        meta = dict(f.metadata())
    stored = json.loads(meta["config"])
    for key in ("lr_milestones", "lr_gamma", "grad_clip_mode", "weighted_bce"):
        del stored[key]
    meta["config"] = json.dumps(stored)
    save_file(load_file(str(path)), str(path), metadata=meta)
    _, loaded = load_segmenter(path)
    assert loaded == cfg
