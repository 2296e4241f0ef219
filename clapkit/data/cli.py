"""``clapkit shards write|info``."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from clapkit.data.schema import REPORT_NAME, load_manifest


def _sample_rate(text: str) -> int | None:
    if text.lower() == "native":
        return None
    try:
        rate = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give a rate in Hz (e.g. 48000) or 'native'") from None
    if rate <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: the rate must be positive")
    return rate


def _cmd_write(args: argparse.Namespace) -> int:
    from clapkit.data.inputs import read_inputs
    from clapkit.data.writer import WriterConfig, parse_size, write_shards

    config = WriterConfig(
        shard_size=parse_size(args.shard_size),
        max_count=args.max_count,
        sample_rate=args.sample_rate,
        bits=args.bits,
        compression=args.compression,
        workers=args.workers,
        require_captions=not args.allow_no_caption,
        counterfactual_audio=not args.no_counterfactual_audio,
    )
    records = read_inputs(args.source, label_caption=args.label_caption)
    if not records:
        raise ValueError(f"{args.source}: no inputs found (audio files, CSV rows or JSONL lines)")
    manifest = write_shards(
        records, args.out, config, source=str(args.source), overwrite=args.overwrite, progress=not args.quiet
    )
    print(f"{args.out}: {manifest.total} samples in {len(manifest.shards)} shards from {manifest.num_inputs} inputs")
    if manifest.skipped:
        print(f"skipped {manifest.skipped} inputs; reasons in {Path(args.out) / REPORT_NAME}")
    return 0


def _verify(folder: str, sample_rate: int | None, workers: int) -> dict[str, int]:
    from clapkit.data.reader import ReaderConfig, ShardReader

    # Decode every sample at its stored rate; a short clip keeps the check cheap after decoding.
    config = ReaderConfig(
        sample_rate=sample_rate or 48_000,
        clip_seconds=0.1,
        batch_size=64,
        train=False,
        require_captions=False,
        counterfactuals=True,
    )
    reader = ShardReader(folder, config)
    for _ in reader.loader(num_workers=workers):
        pass
    return reader.stats.as_dict()


def _cmd_info(args: argparse.Namespace) -> int:
    manifest = load_manifest(args.folder)
    info = {
        "shards": len(manifest.shards),
        "samples": manifest.total,
        "inputs": manifest.num_inputs,
        "skipped_inputs": manifest.skipped,
        "sample_rate": manifest.sample_rate or "native",
        "bits": manifest.bits,
        "complete": manifest.complete,
        "bytes": sum(s.bytes for s in manifest.shards),
        "source": manifest.source,
    }
    if args.verify:
        info["verify"] = _verify(args.folder, manifest.sample_rate, args.workers)
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        for key, value in info.items():
            if key != "verify":
                print(f"{key:15s} {value}")
        if args.verify:
            print("verify         " + ", ".join(f"{k}={v}" for k, v in info["verify"].items()))
    if args.verify:
        counts = info["verify"]
        bad = counts["samples"] != manifest.total or counts["shard_errors"] or counts["samples_missing"]
        return 1 if bad else 0
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    shards = sub.add_parser(
        "shards",
        help="write and inspect WebDataset training shards",
        description="Training shards: tar files of <key>.flac + <key>.json samples (+ <key>.counterfactual.flac) "
        "with a manifest.json.",
    )
    commands = shards.add_subparsers(dest="shards_command", required=True, metavar="SUBCOMMAND")

    p = commands.add_parser(
        "write",
        help="encode audio files with captions into tar shards",
        description="Encode audio + captions into tar shards (<key>.flac + <key>.json) with webdataset's "
        "ShardWriter, in parallel. Resumable: rerun the same command after an interruption and finished "
        "shards are kept. Unusable inputs are skipped and listed in report.json.",
        epilog="Inputs: a FOLDER of audio files with x.txt / x.json sidecar captions, or one sub-folder per label; "
        "a CSV with columns path,caption[,label...] ('|' separates several values in a cell); or a JSONL file "
        'with {"audio": path, "captions": [...], ...} per line (other fields are kept in the sample). '
        "A counterfactual_audio field or column names a sample's counterfactual audio (a different scene of the "
        "same events, e.g. from the scene composer's scenes.jsonl); it is stored as <key>.counterfactual.flac.",
    )
    p.add_argument("--from", dest="source", required=True, metavar="DIR|CSV|JSONL", help="the inputs")
    p.add_argument("--out", required=True, metavar="DIR", help="shard folder (created)")
    p.add_argument("--shard-size", default="256MB", help="close a shard at this size (256MB, 1GiB; default 256MB)")
    p.add_argument("--max-count", type=int, default=100_000, help="samples per shard at most (default 100000)")
    p.add_argument(
        "--sample-rate",
        type=_sample_rate,
        default=48_000,
        metavar="HZ|native",
        help="rate of the stored mono audio (default 48000); 'native' keeps each file's rate",
    )
    p.add_argument("--bits", type=int, choices=[16, 24], default=16, help="FLAC sample depth (default 16)")
    p.add_argument(
        "--compression",
        type=float,
        default=0.0,
        help="FLAC compression 0-1 (FLAC levels 0-8; default 0: fastest to decode, ~2%% larger)",
    )
    p.add_argument(
        "--workers", type=int, default=os.cpu_count() or 1, help="encoding processes; 0 = in process (default: CPUs)"
    )
    p.add_argument(
        "--label-caption",
        default="{}",
        help="caption template for files known only by their label folder, e.g. 'the sound of {}' (default '{}')",
    )
    p.add_argument(
        "--allow-no-caption", action="store_true", help="keep samples without captions (e.g. conversation samples)"
    )
    p.add_argument(
        "--no-counterfactual-audio",
        action="store_true",
        help="do not store the counterfactual_audio files of the inputs (their names stay in the metadata)",
    )
    p.add_argument("--overwrite", action="store_true", help="delete shards already in --out instead of resuming")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_write)

    p = commands.add_parser(
        "info",
        help="summarise (and optionally verify) a shard folder",
        description="Print the manifest summary of a shard folder. With --verify, read and decode every sample "
        "(and its counterfactual audio) and compare the counts with the manifest (exit status 1 on a mismatch or an "
        "unreadable shard).",
    )
    p.add_argument("folder", help="shard folder or its manifest.json")
    p.add_argument("--verify", action="store_true", help="decode every sample and check the counts")
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers for --verify (default 2)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_cmd_info)
