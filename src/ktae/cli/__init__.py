"""The ``ktae`` command: one entry point, one module per subcommand.

Each subcommand module defines ``add_arguments(parser)`` and ``run(args) -> int``; its
docstring's first line is the help text. Modules are imported only when their subcommand runs,
so ``ktae --help`` stays fast and a missing optional extra only affects its own subcommand.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# subcommand -> module under ktae.cli
SUBCOMMANDS = {
    "train": "train",
    "eval": "evaluate",
    "viz": "viz",
    "bench": "bench",
}

_HELP = {
    "train": "train GRPO/DAPO with or without KTAE (default: a tiny CPU job, no downloads)",
    "eval": "evaluate a model on the math benchmarks (aime24, amc23, math500, minerva, olympiadbench)",
    "viz": "render an HTML report of the tokens KTAE credits and blames",
    "bench": "benchmark the KTAE estimator against the plain GRPO advantage",
}


def build_parser() -> argparse.ArgumentParser:
    from ktae import __version__

    parser = argparse.ArgumentParser(
        prog="ktae",
        description="Key-token Advantage Estimation: token-level advantages for GRPO and DAPO.",
    )
    parser.add_argument("--version", action="version", version=f"ktae {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module in SUBCOMMANDS.items():
        sp = sub.add_parser(name, help=_HELP[name], description=_HELP[name])
        sp.set_defaults(_module=module)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    # Parse the command name first, then let the subcommand's own module add its arguments.
    known, _ = parser.parse_known_args(argv[:1] if argv and not argv[0].startswith("-") else argv)
    if getattr(known, "command", None) is None:
        parser.print_help()
        return 0 if not argv else 2
    module = importlib.import_module(f"ktae.cli.{known._module}")
    sub_parser = argparse.ArgumentParser(prog=f"ktae {known.command}", description=_HELP[known.command])
    module.add_arguments(sub_parser)
    args = sub_parser.parse_args(argv[1:])
    return int(module.run(args) or 0)
