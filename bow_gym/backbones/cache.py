"""A disk + memory cache of backbone features, keyed by backbone and image content.

Layout: ``<cache_dir>/<backbone.cache_key>/<image_key(image)>.npy``, float16 ``(Hp, Wp, D)``.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from bow_gym.backbones.base import Backbone
from bow_gym.io_utils import atomic_path

#: Environment variable that overrides the default cache directory.
CACHE_ENV = "BOW_GYM_CACHE"


def default_cache_dir() -> Path:
    """``$BOW_GYM_CACHE`` if set, else ``~/.cache/bow_gym/features``."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "bow_gym" / "features"


def image_key(image: np.ndarray) -> str:
    """SHA-256 hex digest of an image's bytes, shape and dtype.

    Shape and dtype are hashed too, so equal bytes with a different layout (``(2, 6, 3)`` vs
    ``(4, 3, 3)``) never share features.
    """
    arr = np.ascontiguousarray(image)
    h = hashlib.sha256(f"{arr.shape}|{arr.dtype.str}|".encode())
    h.update(memoryview(arr).cast("B"))
    return h.hexdigest()


class FeatureCache:
    """Caches ``backbone.extract(image)`` on disk and in a small in-memory LRU.

    Features are stored as float16; :meth:`get` always returns the float16-rounded values as
    float32, so a hit and a miss give bit-identical arrays.

    Attributes:
        backbone: The wrapped backbone.
        cache_dir: Root directory, or ``None`` for memory only.
        memory_items: Capacity of the in-memory LRU (0 disables it).
        hits: Lookups answered from memory or disk.
        misses: Lookups that ran the backbone (including recomputed corrupt files).
    """

    def __init__(
        self,
        backbone: Backbone,
        cache_dir: str | Path | None = "default",
        memory_items: int = 256,
    ) -> None:
        """Wraps ``backbone``.

        Args:
            backbone: Any :class:`~bow_gym.backbones.base.Backbone`.
            cache_dir: ``"default"`` (``$BOW_GYM_CACHE`` or ``~/.cache/bow_gym/features``), a
                directory, or ``None`` to keep features in memory only.
            memory_items: How many feature grids the in-memory LRU holds.
        """
        self.backbone = backbone
        if cache_dir is None:
            self.cache_dir: Path | None = None
        elif str(cache_dir) == "default":
            self.cache_dir = default_cache_dir()
        else:
            self.cache_dir = Path(cache_dir).expanduser()
        self.memory_items = max(0, int(memory_items))
        self._memory: OrderedDict[tuple[str, str], np.ndarray] = OrderedDict()
        self.hits = 0
        self.misses = 0
        self._write_failed = False

    image_key = staticmethod(image_key)

    @property
    def directory(self) -> Path | None:
        """Folder of the current backbone's features (``None`` in memory-only mode).

        Read on every lookup: the backbone's ``cache_key`` changes when an adapter is attached.
        """
        return None if self.cache_dir is None else self.cache_dir / self.backbone.cache_key

    def path_for(self, image: np.ndarray) -> Path | None:
        """Where ``image``'s features are (or would be) stored; ``None`` in memory-only mode."""
        d = self.directory
        return None if d is None else d / f"{image_key(image)}.npy"

    def get(self, image: np.ndarray) -> np.ndarray:
        """Features of one RGB uint8 image, ``(Hp, Wp, D)`` float32 (float16-rounded)."""
        return self.get_many([image])[0]

    def get_many(self, images: Sequence[np.ndarray], progress: bool = False) -> list[np.ndarray]:
        """Features of several images; misses are computed in batches of ``backbone.batch_size``.

        Args:
            images: RGB uint8 images, any sizes.
            progress: Show a tqdm bar over the batches of misses.

        Returns:
            One ``(Hp, Wp, D)`` float32 array per image, in order.
        """
        cache_key = self.backbone.cache_key
        directory = self.directory
        keys = [image_key(im) for im in images]
        found: dict[str, np.ndarray] = {}
        todo: dict[str, np.ndarray] = {}  # key -> image; duplicates in `images` computed once
        for key, im in zip(keys, images, strict=True):
            if key in found or key in todo:
                continue
            feats = self._lookup(cache_key, directory, key)
            if feats is None:
                todo[key] = im
            else:
                found[key] = feats
        # Counted per requested image: repeats of one missing image share a single computation,
        # so only the first is a miss.
        counted: set[str] = set()
        for key in keys:
            if key in todo and key not in counted:
                self.misses += 1
                counted.add(key)
            else:
                self.hits += 1
        if todo:
            found.update(self._compute(cache_key, directory, todo, progress))
        return [found[k].astype(np.float32) for k in keys]

    def _lookup(self, cache_key: str, directory: Path | None, key: str) -> np.ndarray | None:
        """float16 features from memory or disk, or ``None``."""
        mem = self._memory.get((cache_key, key))
        if mem is not None:
            self._memory.move_to_end((cache_key, key))
            return mem
        if directory is None:
            return None
        path = directory / f"{key}.npy"
        if not path.exists():
            return None
        expected = (*self.backbone.grid, self.backbone.dim)
        try:
            feats = np.load(path, allow_pickle=False)
            if feats.shape != expected or feats.dtype != np.float16:
                raise ValueError(f"shape {feats.shape} {feats.dtype}, expected {expected} float16")
        except Exception as e:  # truncated, corrupt or stale: any failure means recompute
            warnings.warn(f"corrupt feature cache file {path} ({e}); recomputing it", stacklevel=2)
            return None
        self._remember(cache_key, key, feats)
        return feats

    def _compute(
        self,
        cache_key: str,
        directory: Path | None,
        todo: dict[str, np.ndarray],
        progress: bool,
    ) -> dict[str, np.ndarray]:
        bs = max(1, int(getattr(self.backbone, "batch_size", 8)))
        keys = list(todo)
        starts = range(0, len(keys), bs)
        if progress:
            try:
                from tqdm.auto import tqdm
            except ImportError as e:  # pragma: no cover - depends on the environment
                raise ImportError("progress=True needs tqdm: pip install tqdm") from e
            starts = tqdm(starts, desc=f"features {self.backbone.name}", unit="batch")
        out: dict[str, np.ndarray] = {}
        for start in starts:
            chunk = keys[start:start + bs]
            feats = self.backbone.extract([todo[k] for k in chunk]).astype(np.float16)
            for k, f in zip(chunk, feats, strict=True):
                f = np.ascontiguousarray(f)
                if directory is not None and not self._write_failed:
                    try:
                        self._write(directory / f"{k}.npy", f)
                    except OSError as e:
                        # A read-only or full disk should cost speed, not the run.
                        self._write_failed = True
                        warnings.warn(f"feature cache {directory} not writable ({e}); keeping "
                                      "features in memory only", stacklevel=2)
                self._remember(cache_key, k, f)
                out[k] = f
        return out

    def _remember(self, cache_key: str, key: str, feats: np.ndarray) -> None:
        if self.memory_items == 0:
            return
        self._memory[(cache_key, key)] = feats
        self._memory.move_to_end((cache_key, key))
        while len(self._memory) > self.memory_items:
            self._memory.popitem(last=False)

    @staticmethod
    def _write(path: Path, feats: np.ndarray) -> None:
        # A killed process leaves either the old state or the complete file, never a partial .npy.
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.save(f, feats, allow_pickle=False)

    def clear_memory(self) -> None:
        """Empties the in-memory LRU (the disk cache is kept)."""
        self._memory.clear()

    def __repr__(self) -> str:
        where = "memory only" if self.cache_dir is None else str(self.directory)
        return f"FeatureCache({self.backbone!r}, {where}, hits={self.hits}, misses={self.misses})"
