import pickle

import numpy as np
import pytest

from bow_gym.datasets import make_dataset
from bow_gym.datasets.synthetic import FLAVOURS, SyntheticDataset, generate


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_flavours_are_deterministic_and_lesion_like(flavour):
    a = generate(3, flavour=flavour, seed=1)
    b = generate(3, flavour=flavour, seed=1)
    c = generate(3, flavour=flavour, seed=2)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.mask, b.mask)
    assert not np.array_equal(a.image, c.image)
    assert a.image.shape == (160, 160, 3) and a.image.dtype == np.uint8
    assert a.mask.dtype == bool and 0.01 < a.mask.mean() < 0.5
    # the lesion differs from the background, but not by much (low contrast)
    inside = a.image[a.mask].mean(axis=0)
    outside = a.image[~a.mask].mean(axis=0)
    assert 3 < np.abs(inside - outside).max() < 120


def test_sample_depends_only_on_seed_and_index():
    ds = SyntheticDataset(n_images=10, seed=4)
    late_first = ds[7]
    fresh = SyntheticDataset(n_images=10, seed=4)
    for i in range(7):
        fresh[i]
    assert np.array_equal(fresh[7].image, late_first.image)
    assert ds.ids[7] == late_first.id and len(set(ds.ids)) == 10


def test_mixed_cycles_flavours_and_contrast_changes_images():
    ds = SyntheticDataset(n_images=6)
    assert [i.split("-")[0] for i in ds.ids] == ["polyp", "skin", "ultrasound"] * 2
    easy = SyntheticDataset(n_images=1, contrast=2.5)[0]
    hard = ds[0]
    gap = [np.abs(s.image[s.mask].mean(0) - s.image[~s.mask].mean(0)).max() for s in (easy, hard)]
    assert gap[0] > gap[1]


def test_pickle_and_registry():
    ds = make_dataset("synthetic", n_images=3, size=64)
    clone = pickle.loads(pickle.dumps(ds))
    assert np.array_equal(clone[2].image, ds[2].image)


@pytest.mark.parametrize("kwargs, match", [
    ({"flavour": "mri"}, "flavour"), ({"n_images": 0}, "n_images"),
    ({"size": 8}, "size"), ({"contrast": 0}, "contrast"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SyntheticDataset(**kwargs)
