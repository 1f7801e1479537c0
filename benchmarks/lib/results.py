"""Where a benchmark run writes, and the record of how it was made.

Every run of a script writes its tables and figures to one folder,
``benchmarks/results/<script>/<run>/`` (``--out`` overrides it), and a ``run.json`` beside them:

.. code-block:: json

    {"script": "compare_policies", "run": "agents-answer_model_answers-6000",
     "command": "python -m benchmarks.compare_policies --agents answer_model --answers 6000",
     "git_commit": "...", "git_dirty": false, "date": "2025-01-01T12:00:00+00:00",
     "machine": {"python": "3.11.7", "cpu_count": 2, ...}, "seeds": [0, 1, 2],
     "protocol": "heldout", "datasets": ["kvasir-seg"]}

``run`` is ``--run`` when given, else the ``--out`` folder's name, else a name derived from the
arguments as typed (:func:`derive_run_name`; ``default`` without any). ``protocol`` says which
images the numbers come from (``heldout``, ``transductive``, ``validation``, with ``+transfer``
when other data sets were evaluated too; ``null`` where it does not apply) and ``datasets`` the
data sets (``null`` where none).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import platform
import re
import shlex
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from bow_gym.io_utils import atomic_write_bytes, write_csv, write_json

__all__ = ["BenchmarkRun", "PROJECT", "RESULTS", "add_output_arguments", "command_argv",
           "derive_run_name", "git_state", "machine", "save_figure", "start_run", "write_csv",
           "write_json", "write_run_json"]

#: The project checkout, and its results folder.
PROJECT = Path(__file__).resolve().parents[2]
RESULTS = PROJECT / "benchmarks" / "results"

#: The keys of ``run.json``, in order.
RUN_KEYS = ("script", "run", "command", "git_commit", "git_dirty", "date", "machine", "seeds",
            "protocol", "datasets")
#: Flags that say where or how a run goes, not what it measures: left out of derived names.
_NOT_IN_NAME = ("--out", "--run", "--data", "--root", "--jobs", "--resume", "--no-progress",
                "--no-resume", "--backend", "--ray-address", "--retries", "--threads")
_MAX_NAME = 80


def command_argv(argv: Sequence[str] | None) -> list[str]:
    """A script's arguments as typed (``None``: this process's command line)."""
    return list(sys.argv[1:] if argv is None else argv)


def derive_run_name(argv: Sequence[str]) -> str:
    """A folder name from a script's arguments, ``default`` without any.

    Flags and values in the order typed, joined by ``_`` (``--agents a,b --answers 6000`` ->
    ``agents-a,b_answers-6000``); paths become their last part; the flags of :data:`_NOT_IN_NAME`
    (output, data location, parallelism) are left out. A name over 80 characters is cut and
    ends in a hash of the whole, so that two long commands still differ.
    """
    parts: list[str] = []
    after = ""  # "": before any flag; "skip": after a left-out flag; "flag": after another
    for item in argv:
        if item.startswith("--"):
            flag, eq, value = item.partition("=")
            if flag in _NOT_IN_NAME:
                after = "" if eq else "skip"
                continue
            parts.append(flag[2:] + (f"-{_slug(value)}" if eq else ""))
            after = "" if eq else "flag"
        elif after == "skip":
            after = ""
        elif after == "flag":
            parts[-1] += f"-{_slug(item)}"
        else:
            parts.append(_slug(item))
    name = "_".join(p for p in parts if p) or "default"
    if len(name) > _MAX_NAME:
        digest = hashlib.sha1(name.encode()).hexdigest()[:8]
        name = f"{name[:_MAX_NAME - 9]}-{digest}"
    return name


def _slug(value: str) -> str:
    if "/" in value or os.sep in value:
        value = Path(value.rstrip("/")).name
    return re.sub(r"[^A-Za-z0-9_.,+-]+", "-", value).strip("-")


def add_output_arguments(parser: argparse.ArgumentParser, script: str) -> None:
    """``--run NAME`` and ``--out DIR`` (see the module docstring)."""
    parser.add_argument("--run", metavar="NAME",
                        help=f"name of the run: writes to benchmarks/results/{script}/NAME/ "
                             "(default: derived from the arguments, 'default' without any)")
    parser.add_argument("--out", metavar="DIR",
                        help=f"output folder (default benchmarks/results/{script}/<run>/)")


@dataclass
class BenchmarkRun:
    """One run of a script: its folder and what its ``run.json`` records.

    Attributes:
        script: The script's module name (``compare_policies``).
        name: The run's name.
        out: Its folder (made by :func:`start_run`).
        argv: The script's arguments as typed.
        date: When it started (ISO 8601, UTC).
    """

    script: str
    name: str
    out: Path
    argv: list[str]
    date: str

    def record(self, *, seeds: Sequence[int], protocol: str | None,
               datasets: Sequence[str] | None) -> Path:
        """Write ``run.json`` (:func:`write_run_json`) into :attr:`out`; returns its path."""
        commit, dirty = git_state()
        return write_run_json(self.out, {
            "script": self.script, "run": self.name,
            "command": f"python -m benchmarks.{self.script} {shlex.join(self.argv)}".rstrip(),
            "git_commit": commit, "git_dirty": dirty, "date": self.date, "machine": machine(),
            "seeds": [int(s) for s in seeds], "protocol": protocol,
            "datasets": None if datasets is None else [str(d) for d in datasets]})


def start_run(script: str, argv: Sequence[str] | None, out: str | None = None,
              run: str | None = None) -> BenchmarkRun:
    """The run's folder, made now (call it once the arguments are checked).

    Args:
        script: The script's module name.
        argv: Its arguments as typed (``None``: this process's).
        out: ``--out``: the folder itself.
        run: ``--run``: the name under ``benchmarks/results/<script>/``.
    """
    argv = command_argv(argv)
    if run is not None and not re.fullmatch(r"[A-Za-z0-9_.,+-]+", run):
        raise SystemExit(f"--run: {run!r} is not a folder name (letters, digits, _ . , + -)")
    name = run or (Path(out).name if out else derive_run_name(argv))
    folder = Path(out) if out else RESULTS / script / name
    folder.mkdir(parents=True, exist_ok=True)
    date = datetime.now(timezone.utc).isoformat(timespec="seconds")
    return BenchmarkRun(script, name, folder, argv, date)


def write_run_json(folder: str | os.PathLike, record: dict[str, Any]) -> Path:
    """``<folder>/run.json``, atomically; ``record`` must have exactly the keys of
    :data:`RUN_KEYS`.

    Raises:
        ValueError: Missing or extra keys.
    """
    if set(record) != set(RUN_KEYS):
        raise ValueError(f"run.json needs exactly the keys {list(RUN_KEYS)}; got "
                         f"{sorted(record)}")
    path = Path(folder) / "run.json"
    write_json(path, {key: record[key] for key in RUN_KEYS})
    return path


def git_state() -> tuple[str, bool]:
    """The checkout's commit and whether tracked files differ from it (``"unknown"``, ``True``
    when git cannot tell: a run that cannot be traced is not called clean)."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=PROJECT, capture_output=True,
                                text=True, check=True, timeout=30).stdout.strip()
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                                cwd=PROJECT, capture_output=True, text=True, check=True,
                                timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return "unknown", True
    return commit, bool(status.strip())


def machine() -> dict[str, Any]:
    """Python, CPU count, torch and CUDA, platform: what a timing depends on."""
    import torch

    return {"python": platform.python_version(), "cpu_count": os.cpu_count(),
            "torch": torch.__version__, "cuda": torch.cuda.is_available(),
            "platform": platform.platform()}


def save_figure(fig, path: Path) -> None:
    """A matplotlib figure as PNG (120 dpi), atomically."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    atomic_write_bytes(path, buf.getvalue())
