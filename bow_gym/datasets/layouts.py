"""File-based data sets: a generic lazy loader plus the official layouts of public data sets.

Each layout only *lists* files when constructed (cheap, and fails early on a broken layout);
images and masks are decoded one sample at a time by :meth:`FileDataset._load`.
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np

from bow_gym.datasets.base import Sample, SegmentationDataset
from bow_gym.datasets.groups import recover_sequences
from bow_gym.datasets.io import (
    DatasetError,
    MaskForeground,
    check_mask_foreground,
    read_image,
    read_masks_union,
)

__all__ = [
    "BUSI",
    "CVCClinicDB",
    "FileDataset",
    "FileEntry",
    "IMAGE_SUFFIXES",
    "ISIC2018",
    "ImageMaskFolder",
    "KvasirSEG",
    "natural_key",
]

PathLike = str | os.PathLike

#: File extensions (lower case) that the generic folder layout treats as images.
IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


class FileEntry(NamedTuple):
    """One sample on disk: its id, image file and the mask files whose union is its mask."""

    id: str
    image_path: Path
    mask_paths: tuple[Path, ...]


def natural_key(text: str) -> tuple[tuple[str | int, ...], str]:
    """Sort key that orders digit runs by value, so ``"2"`` comes before ``"10"``.

    Letters compare case-insensitively; the original string breaks ties so the order is total.
    """
    parts = tuple(int(p) if p.isdigit() else p.lower() for p in re.split(r"(\d+)", text))
    return parts, text


class FileDataset(SegmentationDataset):
    """A data set of image files with mask files, loaded lazily.

    Args:
        entries: ``(id, image_path, mask_paths)`` triples, in index order. ``mask_paths`` are
            united; an empty tuple means an all-background mask.
        name: Data set name used in messages and by :meth:`split`.
        root: Folder the entries come from (only for error messages).
        layout: Human-readable description of the expected layout (only for error messages).
        mask_foreground: How mask values map to foreground: ``"auto"`` (default, the documented
            policy of :func:`~bow_gym.datasets.io.read_mask`, which refuses ambiguous masks),
            ``"nonzero"``, ``">N"``, or the foreground value(s) (e.g. ``1`` for 0/1 label images).

    Raises:
        ValueError: on a ``mask_foreground`` that is none of the accepted forms.
        DatasetError: if ``entries`` is empty (naming ``root`` and ``layout``) or ids repeat.
    """

    name = "files"
    layout = "image files with mask files"

    def __init__(
        self,
        entries: Iterable[tuple[str, PathLike, Sequence[PathLike]]],
        *,
        name: str | None = None,
        root: PathLike | None = None,
        layout: str | None = None,
        mask_foreground: MaskForeground = "auto",
    ):
        self.mask_foreground = check_mask_foreground(mask_foreground)
        if name is not None:
            self.name = name
        self.root = Path(root) if root is not None else None
        if layout is not None:
            self.layout = layout
        self._entries = [
            FileEntry(str(i), Path(img), tuple(Path(m) for m in masks)) for i, img, masks in entries
        ]
        if not self._entries:
            where = f"under {self.root}" if self.root is not None else "in the given entries"
            raise DatasetError(
                f"{self.name}: no samples found {where}; expected layout: {self.layout}"
            )
        seen: dict[str, Path] = {}
        for entry in self._entries:
            if entry.id in seen:
                raise DatasetError(
                    f"{self.name}: id {entry.id!r} used twice: {seen[entry.id]} and "
                    f"{entry.image_path}; ids must be unique"
                )
            seen[entry.id] = entry.image_path
        self._ids = [e.id for e in self._entries]

    @property
    def ids(self) -> list[str]:
        return self._ids

    @property
    def entries(self) -> list[FileEntry]:
        """The files behind each sample, in index order."""
        return list(self._entries)

    def _load(self, index: int) -> Sample:
        entry = self._entries[index]
        image = read_image(entry.image_path)
        height, width = image.shape[:2]
        if not entry.mask_paths:
            return Sample(image=image, mask=np.zeros((height, width), dtype=bool), id=entry.id)
        mask = read_masks_union(entry.mask_paths, self.mask_foreground)
        if mask.shape != (height, width):
            raise DatasetError(
                f"{self.name}: image {entry.image_path} is {height}x{width} (HxW) but its mask "
                f"{_names(entry.mask_paths)} is {mask.shape[0]}x{mask.shape[1]}; "
                "expected the same size"
            )
        return Sample(image=image, mask=mask, id=entry.id)

    def mask_is_empty(self, index: int) -> bool:
        entry = self._entries[index]  # the masks only: no image is decoded
        return not entry.mask_paths or not read_masks_union(
            entry.mask_paths, self.mask_foreground).any()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, root={self.root}, n={len(self)})"


class KvasirSEG(FileDataset):
    """Kvasir-SEG: 1000 colonoscopy images of polyps with binary masks.

    Layout::

        root/images/<id>.jpg
        root/masks/<id>.jpg      (same file name; 3-channel JPEGs with compression noise)

    Masks are read by the automatic policy of :func:`~bow_gym.datasets.io.read_mask`, which
    thresholds these noisy masks at > 127. Image sizes vary
    from 332x352 to 1920x1072.

    Citation and terms: D. Jha, P. H. Smedsrud, M. A. Riegler, P. Halvorsen, T. de Lange,
    D. Johansen, H. D. Johansen, "Kvasir-SEG: A Segmented Polyp Dataset", MultiMedia Modeling
    (MMM) 2020. For research and educational use; cite the paper.

    Args:
        root: The Kvasir-SEG folder (holding ``images/`` and ``masks/``).
        mask_foreground: How mask values map to foreground (see :class:`FileDataset`).

    Raises:
        FileNotFoundError: if ``root`` or its sub-folders are missing.
        DatasetError: if an image has no mask, or no images are found.
    """

    name = "kvasir-seg"
    layout = "root/images/<id>.jpg with root/masks/<id>.jpg (same file name)"

    def __init__(self, root: PathLike, *, mask_foreground: MaskForeground = "auto"):
        root = _require_dir(Path(root), self.name, self.layout)
        images_dir = _require_dir(root / "images", self.name, self.layout)
        masks_dir = _require_dir(root / "masks", self.name, self.layout)
        entries = []
        for image_path in _list_files(images_dir, (".jpg", ".jpeg", ".png")):
            mask_path = _find_mask(masks_dir, image_path.name, image_path.stem)
            if mask_path is None:
                raise DatasetError(
                    f"{self.name}: image {image_path} has no mask; expected "
                    f"{masks_dir / image_path.name} ({self.layout})"
                )
            entries.append((image_path.stem, image_path, (mask_path,)))
        super().__init__(
            entries, root=root, layout=self.layout, mask_foreground=mask_foreground
        )


class CVCClinicDB(FileDataset):
    """CVC-ClinicDB: 612 colonoscopy frames (384x288 RGB) with polyp masks.

    Layout::

        root/Original/<N>.tif
        root/Ground Truth/<N>.tif

    The same layout with ``.png`` or ``.bmp`` files (as some redistributions ship it) is accepted
    too. The TIFF frames are tagged grey (MinIsBlack) with three samples per pixel; they are read
    as the true RGB frame (see :mod:`bow_gym.datasets.io`). Masks carry stray low values and are
    binarised at > 127.

    The frames come from 29 colonoscopy videos; :attr:`groups` recovers each frame's sequence so
    that splits keep sequences whole (a per-frame split puts a test frame's neighbours, near
    duplicates, in the training part).

    Citation and terms: J. Bernal, F. J. Sánchez, G. Fernández-Esparrach, D. Gil, C. Rodríguez,
    F. Vilariño, "WM-DOVA maps for accurate polyp highlighting in colonoscopy: Validation vs.
    saliency maps from physicians", Computerized Medical Imaging and Graphics 43, 2015.
    Research and educational use only; no commercial use.

    Args:
        root: The CVC-ClinicDB folder (holding ``Original/`` and ``Ground Truth/``).
        mask_foreground: How mask values map to foreground (see :class:`FileDataset`).

    Raises:
        FileNotFoundError: if ``root`` or its sub-folders are missing.
        DatasetError: if a frame has no mask, or no frames are found.
    """

    name = "cvc-clinicdb"
    layout = "root/Original/<N>.tif with root/Ground Truth/<N>.tif (or .png/.bmp)"
    _suffixes = (".tif", ".tiff", ".png", ".bmp")
    #: The published size of the data set: 612 frames from 29 video sequences.
    n_frames, n_sequences = 612, 29

    def __init__(self, root: PathLike, *, mask_foreground: MaskForeground = "auto"):
        root = _require_dir(Path(root), self.name, self.layout)
        images_dir = _require_dir(root / "Original", self.name, self.layout)
        masks_dir = _require_dir(root / "Ground Truth", self.name, self.layout)
        # One id per stem: if a frame exists in several formats, prefer the original .tif.
        by_stem: dict[str, Path] = {}
        for image_path in _list_files(images_dir, self._suffixes):
            current = by_stem.get(image_path.stem)
            if current is None or _rank(image_path, self._suffixes) < _rank(
                current, self._suffixes
            ):
                by_stem[image_path.stem] = image_path
        entries = []
        for stem in sorted(by_stem, key=natural_key):
            image_path = by_stem[stem]
            mask_path = _find_mask(masks_dir, image_path.name, stem, self._suffixes)
            if mask_path is None:
                raise DatasetError(
                    f"{self.name}: frame {image_path} has no mask; expected "
                    f"{masks_dir / image_path.name} ({self.layout})"
                )
            entries.append((stem, image_path, (mask_path,)))
        super().__init__(
            entries, root=root, layout=self.layout, mask_foreground=mask_foreground
        )
        self._groups: list[str] | None = None
        self.frame_jumps: np.ndarray | None = None

    @property
    def groups(self) -> list[str] | None:
        """The video sequence of each frame, as ``"seq-<first frame number>"``.

        Recovered from the frames (computed on first use, a few seconds for the full set) by
        :func:`~bow_gym.datasets.groups.recover_sequences`: frames in number order, a cut between
        two successive frames that are unlike each other (thumbnail and colour distance). With
        the complete set (frames 1 to 612), the 28 largest jumps are the cuts (29 sequences, as
        the data set is documented); with a partial copy every jump above
        :data:`~bow_gym.datasets.groups.CUT_DISTANCE`. No ground truth is read. Frames whose ids
        are not numbers have no sequence: then ``None`` (with a warning), and splits are per
        frame.
        """
        if self._groups is None:
            if not all(i.isdigit() for i in self.ids):
                warnings.warn(f"{self.name} under {self.root}: frame ids are not all frame "
                              "numbers, so video sequences cannot be recovered; splits are per "
                              "frame and neighbouring frames can leak into the test part",
                              stacklevel=2)
                return None
            numbers = [int(i) for i in self.ids]
            complete = sorted(numbers) == list(range(1, self.n_frames + 1))
            first, self.frame_jumps = recover_sequences(
                numbers, lambda i: read_image(self._entries[i].image_path),
                n_sequences=self.n_sequences if complete else None)
            self._groups = [f"seq-{f}" for f in first]
        return list(self._groups)


class ISIC2018(FileDataset):
    """ISIC 2018 Task 1: dermoscopy images with skin-lesion masks.

    Layout (``<part>`` is ``Training``, ``Validation`` or ``Test``)::

        root/ISIC2018_Task1-2_<part>_Input/ISIC_<7 digits>.jpg
        root/ISIC2018_Task1_<part>_GroundTruth/ISIC_<7 digits>_segmentation.png

    Citation and terms: N. Codella et al., "Skin Lesion Analysis Toward Melanoma Detection 2018:
    A Challenge Hosted by the International Skin Imaging Collaboration (ISIC)", arXiv:1902.03368,
    2018; P. Tschandl, C. Rosendahl, H. Kittler, "The HAM10000 dataset, a large collection of
    multi-source dermatoscopic images of common pigmented skin lesions", Scientific Data 5, 2018.
    Images are under the ISIC archive's licences (CC BY-NC); cite both papers.

    Args:
        root: Folder holding the ``ISIC2018_Task1...`` folders.
        part: ``"Training"``, ``"Validation"`` or ``"Test"``.
        mask_foreground: How mask values map to foreground (see :class:`FileDataset`).

    Raises:
        ValueError: on an unknown ``part``.
        FileNotFoundError: if ``root`` or the part's folders are missing.
        DatasetError: if an image has no mask, or no images are found.
    """

    name = "isic2018"
    parts = ("Training", "Validation", "Test")

    def __init__(
        self, root: PathLike, part: str = "Training", *, mask_foreground: MaskForeground = "auto"
    ):
        if part not in self.parts:
            raise ValueError(f"{self.name}: unknown part {part!r}; expected one of {self.parts}")
        self.part = part
        self.layout = (
            f"root/ISIC2018_Task1-2_{part}_Input/ISIC_XXXXXXX.jpg with "
            f"root/ISIC2018_Task1_{part}_GroundTruth/ISIC_XXXXXXX_segmentation.png"
        )
        root = _require_dir(Path(root), self.name, self.layout)
        images_dir = _require_dir(root / f"ISIC2018_Task1-2_{part}_Input", self.name, self.layout)
        masks_dir = _require_dir(
            root / f"ISIC2018_Task1_{part}_GroundTruth", self.name, self.layout
        )
        entries = []
        # The input folders also hold LICENSE/ATTRIBUTION text files: only ISIC_*.jpg are images.
        for image_path in _list_files(images_dir, (".jpg", ".jpeg", ".png")):
            if not image_path.name.startswith("ISIC_"):
                continue
            mask_path = masks_dir / f"{image_path.stem}_segmentation.png"
            if not mask_path.is_file():
                raise DatasetError(
                    f"{self.name}: image {image_path} has no mask; expected {mask_path}"
                )
            entries.append((image_path.stem, image_path, (mask_path,)))
        super().__init__(
            entries, root=root, layout=self.layout, mask_foreground=mask_foreground
        )


class BUSI(FileDataset):
    """BUSI: breast ultrasound images (benign, malignant, normal) with lesion masks.

    Layout (``Dataset_BUSI_with_GT`` as distributed)::

        root/<class>/<class> (<N>).png
        root/<class>/<class> (<N>)_mask.png
        root/<class>/<class> (<N>)_mask_1.png    (optional extra lesions: _mask_2, ...)

    All ``_mask*`` files of an image are united into one mask. ``normal`` images have all-zero
    masks. Ids are the image stems, e.g. ``"benign (4)"``; masks come in several PNG modes
    (1-bit, grey, RGB, RGBA), all handled by :func:`~bow_gym.datasets.io.read_mask`.

    Citation and terms: W. Al-Dhabyani, M. Gomaa, H. Khaled, A. Fahmy, "Dataset of breast
    ultrasound images", Data in Brief 28, 104863, 2020. Cite the paper when using the data.

    Args:
        root: The ``Dataset_BUSI_with_GT`` folder.
        classes: Class sub-folders to include.
        mask_foreground: How mask values map to foreground (see :class:`FileDataset`).

    Raises:
        FileNotFoundError: if ``root`` or a class folder is missing.
        DatasetError: if an image has no mask file, or no images are found.
    """

    name = "busi"
    layout = "root/<class>/<class> (N).png with root/<class>/<class> (N)_mask*.png"
    _mask_re = re.compile(r"^(?P<stem>.+?)_mask(?:_\d+)?$")

    def __init__(
        self,
        root: PathLike,
        classes: Sequence[str] = ("benign", "malignant", "normal"),
        *,
        mask_foreground: MaskForeground = "auto",
    ):
        if isinstance(classes, str):  # a bare "benign" would otherwise iterate letters
            classes = (classes,)
        self.classes = tuple(classes)
        root = _require_dir(Path(root), self.name, self.layout)
        folders = [_require_dir(root / cls, self.name, self.layout) for cls in self.classes]
        entries = []
        for folder in folders:
            images: list[Path] = []
            masks: dict[str, list[Path]] = {}
            for path in _list_files(folder, (".png",)):
                match = self._mask_re.match(path.stem)
                if match:
                    masks.setdefault(match["stem"], []).append(path)
                else:
                    images.append(path)
            for image_path in images:
                mask_paths = masks.get(image_path.stem)
                if not mask_paths:
                    raise DatasetError(
                        f"{self.name}: image {image_path} has no mask; expected "
                        f"{folder / (image_path.stem + '_mask.png')}"
                    )
                entries.append((image_path.stem, image_path, tuple(mask_paths)))
        entries.sort(key=lambda e: natural_key(e[0]))
        super().__init__(
            entries, root=root, layout=self.layout, mask_foreground=mask_foreground
        )


class ImageMaskFolder(FileDataset):
    """Generic layout: a folder of images and a folder of masks matched by file name.

    Layout::

        images_dir/<stem><suffix>                     (.png .jpg .jpeg .tif .tiff .bmp)
        masks_dir/<mask_pattern.format(stem=..., suffix=...)>

    ``suffix`` includes the dot (``".png"``). For example ``mask_pattern="{stem}_mask.png"`` pairs
    ``images/a.jpg`` with ``masks/a_mask.png``. ``images_dir`` and ``masks_dir`` may be the same
    folder: files that are the mask of another image are then not listed as images.

    Args:
        images_dir: Folder of images.
        masks_dir: Folder of masks.
        mask_pattern: Format string giving a mask's file name from its image's stem and suffix.
        mask_foreground: How mask values map to foreground (see :class:`FileDataset`); e.g. ``1``
            for 0/1 label images, which the automatic policy refuses as ambiguous.

    Raises:
        ValueError: if ``mask_pattern`` uses fields other than ``stem`` and ``suffix``.
        FileNotFoundError: if a folder is missing.
        DatasetError: if an image has no mask, ids repeat, or no images are found.
    """

    name = "folder"

    def __init__(
        self,
        images_dir: PathLike,
        masks_dir: PathLike,
        mask_pattern: str = "{stem}{suffix}",
        *,
        mask_foreground: MaskForeground = "auto",
    ):
        images_dir, masks_dir = Path(images_dir), Path(masks_dir)
        self.layout = f"{images_dir}/<stem><suffix> with {masks_dir}/{mask_pattern}"
        try:
            mask_pattern.format(stem="x", suffix=".png")
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(
                f"mask_pattern {mask_pattern!r} is not a format string with only {{stem}} and "
                f"{{suffix}} fields ({exc!r})"
            ) from exc
        _require_dir(images_dir, self.name, self.layout)
        _require_dir(masks_dir, self.name, self.layout)
        candidates = _list_files(images_dir, IMAGE_SUFFIXES)
        mask_of = {
            path: masks_dir / mask_pattern.format(stem=path.stem, suffix=path.suffix)
            for path in candidates
        }
        # When masks share the images' folder, a mask file is not an image of its own.
        is_a_mask: set[str] = set()
        if images_dir.resolve() == masks_dir.resolve():
            is_a_mask = {m.name for i, m in mask_of.items() if m.parent == masks_dir and m != i}
        entries = []
        for image_path in candidates:
            if image_path.name in is_a_mask:
                continue
            mask_path = mask_of[image_path]
            if not mask_path.is_file():
                raise DatasetError(
                    f"{self.name}: image {image_path} has no mask; expected {mask_path}"
                )
            entries.append((image_path.stem, image_path, (mask_path,)))
        super().__init__(
            entries, root=images_dir, layout=self.layout, mask_foreground=mask_foreground
        )


class ImageFolder(FileDataset):
    """Images without masks: new images that a person labels (``bow-gym annotate``).

    Layout::

        images_dir/<stem><suffix>                     (.png .jpg .jpeg .tif .tiff .bmp)

    :attr:`has_ground_truth` is ``False``: each sample's mask is an all-background placeholder,
    so an env on this data set takes only an oracle that does not read the ground truth (a
    person, :class:`~bow_gym.oracles.PersonOracle`), reports its evaluation-only values as NaN,
    and evaluation scores nothing. Labelled results are exported in the ``folder`` layout.

    Args:
        images_dir: Folder of images.

    Raises:
        FileNotFoundError: if the folder is missing.
        DatasetError: if no images are found.
    """

    name = "images"

    def __init__(self, images_dir: PathLike):
        images_dir = Path(images_dir)
        self.layout = f"{images_dir}/<stem><suffix> (images only, no masks)"
        _require_dir(images_dir, self.name, self.layout)
        entries = [(p.stem, p, ()) for p in _list_files(images_dir, IMAGE_SUFFIXES)]
        super().__init__(entries, root=images_dir, layout=self.layout)

    @property
    def has_ground_truth(self) -> bool:
        return False


# --------------------------------------------------------------------------------------------
# Helpers


def _require_dir(path: Path, name: str, layout: str) -> Path:
    if not path.is_dir():
        what = "is not a folder" if path.exists() else "not found"
        raise FileNotFoundError(f"{name}: folder {path} {what}; expected layout: {layout}")
    return path


def _list_files(folder: Path, suffixes: Sequence[str]) -> list[Path]:
    """Files in ``folder`` with one of ``suffixes`` (any case), naturally sorted by name.

    Hidden files are skipped: archives unpacked on macOS carry ``._<name>`` resource forks.
    """
    files = [
        p
        for p in folder.iterdir()
        if p.suffix.lower() in suffixes and not p.name.startswith(".") and p.is_file()
    ]
    return sorted(files, key=lambda p: natural_key(p.name))


def _find_mask(
    masks_dir: Path, name: str, stem: str, suffixes: Sequence[str] = (".jpg", ".jpeg", ".png")
) -> Path | None:
    """The mask with the image's file name, else one with the same stem and another suffix."""
    same = masks_dir / name
    if same.is_file():
        return same
    for suffix in suffixes:
        for candidate in (masks_dir / f"{stem}{suffix}", masks_dir / f"{stem}{suffix.upper()}"):
            if candidate.is_file():
                return candidate
    return None


def _rank(path: Path, suffixes: Sequence[str]) -> int:
    return list(suffixes).index(path.suffix.lower())


def _names(paths: Sequence[Path]) -> str:
    return str(paths[0]) if len(paths) == 1 else "union of " + ", ".join(str(p) for p in paths)
