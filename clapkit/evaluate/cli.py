"""``clapkit eval zeroshot|retrieval|compositional``: run a benchmark, print a table, write JSON."""

from __future__ import annotations

import argparse
import json
import sys

from clapkit.evaluate.report import format_table


def _load(args: argparse.Namespace):
    from clapkit.cli_helpers import load_model

    return load_model(args.model, device=args.device)


def _precision(args: argparse.Namespace):
    from clapkit.cli_helpers import parse_dtype

    return parse_dtype(args.precision)


def _finish(args: argparse.Namespace, task: str, metrics: dict, table: str) -> int:
    print(table)
    payload = {"task": task, "model": str(args.model), "data": str(args.data), "metrics": metrics}
    if args.out:
        from clapkit.io import atomic_write_json

        atomic_write_json(args.out, payload)
        print(f"wrote {args.out}")
    if args.json:
        json.dump(payload, sys.stdout, indent=2)
        print()
    return 0


def _cmd_zeroshot(args: argparse.Namespace) -> int:
    from clapkit.evaluate.zeroshot import evaluate_zeroshot, load_labelled_audio, save_confusion_matrix
    from clapkit.zeroshot import DEFAULT_TEMPLATES

    data = load_labelled_audio(args.data, args.audio_root)
    model = _load(args)
    metrics = evaluate_zeroshot(
        model,
        data,
        templates=args.template or list(DEFAULT_TEMPLATES),
        batch_size=args.batch_size,
        autocast_dtype=_precision(args),
        progress=True,
    )
    if args.confusion:
        save_confusion_matrix(metrics["confusion"], data.classes, args.confusion)
        print(f"wrote {args.confusion}")
    summary = {k: v for k, v in metrics.items() if k not in ("per_class", "confusion")}
    table = format_table(summary) + "\n\n" + format_table(metrics["per_class"], header=("class", "accuracy"))
    return _finish(args, "zeroshot", metrics, table)


def _cmd_retrieval(args: argparse.Namespace) -> int:
    from clapkit.evaluate.retrieval import evaluate_retrieval, load_retrieval_set

    data = load_retrieval_set(args.data, args.audio_root)
    model = _load(args)
    metrics = evaluate_retrieval(
        model, data, batch_size=args.batch_size, autocast_dtype=_precision(args), progress=True
    )
    names = ["R@1", "R@5", "R@10", "mAP@10", "mean_rank", "median_rank"]
    rows = [(n, metrics[f"text_to_audio_{n}"], metrics[f"audio_to_text_{n}"]) for n in names]
    head = f"{metrics['num_audio']} clips, {metrics['num_captions']} captions\n"
    return _finish(args, "retrieval", metrics, head + format_table(rows, ("metric", "text→audio", "audio→text")))


def _cmd_compositional(args: argparse.Namespace) -> int:
    from clapkit.evaluate.compositional import evaluate_compositional, load_compa_csv

    items = load_compa_csv(args.data, args.audio_root, include_triplet=args.triplets)
    model = _load(args)
    metrics = evaluate_compositional(
        model, items, batch_size=args.batch_size, autocast_dtype=_precision(args), progress=True
    )
    rows = [(f"{n} score", metrics[f"{n}_score"], metrics[f"random_{n}_score"]) for n in ("text", "audio", "group")]
    head = f"{metrics['num_instances']} instances\n"
    return _finish(args, "compositional", metrics, head + format_table(rows, ("", "model", "random")))


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Add ``eval`` with its three benchmarks to the ``clapkit`` parser."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--model", default="clapkit-small", help="registered name or save_pretrained folder")
    common.add_argument("--device", default=None, help="torch device (default: cpu)")
    common.add_argument("--batch-size", type=int, default=16, help="audio windows per forward pass")
    common.add_argument("--precision", choices=["bf16", "fp16"], default=None, help="autocast dtype (default fp32)")
    common.add_argument("--audio-root", help="folder that relative audio paths are relative to (default: the file's)")
    common.add_argument("--out", help="write the results as JSON here")
    common.add_argument("--json", action="store_true", help="also print the results as JSON")

    p = sub.add_parser(
        "eval",
        help="benchmarks: zero-shot classification, retrieval, compositional (CompA)",
        description="Evaluate a model on a labelled data set; prints a table and optionally writes JSON.",
    )
    tasks = p.add_subparsers(dest="task", required=True, metavar="TASK")

    t = tasks.add_parser(
        "zeroshot",
        parents=[common],
        help="zero-shot classification: top-1/top-5, per-class accuracy, confusion matrix",
        description="Classify clips against their class names (prompt ensemble; '_' read as a space). DATA is "
        "a folder with one subfolder of audio per class, or a CSV with 'path' and 'label' columns.",
    )
    t.add_argument("data", help="class folders, or a path,label CSV")
    t.add_argument("--template", action="append", help="prompt template with {} (repeatable; replaces defaults)")
    t.add_argument("--confusion", help="save the confusion matrix as a PNG here")
    t.set_defaults(func=_cmd_zeroshot)

    t = tasks.add_parser(
        "retrieval",
        parents=[common],
        help="text↔audio retrieval: R@1/5/10 and mAP@10 (AudioCaps/Clotho protocol)",
        description="DATA is a CSV with 'path' and 'caption' (one row per caption) or 'caption_1'…'caption_5' "
        "(one row per clip, Clotho), or a JSONL of {'path', 'captions'}. Similarities are computed in blocks.",
    )
    t.add_argument("data", help="CSV or JSONL of audio paths and captions")
    t.set_defaults(func=_cmd_retrieval)

    t = tasks.add_parser(
        "compositional",
        parents=[common],
        help="CompA-order / CompA-attribute: text, audio and group scores vs random",
        description="DATA is a CompA CSV (pair_caption, reversed_pair_caption, triplet_caption, pair_file, "
        "reversed_pair_file, triplet_file). Scores as CompA (Winoground-style), random baseline beside.",
    )
    t.add_argument("data", help="CompA benchmark CSV")
    t.add_argument("--triplets", action="store_true", help="score rows with a triplet as 3 × 3 instances")
    t.set_defaults(func=_cmd_compositional)
