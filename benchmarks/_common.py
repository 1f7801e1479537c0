"""Helpers shared by the benchmark scripts (output folder, atomic writes, data location)."""

from __future__ import annotations

import csv
import io
import json
import os
import platform
from pathlib import Path
from typing import Any

import numpy as np

from bow_gym.io_utils import atomic_write_bytes

RESULTS = Path(__file__).resolve().parent / "results"


def out_dir(name: str, override: str | None = None) -> Path:
    path = Path(override) if override else RESULTS / name
    path.mkdir(parents=True, exist_ok=True)
    return path


def write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, json.dumps(obj, indent=1, default=float).encode())


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    if not rows:
        return
    buf = io.StringIO()
    fields = list(dict.fromkeys(k for row in rows for k in row))  # union, first-seen order
    writer = csv.DictWriter(buf, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_bytes(path, buf.getvalue().encode())


def save_figure(fig, path: Path) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    atomic_write_bytes(path, buf.getvalue())


def shared_data(override: str | None = None) -> Path | None:
    """The real-data folder: ``override``, ``$BOW_GYM_SHARED_DATA`` or ``../shared/data``."""
    for cand in (override, os.environ.get("BOW_GYM_SHARED_DATA"),
                 Path(__file__).resolve().parents[2] / "shared" / "data"):
        if cand and Path(cand).is_dir():
            return Path(cand)
    return None


def machine() -> dict[str, Any]:
    import torch

    return {"python": platform.python_version(), "cpu_count": os.cpu_count(),
            "torch": torch.__version__, "cuda": torch.cuda.is_available(),
            "platform": platform.platform()}


def bootstrap_ci(values: np.ndarray, n: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95% percentile-bootstrap interval of the mean."""
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), (n, len(values)))].mean(axis=1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))
