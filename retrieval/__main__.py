"""``python -m retrieval embed|build|serve``: audio search at scale, from a checkout.

Each command reads an optional YAML config (``-c configs/retrieval/<command>.yaml``); flags given on the
command line override it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from retrieval.config import BuildConfig, EmbedConfig, ServeConfig, load_config


def _overrides(args: argparse.Namespace, skip: tuple[str, ...] = ("command", "config", "func")) -> dict:
    return {k: v for k, v in vars(args).items() if k not in skip}


def _embed(args: argparse.Namespace) -> int:
    from retrieval.embed import embed_collection

    cfg = load_config(EmbedConfig, args.config, _overrides(args))
    print(json.dumps(embed_collection(cfg), indent=2))
    return 0


def _build(args: argparse.Namespace) -> int:
    from retrieval.build import build_index

    cfg = load_config(BuildConfig, args.config, _overrides(args))
    print(json.dumps(build_index(cfg), indent=2))
    return 0


def _serve(args: argparse.Namespace) -> int:
    from retrieval.serve import serve

    cfg = load_config(ServeConfig, args.config, _overrides(args))
    serve(cfg)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m retrieval",
        description="Audio search at scale: embed a collection into parts, build an index, serve it over HTTP.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    config = argparse.ArgumentParser(add_help=False)
    config.add_argument("-c", "--config", help="YAML config (configs/retrieval/*.yaml); flags override it")

    p = sub.add_parser(
        "embed",
        parents=[config],
        help="embed folders / shards into resumable .npy + .jsonl parts",
        description="Embed every recording window by window into parts under --out. Worker processes decode; "
        "the main process runs batched inference. Rerun the same command after a kill: finished parts are kept.",
    )
    p.add_argument("inputs", nargs="*", default=None, help="audio files, folders or .tar shards")
    p.add_argument("--out", help="parts folder")
    p.add_argument("--model", help="save_pretrained folder (or registered name)")
    p.add_argument("--device", help="torch device (default cpu)")
    p.add_argument("--precision", choices=["bf16", "fp16"], help="autocast dtype (default fp32)")
    p.add_argument("--window-seconds", type=float, help="window length in s (default: the model's clip)")
    p.add_argument("--hop-seconds", type=float, help="hop between windows in s (default: the model's hop)")
    p.add_argument("--batch-size", type=int, help="windows per forward pass (32)")
    p.add_argument("--workers", type=int, help="decoding processes (2; 0 = in the main process)")
    p.add_argument("--part-size", type=int, help="audio files per part (1024); each shard is one part")
    p.add_argument("--max-parts", type=int, help="stop after finishing this many parts")
    p.set_defaults(func=_embed)

    p = sub.add_parser(
        "build",
        parents=[config],
        help="build an index folder from embedding parts",
        description="Build an AudioIndex from the parts of `embed`: the layout is chosen for the total count "
        "(--index auto) within --memory-budget; IVF layouts are trained on a sample across all parts.",
    )
    p.add_argument("--parts", help="folder written by `embed`")
    p.add_argument("--out", help="index folder (replaced atomically)")
    p.add_argument("--index", help="auto | flat | hnsw | ivf-flat | ivf-pq | a faiss index_factory string")
    p.add_argument("--memory-budget", help="for auto: memory the index may use (8GiB)")
    p.add_argument("--train-size", type=int, help="IVF training sample size")
    p.add_argument("--nprobe", type=int, help="default IVF lists per query (default: tuned)")
    p.add_argument("--ef-search", type=int, help="default HNSW search breadth (default: tuned)")
    p.add_argument("--target-recall", type=float, help="recall@10 the tuned defaults reach (0.95)")
    p.add_argument("--allow-partial", action="store_true", default=None, help="build from finished parts only")
    p.add_argument("--seed", type=int, help="training-sample seed")
    p.set_defaults(func=_build)

    p = sub.add_parser(
        "serve",
        parents=[config],
        help="serve indices over HTTP with a web page",
        description="FastAPI + uvicorn: POST /search, GET /audio/{id}, /indices, /health, /metrics and the web "
        "page at /. Give indices as folders or NAME=FOLDER.",
    )
    p.add_argument("--index", dest="indices", action="append", help="index folder or NAME=FOLDER (repeatable)")
    p.add_argument("--host", help="bind address (127.0.0.1)")
    p.add_argument("--port", type=int, help="port (8000)")
    p.add_argument("--device", help="torch device of the query encoders")
    p.add_argument("--max-k", type=int, help="hits per query at most (100)")
    p.add_argument("--max-request-bytes", type=int, help="request body limit in bytes (16 MiB)")
    p.add_argument("--search-threads", type=int, help="FAISS searches / clip decodes running at once (4)")
    p.add_argument("--max-batch", type=int, help="queries encoded in one forward pass at most (32)")
    p.add_argument("--log-level", help="uvicorn log level (info)")
    p.set_defaults(func=_serve)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "inputs", None) == []:
        args.inputs = None
    try:
        return int(args.func(args) or 0)
    except (ValueError, KeyError, FileNotFoundError) as err:
        print(f"retrieval {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
