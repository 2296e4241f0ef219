"""The ``clapkit`` console script.

Each feature area registers its own subcommands through an ``add_commands(subparsers)`` function in
its module, listed in ``COMMAND_MODULES``; this file only wires them together.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path

#: Modules that contribute subcommands (each defines ``add_commands(subparsers)``).
COMMAND_MODULES: list[str] = [
    "clapkit.cli",
    "clapkit.evaluate.cli",
    "clapkit.data.cli",
    "clapkit.index.cli",
    "clapkit.convert.cli",
    "clapkit.lalm.cli",
    "clapkit.compose.cli",
]


def _expand(paths: list[str]) -> list[str]:
    """Audio files in input order, folders replaced by the audio files under them (sorted).

    Raises:
        ValueError: a folder that holds no audio file (named, so a folder called ``clips.wav/`` is not mistaken
            for a file), or no inputs at all.
    """
    from clapkit.data.files import AUDIO_EXTENSIONS, find_audio_files

    out: list[str] = []
    for p in paths:
        path = Path(p)
        if path.is_dir():
            found = find_audio_files(path)
            if not found:
                raise ValueError(
                    f"{p}: a folder with no audio files in it ({', '.join(sorted(AUDIO_EXTENSIONS))}); "
                    "give audio files or folders that hold them"
                )
            out.extend(str(f) for f in found)
        else:
            out.append(p)
    if not out:
        raise ValueError("no audio files found in the given paths")
    return out


def _cmd_models(args: argparse.Namespace) -> int:
    from clapkit.config import get_model_config, list_models

    for name in list_models():
        cfg = get_model_config(name)
        print(
            f"{name:16s} audio={cfg.audio_tower.name:6s} text={cfg.text_tower.name:5s} "
            f"dim={cfg.embed_dim} rate={cfg.audio.sample_rate} Hz clip={cfg.audio.clip_seconds} s"
        )
    return 0


def _cmd_embed(args: argparse.Namespace) -> int:
    from clapkit.cli_helpers import load_model, parse_dtype
    from clapkit.io import atomic_save_npy

    names = list(args.inputs) if args.text else _expand(args.inputs)  # path errors before the model loads
    model = load_model(args.model, device=args.device)
    if args.text:
        emb = model.embed_text(names, batch_size=args.batch_size, progress=True)
    else:
        dtype = parse_dtype(args.precision)
        emb = model.embed_audio(names, batch_size=args.batch_size, autocast_dtype=dtype, progress=True)
    atomic_save_npy(args.out, emb)
    print(f"wrote {emb.shape[0]} × {emb.shape[1]} embeddings to {args.out}")
    if args.names:
        Path(args.names).write_text("\n".join(names) + "\n")
    return 0


def _cmd_zeroshot(args: argparse.Namespace) -> int:
    from clapkit.cli_helpers import load_model
    from clapkit.zeroshot import DEFAULT_TEMPLATES, zero_shot

    labels = [s.strip() for s in args.labels.split(",") if s.strip()]
    if len(labels) < 2:
        raise SystemExit("clapkit zeroshot: give at least two comma-separated --labels")
    files = _expand(args.inputs)
    model = load_model(args.model, device=args.device)
    templates = args.template or list(DEFAULT_TEMPLATES)
    result = zero_shot(model, files, labels, templates=templates, batch_size=args.batch_size)
    rows = []
    for path, top in zip(files, result.topk(min(args.top, len(labels)))):
        rows.append({"file": path, "top": [{"label": lab, "prob": round(p, 4)} for lab, p in top]})
        if not args.json:
            print(f"{path}: " + ", ".join(f"{lab} {p:.3f}" for lab, p in top))
    if args.json:
        json.dump(rows, sys.stdout, indent=2)
        print()
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list registered model architectures")
    p.set_defaults(func=_cmd_models)

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--model", default="clapkit-small", help="registered name or save_pretrained folder")
    common.add_argument("--device", default=None, help="torch device (default: cpu)")
    common.add_argument("--batch-size", type=int, default=16, help="windows per forward pass")

    p = sub.add_parser(
        "embed",
        parents=[common],
        help="embed audio files (or captions with --text) into an .npy array",
        description="Embed audio files or folders (recursively) into L2-normalised rows of an .npy file, "
        "in input order. Long files are embedded by deterministic sliding windows.",
    )
    p.add_argument("inputs", nargs="+", help="audio files or folders; captions with --text")
    p.add_argument("--out", required=True, help="output .npy path [N, D]")
    p.add_argument("--names", help="also write the input names, one per line, to this file")
    p.add_argument("--text", action="store_true", help="inputs are captions, not audio")
    p.add_argument("--precision", choices=["bf16", "fp16"], default=None, help="autocast dtype (default fp32)")
    p.set_defaults(func=_cmd_embed)

    p = sub.add_parser(
        "zeroshot",
        parents=[common],
        help="classify audio files against free-text labels",
        description="Zero-shot classification: each label is embedded through a prompt ensemble "
        "(LAION's 'This is a sound of {}.' among them) and each file gets the softmax over labels.",
    )
    p.add_argument("inputs", nargs="+", help="audio files or folders")
    p.add_argument("--labels", required=True, help="comma-separated class names, e.g. dog,rain,siren")
    p.add_argument("--template", action="append", help="prompt template with {} (repeatable; replaces defaults)")
    p.add_argument("--top", type=int, default=3, help="labels shown per file")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=_cmd_zeroshot)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="clapkit", description="Contrastive audio-text embeddings, zero-shot, training data, search."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, KeyError, FileNotFoundError) as err:
        print(f"clapkit {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
