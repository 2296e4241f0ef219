"""``clapkit convert``: a LAION-CLAP / CompA-CLAP ``.pt`` file or a Hugging Face ClapModel folder → a clapkit folder."""

from __future__ import annotations

import argparse

__all__ = ["add_commands"]


def _summary(dropped: list[str]) -> list[str]:
    """One line per reason for the dropped keys."""
    from clapkit.convert import hf, laion

    lines: dict[str, list[str]] = {}
    for key in dropped:
        why = laion.dropped_reason(key) or hf.dropped_reason(key)
        lines.setdefault(why, []).append(key)
    return [f"  {len(keys)} × {keys[0]}{' …' if len(keys) > 1 else ''}: {why}" for why, keys in lines.items()]


def _cmd_convert(args: argparse.Namespace) -> int:
    # Imported on use, as in the other areas' commands: `clapkit --help` does not load torch.
    from clapkit.convert import convert_with_report

    model, dropped = convert_with_report(args.src, args.tokenizer)
    out = model.save_pretrained(args.out)
    cfg = model.config
    print(
        f"wrote {out}: audio={cfg.audio_tower.name} text={cfg.text_tower.name} dim={cfg.embed_dim} "
        f"rate={cfg.audio.sample_rate} Hz; every model weight loaded from {args.src}"
    )
    if dropped:
        print(f"left out {len(dropped)} checkpoint keys that do not affect the embeddings:")
        print("\n".join(_summary(dropped)))
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "convert",
        help="convert a LAION-CLAP / CompA-CLAP .pt file or a Hugging Face ClapModel folder",
        description="Load a LAION-CLAP or CompA-CLAP .pt checkpoint (unfused HTSAT) or a Hugging Face ClapModel "
        "folder strictly, and write a clapkit model folder (config.json, model.safetensors, tokenizer) that "
        "clapkit.load() opens offline. Pickles are read with torch.load(weights_only=True); a mismatch between "
        "checkpoint and architecture is reported key by key.",
    )
    p.add_argument("src", help="checkpoint file (.pt) or Hugging Face ClapModel folder")
    p.add_argument("--out", required=True, help="output folder (replaced atomically if it exists)")
    p.add_argument(
        "--tokenizer",
        help="RoBERTa tokenizer folder or hub id (default: the HF folder's own, else FacebookAI/roberta-base "
        "from the Hugging Face cache)",
    )
    p.set_defaults(func=_cmd_convert)
