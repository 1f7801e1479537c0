"""HSNet's encoder checkpoint is loaded strictly: a file that does not fit is an error.

The original PVTv2 layout (``pvt_v2_b2.pth`` of whai362/PVT: ``patch_embed1``, ``block1.0``,
``norm1``, ``mlp.dwconv.dwconv``, ``head``; 334 tensors) is written here from a seeded random
timm ``pvt_v2_b2``. It loads with every encoder tensor used and only the ImageNet head dropped;
each bad case (a tensor missing, a key renamed, a tensor of another shape, an unrelated file)
raises an error naming the file and the keys.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
timm = pytest.importorskip("timm")

from bow_gym.segmenters import create_segmenter, preset  # noqa: E402
from bow_gym.segmenters.hsnet import _build_encoder  # noqa: E402


def _original_name(key: str) -> str:
    """timm's ``pvt_v2`` key -> the original PVTv2 release's (the inverse of timm's filter)."""
    key = re.sub(r"^patch_embed\.", "patch_embed1.", key)
    key = re.sub(r"^stages\.(\d)\.downsample\.",
                 lambda m: f"patch_embed{int(m.group(1)) + 1}.", key)
    key = re.sub(r"^stages\.(\d)\.blocks\.(\d+)\.",
                 lambda m: f"block{int(m.group(1)) + 1}.{m.group(2)}.", key)
    key = re.sub(r"^stages\.(\d)\.norm\.", lambda m: f"norm{int(m.group(1)) + 1}.", key)
    return key.replace("mlp.dwconv.", "mlp.dwconv.dwconv.")


@pytest.fixture(scope="module")
def official() -> dict:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(4321)
        src = timm.create_model("pvt_v2_b2", pretrained=False)
    return {_original_name(k): v.clone() for k, v in src.state_dict().items()}


def _encoder_state(model) -> dict:
    return dict(model.encoder.state_dict())


def _timm_key(encoder_key: str) -> str:
    """``features_only`` encoder key -> the plain timm model's (``stages_2`` -> ``stages.2``)."""
    return re.sub(r"^stages_(\d)", r"stages.\1", encoder_key)


def test_official_layout_loads_every_encoder_tensor(official: dict, tmp_path: Path) -> None:
    assert len(official) == 334 and "head.weight" in official
    assert "block3.0.mlp.dwconv.dwconv.weight" in official and "patch_embed4.proj.weight" in official
    path = tmp_path / "pvt_v2_b2.pth"
    torch.save(official, path)
    model = create_segmenter("hsnet", checkpoint=path, seed=0)
    state = _encoder_state(model)
    assert len(state) == 332  # all but the ImageNet head
    pairs = {
        "stages_2.blocks.0.attn.q.weight": "block3.0.attn.q.weight",
        "stages_0.blocks.1.mlp.dwconv.weight": "block1.1.mlp.dwconv.dwconv.weight",
        "stages_3.downsample.proj.weight": "patch_embed4.proj.weight",
        "patch_embed.norm.bias": "patch_embed1.norm.bias",
        "stages_1.norm.weight": "norm2.weight",
    }
    for ours, theirs in pairs.items():
        assert torch.equal(state[ours], official[theirs]), ours
    # Every encoder tensor came from the file (all of it but the head).
    for key, value in state.items():
        assert torch.equal(value, official[_original_name(_timm_key(key))]), key
    # A timm-format file with the head (safetensors) loads as well, into the same weights.
    from safetensors.torch import save_file

    timm_names = {_timm_key(k): v.contiguous() for k, v in state.items()}
    timm_names["head.weight"], timm_names["head.bias"] = official["head.weight"], official["head.bias"]
    path2 = tmp_path / "model.safetensors"
    save_file(timm_names, str(path2))
    again = _build_encoder(pretrained=False, checkpoint=path2).state_dict()
    assert all(torch.equal(again[k], v) for k, v in state.items())


@pytest.mark.parametrize("case", ["missing", "renamed", "reshaped", "unrelated"])
def test_checkpoint_that_does_not_fit_names_file_and_keys(
    case: str, official: dict, tmp_path: Path,
) -> None:
    state = dict(official)
    if case == "missing":
        del state["block3.0.attn.q.weight"]
        # Named as in the file: the original PVTv2 names.
        expected = [r"1 encoder tensor\(s\) missing: block3\.0\.attn\.q\.weight"]
    elif case == "renamed":
        state["block3.0.attn.qq.weight"] = state.pop("block3.0.attn.q.weight")
        expected = [r"missing: block3\.0\.attn\.q\.weight",
                    r"1 unexpected key\(s\): block3\.0\.attn\.qq\.weight"]
    elif case == "reshaped":
        state["norm4.weight"] = torch.ones(7)
        expected = [r"of another shape: norm4\.weight \(7,\) \(expected \(512,\)\)"]
    else:  # another network's weights
        with torch.random.fork_rng(devices=[]):
            state = timm.create_model("resnet18", pretrained=False).state_dict()
        expected = [r"332 encoder tensor\(s\) missing: patch_embed\.proj\.weight",
                    r"unexpected key\(s\): bn1\.bias"]
    path = tmp_path / f"{case}.pth"
    torch.save(state, path)
    with pytest.raises(RuntimeError, match=re.escape(str(path))) as info:
        _build_encoder(pretrained=False, checkpoint=path)
    for pattern in expected:
        assert re.search(pattern, str(info.value)), (pattern, str(info.value))
    # The same through the config a run uses.
    with pytest.raises(RuntimeError, match=f"{case}.pth.*does not fit pvt_v2_b2"):
        create_segmenter("hsnet", checkpoint=preset("hsnet", checkpoint=str(path)).checkpoint)


def test_non_state_dict_file_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "list.pth"
    torch.save([torch.zeros(2)], path)
    with pytest.raises(RuntimeError, match=r"could not load .*list\.pth.*a state dict of tensors"):
        _build_encoder(pretrained=False, checkpoint=path)
