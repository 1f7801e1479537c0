import numpy as np
import pytest

from bow_gym.backbones.lab_texture import LabTextureBackbone
from bow_gym.datasets import make_dataset
from bow_gym.datasets.synthetic import generate


def _separation(backbone, sample):
    """Mean cosine similarity lesion-lesion minus lesion-background, on the patch grid."""
    f = backbone.extract(sample.image).reshape(-1, backbone.dim)
    g = backbone.grid[0]
    import cv2

    m = cv2.resize(sample.mask.astype(np.float32), (g, g), interpolation=cv2.INTER_AREA)
    fg, bg = m.ravel() > 0.9, m.ravel() < 0.1
    if fg.sum() < 2 or bg.sum() < 2:
        return None
    sim = f @ f.T
    return sim[np.ix_(fg, fg)].mean() - sim[np.ix_(fg, bg)].mean()


def test_shape_norm_determinism_and_not_adaptable():
    bb = LabTextureBackbone()
    img = generate(0).image
    f = bb.extract(img)
    assert f.shape == (16, 16, bb.dim) and f.dtype == np.float32
    assert np.allclose(np.linalg.norm(f, axis=-1), 1, atol=1e-5)
    assert np.array_equal(f, bb.extract(img.copy()))
    batch = bb.extract([img, generate(1).image[:100, :140]])
    assert batch.shape == (2, 16, 16, bb.dim) and np.array_equal(batch[0], f)
    assert bb.adaptable is False
    assert LabTextureBackbone(grid=8).extract(img).shape[:2] == (8, 8)
    assert bb.cache_key != LabTextureBackbone(scale=2.0).cache_key


def test_bad_input():
    bb = LabTextureBackbone()
    with pytest.raises(ValueError, match=r"\(H, W, 3\) uint8"):
        bb.extract(np.zeros((10, 10), np.uint8))
    with pytest.raises(ValueError, match="grid"):
        LabTextureBackbone(grid=0)


def test_lesion_patches_are_more_alike_than_lesion_and_background_synthetic():
    bb = LabTextureBackbone()
    gaps = [_separation(bb, generate(i)) for i in range(12)]
    gaps = [g for g in gaps if g is not None]
    assert np.median(gaps) > 0.5


@pytest.mark.real_data
def test_useful_similarities_on_real_kvasir(shared_data):
    bb = LabTextureBackbone()
    ds = make_dataset("kvasir-seg", shared_data / "kvasir-seg", limit=30)
    gaps = [g for g in (_separation(bb, s) for s in ds) if g is not None]
    assert len(gaps) >= 20
    assert np.median(gaps) > 0.4
    assert np.mean(np.array(gaps) > 0) > 0.9
