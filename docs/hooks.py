"""MkDocs hook: the "index of runs" page, generated from the run.json records at build time.

The same table as ``benchmarks/results/INDEX.md`` (``python -m benchmarks.index``), with links
that point from ``docs/`` to the result folders in the repository.
"""

from __future__ import annotations

import sys
from pathlib import Path

from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parent.parent


def on_files(files, config):
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from benchmarks.index import render

    text = render(link_prefix="../benchmarks/results/").replace(
        "# Index of benchmark results", "# Index of runs", 1)
    files.append(File.generated(config, "runs.md", content=text))
    return files
