"""Fixtures for the verl plugin tests: verl's real Hydra config and the repository (benchmarks: tests/conftest.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("verl", reason="the verl extra is not installed (pip install -e .[verl])")

REPO = Path(__file__).resolve().parents[3]
CONFIG_DIR = REPO / "src" / "ktae" / "integrations" / "verl" / "conf"


def compose_verl_config(overrides: list[str]):
    """verl's ppo_trainer config with the KTAE section, as `python -m ktae.integrations.verl` composes it."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
        return compose("ktae_trainer", overrides=overrides)


@pytest.fixture(scope="session")
def compose():
    return compose_verl_config


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO
