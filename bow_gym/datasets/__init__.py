"""Segmentation data sets and a small registry to build them by name.

Example:
    >>> from bow_gym.datasets import make_dataset
    >>> train = make_dataset("kvasir-seg", "../shared/data/kvasir-seg", split="train")  # doctest: +SKIP
    >>> toy = make_dataset("synthetic", n_images=8, size=64)  # doctest: +SKIP
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bow_gym.datasets.base import (
    ConcatDataset,
    Sample,
    SegmentationDataset,
    Subset,
    train_test_ids,
)
from bow_gym.datasets.io import (
    DatasetError,
    MaskForeground,
    read_file_list,
    read_image,
    read_mask,
    read_masks_union,
    write_file_list,
)
from bow_gym.datasets.layouts import (
    BUSI,
    ISIC2018,
    CVCClinicDB,
    FileDataset,
    ImageFolder,
    ImageMaskFolder,
    KvasirSEG,
)

__all__ = [
    "BUSI",
    "ConcatDataset",
    "DATASETS",
    "ISIC2018",
    "CVCClinicDB",
    "DatasetError",
    "FileDataset",
    "ImageFolder",
    "ImageMaskFolder",
    "KvasirSEG",
    "MaskForeground",
    "Sample",
    "SegmentationDataset",
    "Subset",
    "list_datasets",
    "make_dataset",
    "read_file_list",
    "read_image",
    "read_mask",
    "read_masks_union",
    "register_dataset",
    "train_test_ids",
    "write_file_list",
]

DatasetFactory = Callable[..., SegmentationDataset]


def _synthetic(**kwargs: Any) -> SegmentationDataset:
    # Imported on use so that file-based loading never depends on the synthetic generator.
    from bow_gym.datasets.synthetic import SyntheticDataset

    return SyntheticDataset(**kwargs)


def _folder(
    root: str | os.PathLike,
    *,
    images_dir: str | os.PathLike = "images",
    masks_dir: str | os.PathLike = "masks",
    mask_pattern: str = "{stem}{suffix}",
    mask_foreground: MaskForeground = "auto",
) -> SegmentationDataset:
    # Relative folders are taken under root; absolute ones are used as they are.
    root = Path(root)
    return ImageMaskFolder(root / images_dir, root / masks_dir, mask_pattern=mask_pattern,
                           mask_foreground=mask_foreground)


def _images(root: str | os.PathLike, *, images_dir: str | os.PathLike = "images"
            ) -> SegmentationDataset:
    # Like "folder" without masks: root/images/ (a relative images_dir is taken under root).
    return ImageFolder(Path(root) / images_dir)


#: Data set name -> factory. File-based factories take the root folder as first argument.
DATASETS: dict[str, DatasetFactory] = {
    "synthetic": _synthetic,
    "kvasir-seg": KvasirSEG,
    "cvc-clinicdb": CVCClinicDB,
    "isic2018": ISIC2018,
    "busi": BUSI,
    "folder": _folder,
    "images": _images,
}
_NEEDS_ROOT: set[str] = {"kvasir-seg", "cvc-clinicdb", "isic2018", "busi", "folder", "images"}

_SPLITS = ("all", "train", "test", "fit", "val")
_EMPTY_MASKS = ("keep", "drop", "only")


def register_dataset(name: str, factory: DatasetFactory, *, needs_root: bool = True) -> None:
    """Add a data set to the registry.

    Args:
        name: Registry name (lower case, words joined by ``-``).
        factory: Callable returning a :class:`SegmentationDataset`; called as
            ``factory(root, **kwargs)`` if ``needs_root`` else ``factory(**kwargs)``.
        needs_root: Whether the data set is read from a folder.

    Raises:
        ValueError: if ``name`` is already registered.
    """
    if name in DATASETS:
        raise ValueError(f"data set {name!r} is already registered")
    DATASETS[name] = factory
    if needs_root:
        _NEEDS_ROOT.add(name)


def list_datasets() -> list[str]:
    """Names accepted by :func:`make_dataset`, sorted."""
    return sorted(DATASETS)


def make_dataset(
    name: str,
    root: str | os.PathLike | None = None,
    *,
    split: str = "all",
    test_fraction: float = 0.2,
    split_seed: int = 0,
    split_by_group: bool = True,
    empty_masks: str = "keep",
    limit: int | None = None,
    **kwargs: Any,
) -> SegmentationDataset:
    """Build a data set by registry name, optionally split and truncated.

    Args:
        name: One of :func:`list_datasets` (case-insensitive; ``_`` and ``-`` are equivalent).
        root: Data folder, required by the file-based data sets, refused by ``"synthetic"``.
        split: ``"all"``, or ``"train"`` / ``"test"`` part of the seeded split
            (:meth:`SegmentationDataset.split`, group-aware), or ``"fit"`` / ``"val"``: the train
            part split
            again the same way (``val`` gets ``test_fraction`` of it), for model selection that
            never looks at the test part.
        test_fraction: Share of samples in the test part (and of the train part in ``val``).
        split_seed: Seed of the split.
        split_by_group: Keep the data set's groups (video sequences, patients; see
            :attr:`SegmentationDataset.groups`) whole on one side of every split (default).
            Data sets without groups split per sample either way.
        empty_masks: Images whose ground truth is empty (BUSI's ``normal`` images):
            ``"keep"`` (default: the data set as published), ``"drop"`` or ``"only"``. Applied
            after splitting, so the split is the same either way. Deciding this reads each mask
            once, like a class label; it is a choice of data, not information for an agent.
            Evaluations should keep them and report them apart
            (:func:`bow_gym.metrics.summarize_by_ground_truth`).
        limit: Keep only the first ``limit`` samples (after splitting), in index order.
        **kwargs: Passed to the factory (e.g. ``part="Validation"`` for ``"isic2018"``,
            ``n_images=16`` for ``"synthetic"``, ``mask_pattern=...`` for ``"folder"``,
            ``mask_foreground=1`` for a file-based set whose masks are 0/1 label images: see
            :func:`~bow_gym.datasets.io.read_mask` for the mask decoding policy).

    Returns:
        The data set (a :class:`Subset` when split or limited).

    Raises:
        ValueError: on an unknown name (listing the valid ones), a missing or unexpected root,
            an unknown split or a limit below 1.
        FileNotFoundError: if the root folder or its layout is missing.
        DatasetError: if the files are not what the layout expects.
    """
    key = name.strip().lower().replace("_", "-")
    if key not in DATASETS:
        raise ValueError(f"unknown data set {name!r}; valid names: {', '.join(list_datasets())}")
    if split not in _SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {', '.join(_SPLITS)}")
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be a positive number of samples or None, got {limit}")
    if empty_masks not in _EMPTY_MASKS:
        raise ValueError(f"empty_masks must be one of {', '.join(_EMPTY_MASKS)}, got "
                         f"{empty_masks!r}")
    factory = DATASETS[key]
    if key in _NEEDS_ROOT:
        if root is None:
            raise ValueError(f"data set {key!r} is read from files: root (its folder) is needed")
        dataset = factory(root, **kwargs)
    else:
        if root is not None:
            raise ValueError(
                f"data set {key!r} is generated, not read from files: root must be None"
            )
        dataset = factory(**kwargs)

    if split != "all":
        base_name = dataset.name
        train, test = dataset.split(test_fraction=test_fraction, seed=split_seed,
                                    by_group=split_by_group)
        dataset = test if split == "test" else train
        if split in ("fit", "val"):
            fit_ids, val_ids = train_test_ids(train.ids, test_fraction, split_seed,
                                              groups=train.groups if split_by_group else None)
            dataset = train.subset(fit_ids if split == "fit" else val_ids,
                                   name=f"{base_name}[{split}]")
        if not len(dataset):
            # An empty part would only fail later, in the env, far from its cause.
            raise ValueError(f"split {split!r} of {base_name} is empty: {len(train) + len(test)} "
                             f"samples with test_fraction={test_fraction} (and split_seed="
                             f"{split_seed}) leave it none")
    if empty_masks != "keep":
        keep = [i for i in range(len(dataset))
                if dataset.mask_is_empty(i) == (empty_masks == "only")]
        if not keep:
            raise ValueError(f"{dataset.name} has no images left with empty_masks="
                             f"{empty_masks!r} ({len(dataset)} images before)")
        dataset = dataset.subset(keep, name=f"{dataset.name}[{empty_masks}-empty]")
    if limit is not None and limit < len(dataset):
        dataset = dataset.subset(list(range(limit)), name=f"{dataset.name}[:{limit}]")
    return dataset
