"""The ``run.json`` record written beside a benchmark's results: how they were made."""

from __future__ import annotations

import datetime
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

from benchmarks._common import machine, write_json

_ROOT = Path(__file__).resolve().parents[1]


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=_ROOT, capture_output=True, text=True,
                             timeout=30, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def write_run_record(out: Path, script: str, *, argv: list[str] | None, seeds: list[int],
                     protocol: str | None, datasets: list[str] | None,
                     **extra: Any) -> dict[str, Any]:
    """Writes ``out/run.json``: script, run (``out``'s name), command, git commit, date, machine.

    Args:
        out: The run's results folder (``benchmarks/results/<script>/<run>/``).
        script: The benchmark's module name (``"dinov2_fidelity"``).
        argv: The script's arguments (``None``: ``sys.argv[1:]``).
        seeds: Every seed the results depend on.
        protocol: How the numbers were obtained (split, weights), or ``None``.
        datasets: Data sets used, or ``None``.
        **extra: Further keys (settings, notes).

    Returns:
        The record.
    """
    status = _git("status", "--porcelain", "--untracked-files=no")
    record = {
        "script": script,
        "run": out.name,
        "command": "python -m benchmarks." + script + "".join(
            " " + shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv)),
        "git_commit": _git("rev-parse", "HEAD") or "unknown",
        "git_dirty": None if status is None else bool(status),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(),
        "seeds": list(seeds),
        "protocol": protocol,
        "datasets": datasets,
        **extra,
    }
    write_json(out / "run.json", record)
    return record
