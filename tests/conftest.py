"""Shared fixtures. The benchmark data lives in ``<repo>/../shared`` (CI copies it beside a fresh clone)."""

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    path = (REPO_ROOT / ".." / "shared").resolve()
    if not path.is_dir():
        pytest.fail(f"shared data folder not found at {path} (expected beside the repository)")
    return path


@pytest.fixture(scope="session")
def math_eval_dir(shared_dir: Path) -> Path:
    return shared_dir / "data" / "math-eval"
