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

    @property
    def has_ground_truth(self) -> bool:
        """Whether the samples' masks are a ground truth (``True`` for every published data set).

        ``False`` for images without masks (the ``images`` layout: new images a person labels in
        ``bow-gym annotate``): their :attr:`Sample.mask` is an all-background placeholder, which
        no oracle may judge and no evaluation may score.
        """
        return True

    @property
    def groups(self) -> list[str] | None:
        """Group of each sample (video sequence, patient) in index order, or ``None``.

        Samples of one group are near-duplicates or share a patient: :meth:`split` never puts
        them on both sides. ``None`` (the default) means no groups are known, and every sample is
        its own group.
        """
        return None

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

    def mask_is_empty(self, index: int) -> bool:
        """Whether sample ``index`` has an all-background ground truth (e.g. BUSI ``normal``).

        Reads the ground truth: for choosing which images a data set holds (like a class label)
        and for reporting results apart, never for an agent.
        """
        return not self[index].mask.any()

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

    def split(
        self, test_fraction: float = 0.2, seed: int = 0, *, by_group: bool = True
    ) -> tuple[Subset, Subset]:
        """Seeded train/test split that keeps each of :attr:`groups` whole (see
        :func:`train_test_ids`).

        Args:
            test_fraction: Share of samples in the test part (nearest that whole groups allow).
            seed: Seed of the split.
            by_group: Keep groups whole (default). ``False`` splits per sample even where groups
                are known: near-duplicates then leak into the test part.
        """
        groups = self.groups if by_group else None
        train_ids, test_ids = train_test_ids(
            self.ids, test_fraction=test_fraction, seed=seed, groups=groups
        )
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

    @property
    def has_ground_truth(self) -> bool:
        return self.parent.has_ground_truth

    @property
    def groups(self) -> list[str] | None:
        parent_groups = self.parent.groups
        return None if parent_groups is None else [parent_groups[i] for i in self.indices]

    def _load(self, index: int) -> Sample:
        return self.parent[self.indices[index]]

    def mask_is_empty(self, index: int) -> bool:
        return self.parent.mask_is_empty(self.indices[index])


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
        self._prefixes = prefixes
        self.name = name or "+".join(d.name for d in self.parts)
        self._ids = [f"{p}/{i}" for p, d in parts for i in d.ids]
        self._where = [(k, j) for k, d in enumerate(self.parts) for j in range(len(d))]

    @property
    def ids(self) -> list[str]:
        return self._ids

    @property
    def has_ground_truth(self) -> bool:
        return all(d.has_ground_truth for d in self.parts)

    @property
    def groups(self) -> list[str] | None:
        # Prefixed like the ids; a part without groups gives each sample its own (its id).
        part_groups = [d.groups for d in self.parts]
        if all(g is None for g in part_groups):
            return None
        return [f"{p}/{g}" for p, d, gs in zip(self._prefixes, self.parts, part_groups,
                                               strict=True)
                for g in (gs if gs is not None else d.ids)]

    def mask_is_empty(self, index: int) -> bool:
        k, j = self._where[index]
        return self.parts[k].mask_is_empty(j)

    def _load(self, index: int) -> Sample:
        k, j = self._where[index]
        s = self.parts[k][j]
        return Sample(s.image, s.mask, self._ids[index])


def train_test_ids(
    ids: Sequence[str],
    test_fraction: float = 0.2,
    seed: int = 0,
    groups: Sequence[str] | None = None,
) -> tuple[list[str], list[str]]:
    """Split ids into train and test, reproducibly, keeping groups whole.

    The groups are sorted and permuted with ``seed``; the test part takes whole groups in that
    order, as many as bring it nearest to ``round(test_fraction * len(ids))`` samples (at least
    one group, and at least one left for training, when the fraction asks for some of each).
    Without groups every id is its own group and the result is the per-id split of earlier
    versions, id for id. Everything is sorted first, so the split depends only on the set of ids
    (and groups) and the seed, not on file-system listing order. Both parts keep sorted order.

    Args:
        ids: Sample ids (unique).
        test_fraction: Share of ids in the test part, in ``[0, 1]``.
        seed: Seed of the permutation.
        groups: Group of each id (same order and length as ``ids``), or ``None``.

    Raises:
        ValueError: on a fraction outside ``[0, 1]``, duplicate ids, or groups not matching ids.
    """
    if not 0.0 <= test_fraction <= 1.0:
        raise ValueError(f"test_fraction must be in [0, 1], got {test_fraction}")
    if len(set(ids)) != len(ids):
        raise ValueError("ids must be unique to be split")
    if groups is None:
        groups = ids
    elif len(groups) != len(ids):
        raise ValueError(f"{len(groups)} groups for {len(ids)} ids; expected one group per id")
    members: dict[str, list[str]] = {}
    for sample_id, group in zip(ids, groups, strict=True):
        members.setdefault(str(group), []).append(sample_id)
    ordered = sorted(members)
    perm = np.random.default_rng(seed).permutation(len(ordered))
    target = int(round(test_fraction * len(ids)))
    totals = np.concatenate([[0], np.cumsum([len(members[ordered[i]]) for i in perm])])
    k = int(np.argmin(np.abs(totals - target)))  # ties: the smaller test part
    if target > 0 and k == 0:
        k = 1
    if target < len(ids) and k == len(ordered) and k > 1:
        k -= 1
    test = sorted(i for g in perm[:k] for i in members[ordered[g]])
    test_set = set(test)
    train = [i for i in sorted(ids) if i not in test_set]
    return train, test
