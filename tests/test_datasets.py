"""Tests for :mod:`bow_gym.datasets`: readers, layouts, registry and splits.

Unit tests write their own files in ``tmp_path``; tests marked ``real_data`` read the shared
samples (see ``tests/conftest.py``).
"""

from __future__ import annotations

import struct
from pathlib import Path

import cv2
import numpy as np
import pytest
import tifffile
from PIL import Image

from bow_gym.datasets import (
    BUSI,
    ISIC2018,
    ConcatDataset,
    CVCClinicDB,
    DatasetError,
    FileDataset,
    ImageMaskFolder,
    KvasirSEG,
    Sample,
    SegmentationDataset,
    list_datasets,
    make_dataset,
    read_file_list,
    read_image,
    read_mask,
    read_masks_union,
    train_test_ids,
    write_file_list,
)
from bow_gym.datasets.layouts import natural_key

# --------------------------------------------------------------------------------------------
# Helpers


def _png(path: Path, array: np.ndarray, mode: str | None = None) -> Path:
    image = Image.fromarray(array) if mode is None else Image.fromarray(array).convert(mode)
    image.save(path)
    return path


def _rng_image(h: int = 12, w: int = 16, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _square_mask(h: int = 12, w: int = 16) -> np.ndarray:
    mask = np.zeros((h, w), dtype=bool)
    mask[3:8, 4:10] = True
    return mask


def _write_pair(images: Path, masks: Path, stem: str, size=(12, 16), mask_name=None) -> None:
    images.mkdir(parents=True, exist_ok=True)
    masks.mkdir(parents=True, exist_ok=True)
    _png(images / f"{stem}.png", _rng_image(*size, seed=len(stem)))
    _png(masks / (mask_name or f"{stem}.png"), _square_mask(*size).astype(np.uint8) * 255)


def _make_kvasir(root: Path, stems) -> Path:
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir(parents=True)
    for stem in stems:
        cv2.imwrite(str(root / "images" / f"{stem}.jpg"), _rng_image(seed=int(stem)))
        cv2.imwrite(str(root / "masks" / f"{stem}.jpg"), np.dstack([_square_mask() * 255] * 3))
    return root


# --------------------------------------------------------------------------------------------
# read_image


def test_grey_image_becomes_rgb_with_equal_channels(tmp_path):
    grey = np.arange(12 * 16, dtype=np.uint8).reshape(12, 16)
    image = read_image(_png(tmp_path / "grey.png", grey))
    assert image.shape == (12, 16, 3) and image.dtype == np.uint8
    for c in range(3):
        np.testing.assert_array_equal(image[:, :, c], grey)


def test_rgb_channel_order_and_alpha_dropped(tmp_path):
    bgr = np.zeros((4, 5, 3), np.uint8)
    bgr[..., 2] = 255  # pure red, written by OpenCV in BGR order
    cv2.imwrite(str(tmp_path / "red.png"), bgr)
    np.testing.assert_array_equal(read_image(tmp_path / "red.png")[0, 0], [255, 0, 0])

    rgb = _rng_image()
    rgba = np.dstack([rgb, np.full(rgb.shape[:2], 7, np.uint8)])
    np.testing.assert_array_equal(read_image(_png(tmp_path / "rgba.png", rgba)), rgb)


def test_16bit_and_palette_images(tmp_path):
    cv2.imwrite(str(tmp_path / "g16.png"), np.array([[0, 32768, 65535]], np.uint16))
    np.testing.assert_array_equal(read_image(tmp_path / "g16.png")[0, :, 0], [0, 128, 255])

    pal = Image.fromarray(np.array([[0, 1, 2]], np.uint8), mode="P")
    pal.putpalette([10, 20, 30, 200, 100, 50, 0, 255, 0])
    pal.save(tmp_path / "pal.png")
    np.testing.assert_array_equal(
        read_image(tmp_path / "pal.png")[0], [[10, 20, 30], [200, 100, 50], [0, 255, 0]]
    )


@pytest.mark.parametrize(
    "layout",
    ["rgb-contig", "rgb-planar", "minisblack-3-samples", "minisblack-planar", "lzw-via-pillow"],
)
def test_tiff_layouts_give_true_rgb(tmp_path, layout):
    rgb = _rng_image(20, 30)
    path = tmp_path / f"{layout}.tif"
    if layout == "rgb-contig":
        tifffile.imwrite(path, rgb, photometric="rgb")
    elif layout == "rgb-planar":
        tifffile.imwrite(path, rgb.transpose(2, 0, 1), photometric="rgb", planarconfig="separate")
    elif layout == "minisblack-3-samples":  # how CVC-ClinicDB stores its frames
        tifffile.imwrite(path, rgb, photometric="minisblack", planarconfig="contig")
    elif layout == "minisblack-planar":
        tifffile.imwrite(
            path, rgb.transpose(2, 0, 1), photometric="minisblack", planarconfig="separate"
        )
    else:  # LZW needs the optional imagecodecs in tifffile; the reader falls back to Pillow
        Image.fromarray(rgb).save(path, compression="tiff_lzw")
    image = read_image(path)
    assert image.shape == (20, 30, 3)
    np.testing.assert_array_equal(image, rgb)


def test_tiff_miniswhite_and_bilevel(tmp_path):
    tifffile.imwrite(tmp_path / "mw.tif", np.array([[0, 255]], np.uint8), photometric="miniswhite")
    np.testing.assert_array_equal(read_image(tmp_path / "mw.tif")[0, :, 0], [255, 0])
    bits = _square_mask()
    tifffile.imwrite(tmp_path / "bits.tif", bits, photometric="minisblack")
    np.testing.assert_array_equal(read_mask(tmp_path / "bits.tif"), bits)


# --------------------------------------------------------------------------------------------
# read_mask


def test_mask_1bit_png(tmp_path):
    mask = _square_mask()
    path = tmp_path / "m.png"
    Image.fromarray(mask).save(path)
    assert Image.open(path).mode == "1"
    out = read_mask(path)
    assert out.dtype == np.bool_
    np.testing.assert_array_equal(out, mask)


def _mostly_binary(values, dtype=np.uint8, full=255) -> tuple[np.ndarray, np.ndarray]:
    """A 16x16 mask (left half foreground at ``full``) whose first pixels hold ``values``."""
    array = np.zeros((16, 16), dtype)
    array[:, 8:] = full
    flat = array.ravel()
    flat[: len(values)] = values
    return array, array > (full // 2)


def test_mask_grey_thresholds_stray_values(tmp_path):
    # CVC-ClinicDB style: 0/255 with a few stray values below and above the threshold.
    grey, truth = _mostly_binary([5, 100, 127, 128, 200])
    out = read_mask(_png(tmp_path / "g.png", grey))
    np.testing.assert_array_equal(out, truth)
    assert not out.ravel()[2] and out.ravel()[3]  # 127 is background, 128 foreground


@pytest.mark.parametrize(
    "values, foreground",
    [([0, 1], 1), ([0, 1, 2], "nonzero"), ([0, 100], "nonzero"), ([0, 1, 2], [2])],
    ids=["0-1-label", "0-1-2-label", "0-100-grey", "0-1-2-label-class-2"],
)
def test_mask_low_values_are_refused_and_read_when_told(tmp_path, values, foreground):
    labels = np.resize(np.array(values, np.uint8), (8, 9))
    path = _png(tmp_path / "labels.png", labels)
    # Before: every case here silently became an all-background (or all-label-1) mask.
    with pytest.raises(DatasetError, match=r"labels\.png.*ambiguous.*mask_foreground=") as info:
        read_mask(path)
    assert f"{max(values)} (" in str(info.value)  # the values found are named
    expected = labels > 0 if foreground == "nonzero" else np.isin(labels, np.ravel(foreground))
    np.testing.assert_array_equal(read_mask(path, foreground=foreground), expected)


def test_mask_black_with_stray_ones_is_refused_not_foreground(tmp_path):
    # Before: the "0/1 label image" rule made the three stray pixels foreground.
    black = np.zeros((32, 32), np.uint8)
    black[[3, 17, 30], [5, 9, 28]] = 1
    path = _png(tmp_path / "stray.png", black)
    with pytest.raises(DatasetError, match=r"stray\.png.*0 \(1021 px\), 1 \(3 px\).*'>127'"):
        read_mask(path)
    assert not read_mask(path, foreground=">127").any()


def test_mask_16bit(tmp_path):
    full, truth = _mostly_binary([1000, 32767, 32768, 65000], np.uint16, 65535)
    cv2.imwrite(str(tmp_path / "m16.png"), full)
    np.testing.assert_array_equal(read_mask(tmp_path / "m16.png"), truth)
    # An 8-bit 0/255 mask written in 16 bits. Before: all background (the > 32767 rule).
    eight, truth8 = _mostly_binary([], np.uint16, 255)
    cv2.imwrite(str(tmp_path / "m16_255.png"), eight)
    np.testing.assert_array_equal(read_mask(tmp_path / "m16_255.png"), truth8)
    # 0/1000 fits neither scale: refused, naming the file and the values.
    cv2.imwrite(str(tmp_path / "m16_1000.png"), (truth8 * 1000).astype(np.uint16))
    with pytest.raises(DatasetError, match=r"m16_1000\.png.*1000 \(128 px\).*16-bit"):
        read_mask(tmp_path / "m16_1000.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "m16_1000.png", ">500"), truth8)


def test_mask_rgb_uses_max_over_channels(tmp_path):
    rgb = np.zeros((16, 16, 3), np.uint8)
    rgb[:, 8:] = [200, 0, 0]  # one colour: a red mask
    rgb[0, 0] = [0, 0, 40]  # stray dark pixels stay background
    np.testing.assert_array_equal(read_mask(_png(tmp_path / "red.png", rgb)), rgb[..., 0] > 127)


def test_picture_and_multicolour_masks_are_refused(tmp_path):
    picture = _rng_image(16, 16)
    with pytest.raises(DatasetError, match=r"photo\.png.*not a binary mask.*%"):
        read_mask(_png(tmp_path / "photo.png", picture))
    two = np.zeros((16, 16, 3), np.uint8)
    two[:, 4:8] = [255, 0, 0]
    two[:, 8:12] = [0, 255, 0]
    with pytest.raises(DatasetError, match=r"classes\.png.*several colours.*red.*green"):
        read_mask(_png(tmp_path / "classes.png", two))
    np.testing.assert_array_equal(
        read_mask(tmp_path / "classes.png", ">127"), two.max(axis=2) > 127
    )


@pytest.mark.parametrize("bad", ["yes", ">x", 1.5, True, [], [-1], [70000], None])
def test_mask_foreground_setting_is_checked(tmp_path, bad):
    path = _png(tmp_path / "m.png", _square_mask().astype(np.uint8) * 255)
    with pytest.raises(ValueError, match="mask_foreground="):
        read_mask(path, foreground=bad)
    with pytest.raises(ValueError, match="mask_foreground="):
        ImageMaskFolder(tmp_path, tmp_path, mask_foreground=bad)


def test_mask_rgba_colour_or_alpha(tmp_path):
    # Colour carries the mask; the constant alpha is ignored.
    rgba = np.zeros((1, 4, 4), np.uint8)
    rgba[0, :, 3] = 255
    rgba[0, 1, :3] = 255
    np.testing.assert_array_equal(
        read_mask(_png(tmp_path / "colour.png", rgba)), [[False, True, False, False]]
    )
    # Colour all zero, alpha varies: alpha carries the mask (with a few stray alpha values).
    alpha, truth = _mostly_binary([10, 200])
    rgba = np.zeros((16, 16, 4), np.uint8)
    rgba[..., 3] = alpha
    np.testing.assert_array_equal(read_mask(_png(tmp_path / "alpha.png", rgba)), truth)
    rgba[..., :3] = 255  # all white, shape in alpha only
    np.testing.assert_array_equal(read_mask(_png(tmp_path / "white_alpha.png", rgba)), truth)


def test_mask_palette_goes_through_the_palette(tmp_path):
    pal = Image.fromarray(np.array([[0, 1, 2, 1]], np.uint8), mode="P")
    pal.putpalette([0, 0, 0, 255, 255, 255, 50, 50, 50])
    pal.save(tmp_path / "pal.png")
    # The indices (max 2) would be an ambiguous label image; the palette colours decide.
    np.testing.assert_array_equal(read_mask(tmp_path / "pal.png"), [[False, True, False, True]])
    voc = Image.fromarray(np.array([[0, 1, 1, 0]], np.uint8), mode="P")
    voc.putpalette([0, 0, 0, 128, 0, 0])  # a VOC-style palette: class 1 is dark red
    voc.save(tmp_path / "voc.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "voc.png"), [[False, True, True, False]])


def test_mask_noisy_jpeg(tmp_path):
    # Edges off the 8x8 block grid, so that the JPEG really is noisy.
    grey = np.zeros((64, 64), np.uint8)
    cv2.circle(grey, (30, 33), 17, 255, -1)
    cv2.rectangle(grey, (3, 5), (12, 50), 255, -1)
    truth = grey > 0
    cv2.imwrite(str(tmp_path / "m.jpg"), np.dstack([grey] * 3), [cv2.IMWRITE_JPEG_QUALITY, 75])
    raw = np.asarray(Image.open(tmp_path / "m.jpg"))
    assert raw.ndim == 3 and not np.isin(raw, (0, 255)).all()  # the noise is really there
    np.testing.assert_array_equal(read_mask(tmp_path / "m.jpg"), truth)


def test_masks_union_and_shape_mismatch(tmp_path):
    a = np.zeros((6, 8), bool)
    a[1:3, 1:3] = True
    b = np.zeros((6, 8), bool)
    b[4:6, 5:8] = True
    pa = _png(tmp_path / "a.png", a.astype(np.uint8) * 255)
    pb = _png(tmp_path / "b.png", b.astype(np.uint8) * 255)
    np.testing.assert_array_equal(read_masks_union([pa, pb]), a | b)
    pc = _png(tmp_path / "c_other.png", np.zeros((7, 8), np.uint8))
    with pytest.raises(DatasetError, match=r"a\.png.*c_other\.png"):
        read_masks_union([pa, pc])


# --------------------------------------------------------------------------------------------
# Bad files


@pytest.mark.parametrize("reader", [read_image, read_mask])
def test_missing_file(tmp_path, reader):
    with pytest.raises(FileNotFoundError, match="no_such_file.png"):
        reader(tmp_path / "no_such_file.png")


@pytest.mark.parametrize("name", ["junk.png", "junk.jpg", "junk.tif", "empty.png"])
@pytest.mark.parametrize("reader", [read_image, read_mask])
def test_corrupt_file(tmp_path, reader, name):
    data = np.random.default_rng(1).bytes(500)
    if name == "junk.tif":
        data = b"II*\x00" + data  # a TIFF header, then garbage: exercise the TIFF path
    elif name == "empty.png":
        data = b""
    (tmp_path / name).write_bytes(data)
    with pytest.raises(DatasetError, match=name.replace(".", r"\.")):
        reader(tmp_path / name)


def test_truncated_png(tmp_path):
    path = _png(tmp_path / "cut.png", _rng_image(64, 64))
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(DatasetError, match="cut.png"):
        read_image(path)


def test_unsupported_tiffs(tmp_path):
    tifffile.imwrite(tmp_path / "float.tif", np.zeros((4, 5), np.float32))
    with pytest.raises(DatasetError, match=r"float\.tif.*float32"):
        read_image(tmp_path / "float.tif")
    tifffile.imwrite(
        tmp_path / "vol.tif",
        np.zeros((6, 4, 5), np.uint8),
        photometric="minisblack",
        planarconfig="separate",
    )
    with pytest.raises(DatasetError, match=r"vol\.tif"):
        read_mask(tmp_path / "vol.tif")


def test_multipage_tiff_is_refused(tmp_path):
    tifffile.imwrite(tmp_path / "stack.tif", np.zeros((5, 8, 9), np.uint8))
    with pytest.raises(DatasetError, match=r"stack\.tif.*stack of 5"):
        read_image(tmp_path / "stack.tif")


def test_directory_is_not_a_file(tmp_path):
    (tmp_path / "dir.png").mkdir()
    with pytest.raises(DatasetError, match="dir.png"):
        read_image(tmp_path / "dir.png")


# --------------------------------------------------------------------------------------------
# Layouts


def test_kvasir_layout_natural_order(tmp_path):
    root = _make_kvasir(tmp_path / "kv", ["10", "2", "1"])
    ds = KvasirSEG(root)
    assert ds.name == "kvasir-seg"
    assert ds.ids == ["1", "2", "10"]
    sample = ds[1]
    assert isinstance(sample, Sample) and sample.id == "2"
    assert sample.image.shape == (12, 16, 3) and sample.image.dtype == np.uint8
    np.testing.assert_array_equal(sample.mask, _square_mask())  # JPEG noise thresholded away


def test_kvasir_image_without_mask(tmp_path):
    root = _make_kvasir(tmp_path / "kv", ["1", "2"])
    (root / "masks" / "2.jpg").unlink()
    with pytest.raises(DatasetError, match=r"2\.jpg"):
        KvasirSEG(root)


def test_missing_root_names_root_and_layout(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nowhere.*images/"):
        KvasirSEG(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match=r"nowhere.*Ground Truth"):
        CVCClinicDB(tmp_path / "nowhere")


def test_empty_dataset(tmp_path):
    root = tmp_path / "empty_root"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    with pytest.raises(DatasetError, match=r"empty_root.*images/<id>\.jpg"):
        KvasirSEG(root)
    with pytest.raises(DatasetError, match="empty_root"):
        make_dataset("folder", root)


def test_image_mask_size_mismatch(tmp_path):
    _write_pair(tmp_path / "images", tmp_path / "masks", "a")
    _png(tmp_path / "masks" / "a.png", np.zeros((11, 16), np.uint8))
    ds = ImageMaskFolder(tmp_path / "images", tmp_path / "masks")
    with pytest.raises(DatasetError, match=r"images/a\.png.*12x16.*masks/a\.png.*11x16"):
        ds[0]


def test_cvc_layout(tmp_path):
    root = tmp_path / "cvc"
    (root / "Original").mkdir(parents=True)
    (root / "Ground Truth").mkdir()
    rgb = _rng_image(20, 30)
    for n in ("12", "3"):
        tifffile.imwrite(
            root / "Original" / f"{n}.tif", rgb, photometric="minisblack", planarconfig="contig"
        )
        tifffile.imwrite(
            root / "Ground Truth" / f"{n}.tif", _square_mask(20, 30).astype(np.uint8) * 255
        )
    # A .png copy of a frame must not create a second sample.
    _png(root / "Original" / "3.png", rgb)
    (root / "Original" / "._3.tif").write_bytes(b"macOS resource fork")
    ds = CVCClinicDB(root)
    assert ds.ids == ["3", "12"]
    assert ds.entries[0].image_path.suffix == ".tif"
    np.testing.assert_array_equal(ds[0].image, rgb)


def test_isic_layout(tmp_path):
    root = tmp_path / "isic"
    images = root / "ISIC2018_Task1-2_Validation_Input"
    masks = root / "ISIC2018_Task1_Validation_GroundTruth"
    for stem in ("ISIC_0000020", "ISIC_0000003"):
        _write_pair(images, masks, stem, mask_name=f"{stem}_segmentation.png")
    (images / "LICENSE.txt").write_text("CC BY-NC")
    ds = ISIC2018(root, part="Validation")
    assert ds.ids == ["ISIC_0000003", "ISIC_0000020"]
    np.testing.assert_array_equal(ds[1].mask, _square_mask())
    with pytest.raises(FileNotFoundError, match="ISIC2018_Task1-2_Training_Input"):
        ISIC2018(root)
    with pytest.raises(ValueError, match="Train"):
        ISIC2018(root, part="Train")


def test_busi_union_of_masks_and_normal(tmp_path):
    root = tmp_path / "busi"
    for cls in ("benign", "normal"):
        (root / cls).mkdir(parents=True)
    a = np.zeros((10, 12), bool)
    a[1:4, 1:4] = True
    b = np.zeros((10, 12), bool)
    b[6:9, 7:11] = True
    for n in (10, 2):
        _png(root / "benign" / f"benign ({n}).png", _rng_image(10, 12))
        Image.fromarray(a).save(root / "benign" / f"benign ({n})_mask.png")  # 1-bit
    rgba = np.zeros((10, 12, 4), np.uint8)
    rgba[..., 3] = 255
    rgba[b, :3] = 255
    _png(root / "benign" / "benign (2)_mask_1.png", rgba)
    _png(root / "normal" / "normal (1).png", _rng_image(10, 12)[..., 0])  # grey image
    _png(root / "normal" / "normal (1)_mask.png", np.zeros((10, 12, 3), np.uint8))

    ds = BUSI(root, classes=("benign", "normal"))
    assert ds.ids == ["benign (2)", "benign (10)", "normal (1)"]
    np.testing.assert_array_equal(ds[0].mask, a | b)
    np.testing.assert_array_equal(ds[1].mask, a)
    normal = ds[2]
    assert normal.image.shape == (10, 12, 3) and not normal.mask.any()

    with pytest.raises(FileNotFoundError, match="malignant"):
        BUSI(root)
    (root / "benign" / "benign (10)_mask.png").unlink()
    with pytest.raises(DatasetError, match=r"benign \(10\)\.png"):
        BUSI(root, classes="benign")


def test_folder_with_mask_pattern(tmp_path):
    for stem in ("b", "a"):
        _write_pair(tmp_path / "img", tmp_path / "lbl", stem, mask_name=f"{stem}_mask.png")
    ds = ImageMaskFolder(tmp_path / "img", tmp_path / "lbl", mask_pattern="{stem}_mask.png")
    assert ds.name == "folder" and ds.ids == ["a", "b"]
    assert ds.entries[0].mask_paths == (tmp_path / "lbl" / "a_mask.png",)
    np.testing.assert_array_equal(ds[0].mask, _square_mask())
    # Images and masks in one folder: the masks are not listed as images.
    _write_pair(tmp_path / "both", tmp_path / "both", "c", mask_name="c_mask.png")
    assert ImageMaskFolder(tmp_path / "both", tmp_path / "both", "{stem}_mask.png").ids == ["c"]
    via_registry = make_dataset(
        "folder", tmp_path, images_dir="img", masks_dir="lbl", mask_pattern="{stem}_mask.png"
    )
    assert via_registry.ids == ["a", "b"]
    with pytest.raises(DatasetError, match=r"img/a\.png.*a\.png"):
        ImageMaskFolder(tmp_path / "img", tmp_path / "lbl")  # default pattern: a.png missing
    with pytest.raises(ValueError, match="mask_pattern"):
        ImageMaskFolder(tmp_path / "img", tmp_path / "lbl", mask_pattern="{name}.png")


def test_file_dataset_duplicate_ids_and_empty_masks(tmp_path):
    img = _png(tmp_path / "x.png", _rng_image())
    with pytest.raises(DatasetError, match="'x' used twice"):
        FileDataset([("x", img, ()), ("x", img, ())])
    sample = FileDataset([("x", img, ())])[0]
    assert sample.mask.shape == (12, 16) and not sample.mask.any()
    with pytest.raises(DatasetError, match="no samples"):
        FileDataset([], root=tmp_path, layout="something")


# --------------------------------------------------------------------------------------------
# Registry


def test_registry_names_and_errors(tmp_path):
    assert set(list_datasets()) >= {
        "synthetic",
        "kvasir-seg",
        "cvc-clinicdb",
        "isic2018",
        "busi",
        "folder",
    }
    with pytest.raises(ValueError, match=r"'imagenet'.*kvasir-seg.*synthetic"):
        make_dataset("imagenet")
    with pytest.raises(ValueError, match="root"):
        make_dataset("kvasir-seg")
    with pytest.raises(ValueError, match="root"):
        make_dataset("synthetic", tmp_path)
    root = _make_kvasir(tmp_path / "kv", ["1", "2"])
    assert make_dataset("Kvasir_SEG", root).ids == ["1", "2"]
    with pytest.raises(ValueError, match="validation"):
        make_dataset("kvasir-seg", root, split="validation")
    with pytest.raises(ValueError, match="limit"):
        make_dataset("kvasir-seg", root, limit=0)


def test_an_empty_split_is_refused_where_it_is_made():
    with pytest.raises(ValueError, match=r"split 'test' of synthetic.* is empty: 5 samples with "
                                         r"test_fraction=0"):
        make_dataset("synthetic", n_images=5, size=32, split="test", test_fraction=0)
    assert len(make_dataset("synthetic", n_images=5, size=32, split="train", test_fraction=0)) == 5


def test_registry_synthetic():
    pytest.importorskip("bow_gym.datasets.synthetic")
    ds = make_dataset("synthetic", n_images=5, size=32, split="train", test_fraction=0.4, limit=2)
    assert isinstance(ds, SegmentationDataset) and len(ds) == 2
    sample = ds[0]
    assert sample.image.dtype == np.uint8 and sample.mask.dtype == np.bool_


# --------------------------------------------------------------------------------------------
# Splits and file lists


def test_train_test_ids_are_seeded_disjoint_and_complete():
    ids = [f"img{i}" for i in range(50)]
    train, test = train_test_ids(ids, test_fraction=0.2, seed=3)
    assert (train, test) == train_test_ids(list(reversed(ids)), test_fraction=0.2, seed=3)
    assert len(test) == 10 and not set(train) & set(test)
    assert set(train) | set(test) == set(ids)
    assert train_test_ids(ids, test_fraction=0.2, seed=4)[1] != test


def test_make_dataset_split_and_limit(tmp_path):
    root = _make_kvasir(tmp_path / "kv", [str(i) for i in range(12)])
    train = make_dataset("kvasir-seg", root, split="train", test_fraction=0.25, split_seed=1)
    test = make_dataset("kvasir-seg", root, split="test", test_fraction=0.25, split_seed=1)
    assert (len(train), len(test)) == (9, 3)
    assert not set(train.ids) & set(test.ids) and set(train.ids) | set(test.ids) == set(
        KvasirSEG(root).ids
    )
    other = make_dataset("kvasir-seg", root, split="test", test_fraction=0.25, split_seed=2)
    assert other.ids != test.ids
    limited = make_dataset(
        "kvasir-seg", root, split="train", test_fraction=0.25, split_seed=1, limit=4
    )
    assert limited.ids == train.ids[:4]
    assert [s.id for s in limited] == train.ids[:4]
    assert make_dataset("kvasir-seg", root, limit=100).ids == KvasirSEG(root).ids


def test_make_dataset_fit_and_val_split_the_train_part_only(tmp_path):
    root = _make_kvasir(tmp_path / "kv", [str(i) for i in range(20)])
    parts = {split: make_dataset("kvasir-seg", root, split=split, test_fraction=0.25,
                                 split_seed=1) for split in ("train", "test", "fit", "val")}
    fit, val = set(parts["fit"].ids), set(parts["val"].ids)
    assert (len(fit), len(val)) == (11, 4)  # 15 train images, a quarter of them (rounded) for val
    assert fit | val == set(parts["train"].ids) and not fit & val
    assert not (fit | val) & set(parts["test"].ids)
    assert parts["val"].name.endswith("[val]") and "[train]" not in parts["val"].name


def test_file_list_round_trip(tmp_path):
    ids = ["benign (4)", "ISIC_0000011", "ümlaut", " leading space"]
    path = tmp_path / "lists" / "train.txt"
    write_file_list(path, ids)
    assert read_file_list(path) == ids
    write_file_list(path, ids[:1])  # overwrite in place
    assert read_file_list(path) == ids[:1]
    assert sorted(p.name for p in path.parent.iterdir()) == ["train.txt"]  # no temp files left
    with pytest.raises(ValueError, match="line break"):
        write_file_list(path, ["a\nb"])
    assert read_file_list(path) == ids[:1]  # a failed write leaves the old list
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        read_file_list(tmp_path / "missing.txt")


# --------------------------------------------------------------------------------------------
# Real data (../shared/data)


def _read_uncompressed_tiff(path: Path) -> np.ndarray:
    """Decode an uncompressed, contiguous little-endian TIFF by hand (no imaging library)."""
    data = path.read_bytes()
    assert data[:4] == b"II*\x00"
    (ifd,) = struct.unpack_from("<I", data, 4)
    (count,) = struct.unpack_from("<H", data, ifd)
    formats = {3: "H", 4: "I"}
    tags: dict[int, tuple[int, ...]] = {}
    for k in range(count):
        tag, kind, n, value = struct.unpack_from("<HHI4s", data, ifd + 2 + 12 * k)
        if kind in formats:
            size = struct.calcsize(formats[kind]) * n
            raw = value if size <= 4 else data[struct.unpack("<I", value)[0] :][:size]
            tags[tag] = struct.unpack_from(f"<{n}{formats[kind]}", raw)
    width, height, spp = tags[256][0], tags[257][0], tags.get(277, (1,))[0]
    assert tags[259][0] == 1 and tags.get(284, (1,))[0] == 1  # no compression, contiguous
    strips = b"".join(data[o : o + c] for o, c in zip(tags[273], tags[279], strict=True))
    pixels = np.frombuffer(strips, np.uint8)[: height * width * spp]
    return (
        pixels.reshape(height, width, spp).squeeze(-1)
        if spp == 1
        else pixels.reshape(height, width, spp)
    )


def _check_sample(sample: Sample) -> None:
    assert sample.image.ndim == 3 and sample.image.shape[2] == 3
    assert sample.image.dtype == np.uint8 and sample.mask.dtype == np.bool_
    assert sample.mask.shape == sample.image.shape[:2]
    assert 0.0 < sample.mask.mean() < 1.0


@pytest.mark.real_data
def test_real_kvasir_seg(shared_data):
    root = shared_data / "kvasir-seg"
    ds = make_dataset("kvasir-seg", root)
    assert len(ds) == 1000 and ds.ids == sorted(ds.ids, key=natural_key)
    assert len(set(ds.ids)) == 1000
    for index in (0, 517, 999):
        _check_sample(ds[index])
    sample = ds[517]
    # Cross-check with an independent decoder: OpenCV (BGR order) must agree up to JPEG IDCT noise.
    bgr = cv2.imread(
        str(ds.entries[517].image_path), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION
    )
    assert np.abs(sample.image.astype(int) - bgr[:, :, ::-1]).mean() < 1.0
    cv_mask = cv2.imread(str(ds.entries[517].mask_paths[0]), cv2.IMREAD_COLOR).max(axis=2) > 127
    assert (cv_mask == sample.mask).mean() > 0.999
    train = make_dataset("kvasir-seg", root, split="train")
    test = make_dataset("kvasir-seg", root, split="test")
    assert (len(train), len(test)) == (800, 200) and not set(train.ids) & set(test.ids)


@pytest.mark.real_data
def test_real_cvc_clinicdb_true_rgb(shared_data):
    ds = CVCClinicDB(shared_data / "samples" / "CVC-ClinicDB")
    assert ds.ids == ["1", "2", "3", "250", "612"]
    stray_values_seen = False
    for index, sample in enumerate(ds):
        entry = ds.entries[index]
        assert sample.image.shape == (288, 384, 3)
        _check_sample(sample)
        # The true frame: three different channels, not one grey channel replicated.
        r, g, b = (sample.image[:, :, c].astype(int) for c in range(3))
        assert np.abs(r - g).mean() > 5 and np.abs(r - b).mean() > 5
        assert r.mean() > b.mean()  # colonoscopy mucosa is red, so R is first (RGB order)
        np.testing.assert_array_equal(sample.image, _read_uncompressed_tiff(entry.image_path))
        raw_mask = _read_uncompressed_tiff(entry.mask_paths[0])
        np.testing.assert_array_equal(sample.mask, raw_mask > 127)
        stray_values_seen |= bool(((raw_mask > 0) & (raw_mask < 128)).any())
    assert stray_values_seen  # why the threshold is mid-range, not > 0


@pytest.mark.real_data
def test_real_isic2018(shared_data):
    root = shared_data / "samples" / "ISIC2018"
    ds = make_dataset("isic2018", root)
    assert ds.ids == ["ISIC_0000011", "ISIC_0000017", "ISIC_0000018"]
    for sample in ds:
        _check_sample(sample)
    with pytest.raises(FileNotFoundError, match="Validation"):
        ISIC2018(root, part="Validation")


@pytest.mark.real_data
def test_real_busi(shared_data):
    root = shared_data / "samples" / "Dataset_BUSI_with_GT"
    ds = make_dataset("busi", root)
    assert ds.ids[:3] == ["benign (1)", "benign (4)", "benign (25)"]
    for sample_id in ("normal (1)", "normal (2)"):
        sample = ds[ds.index_of(sample_id)]
        assert sample.image.shape[:2] == sample.mask.shape and not sample.mask.any()
    for sample_id in ("benign (1)", "malignant (1)", "malignant (2)"):
        _check_sample(ds[ds.index_of(sample_id)])
    for sample_id in ("benign (4)", "benign (25)"):
        sample = ds[ds.index_of(sample_id)]
        _check_sample(sample)
        folder = root / "benign"
        # Independent reading: Pillow's grey conversion of each file (modes differ per file).
        first = np.asarray(Image.open(folder / f"{sample_id}_mask.png").convert("L")) > 127
        second = np.asarray(Image.open(folder / f"{sample_id}_mask_1.png").convert("L")) > 127
        np.testing.assert_array_equal(sample.mask, first | second)
        assert sample.mask.sum() > first.sum()


@pytest.mark.real_data
def test_real_masks_all_fit_the_automatic_policy(shared_data):
    """Every sample mask and every 25th Kvasir-SEG mask decodes to the documented threshold.

    The reference is an independent reading (OpenCV, maximum over colour channels > 127): the
    automatic policy must neither refuse a real data set's encoding nor read it differently.
    """
    samples = shared_data / "samples"
    files = sorted(p for p in samples.rglob("*") if p.is_file() and (
        "_mask" in p.name or p.parent.name in ("Ground Truth", "ISIC2018_Task1_Training_GroundTruth")
    ))
    files += sorted((shared_data / "kvasir-seg" / "masks").glob("*.jpg"))[::25]
    assert len(files) == 17 + 40
    for path in files:
        raw = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        value = raw if raw.ndim == 2 else raw[:, :, :3].max(axis=2)
        np.testing.assert_array_equal(read_mask(path), value > 127, err_msg=str(path))


# --------------------------------------------------------------------------------------------
# Group-aware splits


def _video_frames(n_sequences: int, n_frames: int, seed: int = 0):
    """Frames of ``n_sequences`` synthetic videos (a drifting, flickering scene each), numbered
    1..n_frames in order, with the planted first frame of each frame's sequence."""
    rng = np.random.default_rng(seed)
    cuts = np.sort(rng.choice(np.arange(2, n_frames + 1), n_sequences - 1, replace=False))
    starts = np.concatenate([[1], cuts])
    frames, first = [], []
    for k, start in enumerate(starts):
        stop = starts[k + 1] if k + 1 < len(starts) else n_frames + 1
        scene = cv2.resize(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8), (96, 72),
                           interpolation=cv2.INTER_CUBIC).astype(np.float32)
        y, x = rng.integers(0, 12), rng.integers(0, 16)
        for _ in range(stop - start):
            # The camera drifts through the scene a pixel or two per frame.
            y, x = np.clip(y + rng.integers(-2, 3), 0, 24), np.clip(x + rng.integers(-2, 3), 0, 32)
            frame = scene[y: y + 48, x: x + 64] * rng.uniform(0.95, 1.05)
            frame += rng.normal(0, 6, frame.shape)
            frames.append(np.clip(frame, 0, 255).astype(np.uint8))
            first.append(int(start))
    return frames, first


def _write_cvc(root: Path, frames, numbers=None) -> Path:
    (root / "Original").mkdir(parents=True)
    (root / "Ground Truth").mkdir(parents=True)
    numbers = numbers or list(range(1, len(frames) + 1))
    for n, frame in zip(numbers, frames, strict=True):
        _png(root / "Original" / f"{n}.png", frame)
        _png(root / "Ground Truth" / f"{n}.png", np.zeros(frame.shape[:2], np.uint8))
    return root


def test_cvc_sequences_recovered_from_a_complete_set(tmp_path):
    frames, first = _video_frames(29, 612)
    ds = CVCClinicDB(_write_cvc(tmp_path / "cvc", frames))
    assert ds.groups == [f"seq-{f}" for f in first]
    train, test = ds.split(0.2, seed=0)
    train_groups = {ds.groups[ds.index_of(i)] for i in train.ids}
    test_groups = {ds.groups[ds.index_of(i)] for i in test.ids}
    assert not train_groups & test_groups and abs(len(test) - 122) <= 30

    def with_neighbour_in_training(train_ids, test_ids) -> int:
        training = set(train_ids)
        return sum(str(int(i) - 1) in training or str(int(i) + 1) in training for i in test_ids)

    # By sequence, only frames at a sequence's ends can have a training neighbour (the next
    # sequence's first frame); per frame (the split before), almost every test frame has one.
    assert with_neighbour_in_training(train.ids, test.ids) <= 2 * len(test_groups)
    assert with_neighbour_in_training(*(p.ids for p in ds.split(0.2, 0, by_group=False))) > 100


def test_cvc_sequences_of_a_partial_copy_by_threshold(tmp_path):
    frames, first = _video_frames(4, 40, seed=3)
    keep = [0, 1, 2, 5, 9, 10, 20, 33, 34, 39]  # gaps in the numbering, as in the samples
    ds = CVCClinicDB(_write_cvc(tmp_path / "cvc", [frames[k] for k in keep],
                                [k + 1 for k in keep]))
    assert ds.groups == [f"seq-{min(k + 1 for k in keep if first[k] == first[j])}"
                         for j in keep]


def test_split_ids_without_groups_are_exactly_the_per_id_ones():
    ids = [f"img{i}" for i in range(37)]
    for seed in range(5):
        for fraction in (0.0, 0.1, 0.2, 0.5, 1.0):
            assert (train_test_ids(ids, fraction, seed, groups=ids)
                    == train_test_ids(ids, fraction, seed))


def test_groups_stay_whole_through_subsets_concat_and_make_dataset(tmp_path):
    frames, first = _video_frames(6, 60, seed=5)
    cvc_root = _write_cvc(tmp_path / "cvc", frames)
    kv_root = _make_kvasir(tmp_path / "kv", [str(i) for i in range(10)])
    assert KvasirSEG(kv_root).groups is None
    both = ConcatDataset([("kv", KvasirSEG(kv_root)), ("cvc", CVCClinicDB(cvc_root))])
    groups = dict(zip(both.ids, both.groups, strict=True))
    assert groups["kv/3"] == "kv/3" and groups["cvc/1"] == "cvc/seq-1"
    for seed in range(4):
        train, test = both.split(0.3, seed=seed)
        assert not {groups[i] for i in train.ids} & {groups[i] for i in test.ids}
        assert train.groups == [groups[i] for i in train.ids]
        parts = {s: make_dataset("cvc-clinicdb", cvc_root, split=s, test_fraction=0.3,
                                 split_seed=seed) for s in ("test", "fit", "val")}
        seq = {s: {f"seq-{first[int(i) - 1]}" for i in d.ids} for s, d in parts.items()}
        assert not seq["test"] & seq["fit"] and not seq["fit"] & seq["val"]
        assert not seq["test"] & seq["val"]


@pytest.mark.real_data
def test_real_cvc_samples_split_by_sequence(shared_data):
    root = shared_data / "samples" / "CVC-ClinicDB"
    ds = CVCClinicDB(root)
    # Frames 1-3 are one sequence (consecutive and alike); 250 and 612 are two others.
    assert ds.groups == ["seq-1", "seq-1", "seq-1", "seq-250", "seq-612"]
    for seed in range(10):
        for split in ("train", "test"):
            ids = set(make_dataset("cvc-clinicdb", root, split=split, test_fraction=0.4,
                                   split_seed=seed).ids)
            assert {"1", "2", "3"} <= ids or not {"1", "2", "3"} & ids, (seed, split, ids)


@pytest.mark.real_data
def test_real_kvasir_split_ids_unchanged(shared_data):
    """Kvasir-SEG has no groups: its splits are the per-image ones that earlier results used."""
    import hashlib

    root = shared_data / "kvasir-seg"
    assert KvasirSEG(root).groups is None
    expected = {0: ("1ab05bbc6b39c347", "2f7fcd9c08704a78"), 1: ("97f29709d67f3f7b",
                "68f58f4b831a8902"), 2: ("22c2ed435b7220e2", "332d3cbbdde43765")}
    for seed, (test_digest, val_digest) in expected.items():
        test = make_dataset("kvasir-seg", root, split="test", split_seed=seed).ids
        val = make_dataset("kvasir-seg", root, split="val", split_seed=seed).ids
        assert (len(test), len(val)) == (200, 160)
        assert hashlib.sha256("\n".join(test).encode()).hexdigest()[:16] == test_digest
        assert hashlib.sha256("\n".join(val).encode()).hexdigest()[:16] == val_digest


# --------------------------------------------------------------------------------------------
# Empty ground truth


def test_empty_masks_keep_drop_only(tmp_path, monkeypatch):
    images, masks = tmp_path / "images", tmp_path / "masks"
    for k in range(6):
        _write_pair(images, masks, f"img{k}")
        if k % 3 == 0:  # two "normal" images
            _png(masks / f"img{k}.png", np.zeros((12, 16), np.uint8))
    kept = make_dataset("folder", tmp_path)
    assert [kept.mask_is_empty(i) for i in range(6)] == [True, False, False, True, False, False]
    dropped = make_dataset("folder", tmp_path, empty_masks="drop")
    only = make_dataset("folder", tmp_path, empty_masks="only")
    assert dropped.ids == ["img1", "img2", "img4", "img5"] and only.ids == ["img0", "img3"]
    assert all(s.mask.any() for s in dropped) and not any(s.mask.any() for s in only)
    # The split does not depend on the choice: dropping happens inside each part.
    test = make_dataset("folder", tmp_path, split="test", test_fraction=0.5)
    test_dropped = make_dataset("folder", tmp_path, split="test", test_fraction=0.5,
                                empty_masks="drop")
    assert test_dropped.ids == [i for i in test.ids if i not in ("img0", "img3")]
    with pytest.raises(ValueError, match="empty_masks"):
        make_dataset("folder", tmp_path, empty_masks="skip")
    # Deciding reads masks only.
    import bow_gym.datasets.layouts as layouts

    monkeypatch.setattr(layouts, "read_image", lambda p: pytest.fail(f"image {p} decoded"))
    assert kept.mask_is_empty(0) and not kept.mask_is_empty(1)


@pytest.mark.real_data
def test_real_busi_without_and_with_only_normal_images(shared_data):
    root = shared_data / "samples" / "Dataset_BUSI_with_GT"
    assert make_dataset("busi", root, empty_masks="only").ids == ["normal (1)", "normal (2)"]
    lesions = make_dataset("busi", root, empty_masks="drop")
    assert lesions.ids == make_dataset("busi", root, classes=("benign", "malignant")).ids
