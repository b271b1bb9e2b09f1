"""The value-head probe: verl asks whether TRL's AutoModelForCausalLMWithValueHead can be imported."""

from __future__ import annotations

import sys
import types

import pytest
import verl
from verl.models.transformers import monkey_patch
from verl.utils import import_utils

from ktae.integrations.verl import compat


@pytest.fixture
def fake_trl(monkeypatch):
    """Install a stand-in ``trl`` (and ``trl.experimental.ppo``) holding the given names."""

    def install(top: dict, experimental: dict | None) -> None:
        compat.value_head_available.cache_clear()
        monkeypatch.setitem(sys.modules, "trl", types.SimpleNamespace(__name__="trl", **top))
        if experimental is None:
            monkeypatch.setitem(sys.modules, "trl.experimental", None)  # import fails
            monkeypatch.setitem(sys.modules, "trl.experimental.ppo", None)
        else:
            monkeypatch.setitem(sys.modules, "trl.experimental", types.SimpleNamespace(__name__="trl.experimental"))
            ppo = types.SimpleNamespace(__name__="trl.experimental.ppo", **experimental)
            monkeypatch.setitem(sys.modules, "trl.experimental.ppo", ppo)

    yield install
    compat.value_head_available.cache_clear()


@pytest.mark.parametrize(
    ("top", "experimental", "expected"),
    [
        ({}, None, False),  # TRL 1.x: the class is in neither place
        ({}, {}, False),
        ({"AutoModelForCausalLMWithValueHead": object}, None, True),  # TRL 0.x
        ({}, {"AutoModelForCausalLMWithValueHead": object}, True),  # where verl looks first
    ],
)
def test_the_probe_answers_whether_the_class_imports(fake_trl, top, experimental, expected):
    fake_trl(top, experimental)
    assert compat.value_head_available() is expected


def test_without_trl_the_probe_says_so(monkeypatch):
    compat.value_head_available.cache_clear()
    monkeypatch.setitem(sys.modules, "trl", None)
    try:
        assert compat.value_head_available() is False
    finally:
        compat.value_head_available.cache_clear()


def test_install_replaces_verls_probe_where_verl_bound_it(monkeypatch):
    for module in (import_utils, monkey_patch):
        monkeypatch.setattr(module, "is_trl_available", import_utils.is_trl_available)  # restored afterwards
    assert compat.install() is True
    assert import_utils.is_trl_available is compat.value_head_available
    assert monkey_patch.is_trl_available is compat.value_head_available  # bound at its import, earlier


def test_install_leaves_other_verl_releases_alone(monkeypatch):
    original = import_utils.is_trl_available
    monkeypatch.setattr(import_utils, "is_trl_available", original)
    monkeypatch.setattr(verl, "__version__", "0.10.0")
    assert compat.install() is False
    assert import_utils.is_trl_available is original
