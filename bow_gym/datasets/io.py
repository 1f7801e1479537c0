"""Reading images and masks from disk, with explicit, documented conversions.

Every reader returns arrays in one canonical form (``(H, W, 3)`` uint8 RGB images, ``(H, W)`` bool
masks) and raises a clear error naming the file on any failure, so that a broken data set fails at
the file that broke it instead of deep inside training.

TIFF files are decoded with ``tifffile``, never with OpenCV or Pillow first: the CVC-ClinicDB frames
are tagged ``PhotometricInterpretation = MinIsBlack`` with ``SamplesPerPixel = 3``. libtiff (used by
OpenCV) then treats samples 2 and 3 as "extra samples" and returns only the first (red) channel as
a grey image; Pillow refuses the file outright. The three samples are the R, G, B planes of the
frame, so the samples-per-pixel count, not the photometric tag, decides how a TIFF is interpreted.

Masks follow one documented decoding policy (:func:`read_mask`): the encodings that real data sets
use are recognised, and a file whose values fit none of them unambiguously is refused with an error
naming the file, the values found and the ``mask_foreground`` setting that says how to read it.
A mask is never guessed.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from bow_gym.io_utils import atomic_write_bytes

__all__ = [
    "DatasetError",
    "MaskForeground",
    "check_mask_foreground",
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


#: How a mask's values map to foreground: ``"auto"`` (the documented policy of :func:`read_mask`),
#: ``"nonzero"``, ``">N"`` (values above the integer N), an integer or a sequence of integers
#: (exactly those values).
MaskForeground = str | int | Sequence[int]

# The automatic policy's tolerances (see read_mask). Measured on the real data sets: the worst
# Kvasir-SEG JPEG mask and CVC-ClinicDB TIFF have 0.012% of their pixels in the middle half of the
# scale, and every Kvasir-SEG foreground pixel is white in all three channels; 5% leaves a wide
# margin for noise while a grey picture or a soft (probability) map lies far above it.
_MID_BAND_LIMIT = 0.05
_MINOR_COLOUR_LIMIT = 0.05
_AUTO = "auto"


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


def read_mask(path: PathLike, foreground: MaskForeground = _AUTO) -> np.ndarray:
    """Read a segmentation mask as an ``(H, W)`` bool array (``True`` = foreground).

    **Decoding policy.** First the file is reduced to one *value* per pixel:

    1. 1-bit files (Pillow mode ``"1"``, bilevel TIFF) count as 8-bit files holding 0 and 255.
    2. Palette files are expanded through their palette (to RGBA if the palette has transparency):
       the colours, not the indices, are the mask.
    3. The value of a pixel is its grey level, or the maximum over R, G, B for colour files.
       If a file has an alpha channel, its colour is constant (typically all zero) and its alpha
       varies, the alpha channel is the value instead (masks painted as transparency); a file of
       one colour and one alpha reads by its colour (all-opaque black is an empty mask).

    With ``foreground="auto"`` (the default) the values must then fit one of these encodings,
    where ``M`` is the full scale (255 for 8-bit files, 65535 for 16-bit files; a 16-bit file whose
    values are all at most 255 holds 8-bit values and uses ``M = 255``):

    * all zero: an empty mask (BUSI ``normal`` images);
    * two levels, 0 and one value above ``M / 2`` (0/255, 0/65535, 0/128 of a VOC-style palette):
      the upper level is foreground;
    * a binary mask with noise, the largest value above ``M / 2`` and at most 5% of the pixels in
      the middle half of the scale (``M / 4 .. 3M / 4``): foreground is ``value > M / 2`` (127 or
      32767). This reads JPEG masks (Kvasir-SEG) and masks with stray low values (CVC-ClinicDB)
      the way their authors meant.

    Anything else is refused with a :class:`DatasetError` naming the file, the values found and
    how to say what they mean, rather than guessed:

    * every value at most ``M / 2`` but not all zero (a 0/1 or 0/1/2 label image, a 0/100 grey
      mask, a black mask with a few stray pixels of value 1): these are label images, faint
      masks or empty masks with noise, and the file cannot say which;
    * more than 5% of the pixels in the middle half of the scale (a photograph, a soft
      probability map);
    * foreground pixels of several colours, none under 95% of them (a multi-class colour mask).

    An explicit ``foreground`` reads every file the same way, without these checks:

    * ``"nonzero"``: every non-zero value is foreground (label images, faint masks);
    * ``">N"`` with an integer ``N`` (e.g. ``">127"``): values above ``N``;
    * an integer or a sequence of integers: exactly those values (``1`` for a 0/1 label image,
      ``[1, 2]`` for two classes of a label image united).

    Args:
        path: Mask file (PNG, JPEG, BMP, TIFF, or anything Pillow reads).
        foreground: How values map to foreground (see above); data sets take it as their
            ``mask_foreground`` argument.

    Returns:
        A C-contiguous ``(H, W)`` bool array.

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        ValueError: if ``foreground`` is not one of the forms above.
        DatasetError: if the file cannot be decoded, has an unsupported shape or sample type, or
            (with ``"auto"``) its values fit no encoding unambiguously.
    """
    rule = _foreground_rule(foreground)
    path = Path(path)
    array = _decode(path, what="mask")
    if array.dtype == np.bool_:
        array = array.astype(np.uint8) * np.uint8(255)
    alpha: np.ndarray | None = None
    colour: np.ndarray | None = None
    if array.ndim == 2:
        value = array
    elif array.shape[2] == 2:
        value, alpha = array[:, :, 0], array[:, :, 1]
    else:
        colour = array[:, :, :3]
        value = colour.max(axis=2)
        if array.shape[2] == 4:
            alpha = array[:, :, 3]
    # A constant colour carries no shape (all black, or all white under a transparency mask).
    if alpha is not None and value.min() == value.max() and alpha.min() != alpha.max():
        value, colour = alpha, None
    if rule is not None:
        return np.ascontiguousarray(_apply_rule(value, rule))
    return np.ascontiguousarray(_binarise_auto(value, colour, path))


def check_mask_foreground(foreground: MaskForeground) -> MaskForeground:
    """Validate a ``mask_foreground`` setting (see :func:`read_mask`) and return it.

    Raises:
        ValueError: naming the setting and the accepted forms.
    """
    _foreground_rule(foreground)
    return foreground


def read_masks_union(
    paths: Sequence[PathLike], foreground: MaskForeground = _AUTO
) -> np.ndarray:
    """Read several masks of one image and return their union (logical OR).

    Args:
        paths: One or more mask files, all of the same size.
        foreground: How each file's values map to foreground (see :func:`read_mask`).

    Returns:
        An ``(H, W)`` bool array.

    Raises:
        ValueError: if ``paths`` is empty.
        FileNotFoundError: if a file does not exist.
        DatasetError: if a file cannot be read, its values are ambiguous (see :func:`read_mask`)
            or the masks differ in size (naming both files).
    """
    if len(paths) == 0:
        raise ValueError("read_masks_union needs at least one mask file")
    first = Path(paths[0])
    union = read_mask(first, foreground).copy()
    for other in paths[1:]:
        other = Path(other)
        mask = read_mask(other, foreground)
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


# --------------------------------------------------------------------------------------------
# Mask values

_RULE_GT = re.compile(r"^>\s*(\d+)$")


def _foreground_rule(spec: object) -> tuple[str, object] | None:
    """``None`` for the automatic policy, else ``("gt", N)`` or ``("in", values)``."""
    usage = (
        "expected 'auto', 'nonzero', '>N' with an integer N (e.g. '>127'), an integer or a list "
        "of integers (the foreground values)"
    )
    if isinstance(spec, str):
        text = spec.strip().lower()
        if text == _AUTO:
            return None
        if text == "nonzero":
            return ("gt", 0)
        match = _RULE_GT.match(text)
        if match:
            return ("gt", int(match[1]))
        raise ValueError(f"mask_foreground={spec!r} is not understood; {usage}")
    if isinstance(spec, (bool, np.bool_)):
        raise ValueError(f"mask_foreground={spec!r} is a bool, not a value; {usage}")
    if isinstance(spec, (int, np.integer)):
        values: list[object] = [spec]
    elif isinstance(spec, Sequence) or isinstance(spec, np.ndarray):
        values = list(np.asarray(spec).ravel()) if isinstance(spec, np.ndarray) else list(spec)
    else:
        raise ValueError(f"mask_foreground={spec!r} is not understood; {usage}")
    if not values or not all(
        isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_)) and 0 <= v <= 65535
        for v in values
    ):
        raise ValueError(
            f"mask_foreground={spec!r}: foreground values must be integers in 0..65535; {usage}"
        )
    return ("in", frozenset(int(v) for v in values))


def _apply_rule(value: np.ndarray, rule: tuple[str, object]) -> np.ndarray:
    kind, arg = rule
    if kind == "gt":
        return value > arg
    return np.isin(value, np.fromiter(arg, dtype=np.int64))


def _binarise_auto(value: np.ndarray, colour: np.ndarray | None, path: Path) -> np.ndarray:
    """The automatic policy of :func:`read_mask`; refuses what it cannot read unambiguously."""
    hist = np.bincount(value.ravel(), minlength=int(np.iinfo(value.dtype).max) + 1)
    present = np.flatnonzero(hist)
    peak = int(present[-1])
    if peak == 0:
        return np.zeros(value.shape, dtype=bool)
    scale = 255 if peak <= 255 else int(np.iinfo(value.dtype).max)  # 8-bit values in 16 bits too
    half = scale // 2
    bits = 8 if scale == 255 else 16
    found = _describe_values(hist, present)
    if peak <= half:
        raise DatasetError(
            f"{path}: ambiguous mask values {found}: none is above half of the {bits}-bit scale "
            f"({half} of {scale}), so this is a label image, a faint mask or an empty mask with "
            "noise, and the file cannot say which. Say how to read it with mask_foreground= on "
            "the data set (foreground= of read_mask): 'nonzero' (every non-zero value is "
            f"foreground), an integer or list of integers (exactly those values, e.g. {peak}), "
            f"or '>{half}' (only values above half scale: here an empty mask)"
        )
    if len(present) <= 2 and present[0] in (0, peak):
        mask = value == peak  # two levels: 0 and the foreground level
    else:
        band = int(hist[scale // 4 : 3 * scale // 4 + 1].sum())
        if band > _MID_BAND_LIMIT * value.size:
            raise DatasetError(
                f"{path}: not a binary mask: {100 * band / value.size:.1f}% of the pixels lie in "
                f"the middle of the {bits}-bit scale ({scale // 4}..{3 * scale // 4}; values "
                f"{found}), which looks like a picture or a soft (probability) mask, not a mask "
                f"with noise (at most {100 * _MID_BAND_LIMIT:.0f}%). If it is a mask, say how to "
                "read it with mask_foreground= on the data set (foreground= of read_mask), e.g. "
                f"'>{half}' to threshold at half scale"
            )
        mask = value > half
    if colour is not None:
        _check_one_colour(colour[mask], half, path)
    return mask


def _check_one_colour(foreground: np.ndarray, half: int, path: Path) -> None:
    """Refuse foreground pixels of several colours (a multi-class colour mask)."""
    if not len(foreground):
        return
    # A pixel's colour class: which of R, G, B are above half scale (white, red, yellow, ...).
    kinds = np.bincount((foreground > half) @ np.array([1, 2, 4]), minlength=8)
    if 1 - kinds.max() / len(foreground) > _MINOR_COLOUR_LIMIT:
        names = ("black", "red", "green", "yellow", "blue", "magenta", "cyan", "white")
        seen = ", ".join(
            f"{names[k]} ({100 * kinds[k] / len(foreground):.0f}%)"
            for k in np.argsort(-kinds) if kinds[k]
        )
        raise DatasetError(
            f"{path}: the foreground has pixels of several colours ({seen} of the foreground "
            "pixels): a multi-class colour mask cannot be read as one binary mask unambiguously. "
            "Convert it to one mask per class, or unite all colours with mask_foreground='>"
            f"{half}' on the data set (foreground= of read_mask)"
        )


def _describe_values(hist: np.ndarray, present: np.ndarray, limit: int = 8) -> str:
    """``"0 (9000 px), 1 (12 px)"``, at most ``limit`` values listed."""
    shown = ", ".join(f"{int(v)} ({int(hist[v])} px)" for v in present[:limit])
    more = len(present) - limit
    return f"{shown} and {more} more values up to {int(present[-1])}" if more > 0 else shown


def _hw(shape: tuple[int, ...]) -> str:
    return f"{shape[0]}x{shape[1]}"
