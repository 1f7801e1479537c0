"""Helpers shared by the benchmark scripts (output folder, atomic writes, data location)."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import platform
from pathlib import Path
from typing import Any

import numpy as np

from bow_gym.io_utils import atomic_write_bytes
from bow_gym.metrics import bootstrap_ci  # noqa: F401 - re-exported for the benchmarks

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


# Student-t 97.5% quantiles for 1..10 degrees of freedom (beyond: the normal 1.96 is close enough).
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228)


def t_interval(values: list[float]) -> tuple[float, float, float]:
    """Mean and 95% Student-t interval over seeds."""
    v = np.asarray(values, dtype=np.float64)
    m = float(v.mean())
    if len(v) < 2 or np.allclose(v, v[0]):
        return m, m, m
    t = _T975[len(v) - 2] if len(v) - 1 <= len(_T975) else 1.96
    half = float(t * v.std(ddof=1) / math.sqrt(len(v)))
    return m, m - half, m + half
