"""The data set interface every loader implements: (RGB uint8 image, bool mask, id) triples."""

from __future__ import annotations

import abc
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Sample:
    """One image with its ground-truth mask.

    Attributes:
        image: ``(H, W, 3)`` uint8 RGB array, exactly as the file holds it (grey files become RGB).
        mask: ``(H, W)`` bool array, ``True`` on the lesion. May be all ``False`` (e.g. BUSI normal).
        id: Identifier unique within the data set (usually the file stem).
    """

    image: np.ndarray
    mask: np.ndarray
    id: str


class SegmentationDataset(abc.ABC):
    """A finite, indexable sequence of :class:`Sample`.

    Subclasses implement :attr:`ids` and :meth:`_load`; loading is lazy, one sample per call.
    """

    name: str = "dataset"

    @property
    @abc.abstractmethod
    def ids(self) -> list[str]:
        """Sample ids in index order."""

    @abc.abstractmethod
    def _load(self, index: int) -> Sample:
        """Load sample ``index`` (already bounds-checked)."""

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> Sample:
        n = len(self)
        if not isinstance(index, (int, np.integer)):
            raise TypeError(f"{self.name}: index must be an int, got {type(index).__name__}")
        if index < -n or index >= n:
            raise IndexError(f"{self.name}: index {index} out of range for {n} samples")
        return self._load(int(index) % n)

    def __iter__(self) -> Iterator[Sample]:
        for i in range(len(self)):
            yield self[i]

    def index_of(self, sample_id: str) -> int:
        """Index of the sample called ``sample_id``.

        Raises:
            KeyError: if no sample has that id.
        """
        try:
            return self.ids.index(sample_id)
        except ValueError:
            raise KeyError(f"{self.name}: no sample with id {sample_id!r}") from None

    def subset(self, selection: Sequence[int] | Sequence[str], name: str | None = None) -> Subset:
        """A view on some samples, chosen by index or by id (order kept as given)."""
        indices = [s if isinstance(s, (int, np.integer)) else self.index_of(s) for s in selection]
        return Subset(self, [int(i) for i in indices], name=name)

    def split(self, test_fraction: float = 0.2, seed: int = 0) -> tuple[Subset, Subset]:
        """Seeded train/test split (see :func:`train_test_ids`)."""
        train_ids, test_ids = train_test_ids(self.ids, test_fraction=test_fraction, seed=seed)
        return (
            self.subset(train_ids, name=f"{self.name}[train]"),
            self.subset(test_ids, name=f"{self.name}[test]"),
        )


class Subset(SegmentationDataset):
    """A subset of another data set, by indices."""

    def __init__(self, parent: SegmentationDataset, indices: list[int], name: str | None = None):
        n = len(parent)
        bad = [i for i in indices if not -n <= i < n]
        if bad:
            raise IndexError(f"{parent.name}: indices {bad[:5]} out of range for {n} samples")
        self.parent = parent
        self.indices = [i % n for i in indices]
        self.name = name or f"{parent.name}[subset]"
        parent_ids = parent.ids
        self._ids = [parent_ids[i] for i in self.indices]

    @property
    def ids(self) -> list[str]:
        return self._ids

    def _load(self, index: int) -> Sample:
        return self.parent[self.indices[index]]


class ConcatDataset(SegmentationDataset):
    """Several data sets as one (e.g. Kvasir-SEG + CVC-ClinicDB, the polyp training set of the
    original work). Ids are prefixed with each part's ``prefix`` so they stay unique.

    Args:
        parts: ``(prefix, dataset)`` pairs; prefixes must be unique and non-empty.
        name: Name of the union (default: the parts' names joined by ``+``).
    """

    def __init__(self, parts: Sequence[tuple[str, SegmentationDataset]], name: str | None = None):
        if not parts:
            raise ValueError("ConcatDataset needs at least one (prefix, dataset) part")
        prefixes = [p for p, _ in parts]
        if any(not p for p in prefixes) or len(set(prefixes)) != len(prefixes):
            raise ValueError(f"ConcatDataset prefixes must be unique and non-empty, got {prefixes}")
        self.parts = [d for _, d in parts]
        self.name = name or "+".join(d.name for d in self.parts)
        self._ids = [f"{p}/{i}" for p, d in parts for i in d.ids]
        self._where = [(k, j) for k, d in enumerate(self.parts) for j in range(len(d))]

    @property
    def ids(self) -> list[str]:
        return self._ids

    def _load(self, index: int) -> Sample:
        k, j = self._where[index]
        s = self.parts[k][j]
        return Sample(s.image, s.mask, self._ids[index])


def train_test_ids(
    ids: Sequence[str], test_fraction: float = 0.2, seed: int = 0
) -> tuple[list[str], list[str]]:
    """Split ids into train and test, reproducibly.

    The ids are sorted first, so the split depends only on the set of ids and the seed, not on
    file-system listing order. Both parts keep sorted order.

    Args:
        ids: Sample ids (unique).
        test_fraction: Share of ids in the test part, in ``[0, 1]``; rounded to the nearest count.
        seed: Seed of the permutation.

    Raises:
        ValueError: on a fraction outside ``[0, 1]`` or duplicate ids.
    """
    if not 0.0 <= test_fraction <= 1.0:
        raise ValueError(f"test_fraction must be in [0, 1], got {test_fraction}")
    ordered = sorted(ids)
    if len(set(ordered)) != len(ordered):
        raise ValueError("ids must be unique to be split")
    perm = np.random.default_rng(seed).permutation(len(ordered))
    n_test = int(round(test_fraction * len(ordered)))
    test = sorted(ordered[i] for i in perm[:n_test])
    test_set = set(test)
    train = [i for i in ordered if i not in test_set]
    return train, test
