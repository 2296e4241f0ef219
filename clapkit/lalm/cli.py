"""``clapkit lalm eval`` and ``clapkit lalm self-label``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _fmt(values: dict) -> str:
    return ", ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items() if k != "groups")


def _print_metrics(metrics: dict) -> None:
    for kind, values in metrics.items():
        print(f"{kind}: {_fmt(values)}")
        for group, group_values in values.get("groups", {}).items():
            print(f"  {group}: {_fmt(group_values)}")


def _samples(args: argparse.Namespace, sample_rate: int):
    from clapkit.lalm.data import ConversationReader, read_conversation_jsonl
    from clapkit.lalm.evaluate import read_mmau

    data = Path(args.data)
    if data.suffix == ".json":
        return read_mmau(data, sample_rate, args.audio_root)
    if data.suffix == ".jsonl":
        return read_conversation_jsonl(data, sample_rate)
    return iter(ConversationReader(args.data, sample_rate, train=False))


def _cmd_eval(args: argparse.Namespace) -> int:
    from clapkit.io import atomic_write_json, atomic_write_text
    from clapkit.lalm.evaluate import predict, score

    if args.predictions:
        records = [json.loads(line) for line in Path(args.predictions).read_text().splitlines() if line.strip()]
    else:
        if not (args.model and args.data):
            raise ValueError("give --model and --data to generate answers, or --predictions to score saved ones")
        from clapkit.lalm.io import load

        model = load(args.model, device=args.device, merge_lora=True)  # inference only: LoRA folded in
        records = predict(
            model,
            _samples(args, model.sample_rate),
            batch_size=args.batch_size,
            limit=args.limit,
            progress=True,
            max_new_tokens=args.max_new_tokens,
        )
        if args.save_predictions:
            lines = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
            atomic_write_text(args.save_predictions, lines)
            print(f"wrote {len(records)} predictions to {args.save_predictions}")
    metrics = score(records)
    _print_metrics(metrics)
    if args.out:
        atomic_write_json(args.out, {"model": args.model, "data": args.data, "metrics": metrics})
        print(f"wrote {args.out}")
    if args.json:
        json.dump(metrics, sys.stdout, indent=2)
        print()
    return 0


def _cmd_self_label(args: argparse.Namespace) -> int:
    from clapkit.lalm.io import load_llm
    from clapkit.lalm.selflabel import DEFAULT_QUESTIONS, SelfLabeler, self_label_jsonl, self_label_shards

    questions = DEFAULT_QUESTIONS
    if args.questions:
        questions = [q.strip() for q in Path(args.questions).read_text().splitlines() if q.strip()]
    llm, tokenizer = load_llm(args.llm, gguf_file=args.gguf_file)
    if args.device:
        llm.to(args.device)
    labeler = SelfLabeler(llm, tokenizer, questions=questions, max_new_tokens=args.max_new_tokens, seed=args.seed)
    common = {"batch_size": args.batch_size, "limit": args.limit, "progress": not args.quiet}
    if str(args.input).endswith(".jsonl"):
        stats = self_label_jsonl(labeler, args.input, args.out, **common)
        print(f"labelled {stats['labelled']} clips, skipped {stats['skipped']}; wrote {args.out}")
    else:
        manifest = self_label_shards(labeler, args.input, args.out, **common)
        shards = len(manifest.shards)
        print(f"labelled {manifest.total} clips, skipped {manifest.skipped}; wrote {shards} shards to {args.out}")
    return 0


def _cmd_convert_llaso(args: argparse.Namespace) -> int:
    from clapkit.data.writer import WriterConfig, write_shards
    from clapkit.lalm.llaso import read_llaso

    records, report = read_llaso(args.input, args.audio_root)
    info = report.to_dict()
    print(f"{info['records']} conversations {info['layouts']}, answerable {info['answerable']}")
    if report.skipped:
        print(f"skipped {sum(report.skipped.values())}: {info['skipped']}")
        for line in report.examples:
            print(f"  {line}")
    if not records:
        print(f"{args.input}: nothing to write", file=sys.stderr)
        return 2
    config = WriterConfig(
        sample_rate=args.sample_rate, require_captions=False, counterfactual_audio=False, workers=args.workers
    )
    manifest = write_shards(records, args.out, config, source=str(args.input), progress=True)
    print(f"wrote {manifest.total} conversations in {len(manifest.shards)} shards to {args.out}")
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    lalm = sub.add_parser(
        "lalm",
        help="audio-language model tools: evaluation, self-labelling, LLaSO data",
        description="Tools for the LLM adapter stage (clapkit encoder → projector → LLM).",
    )
    lsub = lalm.add_subparsers(dest="lalm_command", required=True, metavar="COMMAND")

    p = lsub.add_parser(
        "eval",
        help="answer questions about audio and score the answers",
        description="Generate answers with a saved audio-language model and score them: multiple-choice accuracy "
        "(MMAU JSON: question, choices, answer; the option is extracted from free text), WER/CER (kind 'asr'), "
        "label exact match and containment (kind 'label'), abstention on closed questions. Data: an MMAU .json, "
        "a conversation .jsonl, or conversation shards (the final assistant turn, or meta 'answer', is the "
        "reference). Or score saved predictions with --predictions.",
    )
    p.add_argument("--model", help="folder written by AudioLanguageModel.save_pretrained")
    p.add_argument("--data", help="MMAU .json, conversation .jsonl, or shard folder / pattern")
    p.add_argument("--audio-root", help="folder that MMAU audio_id paths are relative to (default: the JSON's)")
    p.add_argument("--predictions", help="score this prediction JSONL instead of running a model")
    p.add_argument("--save-predictions", help="write the prediction records (JSONL) here")
    p.add_argument("--out", help="write the metrics (JSON) here")
    p.add_argument("--json", action="store_true", help="also print the metrics as JSON")
    p.add_argument("--batch-size", type=int, default=8, help="conversations per generate call")
    p.add_argument("--limit", type=int, help="stop after this many samples")
    p.add_argument("--max-new-tokens", type=int, default=64, help="answer length bound (tokens)")
    p.add_argument("--device", default=None, help="torch device (default: cpu)")
    p.set_defaults(func=_cmd_eval)

    p = lsub.add_parser(
        "self-label",
        help="write training conversations with a text LLM from clip metadata (DeSTA)",
        description="For each clip, show the LLM its captions, labels and transcript and a question; store its "
        "answer as the assistant turn of a conversation about the audio. Input: clapkit shards (a folder, "
        "manifest or pattern; output: a shard folder) or a JSONL listing with audio paths (output: JSONL for "
        "`clapkit shards write --from OUT.jsonl --allow-no-caption`).",
    )
    p.add_argument("input", help="shard folder / pattern, or a .jsonl listing")
    p.add_argument("--out", required=True, help="output shard folder, or .jsonl file for a .jsonl input")
    p.add_argument("--llm", default="smollm2", help="'smollm2' (packaged GGUF), a transformers folder or hub id")
    p.add_argument("--gguf-file", help="GGUF file inside the --llm folder")
    p.add_argument("--questions", help="text file with one question per line (default: a built-in set)")
    p.add_argument("--batch-size", type=int, default=8, help="clips per generate call")
    p.add_argument("--max-new-tokens", type=int, default=96, help="answer length bound (tokens)")
    p.add_argument("--limit", type=int, help="stop after this many inputs")
    p.add_argument("--seed", type=int, default=0, help="seed of the question choice")
    p.add_argument("--device", default=None, help="torch device (default: cpu)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_self_label)

    p = lsub.add_parser(
        "convert-llaso",
        help="LLaSO-style instruction JSON (three modality layouts) → conversation shards",
        description="Read LLaSO / LLaVA-style conversations (JSON array or JSONL: conversations with human/gpt "
        "turns and <audio> or <speech> markers, audio paths, layout text_audio | audio_text | pure_audio, "
        "answerable) and write them as clapkit conversation shards for `python -m train lalm`. Unusable entries "
        "are skipped and counted by reason. Format: docs/lalm.md (LLaSO data).",
    )
    p.add_argument("input", help="a .json (array) or .jsonl file")
    p.add_argument("--out", required=True, help="shard folder to write")
    p.add_argument("--audio-root", help="folder that relative audio paths are relative to (default: the file's)")
    p.add_argument("--sample-rate", type=int, default=44100, help="stored rate, Hz (the encoder's; default 44100)")
    p.add_argument("--workers", type=int, default=0, help="encoding processes (0: this one)")
    p.set_defaults(func=_cmd_convert_llaso)
