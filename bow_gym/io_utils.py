"""Atomic file writing: every cache, checkpoint, list and result in bow-gym goes through here.

Also the one JSON, CSV and safetensors writer of the package, the multi-round loop, the agents and
the benchmarks: a result table or checkpoint is either complete or absent, never half-written.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any


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


def _json_default(x: Any) -> Any:
    """numpy scalars and arrays as Python numbers and lists; other numbers (torch scalars) as
    floats."""
    import numpy as np

    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    try:
        return float(x)
    except (TypeError, ValueError):
        raise TypeError(f"not JSON serialisable: {type(x).__name__}") from None


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """``obj`` as indented JSON, atomically (numpy values become Python numbers and lists)."""
    atomic_write_bytes(path, json.dumps(obj, indent=1, default=_json_default).encode())


def write_csv(path: str | os.PathLike, rows: Sequence[Mapping[str, Any]]) -> None:
    """Rows as CSV, atomically; the columns are the union of the rows' keys, in first-seen order.

    No rows still writes the file (with an empty header), so that its presence says the table
    was made.
    """
    buf = io.StringIO()
    names = list(dict.fromkeys(k for row in rows for k in row))
    writer = csv.DictWriter(buf, fieldnames=names)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_bytes(path, buf.getvalue().encode())


def read_csv(path: str | os.PathLike) -> list[dict[str, str]]:
    """The rows of a CSV file as dicts of strings (what :func:`write_csv` wrote)."""
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def save_tensors(path: str | os.PathLike, state: Mapping[str, Any],
                 metadata: Mapping[str, str]) -> None:
    """Torch tensors as a safetensors file with string ``metadata``, atomically.

    The tensors are detached, moved to the CPU, copied and made contiguous: safetensors refuses
    tensors that share memory (PPO's actor and critic share one extractor).
    """
    from safetensors.torch import save_file

    tensors = {k: v.detach().cpu().clone().contiguous() for k, v in state.items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=dict(metadata))


def load_tensors(path: str | os.PathLike, what: str, device: str = "cpu"
                 ) -> tuple[dict[str, Any], dict[str, str]]:
    """The tensors and metadata of a :func:`save_tensors` file.

    Args:
        path: The file.
        what: What the file should hold, for the errors (``"REINFORCE checkpoint"``).
        device: Where the tensors are loaded.

    Raises:
        FileNotFoundError: No file at ``path``.
        ValueError: Not a readable safetensors file; the message names the file and ``what``.
    """
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no {what} at {path}")
    try:
        with safe_open(str(path), "pt") as f:
            meta = dict(f.metadata() or {})
    except Exception as e:
        raise ValueError(f"{path} is not a bow-gym {what}: {e}") from e
    return load_file(str(path), device=str(device)), meta
