"""The README and the docs: short README, result links that resolve, a strict MkDocs build."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def test_readme_stays_short():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 250


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_links_into_the_repository_resolve(page):
    """MkDocs checks links between pages; these point at result folders and files instead."""
    text = page.read_text()
    targets = re.findall(r"\]\(((?:\.\./)?(?:benchmarks|docs)/[^)#\s]*)", text)
    missing = [t for t in targets if not (page.parent / t).exists()]
    assert not missing, f"{page.name}: links to nothing: {missing}"
    if page.name != "README.md":
        return
    for folder in re.findall(r"\]\((benchmarks/results/[^)#\s]+/)\)", text):
        assert (ROOT / folder / "run.json").is_file(), f"README quotes {folder} without a run.json"


def test_docs_build_strictly(tmp_path):
    pytest.importorskip("mkdocs", reason="the docs need the dev extra (mkdocs)")
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir",
                           str(tmp_path / "site")], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "site" / "runs" / "index.html").is_file()  # the generated index of runs
