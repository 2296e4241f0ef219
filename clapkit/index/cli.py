"""``clapkit index build|info`` and ``clapkit search``: build a search index over audio and query it."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

__all__ = ["add_commands"]


def _cmd_build(args: argparse.Namespace) -> int:
    import numpy as np

    from clapkit.cli_helpers import load_model, parse_dtype, untrained_message
    from clapkit.index import AudioIndex
    from clapkit.index.identity import is_untrained_architecture
    from clapkit.index.sources import decoded_clips, embed_windows, expand_inputs, iter_clips

    untrained = is_untrained_architecture(args.model)
    if untrained and not args.allow_untrained:
        raise ValueError(
            f"{untrained_message(args.model)} An index built from it could not be searched again (each load draws "
            "new random layers); give --allow-untrained to build one anyway, with the model stored in the index."
        )
    files, shards = expand_inputs(args.inputs)
    if not files and not shards:
        raise ValueError("no audio files or .tar shards found in the given paths")
    model = load_model(args.model, device=args.device)
    skipped: list[str] = []

    def on_error(name: str, err: Exception) -> None:
        skipped.append(str(err) if str(err).startswith(name) else f"{name}: {err}")

    clips = iter_clips(files, shards, on_error=on_error)
    emb, rows = embed_windows(
        model,
        decoded_clips(clips, model.sample_rate, on_error),
        window_seconds=args.window_seconds,
        hop_seconds=args.hop_seconds,
        batch_size=args.batch_size,
        autocast_dtype=parse_dtype(args.precision),
        progress=True,
        total=len(files) if not shards else None,
    )
    if not len(emb):
        raise ValueError(f"none of the inputs could be decoded ({len(skipped)} skipped): {skipped[:3]}")
    index = AudioIndex.for_model(
        model, source=args.model, index=args.index, memory_budget=args.memory_budget, expected_size=len(emb)
    )
    index.add_embeddings(emb, rows, progress=True)
    if args.target_recall:
        sample = np.random.default_rng(0).choice(len(emb), min(256, len(emb)), replace=False)
        index.tune(emb[np.sort(sample)], target_recall=args.target_recall)
    index.window = {
        "seconds": args.window_seconds or model.config.audio.clip_seconds,
        "hop_seconds": args.hop_seconds or model.config.audio.hop_seconds,
    }
    # An untrained model is saved with the index: loading its name again would draw different random layers.
    index.save(args.out, with_model=untrained)
    print(f"indexed {len(index)} windows as {index.key} ({index.plan.reason}) → {args.out}")
    if skipped:
        print(f"skipped {len(skipped)} unreadable clips, e.g.:", *skipped[:5], sep="\n  ", file=sys.stderr)
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    from clapkit.index import AudioIndex

    print(json.dumps(AudioIndex.read_manifest(args.index), indent=2))
    return 0


def _cmd_search(args: argparse.Namespace) -> int:
    from clapkit.cli_helpers import load_model
    from clapkit.index.sharded import open_index

    if (args.text is None) == (args.audio is None):
        raise ValueError('give a text query or --audio FILE (not both), e.g. clapkit search DIR "a dog barking"')
    index = open_index(args.index, read_only=True)
    if args.model:
        index.attach(load_model(args.model, device=args.device))
    else:
        index.load_model(device=args.device)
    query = {"text": args.text} if args.text is not None else {"audio": args.audio}
    hits = index.search(**query, k=args.k, nprobe=args.nprobe, ef_search=args.ef_search)[0]
    if args.json:
        json.dump([h.to_dict() for h in hits], sys.stdout, indent=2)
        print()
        return 0
    for rank, h in enumerate(hits, 1):
        where = f"{h.path}#{h.member}" if h.member else h.path
        span = f"{h.start:.2f}-{h.end:.2f} s" if h.end is not None else f"{h.start:.2f} s-"
        extra = "; ".join(h.captions[:1] + ([", ".join(h.labels)] if h.labels else []))
        shard = f"{h.fields['shard']}:" if "shard" in h.fields else ""
        print(f"{rank:3d}  {h.score:.4f}  {shard}{where}  [{span}]{'  ' + extra if extra else ''}")
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "index",
        help="build or inspect an audio search index",
        description="Audio search indexes: FAISS vectors (one per time window) + SQLite metadata.",
    )
    isub = p.add_subparsers(dest="index_command", required=True, metavar="ACTION")
    b = isub.add_parser(
        "build",
        help="embed audio files / folders / WebDataset shards and write an index folder",
        description="Embed every recording window by window and write an index folder (manifest.json, "
        "index.faiss, metadata.sqlite). Long recordings become several windows, so hits carry a time span. "
        "For large collections use `python -m retrieval embed` + `build` (parallel decoding, resumable).",
    )
    b.add_argument("inputs", nargs="+", help="audio files, .tar shards (<key>.flac + <key>.json) or folders")
    b.add_argument(
        "--model",
        required=True,
        help="save_pretrained folder of the trained encoder (a registered architecture name is refused: its "
        "projections are random; see --allow-untrained)",
    )
    b.add_argument(
        "--allow-untrained",
        action="store_true",
        help="accept a registered architecture name for --model (pretrained towers, random projections: the "
        "vectors are not meaningful); the model is saved in the index folder so the index can be searched",
    )
    b.add_argument("--out", required=True, help="index folder to write (replaced atomically)")
    b.add_argument(
        "--index",
        default="auto",
        help="auto | flat | hnsw | ivf-flat | ivf-pq | a faiss index_factory string (default: auto)",
    )
    b.add_argument(
        "--memory-budget",
        default="8GiB",
        help="for --index auto: memory the index may use; bytes, or kB/MB/GB/TB (powers of 1000) or "
        "KiB/MiB/GiB/TiB (powers of 1024) (default: 8GiB)",
    )
    b.add_argument(
        "--target-recall",
        type=float,
        default=0.95,
        help="tune the default nprobe / efSearch to this recall@10 on 256 indexed windows (0 = no tuning)",
    )
    b.add_argument("--window-seconds", type=float, help="window length in s (default: the model's clip length)")
    b.add_argument("--hop-seconds", type=float, help="hop between windows in s (default: the model's hop)")
    b.add_argument("--batch-size", type=int, default=16, help="windows per forward pass")
    b.add_argument("--device", default=None, help="torch device (default: cpu)")
    b.add_argument("--precision", choices=["bf16", "fp16"], default=None, help="autocast dtype (default fp32)")
    b.set_defaults(func=_cmd_build)
    i = isub.add_parser("info", help="print an index's manifest", description="Print an index folder's manifest.")
    i.add_argument("index", type=Path, help="index folder")
    i.set_defaults(func=_cmd_info)

    s = sub.add_parser(
        "search",
        help="query an index by text or by an audio clip",
        description='Search an index folder: `clapkit search DIR "a dog barking" -k 10` or '
        "`clapkit search DIR --audio query.wav`. The model named in the index manifest (or stored in the index "
        "folder by `index build --allow-untrained`) is loaded unless --model is given; a different model is refused. "
        "DIR1,DIR2,… searches several index folders of one collection (shards) and merges their top-k.",
    )
    s.add_argument(
        "index", help="index folder written by `clapkit index build` (or DIR1,DIR2,…: shards searched as one)"
    )
    s.add_argument("text", nargs="?", help="text query")
    s.add_argument("--audio", help="query by this audio file instead (audio → audio similarity)")
    s.add_argument("-k", type=int, default=10, help="number of hits (default 10)")
    s.add_argument("--model", help="model folder (default: the one stored in or recorded by the index)")
    s.add_argument("--device", default=None, help="torch device (default: cpu)")
    s.add_argument("--nprobe", type=int, help="IVF lists to visit (default: the index's)")
    s.add_argument("--ef-search", type=int, help="HNSW search breadth (default: the index's)")
    s.add_argument("--json", action="store_true", help="print hits as JSON")
    s.set_defaults(func=_cmd_search)
