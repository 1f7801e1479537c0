"""Shared pytest fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The read-only real-data folder (``../shared/data``, see its README).

    ``BOW_GYM_SHARED_DATA`` names it (a relative value is tried from the working directory, then
    from the project root). When that variable is set, a missing folder fails the test: CI sets it
    precisely so that real-data tests run and cannot be silently skipped. Without the variable the
    default ``../shared/data`` is used if present, else the test is skipped.
    """
    configured = os.environ.get("BOW_GYM_SHARED_DATA", "").strip()
    if configured:
        candidates = [Path(configured)]
        if not Path(configured).is_absolute():
            candidates.append(PROJECT_ROOT / configured)
        for candidate in candidates:
            if candidate.is_dir():
                return candidate.resolve()
        pytest.fail(
            f"BOW_GYM_SHARED_DATA={configured!r} is set but no such folder exists "
            f"(tried {', '.join(str(c) for c in candidates)})"
        )
    default = PROJECT_ROOT.parent / "shared" / "data"
    if default.is_dir():
        return default
    pytest.skip("real data not available: set BOW_GYM_SHARED_DATA or provide ../shared/data")


@pytest.fixture(autouse=True, scope="session")
def _private_feature_cache(tmp_path_factory):
    """Keep the tests' feature cache out of the user's ``~/.cache``."""
    old = os.environ.get("BOW_GYM_CACHE")
    os.environ["BOW_GYM_CACHE"] = str(tmp_path_factory.mktemp("feature-cache"))
    yield
    if old is None:
        os.environ.pop("BOW_GYM_CACHE", None)
    else:
        os.environ["BOW_GYM_CACHE"] = old
