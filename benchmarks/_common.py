"""Helpers shared by the benchmark scripts (output folder, atomic writes, data location)."""

from __future__ import annotations

import argparse
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
    """The real-data folder: ``override`` (``--data``), ``$BOW_GYM_SHARED_DATA`` or ``../shared/data``.

    A folder that is named (by ``--data`` or the variable) but does not exist is an error, not a
    reason to fall back to another one: results would silently come from other data. A relative
    ``$BOW_GYM_SHARED_DATA`` is tried from the working directory, then from the project root (as
    the tests do). Only the unnamed default may be missing (``None``: real data sets are skipped).

    Raises:
        FileNotFoundError: ``override`` or ``$BOW_GYM_SHARED_DATA`` is not a folder.
    """
    if override:
        if not Path(override).is_dir():
            raise FileNotFoundError(f"--data {override}: no such folder (expected the real-data "
                                    "folder that holds kvasir-seg/, see ../shared/data/README.md)")
        return Path(override)
    configured = os.environ.get("BOW_GYM_SHARED_DATA", "").strip()
    project = Path(__file__).resolve().parents[1]
    if configured:
        for cand in (Path(configured), project / configured):
            if cand.is_dir():
                return cand
        raise FileNotFoundError(f"BOW_GYM_SHARED_DATA={configured!r}: no such folder (tried from "
                                f"the working directory and from {project}); unset it or point "
                                "it at the real-data folder")
    default = project.parent / "shared" / "data"
    return default if default.is_dir() else None


def data_folder(parser: argparse.ArgumentParser, override: str | None) -> Path | None:
    """:func:`shared_data`, with a named but missing folder as the CLI's usage error."""
    try:
        return shared_data(override)
    except FileNotFoundError as err:
        parser.error(str(err))


#: Data sets the benchmarks evaluate (``--datasets``).
DATASETS = ("synthetic", "kvasir-seg")


def dataset_names(parser: argparse.ArgumentParser, text: str) -> list[str]:
    """The comma-separated ``--datasets`` value as a list; unknown or no names are usage errors."""
    names = list(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))
    unknown = [n for n in names if n not in DATASETS]
    if unknown or not names:
        parser.error(f"--datasets: expected a comma-separated subset of {', '.join(DATASETS)}, "
                     f"got {text!r}")
    return names


def machine() -> dict[str, Any]:
    import torch

    return {"python": platform.python_version(), "cpu_count": os.cpu_count(),
            "torch": torch.__version__, "cuda": torch.cuda.is_available(),
            "platform": platform.platform()}


# Student-t 97.5% quantiles for 1..10 degrees of freedom (beyond: the normal 1.96 is close enough).
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228)


def t_interval(values: list[float]) -> tuple[float, float, float]:
    """Mean and 95% Student-t interval over seeds.

    One value has no interval: its bounds are NaN, so that no caller reads a zero-width interval
    as certainty. Identical values (a deterministic reference clicker) have a zero-width one.
    """
    v = np.asarray(values, dtype=np.float64)
    m = float(v.mean())
    if len(v) < 2:
        return m, float("nan"), float("nan")
    if np.allclose(v, v[0]):
        return m, m, m
    t = _T975[len(v) - 2] if len(v) - 1 <= len(_T975) else 1.96
    half = float(t * v.std(ddof=1) / math.sqrt(len(v)))
    return m, m - half, m + half
