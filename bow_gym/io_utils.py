"""Atomic file writing: every cache, checkpoint, list and result in bow-gym goes through here."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path beside ``path`` that replaces ``path`` when the block succeeds.

    Write the file to the yielded path (``np.save``, ``safetensors.save_file``, ...). On success
    it is renamed over ``path`` with ``os.replace`` (atomic on one file system); on any error it
    is deleted. A killed process therefore leaves either the old file or the complete new one,
    never a truncated file. The result gets ordinary permissions (``mkstemp`` makes it private).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name[:32]}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_path`)."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def read_checked_metadata(path: str | os.PathLike, *, fmt: str, version: str, what: str,
                          version_key: str = "format_version") -> dict[str, str]:
    """The metadata of a bow_gym safetensors file, after checking its format and version.

    Args:
        path: The file.
        fmt: Expected ``metadata["format"]``.
        version: Expected ``metadata[version_key]``.
        what: What the file should be, for the error (e.g. ``"QV-LoRA adapter"``).
        version_key: Metadata key of the format version.

    Raises:
        ValueError: Not a readable safetensors file, another format, or another version; the
            message names the file.
    """
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = dict(f.metadata() or {})
    except Exception as e:
        raise ValueError(f"{path}: not a readable safetensors file ({e})") from e
    if meta.get("format") != fmt:
        raise ValueError(f"{path}: not a bow_gym {what} (metadata format="
                         f"{meta.get('format')!r}, expected {fmt!r})")
    if meta.get(version_key) != version:
        raise ValueError(f"{path}: {what} format version {meta.get(version_key)!r}, this "
                         f"bow_gym reads version {version}")
    return meta
