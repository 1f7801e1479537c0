import numpy as np
import pytest

from bow_gym.propagation import (
    cell_size,
    cells_to_pixels,
    patch_of,
    propagate,
    select_patches,
    similarity_graph,
)


def _features():
    # 2x2 grid; cos(p0, p3) = 0.8 exactly, p1 == p0, p2 orthogonal to p0.
    f = np.array([[1, 0], [1, 0], [0, 1], [0.8, 0.6]], np.float32)
    return f.reshape(2, 2, 2)


def test_threshold_is_strict_and_known_answer():
    adj = similarity_graph(_features(), 0.8)
    assert adj[0].tolist() == [True, True, False, False]  # 0.8 is not > 0.8
    adj = similarity_graph(_features(), 0.79)
    assert adj[0].tolist() == [True, True, False, True]
    assert adj[2].tolist() == [False, False, True, False]  # cos(p2, p3) = 0.6
    assert select_patches(_features(), 3, 0.5).tolist() == [True, True, True, True]


def test_clicked_patch_always_selected_even_at_threshold_one():
    f = np.random.default_rng(0).standard_normal((3, 3, 8)).astype(np.float32)
    f /= np.linalg.norm(f, axis=-1, keepdims=True)
    assert np.all(np.diag(similarity_graph(f, 1.0)))
    assert similarity_graph(f, 1.0).sum() == 9


@pytest.mark.parametrize("bad", [1.01, -1.5, float("nan"), 2, "high", None])
def test_threshold_out_of_range(bad):
    with pytest.raises(ValueError, match="threshold"):
        similarity_graph(_features(), bad)


def test_propagate_fills_selected_cells_and_keeps_others():
    mask = np.zeros((4, 4), bool)
    mask[2, 0] = True  # a pixel of patch 2 that no click reaches
    out = propagate(mask, _features(), click=(0, 3), label=True, threshold=0.79)
    # click (0, 3) is in patch 1 -> selects patches 0, 1, 3
    expected = np.zeros((4, 4), bool)
    expected[0:2, 0:4] = True
    expected[2:4, 2:4] = True
    expected[2, 0] = True
    assert np.array_equal(out, expected)
    assert not mask[0, 0]  # input untouched
    out2 = propagate(out, _features(), click=(3, 3), label=False, threshold=0.9)
    expected[2:4, 2:4] = False
    assert np.array_equal(out2, expected)


def test_geometry_helpers():
    assert cell_size((128, 128), (16, 16)) == (8, 8)
    assert patch_of(127, 8, (128, 128), (16, 16)) == 15 * 16 + 1
    with pytest.raises(ValueError, match="multiple of the patch grid"):
        cell_size((100, 100), (16, 16))
    with pytest.raises(ValueError, match="outside"):
        patch_of(128, 0, (128, 128), (16, 16))
    px = cells_to_pixels(np.array([True, False, False, True]), (2, 2), (4, 6))
    assert px.shape == (4, 6) and px[:2, :3].all() and not px[:2, 3:].any() and px[2:, 3:].all()
