"""Self-labelling (DeSTA): the LLM writes its own audio-alignment targets from each clip's text metadata.

For every clip the text LLM is shown what is known about the audio (captions, labels, transcript,
duration) and a question; its answer becomes the assistant turn of a training conversation in which the
audio itself replaces the description::

    user:      <Audio>\\nWhat can be heard in this recording?
    assistant: (the LLM's answer, written from the metadata)

Training on these targets aligns the audio to what the LLM would say about the description, in the
LLM's own words and style, which keeps its text behaviour intact (DeSTA2).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import zlib
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import webdataset as wds

from clapkit.data.reader import resolve_shards
from clapkit.data.schema import MANIFEST_NAME, Manifest, SampleMeta, ShardInfo
from clapkit.io import atomic_write_json
from clapkit.lalm.chat import AUDIO_TOKEN, chat_generate
from clapkit.progress import progress_bar

__all__ = [
    "DEFAULT_QUESTIONS",
    "LABEL_PROMPT",
    "SelfLabeler",
    "describe_metadata",
    "self_label_jsonl",
    "self_label_shards",
]

DEFAULT_QUESTIONS = (
    "Describe the audio.",
    "What can be heard in this recording?",
    "What is happening in this audio clip?",
    "Which sounds are present, and what might be their source?",
)

LABEL_PROMPT = (
    "Here is what is known about an audio clip:\n{metadata}\n\n"
    "Answer the question below as if you were listening to the clip yourself. Do not mention the "
    "description or that you were given one.\nQuestion: {question}"
)


def describe_metadata(meta: dict[str, Any]) -> str:
    """The text the LLM sees instead of the audio; empty when there is nothing to describe."""
    lines = []
    if meta.get("captions"):
        lines.append("Captions: " + " | ".join(meta["captions"]))
    if meta.get("labels"):
        lines.append("Sound labels: " + ", ".join(meta["labels"]))
    transcript = meta.get("transcript")
    if isinstance(transcript, str) and transcript.strip():
        lines.append(f'Speech transcript: "{transcript.strip()}"')
    if not lines:
        return ""
    if isinstance(meta.get("duration"), (int, float)):
        lines.append(f"Duration: {meta['duration']:.1f} s")
    return "\n".join(lines)


class SelfLabeler:
    """Writes question-answer conversations from metadata with a text LLM.

    Args:
        llm: A transformers causal LM.
        tokenizer: Its tokenizer (with a chat template).
        questions: One is chosen per clip (deterministically from ``seed`` and the clip key).
        prompt: Template with ``{metadata}`` and ``{question}``.
        system_prompt: System turn of the labelling prompt (``None``: the template's default).
        max_new_tokens: Answer length bound.
        seed: Seed of the question choice.
        **generate_kwargs: Passed to transformers' ``generate`` (default greedy).
    """

    def __init__(
        self,
        llm: Any,
        tokenizer: Any,
        *,
        questions: Sequence[str] = DEFAULT_QUESTIONS,
        prompt: str = LABEL_PROMPT,
        system_prompt: str | None = None,
        max_new_tokens: int = 96,
        seed: int = 0,
        **generate_kwargs: Any,
    ) -> None:
        if not questions or not all(isinstance(q, str) and q.strip() for q in questions):
            raise ValueError("self-labelling needs at least one non-empty question")
        if "{metadata}" not in prompt or "{question}" not in prompt:
            raise ValueError("the self-labelling prompt needs {metadata} and {question} placeholders")
        self.llm, self.tokenizer = llm, tokenizer
        self.questions, self.prompt, self.system_prompt = list(questions), prompt, system_prompt
        self.max_new_tokens, self.seed, self.generate_kwargs = max_new_tokens, seed, generate_kwargs

    def question(self, key: str) -> str:
        """The question for a clip (stable across runs and processes)."""
        return self.questions[zlib.crc32(f"{self.seed}:{key}".encode()) % len(self.questions)]

    def label(self, items: Sequence[tuple[str, dict[str, Any]]]) -> list[list[dict[str, str]] | None]:
        """Conversations for ``(key, metadata)`` pairs; ``None`` where there is no metadata or no answer."""
        todo = [(i, key, describe_metadata(meta)) for i, (key, meta) in enumerate(items)]
        todo = [t for t in todo if t[2]]
        out: list[list[dict[str, str]] | None] = [None] * len(items)
        if not todo:
            return out
        questions = [self.question(key) for _, key, _ in todo]
        prompts = [
            [{"role": "user", "content": self.prompt.format(metadata=text, question=q)}]
            for (_, _, text), q in zip(todo, questions)
        ]
        answers = chat_generate(
            self.llm,
            self.tokenizer,
            prompts,
            system_prompt=self.system_prompt,
            max_new_tokens=self.max_new_tokens,
            **self.generate_kwargs,
        )
        for (i, _, _), q, answer in zip(todo, questions, answers):
            if answer:
                out[i] = [
                    {"role": "user", "content": f"{AUDIO_TOKEN}\n{q}"},
                    {"role": "assistant", "content": answer},
                ]
        return out


def _batches(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    batch: list[Any] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def self_label_jsonl(
    labeler: SelfLabeler,
    source: str | Path,
    out: str | Path,
    *,
    batch_size: int = 8,
    limit: int | None = None,
    progress: bool = True,
) -> dict[str, int]:
    """Label a JSONL listing (``{"audio": path, "captions": …, "labels": …}`` per line).

    Each line is written back with a ``conversation`` field (replacing any earlier one) and its audio path
    made absolute, ready for ``clapkit shards write --from OUT --out DIR --allow-no-caption``. Lines without usable
    metadata are skipped and counted.

    Returns:
        ``{"labelled", "skipped"}``.
    """
    source, out = Path(source), Path(out)
    stats = {"labelled": 0, "skipped": 0}

    def rows() -> Iterator[tuple[str, dict[str, Any], dict[str, Any]]]:
        with source.open(encoding="utf-8") as f:
            for number, line in enumerate(f, start=1):
                if limit is not None and number > limit:
                    return
                if not line.strip():
                    continue
                origin = f"{source}:{number}"
                try:
                    raw = json.loads(line)
                    if not isinstance(raw, dict) or not isinstance(raw.get("audio"), str):
                        raise ValueError(f"{origin}: expected an object with an 'audio' path")
                    meta = SampleMeta.from_dict({k: v for k, v in raw.items() if k != "audio"}, origin).to_dict()
                except ValueError:
                    stats["skipped"] += 1
                    continue
                audio = Path(raw["audio"])
                raw["audio"] = str(audio if audio.is_absolute() else (source.parent / audio).resolve())
                yield origin, raw, meta

    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", dir=out.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f, progress_bar(desc="self-label", disable=not progress) as bar:
            for batch in _batches(rows(), batch_size):
                convs = labeler.label([(origin, meta) for origin, _, meta in batch])
                for (_, raw, _), conv in zip(batch, convs):
                    if conv is None:
                        stats["skipped"] += 1
                        continue
                    f.write(json.dumps({**raw, "conversation": conv}, ensure_ascii=False) + "\n")
                    stats["labelled"] += 1
                bar.update(len(batch))
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return stats


def self_label_shards(
    labeler: SelfLabeler,
    shards: str | Path | Sequence[str | Path],
    out_dir: str | Path,
    *,
    batch_size: int = 8,
    limit: int | None = None,
    max_count: int = 10_000,
    progress: bool = True,
) -> Manifest:
    """Label clapkit shards: the audio members are copied unchanged, ``<key>.json`` gains a ``conversation``.

    The output folder (``shard-NNNNNN.tar`` + ``manifest.json``) is written beside ``out_dir`` and renamed
    into place when complete. Samples without metadata, or whose json does not parse, are skipped and counted
    in the manifest.
    """
    urls, _ = resolve_shards(shards)
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    manifest = Manifest(source=str(shards), complete=False)
    seen = skipped = 0

    def samples() -> Iterator[dict[str, Any]]:
        nonlocal seen
        for sample in wds.DataPipeline(wds.SimpleShardList(urls), wds.tarfile_to_samples()):
            if limit is not None and seen >= limit:
                return
            seen += 1
            yield sample

    try:
        writer = wds.ShardWriter(str(tmp / "shard-%06d.tar"), maxcount=max_count, verbose=0)

        def finished(fname: str) -> None:
            first = manifest.shards[-1].end_index if manifest.shards else 0
            manifest.shards.append(
                ShardInfo(Path(fname).name, writer.count, Path(fname).stat().st_size, first, first + writer.count)
            )

        writer.post = finished
        with progress_bar(desc="self-label", disable=not progress) as bar:
            for batch in _batches(samples(), batch_size):
                metas = []
                for s in batch:
                    name = f"{s.get('__url__')}:{s.get('__key__')}"
                    try:
                        metas.append(SampleMeta.from_json_bytes(s["json"], name).to_dict() if "json" in s else None)
                    except ValueError:
                        metas.append(None)
                ready = [(s, m) for s, m in zip(batch, metas) if m is not None]
                convs = labeler.label([(str(s["__key__"]), m) for s, m in ready])
                skipped += len(batch) - len(ready)
                for (s, meta), conv in zip(ready, convs):
                    if conv is None:
                        skipped += 1
                        continue
                    record = {k: v for k, v in s.items() if not k.startswith("__") and k != "json"}
                    record["__key__"] = s["__key__"]
                    record["json"] = json.dumps({**meta, "conversation": conv}, ensure_ascii=False).encode()
                    writer.write(record)
                bar.update(len(batch))
        writer.close()
        manifest.num_inputs, manifest.skipped, manifest.complete = seen, skipped, True
        atomic_write_json(tmp / MANIFEST_NAME, manifest.to_dict())
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest
