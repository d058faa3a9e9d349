"""The `kevolve` command line. Each subcommand lives in its own module with a `register`
function; errors a user can act on print as one line, never a traceback."""

from __future__ import annotations

import argparse
import importlib
import sys

from kevolve import __version__
from kevolve.errors import KevolveError

# Subcommand modules, in the order `kevolve --help` lists them.
COMMANDS = [
    "kevolve.cli.specs_cmd",
    "kevolve.cli.hw_cmd",
    "kevolve.cli.eval_cmd",
    "kevolve.cli.model_cmd",
    "kevolve.cli.library_cmd",
    "kevolve.cli.offline_cmd",
    "kevolve.cli.kb_cmd",
    "kevolve.cli.tune_cmd",
    "kevolve.cli.report_cmd",
    "kevolve.cli.bench_cmd",
    "kevolve.cli.kernelbench_cmd",
    "kevolve.cli.llm_cmd",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kevolve",
        description="Kernel Evolve: writes and tunes GPU kernels by closed-loop search.",
    )
    parser.add_argument("--version", action="version", version=f"kevolve {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KevolveError as exc:
        print(f"kevolve: error: {exc.message}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("kevolve: interrupted; what was already evaluated is saved", file=sys.stderr)
        return 130
