"""The package's lazily exported names: the same names for type checkers as at run time."""

import ast
import importlib
from pathlib import Path

import ktae


def _type_checking_imports() -> dict[str, str]:
    tree = ast.parse(Path(ktae.__file__).read_text())
    block = next(node for node in tree.body if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING")
    return {alias.asname or alias.name: node.module for node in block.body for alias in node.names}


def test_type_checking_block_lists_the_lazy_exports():
    assert _type_checking_imports() == ktae._EXPORTS


def test_every_lazy_export_resolves_to_its_module_object():
    for name, module in ktae._EXPORTS.items():
        assert getattr(ktae, name) is getattr(importlib.import_module(module), name)
    assert set(dir(ktae)) >= set(ktae._EXPORTS)
