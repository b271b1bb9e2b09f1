"""verl 0.9.1 beside TRL 1.x, in every verl process: the value-head probe asks what verl means.

verl asks ``verl.utils.import_utils.is_trl_available()`` ("is TRL installed") before it imports TRL's
``AutoModelForCausalLMWithValueHead`` (when it builds any model, in ``apply_monkey_patch``, and when it
loads a critic with a value head). TRL 1.x no longer has that class, so with TRL installed beside verl
(``pip install 'ktae[trl,verl]'``) building any model fails with an ImportError. What verl's callers
need to know is whether that class can be imported: `value_head_available` answers that, and
`install` puts it in place of verl's probe, also where verl's modules already bound the name. Where
TRL has the class, or is absent, the answer is verl's own.
"""

from __future__ import annotations

import functools
import importlib
import sys

import verl

#: The verl release whose probe `install` replaces.
PROBED_VERL = "0.9.1"
#: verl's probe, and the modules that bind it by name at import.
PROBE_MODULE = "verl.utils.import_utils"
PROBE = "is_trl_available"
PROBE_IMPORTERS = ("verl.models.transformers.monkey_patch", "verl.utils.model")
#: The class verl imports after asking, and where it looks for it, in order.
VALUE_HEAD = "AutoModelForCausalLMWithValueHead"
VALUE_HEAD_MODULES = ("trl.experimental.ppo", "trl")


@functools.cache
def value_head_available() -> bool:
    """Whether TRL is installed with ``AutoModelForCausalLMWithValueHead`` where verl looks for it."""
    for module_name in VALUE_HEAD_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        if hasattr(module, VALUE_HEAD):
            return True
    return False


def install() -> bool:
    """Replace verl's probe by `value_head_available` (verl 0.9.1 only); True when it did."""
    if verl.__version__ != PROBED_VERL:
        return False
    for name in (PROBE_MODULE, *PROBE_IMPORTERS):
        module = sys.modules.get(name) if name != PROBE_MODULE else importlib.import_module(name)
        if module is not None and hasattr(module, PROBE):
            setattr(module, PROBE, value_head_available)
    return True
