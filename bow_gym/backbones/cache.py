"""A disk + memory cache of backbone features, keyed by backbone and image content.

Layout: ``<cache_dir>/<backbone.cache_key>/<image_key(image)>.npz`` holding ``features``
(float16 ``(Hp, Wp, D)``) and ``sha256``, a checksum of the features bound to the backbone's cache
key and the image key. Every entry read from disk is checked (checksum, shape, finite values,
unit-norm rows as :meth:`Backbone.extract` promises) and recomputed with a warning if it fails,
so a zeroed, NaN-filled, bit-flipped, truncated or misplaced file is never used. Per-entry file
locks (``<cache_key>/.locks/``, the ``filelock`` package) make processes that fill one cache at
once compute each image's features exactly once; writes are atomic (temporary file, then rename).
Feature files of the earlier ``.npy`` layout, which had no checksum, are ignored.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import warnings
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from filelock import FileLock, Timeout

from bow_gym.backbones.base import Backbone
from bow_gym.io_utils import atomic_path

#: Environment variable that overrides the default cache directory.
CACHE_ENV = "BOW_GYM_CACHE"

#: Suffix of cache entries (an ``.npz`` with ``features`` and ``sha256``).
ENTRY_SUFFIX = ".npz"

# Row norms of float16-rounded unit vectors lie within about 1e-3 of 1 (float16 keeps 11 bits).
_NORM_TOLERANCE = 1e-2
# Entries share 256 lock files per folder (by the key's first two hex digits): enough to let
# processes work on different images at once, without one lock file per image.
_LOCK_DIR = ".locks"


class CorruptEntry(ValueError):
    """A cache entry that exists but fails its checks (the message says which)."""


def features_checksum(cache_key: str, key: str, feats: np.ndarray) -> str:
    """SHA-256 of float16 features, bound to the backbone's cache key and the image key.

    Binding the names means a valid entry copied or renamed to another image or backbone fails.
    """
    arr = np.ascontiguousarray(feats)
    h = hashlib.sha256(f"{cache_key}|{key}|{arr.shape}|{arr.dtype.str}|".encode())
    h.update(memoryview(arr).cast("B"))
    return h.hexdigest()


def check_features(feats: np.ndarray, expected: tuple[int, ...]) -> None:
    """Check a feature grid as a backbone promises it: shape, float16, finite, unit-norm rows.

    Rows of norm exactly 0 are allowed (:func:`~bow_gym.backbones.base.l2_normalize` keeps zero
    vectors zero).

    Raises:
        CorruptEntry: naming what is wrong.
    """
    if feats.shape != expected or feats.dtype != np.float16:
        raise CorruptEntry(f"shape {feats.shape} {feats.dtype}, expected {expected} float16")
    rows = feats.reshape(-1, feats.shape[-1]).astype(np.float32)
    finite = np.isfinite(rows).all(axis=1)
    if not finite.all():
        raise CorruptEntry(f"{int((~finite).sum())} of {len(rows)} feature rows are not finite")
    norms = np.linalg.norm(rows, axis=1)
    bad = (np.abs(norms - 1) > _NORM_TOLERANCE) & (norms != 0)
    if bad.any():
        raise CorruptEntry(f"{int(bad.sum())} of {len(rows)} feature rows are not unit-norm "
                           f"(norms {norms[bad][:3].round(3).tolist()}...)")


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
        misses: Lookups that found no usable entry (computed here, or, while another process was
            computing it, read once that process had written it); corrupt files count here.
    """

    def __init__(
        self,
        backbone: Backbone,
        cache_dir: str | Path | None = "default",
        memory_items: int = 256,
        lock_timeout: float = 600.0,
    ) -> None:
        """Wraps ``backbone``.

        Args:
            backbone: Any :class:`~bow_gym.backbones.base.Backbone`.
            cache_dir: ``"default"`` (``$BOW_GYM_CACHE`` or ``~/.cache/bow_gym/features``), a
                directory, or ``None`` to keep features in memory only.
            memory_items: How many feature grids the in-memory LRU holds.
            lock_timeout: Seconds to wait for another process that is computing the same
                image's features before computing them here too (a stuck process costs time,
                never correctness).
        """
        self.backbone = backbone
        if cache_dir is None:
            self.cache_dir: Path | None = None
        elif str(cache_dir) == "default":
            self.cache_dir = default_cache_dir()
        else:
            self.cache_dir = Path(cache_dir).expanduser()
        self.memory_items = max(0, int(memory_items))
        self.lock_timeout = float(lock_timeout)
        self._locks: dict[Path, FileLock] = {}
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
        return None if d is None else d / f"{image_key(image)}{ENTRY_SUFFIX}"

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
        feats = self._read_entry(cache_key, directory, key)
        if feats is not None:
            self._remember(cache_key, key, feats)
        return feats

    def _read_entry(self, cache_key: str, directory: Path, key: str) -> np.ndarray | None:
        """Checked float16 features from disk, or ``None`` (absent, or failing with a warning)."""
        path = directory / f"{key}{ENTRY_SUFFIX}"
        if not path.exists():
            return None
        expected = (*self.backbone.grid, self.backbone.dim)
        try:
            with np.load(path, allow_pickle=False) as entry:
                if set(entry.files) != {"features", "sha256"}:
                    raise CorruptEntry(f"holds {sorted(entry.files)}, expected features, sha256")
                feats, stored = entry["features"], str(entry["sha256"])
            if features_checksum(cache_key, key, feats) != stored:
                raise CorruptEntry("checksum mismatch (altered, or not this image's entry)")
            check_features(feats, expected)
        except Exception as e:  # truncated, corrupt, tampered or stale: any failure means recompute
            warnings.warn(f"corrupt feature cache file {path} ({e}); recomputing it", stacklevel=3)
            return None
        return feats

    def _compute(
        self,
        cache_key: str,
        directory: Path | None,
        todo: dict[str, np.ndarray],
        progress: bool,
    ) -> dict[str, np.ndarray]:
        """Features of ``todo``'s images, computed in batches and written to disk.

        With a disk cache, each image is computed under its entry's file lock: an image whose
        lock another process holds is left for last, then read from that process's entry once
        the lock is free (computed here only if that entry is still missing or bad).
        """
        bs = max(1, int(getattr(self.backbone, "batch_size", 8)))
        bar = None
        if progress:
            try:
                from tqdm.auto import tqdm
            except ImportError as e:  # pragma: no cover - depends on the environment
                raise ImportError("progress=True needs tqdm: pip install tqdm") from e
            bar = tqdm(total=len(todo), desc=f"features {self.backbone.name}", unit="image")
        out: dict[str, np.ndarray] = {}
        pending = list(todo)
        busy: list[str] = []  # locked by another process
        try:
            while pending:
                chunk, held = [], []
                while pending and len(chunk) < bs:
                    k = pending.pop(0)
                    lock = self._lock(directory, k)
                    if lock is not None:
                        try:
                            lock.acquire(timeout=0)
                        except Timeout:
                            busy.append(k)
                            continue
                        held.append(lock)
                        # Another process may have written it since our lookup.
                        feats = self._read_entry(cache_key, directory, k)
                        if feats is not None:
                            self._remember(cache_key, k, feats)
                            out[k] = feats
                            continue
                    chunk.append(k)
                try:
                    if chunk:
                        out.update(self._extract_and_store(cache_key, directory, chunk, todo))
                finally:
                    for lock in held:
                        lock.release()
                if bar is not None:
                    bar.update(len(held) if held else len(chunk))
            for k in busy:
                out[k] = self._wait_for(cache_key, directory, k, todo)
                if bar is not None:
                    bar.update(1)
        finally:
            if bar is not None:
                bar.close()
        return out

    def _wait_for(self, cache_key: str, directory: Path | None, key: str,
                  todo: dict[str, np.ndarray]) -> np.ndarray:
        """Wait for the process computing ``key``; read its entry, or compute it if it failed."""
        lock = self._lock(directory, key)
        assert lock is not None and directory is not None
        try:
            lock.acquire(timeout=self.lock_timeout)
        except Timeout:
            warnings.warn(f"feature cache lock {lock.lock_file} held for over "
                          f"{self.lock_timeout:.0f} s; computing without it", stacklevel=3)
            return self._extract_and_store(cache_key, directory, [key], todo)[key]
        try:
            feats = self._read_entry(cache_key, directory, key)
            if feats is not None:
                self._remember(cache_key, key, feats)
                return feats
            return self._extract_and_store(cache_key, directory, [key], todo)[key]
        finally:
            lock.release()

    def lookup(self, image: np.ndarray) -> np.ndarray | None:
        """Features of ``image`` from memory or disk (checked), as :meth:`get` returns them, or
        ``None`` when the cache has none: nothing is computed or written."""
        feats = self._lookup(self.backbone.cache_key, self.directory, image_key(image))
        return None if feats is None else feats.astype(np.float32)

    def compute(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        """The backbone's features of ``images``, checked and rounded to float16 as the cache
        stores them; the cache is neither read nor written (:meth:`store` writes them).

        Raises:
            RuntimeError: The backbone returned malformed or non-finite features.
        """
        if len(images) == 0:
            return []
        expected = (*self.backbone.grid, self.backbone.dim)
        feats = self.backbone.extract(list(images)).astype(np.float16)
        out = []
        for im, f in zip(images, feats, strict=True):
            f = np.ascontiguousarray(f)
            try:
                check_features(f, expected)
            except CorruptEntry as e:
                # NaN features would make every click select only its own patch: fail loudly.
                raise RuntimeError(f"backbone {self.backbone.name!r} returned bad features for "
                                   f"image {image_key(im)[:12]}... ({e}); not using or caching "
                                   "them") from e
            out.append(f)
        return out

    def store(self, key: str, feats: np.ndarray) -> bool:
        """Writes float16 ``feats`` (from :meth:`compute`) as the entry of the image whose
        :func:`image_key` is ``key``, atomically and under its file lock, unless a valid entry is
        there already. Returns whether it wrote (``False`` also in memory-only mode)."""
        directory = self.directory
        if directory is None or self._write_failed:
            return False
        cache_key = self.backbone.cache_key
        lock = self._lock(directory, key)
        with lock if lock is not None else contextlib.nullcontext():
            if self._read_entry(cache_key, directory, key) is not None:
                return False
            self._write(directory / f"{key}{ENTRY_SUFFIX}", feats,
                        features_checksum(cache_key, key, feats))
        return True

    def _extract_and_store(self, cache_key: str, directory: Path | None, keys: list[str],
                           todo: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        feats = self.compute([todo[k] for k in keys])
        out: dict[str, np.ndarray] = {}
        for k, f in zip(keys, feats, strict=True):
            if directory is not None and not self._write_failed:
                try:
                    self._write(directory / f"{k}{ENTRY_SUFFIX}", f,
                                features_checksum(cache_key, k, f))
                except OSError as e:
                    # A read-only or full disk should cost speed, not the run.
                    self._write_failed = True
                    warnings.warn(f"feature cache {directory} not writable ({e}); keeping "
                                  "features in memory only", stacklevel=3)
            self._remember(cache_key, k, f)
            out[k] = f
        return out

    def _lock(self, directory: Path | None, key: str) -> FileLock | None:
        """The file lock of ``key``'s entry (shared with other keys of the same stripe)."""
        if directory is None or self._write_failed:
            return None
        path = directory / _LOCK_DIR / f"{key[:2]}.lock"
        lock = self._locks.get(path)
        if lock is None:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except OSError:
                return None  # read-only cache: nothing will be written, nothing to guard
            lock = self._locks[path] = FileLock(path)
        return lock

    def _remember(self, cache_key: str, key: str, feats: np.ndarray) -> None:
        if self.memory_items == 0:
            return
        self._memory[(cache_key, key)] = feats
        self._memory.move_to_end((cache_key, key))
        while len(self._memory) > self.memory_items:
            self._memory.popitem(last=False)

    @staticmethod
    def _write(path: Path, feats: np.ndarray, checksum: str) -> None:
        # A killed process leaves either the old state or the complete file, never a partial one.
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.savez(f, features=feats, sha256=np.array(checksum))

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_locks"] = {}  # file locks hold thread-local state and open files; made on demand
        return state

    def clear_memory(self) -> None:
        """Empties the in-memory LRU (the disk cache is kept)."""
        self._memory.clear()

    def __repr__(self) -> str:
        where = "memory only" if self.cache_dir is None else str(self.directory)
        return f"FeatureCache({self.backbone!r}, {where}, hits={self.hits}, misses={self.misses})"
