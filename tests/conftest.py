"""Shared fixtures. The benchmark suites are the copies shipped inside the package (ktae/data/math_eval)."""

from pathlib import Path

import pytest

from ktae.data.benchmarks import PACKAGED_SUITES


@pytest.fixture(scope="session")
def math_eval_dir() -> Path:
    """The package's folder of ``<benchmark>.jsonl`` files, README.md and reference_scores.json."""
    path = Path(str(PACKAGED_SUITES))
    if not (path / "aime24.jsonl").is_file():
        pytest.fail(f"the packaged benchmark suites are missing from {path}")
    return path
