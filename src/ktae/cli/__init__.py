"""The ``ktae`` command: one entry point, one module per subcommand.

Each subcommand module defines ``add_arguments(parser)`` and ``run(args) -> int``; its
docstring's first line is the help text. Modules are imported only when their subcommand runs,
so ``ktae --help`` stays fast and a missing optional extra only affects its own subcommand.
Every parser uses `HelpFormatter`: an option's help shows its default.
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


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the line breaks of descriptions and epilogs, and ends each option's help with its default
    ("(default: 3000)") unless the help already speaks of it or there is none (None, or a flag's False)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        help = action.help or ""
        default = action.default
        if not action.option_strings or default is None or default is False or default == argparse.SUPPRESS:
            return action.help
        if "default" in help.lower():
            return help
        return f"{help} (default: %(default)s)".lstrip()


def build_parser() -> argparse.ArgumentParser:
    from ktae import __version__

    parser = argparse.ArgumentParser(
        prog="ktae",
        description="Key-token Advantage Estimation: token-level advantages for GRPO and DAPO.",
        epilog="ktae COMMAND --help lists a command's options with their defaults; ktae train --help-all "
        "lists every training key (all of TRL's GRPOConfig too).",
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
    args = command_parser(known.command).parse_args(argv[1:])
    return int(module.run(args) or 0)


def command_parser(command: str) -> argparse.ArgumentParser:
    """The argument parser of ``ktae COMMAND``."""
    sub_parser = argparse.ArgumentParser(
        prog=f"ktae {command}", description=_HELP[command], formatter_class=HelpFormatter
    )
    importlib.import_module(f"ktae.cli.{SUBCOMMANDS[command]}").add_arguments(sub_parser)
    return sub_parser
