"""``clapkit llm-captions``: paraphrases or hard negatives written by an LLM for a caption listing, cached.

    clapkit llm-captions clips.jsonl --kind positives --out clips.llm.jsonl --cache runs/captions.sqlite

Input: a JSONL listing (one object per line, as ``clapkit shards write --from`` reads: the caption is the first of
``captions``, or ``caption``) or a text file (one caption per line). Output: the same lines with the validated
LLM outputs added to ``positives`` / ``negatives`` (existing entries kept, duplicates dropped), written to a
temporary name and renamed. Greedy decoding and the SQLite cache make a rerun free and the output reproducible.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from clapkit.io import atomic_write_text

__all__ = ["add_commands", "read_captions"]


def read_captions(path: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """The records of a listing and each one's caption (``.txt``: one caption per line → ``{"caption": …}``).

    Raises:
        ValueError: a malformed JSON line, a line that is not an object, or a record without a caption
            (named by file and line).
    """
    records, captions = [], []
    lines = path.read_text(encoding="utf-8").splitlines()
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        if path.suffix == ".txt":
            record = {"caption": line.strip()}
        else:
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{where}: not valid JSON ({err.msg})") from None
            if not isinstance(record, dict):
                raise ValueError(f"{where}: expected a JSON object, got {type(record).__name__}")
        caption = record.get("caption")
        if caption is None and isinstance(record.get("captions"), list) and record["captions"]:
            caption = record["captions"][0]
        if not isinstance(caption, str) or not caption.strip():
            raise ValueError(f"{where}: no caption (give `caption` or a non-empty `captions` list)")
        records.append(record)
        captions.append(caption)
    if not records:
        raise ValueError(f"{path}: no captions")
    return records, captions


def _writer(args: argparse.Namespace):
    from clapkit.compose.llm import LLMCaptionWriter

    options = {"cache": args.cache, "max_new_tokens": args.max_new_tokens}
    if args.llm == "smollm2":
        return LLMCaptionWriter.smollm2(device=args.device, **options)
    path = Path(args.llm)
    if not path.is_dir():
        raise ValueError(f"--llm {args.llm!r}: expected smollm2 or a transformers causal-LM folder")
    return LLMCaptionWriter.from_pretrained(path, device=args.device, **options)


def _cmd(args: argparse.Namespace) -> int:
    records, captions = read_captions(Path(args.input))
    if args.limit is not None and args.limit < 0:
        raise ValueError(f"--limit {args.limit}: give a number of records ≥ 0")
    chosen = captions if args.limit is None else captions[: args.limit]  # the rest are copied unchanged
    writer = _writer(args)
    outputs = writer.generate(chosen, args.kind, n=args.n, batch_size=args.batch_size, progress=not args.quiet)
    added = 0
    for record, new in zip(records, outputs):
        old = list(record.get(args.kind) or [])
        merged = list(dict.fromkeys([*old, *new]))
        added += len(merged) - len(old)
        record[args.kind] = merged
    atomic_write_text(Path(args.out), "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    stats = dict(sorted(writer.stats.items()))
    summary = {
        "captions": len(records),
        "sent": len(chosen),
        "kind": args.kind,
        "added": added,
        "model": writer.model_id,
        **stats,
    }
    print(json.dumps(summary, indent=2))
    if writer.cache is not None:
        writer.cache.close()
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "llm-captions",
        help="LLM paraphrases (positives) or hard negatives for a caption listing, validated and cached",
        description="Add LLM-written captions to each record of a JSONL listing (or a .txt of captions): "
        "paraphrase positives, or hard negatives that use the same sounds in a different scene. Every line "
        "is validated (clapkit.compose.llm.validate) and what fails is dropped and counted; completions are "
        "cached in SQLite (--cache), so a rerun generates nothing again.",
    )
    p.add_argument("input", help="JSONL listing (caption or captions[0] per line) or .txt (one caption per line)")
    p.add_argument("--out", required=True, help="output JSONL (written to a temporary name, then renamed)")
    p.add_argument("--kind", choices=["positives", "negatives"], default="positives", help="what to write")
    p.add_argument("--llm", default="smollm2", help="smollm2 (packaged GGUF, offline) or a causal-LM folder")
    p.add_argument("--cache", default=None, help="SQLite cache of completions (default: none)")
    p.add_argument("--n", type=int, default=3, help="outputs per caption at most (default 3)")
    p.add_argument("--batch-size", type=int, default=8, help="prompts per LM call (default 8)")
    p.add_argument("--max-new-tokens", type=int, default=64, help="length limit of one completion")
    p.add_argument("--device", default=None, help="torch device (default: cpu)")
    p.add_argument(
        "--limit", type=int, default=None, help="send only the first N records to the LLM; the rest are copied"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd)
