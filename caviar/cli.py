"""Thin commands: parse arguments, call the API, print. Errors become one message and exit 2."""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from caviar.errors import CaviarError


def _config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("experiment", nargs="?", help="experiment YAML file (default: the built-in defaults, "
                        "identical to experiments/default.yaml)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one config value, e.g. --set search.num_samples=128 (repeatable)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="caviar", description="Train many CIFAR-10 models in parallel with "
                                     "Ray Tune and keep the best.")
    commands = parser.add_subparsers(dest="command", required=True)

    sweep = commands.add_parser("sweep", help="run a random-search or ASHA sweep")
    _config_args(sweep)
    sweep.add_argument("--address", help="join an existing Ray cluster ('auto' or HOST:PORT); "
                       "default: start a private local Ray instance")
    sweep.add_argument("--storage", help="where experiment folders go (path or s3:// URI); same as --set storage=...")
    sweep.add_argument("--name", help="experiment folder name; same as --set name=...")
    sweep.add_argument("--resume", metavar="FOLDER", help="finish an interrupted sweep in FOLDER "
                       "(completed trials are not re-run)")

    config = commands.add_parser("config", help="print the resolved config (defaults < file < --set)")
    _config_args(config)
    return parser


def _sweep(args: argparse.Namespace) -> int:
    from caviar.sweeper import describe, sweep

    overrides = list(args.overrides)
    if args.storage:
        overrides.append(f"storage={args.storage}")
    if args.name:
        overrides.append(f"name={args.name}")
    if args.resume and args.experiment:
        raise CaviarError("--resume takes the experiment folder's own config; drop the experiment file argument")
    try:
        result = sweep(args.experiment, overrides=overrides, address=args.address, resume=args.resume)
    except KeyboardInterrupt:
        print("\nInterrupted. Completed trials and checkpoints are kept; finish with "
              "`caviar sweep --resume <experiment folder>`.", file=sys.stderr)
        return 130
    print(describe(result))
    counts = result.summary["counts"]
    return 130 if counts["unfinished"] or counts["not-started"] else 0


def _config(args: argparse.Namespace) -> int:
    from caviar.config import load_config

    print(load_config(args.experiment, args.overrides).to_yaml(), end="")
    return 0


COMMANDS = {"sweep": _sweep, "config": _config}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except CaviarError as error:
        print(f"caviar: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
