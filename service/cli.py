"""The ``ttc-router`` command. Each subcommand lives in ``service/commands/<name>.py`` and
exposes ``register(subcommands)``, which adds its parser and sets ``run`` to its handler."""

from __future__ import annotations

import argparse

from service import __version__
from service.commands import ab, index, serve, sim
from service.commands import eval as eval_command
from service.commands import keys as keys_command
from service.commands import train as train_command

# Add a subcommand by adding its module here.
COMMANDS = [serve, sim, eval_command, train_command, keys_command, index, ab]


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script; returns the process exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    return int(args.run(args))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ttc-router",
        description="An OpenAI-compatible gateway that spends each prompt's token budget on "
                    "the test-time-compute strategy it rewards.")
    parser.add_argument("--version", action="version", version=f"ttc-router {__version__}")
    subcommands = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command in COMMANDS:
        command.register(subcommands)
    return parser
