"""Reading images and masks from disk, with explicit, documented conversions.

Every reader returns arrays in one canonical form (``(H, W, 3)`` uint8 RGB images, ``(H, W)`` bool
masks) and raises a clear error naming the file on any failure, so that a broken data set fails at
the file that broke it instead of deep inside training.

TIFF files are decoded with ``tifffile``, never with OpenCV or Pillow first: the CVC-ClinicDB frames
are tagged ``PhotometricInterpretation = MinIsBlack`` with ``SamplesPerPixel = 3``. libtiff (used by
OpenCV) then treats samples 2 and 3 as "extra samples" and returns only the first (red) channel as
a grey image; Pillow refuses the file outright. The three samples are the R, G, B planes of the
frame, so the samples-per-pixel count, not the photometric tag, decides how a TIFF is interpreted.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from bow_gym.io_utils import atomic_write_bytes

__all__ = [
    "DatasetError",
    "read_file_list",
    "read_image",
    "read_mask",
    "read_masks_union",
    "write_file_list",
]

PathLike = str | os.PathLike

_A = {"image": "an image", "mask": "a mask"}  # for error messages
_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")  # classic and BigTIFF, both orders

# TIFF PhotometricInterpretation values that the sample-count rule below can interpret.
_PHOTOMETRIC_MINISWHITE = 0
_PHOTOMETRIC_MINISBLACK = 1
_PHOTOMETRIC_RGB = 2
_PHOTOMETRIC_PALETTE = 3


class DatasetError(ValueError):
    """A data-set file or folder exists but is not what the loader expects."""


def read_image(path: PathLike) -> np.ndarray:
    """Read an image file as ``(H, W, 3)`` uint8 RGB, exactly as the file stores it.

    Conversions: grey (and 1-bit) images are repeated over three channels; an alpha channel is
    dropped (not composited); palette images are expanded through their palette; 16-bit samples
    are scaled to 8 bits (``round(v / 257)``, so 65535 becomes 255). EXIF orientation is *not*
    applied, because masks are stored in the same raw orientation as their images.

    TIFF files are read with ``tifffile`` and interpreted by their samples per pixel (1 grey,
    2 grey + alpha, 3 RGB, 4 RGBA), whatever the photometric tag claims; planar (channel-first)
    layouts are moved to channel-last. TIFFs that ``tifffile`` cannot decode without optional
    codecs (LZW, JPEG, PackBits) fall back to Pillow.

    Args:
        path: Image file (PNG, JPEG, BMP, TIFF, or anything Pillow reads).

    Returns:
        A C-contiguous ``(H, W, 3)`` uint8 array.

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        DatasetError: if the file cannot be decoded or has an unsupported shape or sample type.
    """
    path = Path(path)
    array = _decode(path, what="image")
    if array.dtype == np.bool_:
        array = array.astype(np.uint8) * np.uint8(255)
    elif array.dtype == np.uint16:
        array = ((array.astype(np.uint32) + 128) // 257).astype(np.uint8)
    if array.ndim == 2:
        array = np.repeat(array[:, :, None], 3, axis=2)
    elif array.shape[2] == 2:  # grey + alpha
        array = np.repeat(array[:, :, :1], 3, axis=2)
    else:
        array = array[:, :, :3]
    return np.ascontiguousarray(array)


def read_mask(path: PathLike) -> np.ndarray:
    """Read a segmentation mask as an ``(H, W)`` bool array (``True`` = foreground).

    Binarisation rules, applied in this order:

    1. 1-bit files (Pillow mode ``"1"``, bilevel TIFF) are used as they are.
    2. Palette files are expanded through their palette (to RGBA if the palette has transparency).
    3. The "value" of a pixel is its grey level, or the maximum over R, G, B for colour files.
       If a file has an alpha channel, its colour is constant (typically all zero) and its alpha
       varies, the alpha channel is the value instead (masks painted as transparency).
    4. Integer values: if the maximum value is exactly 1 the file is a 0/1 label image and
       ``value == 1`` is foreground. Otherwise foreground is ``value > 127`` for 8-bit files and
       ``value > 32767`` for 16-bit files: a mid-range threshold, because JPEG masks carry
       compression noise and some masks (e.g. CVC-ClinicDB) carry stray low values.

    Args:
        path: Mask file (PNG, JPEG, BMP, TIFF, or anything Pillow reads).

    Returns:
        A C-contiguous ``(H, W)`` bool array.

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        DatasetError: if the file cannot be decoded or has an unsupported shape or sample type.
    """
    path = Path(path)
    array = _decode(path, what="mask")
    alpha: np.ndarray | None = None
    if array.ndim == 2:
        value = array
    elif array.shape[2] == 2:
        value, alpha = array[:, :, 0], array[:, :, 1]
    else:
        value = array[:, :, :3].max(axis=2)
        if array.shape[2] == 4:
            alpha = array[:, :, 3]
    # A constant colour carries no shape (all black, or all white under a transparency mask).
    if alpha is not None and value.min() == value.max() and alpha.min() != alpha.max():
        value = alpha
    return np.ascontiguousarray(_binarise(value))


def read_masks_union(paths: Sequence[PathLike]) -> np.ndarray:
    """Read several masks of one image and return their union (logical OR).

    Args:
        paths: One or more mask files, all of the same size.

    Returns:
        An ``(H, W)`` bool array.

    Raises:
        ValueError: if ``paths`` is empty.
        FileNotFoundError: if a file does not exist.
        DatasetError: if a file cannot be read or the masks differ in size (naming both files).
    """
    if len(paths) == 0:
        raise ValueError("read_masks_union needs at least one mask file")
    first = Path(paths[0])
    union = read_mask(first).copy()
    for other in paths[1:]:
        other = Path(other)
        mask = read_mask(other)
        if mask.shape != union.shape:
            raise DatasetError(
                f"masks of one image differ in size: {first} is {_hw(union.shape)} but "
                f"{other} is {_hw(mask.shape)} (HxW); expected masks of equal size to unite"
            )
        union |= mask
    return union


def write_file_list(path: PathLike, ids: Iterable[str]) -> None:
    """Write sample ids to a text file, one per line (UTF-8), atomically.

    The list is written to a temporary file in the same folder and then moved over ``path`` with
    :func:`os.replace`, so a reader never sees a half-written list. Missing parent folders are
    created.

    Args:
        path: Destination file.
        ids: Sample ids; they may contain spaces but not line breaks, and may not be empty.

    Raises:
        ValueError: if an id is empty or contains a line break.
    """
    path = Path(path)
    ids = [str(i) for i in ids]
    for sample_id in ids:
        if not sample_id or "\n" in sample_id or "\r" in sample_id:
            raise ValueError(
                f"cannot write id {sample_id!r} to {path}: ids must be non-empty "
                "and contain no line breaks"
            )
    atomic_write_bytes(path, "".join(f"{sample_id}\n" for sample_id in ids).encode("utf-8"))


def read_file_list(path: PathLike) -> list[str]:
    """Read sample ids written by :func:`write_file_list` (one per line, UTF-8).

    Line endings (``\\n`` or ``\\r\\n``) are removed; other whitespace is kept because ids such as
    ``"benign (4)"`` contain spaces. Empty lines are skipped.

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        DatasetError: if the file is not valid UTF-8 text.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"file list not found: {path} (expected a text file, one id a line)"
        )
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{path}: not a UTF-8 file list ({exc})") from exc
    return [line.rstrip("\r") for line in text.split("\n") if line.rstrip("\r")]


# --------------------------------------------------------------------------------------------
# Decoding


def _decode(path: Path, what: str) -> np.ndarray:
    """Decode ``path`` to ``(H, W)`` or ``(H, W, C)``, C in 2..4 (grey+A, RGB, RGBA).

    The dtype is bool, uint8 or uint16; palettes are already expanded.
    """
    if not path.exists():
        raise FileNotFoundError(f"{what} file not found: {path}")
    if not path.is_file():
        raise DatasetError(f"{path}: not a regular file, expected {_A[what]} file")
    try:
        with path.open("rb") as handle:
            magic = handle.read(4)
    except OSError as exc:
        raise DatasetError(f"{path}: cannot open {what} file ({exc})") from exc
    if magic in _TIFF_MAGIC:
        array = _decode_tiff(path, what)
    else:
        array = _decode_pillow(path, what)
    return _check_array(array, path, what)


def _decode_tiff(path: Path, what: str) -> np.ndarray:
    import tifffile  # imported here: only TIFF data sets need it

    try:
        with tifffile.TiffFile(path) as tif:
            if not tif.pages:
                raise DatasetError(f"{path}: TIFF holds no image, expected {_A[what]}")
            page = tif.pages[0]
            # A stack of equal pages is a volume or a time series, not one 2-D image: reading its
            # first page silently would hide a wrong file (or a writer's misread axes).
            if tif.series and len(tif.series[0].pages) > 1:
                raise DatasetError(
                    f"{path}: TIFF holds a stack of {len(tif.series[0].pages)} images (shape "
                    f"{tif.series[0].shape}), expected a single 2-D {what}"
                )
            photometric = int(page.photometric)
            if photometric not in (
                _PHOTOMETRIC_MINISWHITE,
                _PHOTOMETRIC_MINISBLACK,
                _PHOTOMETRIC_RGB,
                _PHOTOMETRIC_PALETTE,
            ):
                # CMYK, YCbCr, CIELab...: Pillow converts these to RGB correctly.
                return _decode_pillow(path, what)
            array = page.asarray()
            axes = page.axes
            colormap = page.colormap if photometric == _PHOTOMETRIC_PALETTE else None
    except DatasetError:
        raise
    except Exception as tiff_exc:  # tifffile raises many exception types; retry with Pillow
        # Typically LZW/JPEG/PackBits compression, which tifffile only decodes with the optional
        # imagecodecs package. Pillow handles those and standard photometrics correctly.
        try:
            return _decode_pillow(path, what)
        except DatasetError as pil_exc:
            raise DatasetError(
                f"{path}: cannot decode TIFF {what} (tifffile: {tiff_exc}; Pillow: {pil_exc})"
            ) from tiff_exc

    if axes == "SYX":  # planar configuration "separate": channel-first planes
        array = np.moveaxis(array, 0, -1)
    elif axes not in ("YX", "YXS"):
        raise DatasetError(
            f"{path}: TIFF page has axes {axes!r} and shape {array.shape}, expected a 2-D {what} "
            "(YX, YXS or SYX)"
        )
    if colormap is not None:
        if array.ndim != 2:
            raise DatasetError(f"{path}: palette TIFF with {array.shape} samples, expected 1")
        colormap = np.asarray(colormap)  # (3, 2**bits) RGB, normally 16-bit
        # Some writers store 8-bit values in the 16-bit colormap; don't turn those into black.
        colormap = colormap.astype(np.uint8 if colormap.max() <= 255 else np.uint16)
        array = np.moveaxis(colormap[:, array], 0, -1)
    elif photometric == _PHOTOMETRIC_MINISWHITE and array.ndim == 2:
        # Min-is-white stores 0 as white; invert so values mean what they look like.
        if array.dtype == np.bool_:
            array = ~array
        elif array.dtype in (np.uint8, np.uint16):
            array = np.iinfo(array.dtype).max - array
    return array


def _decode_pillow(path: Path, what: str) -> np.ndarray:
    try:
        with Image.open(path) as image:
            image.load()  # decode now, so truncated files fail here
            mode = image.mode
            if mode == "P":
                image = image.convert("RGBA" if "transparency" in image.info else "RGB")
            elif mode == "PA":
                image = image.convert("RGBA")
            elif mode in ("CMYK", "YCbCr", "LAB", "HSV", "RGBX"):
                image = image.convert("RGB")
            elif mode in ("La", "RGBa"):  # premultiplied alpha
                image = image.convert("RGBA")
            array = np.array(image)
    except Exception as exc:  # Pillow raises OSError, SyntaxError, ValueError, ...
        raise DatasetError(
            f"{path}: cannot decode {what} file ({type(exc).__name__}: {exc})"
        ) from exc
    if array.dtype == np.int32 or mode.startswith("I;16"):
        # Pillow opens 16-bit grey PNGs as "I" (int32) or "I;16*" modes.
        if array.size and (array.min() < 0 or array.max() > 65535):
            raise DatasetError(f"{path}: 32-bit integer {what} with values outside 0..65535")
        array = array.astype(np.uint16)
    return array


def _check_array(array: np.ndarray, path: Path, what: str) -> np.ndarray:
    if array.dtype.byteorder not in ("=", "|"):  # e.g. Pillow "I;16B": make it native
        array = array.astype(array.dtype.newbyteorder("="))
    if array.dtype not in (np.bool_, np.uint8, np.uint16):
        raise DatasetError(
            f"{path}: {what} has samples of type {array.dtype}, expected 1-, 8- or 16-bit unsigned"
        )
    if array.ndim not in (2, 3) or (array.ndim == 3 and not 2 <= array.shape[2] <= 4):
        raise DatasetError(
            f"{path}: {what} has shape {array.shape}, expected (H, W) or (H, W, C) with C in 2..4"
        )
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise DatasetError(f"{path}: {what} is empty (shape {array.shape})")
    if array.ndim == 3 and array.dtype == np.bool_:
        array = array.astype(np.uint8) * np.uint8(255)
    return array


def _binarise(value: np.ndarray) -> np.ndarray:
    if value.dtype == np.bool_:
        return value
    peak = int(value.max())
    if peak == 1:  # a 0/1 label image, not an almost-black picture
        return value == 1
    threshold = 127 if value.dtype == np.uint8 else 32767
    return value > threshold


def _hw(shape: tuple[int, ...]) -> str:
    return f"{shape[0]}x{shape[1]}"
