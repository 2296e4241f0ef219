"""``python -m retrieval embed|build|serve``: audio search at scale, from a checkout.

Each command reads an optional YAML config (``-c configs/retrieval/<command>.yaml``) and ``--key value``
flags, parsed by jsonargparse against the command's dataclass in ``retrieval.config``; arguments are applied
in order, so flags after ``-c`` override the file. Unknown keys are refused, ``--print_config`` prints the
resulting config.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections.abc import Callable
from typing import Any, NamedTuple

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from jsonargparse import ActionConfigFile, ArgumentParser, Namespace

from retrieval.config import BuildConfig, EmbedConfig, ServeConfig


def _embed(cfg: EmbedConfig) -> None:
    from retrieval.embed import embed_collection

    print(json.dumps(embed_collection(cfg), indent=2))


def _build(cfg: BuildConfig) -> None:
    from retrieval.build import build_index

    print(json.dumps(build_index(cfg), indent=2))


def _serve(cfg: ServeConfig) -> None:
    from retrieval.serve import serve

    serve(cfg)


class Command(NamedTuple):
    """A subcommand: its config dataclass (the schema), what runs it, and its help texts.

    ``own_forms`` gives fields a command-line form other than ``--field value``: (field, option strings or
    the positional name, ``add_argument`` options). The field stays a YAML key of the same name.
    """

    config: type
    run: Callable[[Any], None]
    help: str
    description: str
    own_forms: tuple[tuple[str, tuple[str, ...], dict[str, Any]], ...] = ()


COMMANDS = {
    "embed": Command(
        EmbedConfig,
        _embed,
        "embed folders / shards into resumable .npy + .jsonl parts",
        "Embed every recording window by window into parts under --out. Engine local: worker processes decode, "
        "the main process runs batched inference. Engine ray: Ray Data decode tasks and inference actors on a "
        "cluster (--address, or a local one). Rerun the same command after a kill: finished parts are kept.",
        # Positional; SUPPRESS keeps a command line without inputs from replacing the file's `inputs` with [].
        (("inputs", ("inputs",), {"nargs": "*", "default": argparse.SUPPRESS, "help": "files, folders, shards"}),),
    ),
    "build": Command(
        BuildConfig,
        _build,
        "build an index folder from embedding parts",
        "Build an AudioIndex from the parts of `embed`: the layout is chosen for the total count (--index auto) "
        "within --memory_budget; IVF layouts are trained on a sample across all parts; --workers processes add "
        "the parts and their partial indexes are merged; search defaults are tuned to --target_recall within "
        "--max_query_ms.",
        (
            (
                "memory_budget",
                ("--memory_budget", "--max_memory"),
                {"default": argparse.SUPPRESS, "help": "for auto: memory the index may use (e.g. 8GiB)"},
            ),
        ),
    ),
    "serve": Command(
        ServeConfig,
        _serve,
        "serve indices over HTTP with a web page",
        "FastAPI + uvicorn: POST /search, GET /audio/{id}, /indices, /health, /metrics and the web page at /. "
        "Give indices as folders or NAME=FOLDER.",
        (("indices", ("--indices", "--index"), {"nargs": "+", "default": [], "help": "folders or NAME=FOLDER"}),),
    ),
}


def _command_parser(command: Command) -> ArgumentParser:
    parser = ArgumentParser(description=command.description)
    parser.add_argument("-c", "--config", action=ActionConfigFile, help="YAML config (configs/retrieval/*.yaml)")
    for _, flags, options in command.own_forms:
        parser.add_argument(*flags, type=str, **options)
    parser.add_class_arguments(command.config, None, skip={name for name, _, _ in command.own_forms})
    return parser


def build_parser() -> ArgumentParser:
    """The ``python -m retrieval`` parser: one subcommand per entry of ``COMMANDS``."""
    parser = ArgumentParser(
        prog="python -m retrieval",
        description="Audio search at scale: embed a collection into parts, build an index, serve it over HTTP.",
    )
    commands = parser.add_subcommands(dest="command", required=True)
    for name, command in COMMANDS.items():
        commands.add_subcommand(name, _command_parser(command), help=command.help)
    return parser


def parse(argv: list[str] | None = None) -> tuple[str, Any]:
    """The command and its config dataclass from ``argv`` (default: the command line).

    Exits with status 2 and a message naming the key on unknown keys or ill-typed values.
    """
    args = build_parser().parse_args(argv)
    return args.command, _to_config(COMMANDS[args.command].config, args[args.command])


def _to_config(cls: type, args: Namespace) -> Any:
    values = {f.name: args[f.name] for f in dataclasses.fields(cls) if f.name in args}
    return cls(**values)  # a suppressed positional given nowhere (embed's `inputs`) keeps its default


def main(argv: list[str] | None = None) -> int:
    """Run ``python -m retrieval`` with ``argv``; returns the exit status."""
    command, cfg = parse(argv)
    try:
        COMMANDS[command].run(cfg)
    except (ValueError, KeyError, FileNotFoundError) as err:
        print(f"retrieval {command}: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
