"""``python -m demo.datasets build NAME --out DIR`` / ``python -m demo.datasets list``: the harvester's commands."""

from __future__ import annotations

import argparse
import json
import sys

from demo.datasets.builder import format_summary
from demo.datasets.debian_sounds import APT_PACKAGES
from demo.datasets.registry import DATASETS

__all__ = ["build_parser", "main"]

PROG = "python -m demo.datasets"


def _cmd_build(args: argparse.Namespace) -> int:
    options = {"force": args.force, "skip_missing": args.skip_missing, "progress": not args.quiet}
    if args.class_map:
        options["class_map"] = args.class_map
    result = DATASETS.get(args.name)(args.out, **options)
    if args.json:
        print(json.dumps({"out": str(result.out_dir), "counts": result.counts(), "seconds": result.seconds}))
    else:
        print(format_summary(result))
        listings = "metadata.jsonl, train/test/cross.jsonl, summary.json"
        print(f"wrote {len(result.records)} clips to {result.out_dir} ({listings})")
    return 0


def _cmd_list(args: argparse.Namespace) -> int:
    for name in DATASETS.names():
        print(name)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Datasets of labeled audio clips built from files already on the machine (the demo's data).",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="SUBCOMMAND")
    p = commands.add_parser(
        "build",
        help="build a dataset folder of clips + metadata",
        description="Collect, trim, loudness-normalise and split the clips of a dataset into DIR: "
        "clips/<class>/*.flac, metadata.jsonl with train.jsonl / test.jsonl / cross.jsonl (inputs for `clapkit "
        "shards write --from`), index.csv and summary.json. A rerun reuses unchanged clips and removes clips no "
        "longer made.",
        epilog=f"Datasets: {', '.join(DATASETS.names())}. debian-sounds reads the Debian packages "
        f"{' '.join(APT_PACKAGES)} (installed by `make venv`). See docs/data.md.",
    )
    p.add_argument("name", choices=DATASETS.names(), help="dataset to build")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (created)")
    p.add_argument("--class-map", metavar="JSON", help="use this class map instead of the shipped one")
    p.add_argument("--force", action="store_true", help="re-encode every clip instead of reusing unchanged ones")
    p.add_argument("--skip-missing", action="store_true", help="build from the installed packages only")
    p.add_argument("--json", action="store_true", help="print the counts as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_build)
    p = commands.add_parser("list", help="list the datasets that can be built", description="Print dataset names.")
    p.set_defaults(func=_cmd_list)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; 2 (with the error on stderr) when its input is wrong."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, KeyError, FileNotFoundError) as err:
        print(f"{PROG} {args.command}: error: {err}", file=sys.stderr)
        return 2
