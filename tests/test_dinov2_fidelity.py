"""DINOv2 through bow_gym equals the official model, at every input size and for every name.

Official-format checkpoints (the key layout of Meta's ``dinov2_*_pretrain.pth``: ``ls1.gamma``,
``pos_embed`` of ``1 + 37 * 37`` tokens, ``mask_token``, ``register_tokens``) are written here
from seeded random timm models with every parameter perturbed and a rough position embedding (the
case where the resize rule matters most). They are loaded through ``create_backbone(name,
checkpoint=...)`` and compared with ``benchmarks.dinov2_fidelity.official_forward``, a forward
pass written from the official code's description that shares no code with timm or bow_gym. The
resize itself is checked against bicubic interpolation written out in numpy below.

ViT-S/14 runs at full depth; the larger models (and ViT-S with registers at large sizes) with 2
blocks, by building timm's model with ``depth=2``: the position embedding and the key mapping do
not depend on depth, and it keeps ViT-g (1.1 B parameters) out of a CPU test.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
timm = pytest.importorskip("timm")

from benchmarks.dinov2_fidelity import (  # noqa: E402
    build_model,
    official_forward,
    official_patch_pos,
    official_state_dict,
    old_rule_patch_pos,
    set_pos_field_,
)
from bow_gym.backbones import create_backbone  # noqa: E402
from bow_gym.backbones.dinov2 import (  # noqa: E402
    DINOV2_MODELS,
    NATIVE_GRID,
    POS_EMBED_RULES,
    PosEmbedRule,
    checkpoint_pos_grid,
    official_pos_embed,
)

#: Cosine floor per patch and largest absolute difference allowed (float32 rounding level).
COS_FLOOR = 0.9999
ATOL = 2e-4


def _images(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    # Smooth content, so features are not dominated by pixel noise.
    small = rng.integers(0, 256, (n, 6, 8, 3)).astype(np.uint8)
    import cv2

    return [cv2.resize(im, (90, 70), interpolation=cv2.INTER_CUBIC) for im in small]


def _with_depth(monkeypatch: pytest.MonkeyPatch, depth: int) -> None:
    real = timm.create_model

    def create(name, *args, **kwargs):
        return real(name, *args, **{"depth": depth, **kwargs})

    monkeypatch.setattr(timm, "create_model", create)


def _official_file(short: str, tmp_path: Path, depth: int | None, seed: int = 0,
                   fmt: str = "pth") -> tuple[Path, dict]:
    model = build_model(short, seed, depth=depth)
    set_pos_field_(model, "rough", seed + 7)
    sd = {k: v.contiguous() for k, v in official_state_dict(model, seed).items()}
    path = tmp_path / f"{short}_official.{fmt}"
    if fmt == "safetensors":
        from safetensors.torch import save_file

        save_file(sd, str(path))
    else:
        torch.save(sd, path)
    return path, sd


def _check_against_official(backbone, sd: dict, images: list[np.ndarray],
                            extract: bool = True) -> None:
    """Asserts fidelity of the last-layer patch tokens (and of ``extract()`` if asked)."""
    x = torch.from_numpy(backbone.preprocess(images))
    with torch.no_grad():
        ref = official_forward(sd, x)
        got = backbone.model.forward_features(x)[:, backbone.num_prefix_tokens:]
    cos = torch.nn.functional.cosine_similarity(got.double(), ref.double(), dim=-1)
    assert float(cos.min()) >= COS_FLOOR, (backbone.name, backbone.input_size, float(cos.min()))
    diff = float((got - ref).abs().max())
    assert diff <= ATOL * max(1.0, float(ref.abs().max())), (backbone.name, diff)
    if extract:  # extract() (resize, normalise, L2) gives the same tokens, normalised
        feats = backbone.extract(images)
        refn = torch.nn.functional.normalize(ref, dim=-1).reshape(feats.shape).numpy()
        np.testing.assert_allclose(feats, refn, atol=1e-4)


# ------------------------------------------------------------------- the rule, in known answers


def _cubic(t: np.ndarray, a: float) -> np.ndarray:
    t = np.abs(t)
    return np.where(t <= 1, ((a + 2) * t - (a + 3)) * t * t + 1,
                    np.where(t < 2, ((a * t - 5 * a) * t + 8 * a) * t - 4 * a, 0.0))


def _matrix_scale_factor(m: int, grid: int, scale: float) -> np.ndarray:
    """Bicubic (a = -0.75) sampling at ``(i + 0.5) / scale - 0.5``, edges clamped."""
    w = np.zeros((grid, m))
    for i in range(grid):
        src = (i + 0.5) / scale - 0.5
        base = math.floor(src)
        for j in range(base - 1, base + 3):
            w[i, min(max(j, 0), m - 1)] += _cubic(np.array(src - j), -0.75)
    return w


def _matrix_antialias(m: int, grid: int) -> np.ndarray:
    """Antialiased bicubic (a = -0.5, kernel stretched by the shrink factor, normalised)."""
    scale = m / grid
    stretch = max(scale, 1.0)
    w = np.zeros((grid, m))
    for i in range(grid):
        centre = (i + 0.5) * scale
        lo = max(int(centre - 2 * stretch + 0.5), 0)
        hi = min(int(centre + 2 * stretch + 0.5), m)
        js = np.arange(lo, hi)
        k = _cubic((js - centre + 0.5) / stretch, -0.5)
        w[i, lo:hi] = k / k.sum()
    return w


@pytest.mark.parametrize("grid", [1, 4, 16, 36, 43])
@pytest.mark.parametrize("registers", [False, True])
def test_official_pos_embed_known_answers(grid: int, registers: bool) -> None:
    m, dim = NATIVE_GRID, 5
    rng = np.random.default_rng(grid)
    p = rng.normal(size=(m, m, dim))
    if registers:
        w = _matrix_antialias(m, grid)
        rule = POS_EMBED_RULES["dinov2_vits14_reg"]
    else:
        w = _matrix_scale_factor(m, grid, (grid + 0.1) / m)
        rule = POS_EMBED_RULES["dinov2_vits14"]
    expected = np.einsum("ia,abd,jb->ijd", w, p, w).reshape(1, grid * grid, dim)
    got = official_pos_embed(torch.tensor(p, dtype=torch.float32).reshape(1, m * m, dim), grid,
                             rule)
    np.testing.assert_allclose(got.numpy(), expected, atol=2e-5)
    # The reference the benchmark and the tests below use agrees.
    ref = official_patch_pos(torch.tensor(p, dtype=torch.float32).reshape(1, m * m, dim), grid,
                             registers)
    np.testing.assert_allclose(ref.numpy(), expected, atol=2e-5)


def test_rules_match_the_official_hub_settings() -> None:
    # facebookresearch/dinov2 hub/backbones.py: defaults (antialias False, offset 0.1) without
    # registers; interpolate_antialias=True, interpolate_offset=0.0 for every _reg model.
    for short, rule in POS_EMBED_RULES.items():
        expected = PosEmbedRule(True, 0.0) if short.endswith("_reg") else PosEmbedRule(False, 0.1)
        assert rule == expected, short
    assert set(POS_EMBED_RULES) == set(DINOV2_MODELS)
    # The native grid needs no resize: returned unchanged, even with the offset rule.
    p = torch.randn(1, 37 * 37, 3)
    assert official_pos_embed(p, 37, POS_EMBED_RULES["dinov2_vits14"]) is p
    with pytest.raises(ValueError, match="M\\*M"):
        official_pos_embed(torch.randn(1, 10, 3), 4, POS_EMBED_RULES["dinov2_vits14"])


def test_old_rule_is_what_timm_did_at_load_time(tmp_path: Path) -> None:
    # The benchmark's "before" is timm's load-time resample; pin that to timm's real loader.
    path, sd = _official_file("dinov2_vits14", tmp_path, depth=1)
    with torch.random.fork_rng(devices=[]):
        old = timm.create_model("vit_small_patch14_dinov2", pretrained=True, num_classes=0,
                                img_size=224, depth=1, pretrained_cfg_overlay=dict(file=str(path)))
    expected = old_rule_patch_pos(sd["pos_embed"][:, 1:], 16)
    torch.testing.assert_close(old.pos_embed[:, 1:].detach(), expected, rtol=0, atol=0)
    new = official_pos_embed(sd["pos_embed"][:, 1:], 16, POS_EMBED_RULES["dinov2_vits14"])
    assert float((new - expected).abs().max()) > 1e-2  # the two rules do differ


# --------------------------------------------------------------- checkpoints through the loader


@pytest.mark.slow
def test_vits14_official_checkpoint_matches_the_official_forward(tmp_path: Path) -> None:
    path, sd = _official_file("dinov2_vits14", tmp_path, depth=None)
    images = _images(1)
    bb = create_backbone("dinov2_vits14", checkpoint=path, input_size=224, device="cpu")
    _check_against_official(bb, sd, images)

    # The test can fail: the old rule (timm's load-time resample) is far off at 224 px.
    x = torch.from_numpy(bb.preprocess(images))
    n = bb.num_prefix_tokens
    with torch.no_grad():
        bb.model.pos_embed[:, n:] = old_rule_patch_pos(sd["pos_embed"][:, 1:], 16)
        old = bb.model.forward_features(x)[:, n:]
        ref = official_forward(sd, x)
    assert float(torch.nn.functional.cosine_similarity(old, ref, dim=-1).min()) < 0.99


#: Sizes per model: 1 patch, 16 (downsampled), 37 (native, no resize) and 43 (upsampled); the
#: big models skip the large sizes, whose resize code path ViT-S already covers.
SIZES = {"s": (14, 224, 518, 602), "b": (14, 224, 602), "l": (14, 224), "g": (14, 224)}


@pytest.mark.parametrize("short", [
    pytest.param(s, marks=() if s.startswith("dinov2_vits") else pytest.mark.slow)
    for s in DINOV2_MODELS])
def test_every_name_matches_the_official_forward(
    short: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    _with_depth(monkeypatch, 2)
    fmt = "safetensors" if short.endswith("_reg") else "pth"
    path, sd = _official_file(short, tmp_path, depth=2, fmt=fmt)
    assert checkpoint_pos_grid(path) == NATIVE_GRID
    images = _images(1, seed=3)
    timm_name = DINOV2_MODELS[short].split(".")[0]
    for i, size in enumerate(SIZES[short[len("dinov2_vit")]]):
        name = timm_name if i == 1 else short  # the timm name loads the same file
        bb = create_backbone(name, checkpoint=path, input_size=size, device="cpu")
        assert bb.grid == (size // 14,) * 2 and bb.pos_embed_rule == POS_EMBED_RULES[short]
        _check_against_official(bb, sd, images, extract=i == 1)


def test_random_init_and_hub_weights_use_the_official_rule(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    _with_depth(monkeypatch, 1)
    # Random init: the model is initialised at 518 px and its 37 x 37 embedding resized.
    bb = create_backbone("dinov2_vits14", pretrained=False, input_size=56, seed=3, device="cpu")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        native = timm.create_model("vit_small_patch14_dinov2", pretrained=False, num_classes=0,
                                   img_size=518)
    torch.testing.assert_close(
        bb.model.pos_embed[:, 1:].detach(),
        official_patch_pos(native.pos_embed[:, 1:].detach(), 4, registers=False),
        rtol=0, atol=1e-6)
    torch.testing.assert_close(bb.model.pos_embed[:, :1], native.pos_embed[:, :1])

    # Hub weights (timm format, 37 x 37), served by a stand-in for the download.
    import timm.models._builder as builder

    src = build_model("dinov2_vitb14_reg", 5, depth=1)
    set_pos_field_(src, "rough", 6)
    hub_state = {k: v.clone() for k, v in src.state_dict().items()}
    calls = []

    def fake_hub(model, pretrained_cfg=None, **kwargs):
        calls.append(dict(pretrained_cfg or {}))
        model.load_state_dict(hub_state, strict=True)

    monkeypatch.setattr(builder, "load_pretrained", fake_hub)
    hub = create_backbone("dinov2_vitb14_reg", input_size=224, device="cpu")
    assert len(calls) == 1 and not calls[0].get("file") and hub.weights == "hub-lvd142m"
    _check_against_official(hub, official_state_dict(src, 0), _images(1))


def test_checkpoint_grid_is_read_without_loading(tmp_path: Path) -> None:
    d = 8
    cases = {
        "meta.pth": {"pos_embed": torch.zeros(1, 1 + 37 * 37, d), "mask_token": torch.zeros(1, d)},
        "timm_reg.safetensors": {"pos_embed": torch.zeros(1, 16 * 16, d)},
        "wrapped.pth": {"model": {"pos_embed": torch.zeros(1, 1 + 4 * 4, d)}},
        "no_pos.pth": {"w": torch.zeros(2)},
    }
    from safetensors.torch import save_file

    for name, state in cases.items():
        if name.endswith(".safetensors"):
            save_file(state, str(tmp_path / name))
        else:
            torch.save(state, tmp_path / name)
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    assert checkpoint_pos_grid(tmp_path / "meta.pth") == 37
    assert checkpoint_pos_grid(tmp_path / "timm_reg.safetensors") == 16
    assert checkpoint_pos_grid(tmp_path / "wrapped.pth") == 4
    assert checkpoint_pos_grid(tmp_path / "no_pos.pth") is None
    assert checkpoint_pos_grid(tmp_path / "junk.pth") is None


def test_unexpected_key_in_an_official_file_is_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    _with_depth(monkeypatch, 1)
    _, sd = _official_file("dinov2_vits14", tmp_path, depth=1)
    sd["blocks.0.attn.extra"] = torch.zeros(3)
    path = tmp_path / "extra.pth"
    torch.save(sd, path)
    with pytest.raises(RuntimeError, match=r"(?s)extra\.pth.*blocks\.0\.attn\.extra"):
        create_backbone("dinov2_vits14", checkpoint=path, input_size=56, device="cpu")
