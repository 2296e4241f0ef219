"""The demo's LALM step: the trained ``clapkit-small`` as the frozen audio front end of SmolLM2-135M-Instruct.

After the two CLAP arms are trained, ``run_lalm`` (called by ``train.demo.Demo.run`` when ``lalm.enabled``) builds
an audio-language model — the ``lalm.encoder`` arm's saved model (frozen) → ``mlp2x_gelu`` → SmolLM2 — and trains
it with the training app's ``train.lalm.LalmModule`` in LLaSO's two stages:

1. **lalm stage1** (alignment, projector only): "Describe the sound." → a caption of a training clip (and of a
   training scene, ``lalm.scenes``).
2. **lalm stage2** (instruction tuning, projector + LoRA on the LLM): "What sound is this?" → the clip's class
   phrase ("A dog barks."), and "Which sound comes first?" as a two-way multiple choice over the events of a
   training scene, each scene asked with both option orders, over scenes and their reversed counterfactuals
   (both temporal orders); a ``replay`` fraction of stage-1 conversations is mixed back in.
3. **lalm eval** on held-out data: the label question on every held-out clip (the class is extracted from the
   free-text answer: its name or any phrasing of the config's ``phrases`` table counts; chance 1 / classes), and
   the order question on the held-out CompA-order scenes (test clips, held-out class pairs): each row's scene
   and its reversal get the same two options, so an answer that ignores the audio scores exactly 50 %.

The frozen towers' outputs are in the demo's feature store (``clapkit.feature_store``), so the aisfx CNN never
runs: the encoder's ``audio_sequence`` is its head over the stored frames (``audio_sequence_from_tower``), handed
to the model as ``audio_features``. Stage 1 checks that path against the live one (waveform → aisfx → head →
projector) on a few held-out clips.

Each stage is a reusable demo step (``Demo._step``: a fingerprint and a ``.done.json`` under ``out_dir/lalm``).
:class:`LalmRunner` holds the stages over plain in-memory data (:class:`LalmData`), so they run on any encoder and
LLM (the tests use a tiny encoder and a random Llama).
"""

from __future__ import annotations

import csv
import io
import json
import random
import warnings
from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.loggers import CSVLogger
from torch.utils.data import DataLoader, Dataset

import clapkit
from clapkit.audio import load_audio
from clapkit.feature_store import FeatureStore
from clapkit.io import atomic_write_text
from clapkit.lalm import AudioLanguageModel, ConversationSample, audio_sequence_from_tower, user_content
from clapkit.lalm import load as load_lalm
from clapkit.lalm.evaluate import label_accuracy, mc_prompt, multiple_choice_accuracy, predict
from clapkit.model import ClapModel
from train.lalm import LalmModule
from train.optim import OptimConfig

if TYPE_CHECKING:
    from train.demo import Demo

__all__ = [
    "LALM_METRICS",
    "LalmData",
    "LalmRunner",
    "LalmSection",
    "LalmStage2Section",
    "LalmStageSection",
    "OrderRow",
    "QADataset",
    "QAItem",
    "TrainClip",
    "TrainScene",
    "class_aliases",
    "event_phrases",
    "label_answers",
    "order_choices",
    "run_lalm",
    "stored_sequences",
]

#: Rows the LALM step adds to the demo's side-by-side table (result key path, chance key path), in the column of
#: the arm that is the LALM's encoder.
LALM_METRICS: tuple[tuple[str, str, str], ...] = (
    ("LALM label accuracy (free text)", "lalm.label_accuracy", "lalm.label_chance"),
    ("LALM order MC accuracy", "lalm.order_accuracy", "lalm.order_chance"),
)

DESCRIBE = (
    "Describe the sound.",
    "What do you hear?",
    "Write a short caption for this audio.",
    "Describe this recording in a few words.",
)
LABEL_QUESTIONS = (  # the first is the held-out question
    "What sound is this?",
    "What do you hear in this clip?",
    "Name the sound in this recording.",
    "What is making this sound?",
)
ORDER_QUESTION = "Which sound comes first?"
_PEFT_DEPRECATION = ".*is_gradient_checkpointing.* is deprecated"  # warned inside peft's LoRA set-up


# ---------------------------------------------------------------------------------------------------- config
@dataclass
class LalmStageSection:
    steps: int = 100  # optimizer steps of lalm.batch_size conversations
    lr: float = 1.0e-3  # peak, after linear warmup; cosine decay to min_lr_ratio × lr
    warmup_steps: int = 15
    min_lr_ratio: float = 0.1


@dataclass
class LalmStage2Section(LalmStageSection):
    """Stage 2's defaults (a class of its own: the demo config fills a section from its class's defaults)."""

    steps: int = 450
    lr: float = 5.0e-4
    warmup_steps: int = 20


@dataclass
class LalmSection:
    """``lalm:`` in ``configs/demo.yaml``; see the comments there for each value and the time arithmetic."""

    enabled: bool = False  # configs/demo.yaml turns it on; a config without a lalm section skips the step
    encoder: str = "compa_hardneg"  # the trained arm whose model is the frozen encoder
    llm: str = "smollm2"  # packaged SmolLM2-135M-Instruct (GGUF), or a transformers folder / hub id in the cache
    projector: str = "mlp2x_gelu"
    projector_params: dict[str, Any] = field(default_factory=lambda: {"downsample": 2})
    system_prompt: str = "You hear sound clips and answer questions about them."
    attn_implementation: str | None = "eager"  # faster than SDPA for short sequences on CPU
    batch_size: int = 16  # conversations per step
    precision: str = "bf16-mixed"  # Lightning precision (bf16 autocast over the float32 LLM)
    stage1: LalmStageSection = field(default_factory=LalmStageSection)
    stage2: LalmStage2Section = field(default_factory=LalmStage2Section)
    lora_rank: int = 8
    lora_alpha: int = 16
    replay: float = 0.15  # fraction of stage-2 conversations drawn from stage-1 data
    clip_repeats: int = 3  # each training clip counts this many times per epoch (scenes once)
    scenes: bool = True  # training scenes join stage 1 (captions) and stage 2 (order questions)
    order_rows: int | None = None  # held-out CompA-order rows asked (2 questions each); None: all
    max_new_tokens: int = 16
    eval_batch_size: int = 32
    seed: int | None = None  # None: the demo's seed


# ---------------------------------------------------------------------------------------------------- data
@dataclass
class TrainClip:
    """A single-event clip: its feature key, class and captions."""

    key: str
    label: str
    captions: list[str] = field(default_factory=list)


@dataclass
class TrainScene:
    """A composed scene: feature key, captions, and its two events in playing order (``None``: not two in turn)."""

    key: str
    captions: list[str]
    order: tuple[str, str] | None = None


@dataclass
class OrderRow:
    """A held-out CompA-order row: a scene (``first`` then ``second``) and its reversal."""

    key: str
    reversed_key: str
    first: str
    second: str


@dataclass
class LalmData:
    """Everything the LALM stages read.

    Attributes:
        phrases: Class → ``[[subject, verb, gerund], …]`` (the demo config's ``phrases``).
        classes: The label set of the held-out question (chance = 1 / its size).
        train_clips: Clips for captions (stage 1) and the label question (stage 2).
        train_scenes: Scenes for captions (stage 1) and the order question (stage 2).
        test_clips: Held-out clips for the label question.
        test_order: Held-out scenes for the order question.
        features: Feature key → encoder frame features [T, D] (``audio_sequence`` of the clip).
    """

    phrases: dict[str, list[list[str]]]
    classes: list[str]
    train_clips: list[TrainClip]
    train_scenes: list[TrainScene]
    test_clips: list[TrainClip]
    test_order: list[OrderRow]
    features: Mapping[str, torch.Tensor]


# ---------------------------------------------------------------------------------------------------- QA
def event_phrases(label: str, phrases: Mapping[str, Sequence[Sequence[str]]]) -> list[tuple[str, str, str]]:
    """``(subject, verb, gerund)`` phrasings of a class (the class name itself when the table has none)."""
    rows = [tuple(v) for v in phrases.get(label, [])]
    for row in rows:
        if len(row) != 3:
            raise ValueError(f"phrases.{label}: {list(row)} is not [subject, verb, gerund]")
    return rows or [(label.replace("_", " "), "sounds", "sounding")]


def label_answers(label: str, phrases: Mapping[str, Sequence[Sequence[str]]]) -> list[str]:
    """Answers to "What sound is this?": "A dog barks." / "A puppy yapping." for each phrasing."""
    out = []
    for subject, verb, gerund in event_phrases(label, phrases):
        cap = subject[:1].upper() + subject[1:]
        out += [f"{cap} {verb}.", f"{cap} {gerund}."]
    return list(dict.fromkeys(out))


def class_aliases(
    phrases: Mapping[str, Sequence[Sequence[str]]], classes: Sequence[str] | None = None
) -> dict[str, list[str]]:
    """Class → the phrasings that name it in an answer (``clapkit.lalm.evaluate.extract_label`` adds the name).

    Each ``[subject, verb, gerund]`` gives the subject, the verb, the gerund, "subject verb" and "subject
    gerund"; a phrasing that several classes share ("someone", "playing") names none of them.
    """
    out: dict[str, list[str]] = {}
    for label in classes if classes is not None else phrases:
        names = []
        for subject, verb, gerund in event_phrases(label, phrases):
            names += [subject, verb, gerund, f"{subject} {verb}", f"{subject} {gerund}"]
        out[label] = list(dict.fromkeys(names))
    return out


def order_choices(first: str, second: str, text: Callable[[str], str], swap: bool) -> tuple[list[str], str]:
    """Options of "Which sound comes first?" and the answer: ``[first, second]`` (or swapped) as event texts."""
    a, b = text(first), text(second)
    if a == b:
        raise ValueError(f"order question over {first!r} and {second!r}: both read {a!r}; give them distinct phrases")
    return ([b, a] if swap else [a, b]), a


@dataclass
class QAItem:
    """One conversation to train on: a clip and the (question, answer) pairs a visit draws from."""

    key: str
    feature_key: str
    pairs: list[tuple[str, str]]
    kind: str


def stage1_items(data: LalmData, clip_repeats: int, scenes: bool) -> list[QAItem]:
    """Alignment: "Describe the sound." (and variants) → one of the clip's or scene's captions."""
    items = []
    for clip in data.train_clips:
        captions = clip.captions or label_answers(clip.label, data.phrases)
        pairs = [(q, c) for q in DESCRIBE for c in captions]
        items += [QAItem(f"caption/{clip.key}", clip.key, pairs, "caption")] * clip_repeats
    if scenes:
        for scene in data.train_scenes:
            if scene.captions:
                pairs = [(q, c) for q in DESCRIBE for c in scene.captions]
                items.append(QAItem(f"caption/{scene.key}", scene.key, pairs, "caption"))
    return items


def stage2_items(data: LalmData, clip_repeats: int, scenes: bool) -> list[QAItem]:
    """Instruction QA: the label question on clips; the order question on scenes, both option orders each."""
    items = []
    for clip in data.train_clips:
        pairs = [(q, a) for q in LABEL_QUESTIONS for a in label_answers(clip.label, data.phrases)]
        items += [QAItem(f"label/{clip.key}", clip.key, pairs, "label")] * clip_repeats
    if scenes:
        for scene in data.train_scenes:
            if scene.order is None:
                continue
            first, second = scene.order
            pairs = []
            for v1 in event_phrases(first, data.phrases):
                for v2 in event_phrases(second, data.phrases):
                    texts = {first: f"{v1[0]} {v1[2]}", second: f"{v2[0]} {v2[2]}"}
                    for swap in (False, True):
                        choices, answer = order_choices(first, second, texts.__getitem__, swap)
                        pairs.append((mc_prompt(ORDER_QUESTION, choices), answer))
            items.append(QAItem(f"order/{scene.key}", scene.key, pairs, "order"))
    return items


def eval_samples(data: LalmData, order_rows: int | None = None) -> list[ConversationSample]:
    """Held-out questions: the label question on each test clip; the order question on each row's two scenes.

    A row's scene and its reversal get the same options (their order alternating from row to row), so the right
    option is "A" for one and "B" for the other, and exactly half of all order answers are "A".
    """

    def text(label: str) -> str:
        subject, _, gerund = event_phrases(label, data.phrases)[0]
        return f"{subject} {gerund}"

    out = []
    for clip in data.test_clips:
        messages = [{"role": "user", "content": user_content("text_audio", LABEL_QUESTIONS[0])}]
        meta = {"kind": "label", "answer": clip.label}
        out.append(ConversationSample(f"label/{clip.key}", messages, features=[data.features[clip.key]], meta=meta))
    rows = data.test_order if order_rows is None else data.test_order[:order_rows]
    for i, row in enumerate(rows):
        choices, _ = order_choices(row.first, row.second, text, swap=bool(i % 2))
        prompt = user_content("text_audio", mc_prompt(ORDER_QUESTION, choices))
        for key, first in ((row.key, row.first), (row.reversed_key, row.second)):
            meta = {"kind": "mc", "choices": choices, "answer": text(first), "row": i}
            messages = [{"role": "user", "content": prompt}]
            out.append(ConversationSample(f"order/{key}", messages, features=[data.features[key]], meta=meta))
    return out


def score_predictions(records: Sequence[dict[str, Any]], classes: Sequence[str], aliases: Mapping) -> dict[str, Any]:
    """Label accuracy (free text → class) and order MC accuracy, each with its chance level."""
    labels = [r for r in records if r["kind"] == "label"]
    order = [r for r in records if r["kind"] == "mc"]
    out: dict[str, Any] = {}
    if labels:
        acc = label_accuracy([r["prediction"] for r in labels], [r["answer"] for r in labels], aliases)
        out.update(label_accuracy=acc["accuracy"], label_unparsed=acc["unparsed"], label_n=acc["n"])
        out.update(label_chance=1 / len(classes), label_classes=len(classes))
    if order:
        choices = [r["choices"] for r in order]
        acc = multiple_choice_accuracy([r["prediction"] for r in order], choices, [r["answer"] for r in order])
        first = sum(c.index(r["answer"]) == 0 for r, c in zip(order, choices)) / len(order)
        out.update(order_accuracy=acc["accuracy"], order_unparsed=acc["unparsed"], order_n=acc["n"])
        out.update(order_chance=0.5, order_answer_a=first)
    return out


class QADataset(Dataset):
    """QA items as ``ConversationSample`` s on stored encoder features, for ``LalmModule``'s collator.

    Each visit of an item draws one of its (question, answer) pairs, seeded by (seed, item, visit): a run repeats
    exactly, and epochs see other phrasings and option orders.
    """

    def __init__(self, items: Sequence[QAItem], features: Mapping[str, torch.Tensor], seed: int) -> None:
        missing = sorted({it.feature_key for it in items} - set(features))
        if missing:
            raise KeyError(f"no encoder features for {len(missing)} clips, e.g. {missing[0]!r}")
        self.items, self.features, self.seed = list(items), features, seed
        self.visits = [0] * len(self.items)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> ConversationSample:
        item = self.items[i]
        rng = random.Random(f"{self.seed}/{i}/{self.visits[i]}")
        self.visits[i] += 1
        question, answer = item.pairs[rng.randrange(len(item.pairs))]
        messages = [
            {"role": "user", "content": user_content("text_audio", question)},
            {"role": "assistant", "content": answer},
        ]
        features = [self.features[item.feature_key]]
        return ConversationSample(item.key, messages, features=features, meta={"kind": item.kind})


# ---------------------------------------------------------------------------------------------------- stages
class LalmRunner:
    """The LALM stages over :class:`LalmData`, trained with ``train.lalm.LalmModule`` and a Lightning ``Trainer``.

    Args:
        config: The ``lalm`` section.
        data: Clips, scenes, held-out sets and their encoder features.
        parts: ``LalmModule`` arguments naming the encoder (``encoder``, ``encoder_overrides``,
            ``encoder_pretrained``) and, to override ``config.llm``, ``llm``.
        seed: Seed of the random parts, the shuffling and the draws.
        progress: Progress bars.
        log: Where progress lines go.
    """

    def __init__(
        self,
        config: LalmSection,
        data: LalmData,
        parts: dict[str, Any],
        *,
        seed: int = 0,
        progress: bool = False,
        log: Callable[[str], None] = print,
    ) -> None:
        self.config, self.data, self.parts, self.seed = config, data, parts, seed
        self.progress, self.log = progress, log

    def _fit(self, module: LalmModule, items: list[QAItem], steps: int, folder: Path) -> dict[str, Any]:
        cfg = self.config
        if len(items) < cfg.batch_size:
            raise ValueError(f"lalm: {len(items)} conversations is less than one batch of {cfg.batch_size}")
        pl.seed_everything(self.seed, workers=True, verbose=False)
        loader = DataLoader(
            QADataset(items, self.data.features, self.seed),
            batch_size=cfg.batch_size,
            shuffle=True,
            drop_last=True,
            collate_fn=module.model.collator(),
            generator=torch.Generator().manual_seed(self.seed),
        )
        trainer = pl.Trainer(
            accelerator="cpu",
            devices=1,
            max_steps=steps,
            max_epochs=-1,
            precision=cfg.precision,
            gradient_clip_val=1.0,
            logger=CSVLogger(str(folder), name="logs", version=""),
            log_every_n_steps=max(1, min(25, steps // 10)),
            enable_checkpointing=False,
            enable_model_summary=False,
            enable_progress_bar=self.progress,
            num_sanity_val_steps=0,
            default_root_dir=str(folder),
        )
        with warnings.catch_warnings():
            for message in (
                r"Found \d+ module\(s\) in eval mode",  # the frozen encoder stays in eval mode on purpose
                "You have overridden `transfer_batch_to_device`",
                "The number of training batches .* is smaller than the logging interval",
                "You defined a `validation_step` but have no `val_dataloader`",
                _PEFT_DEPRECATION,
                ".*isinstance.treespec, LeafSpec.*",
            ):
                warnings.filterwarnings("ignore", message=message)
            trainer.fit(module, train_dataloaders=loader)
        losses = _logged_losses(folder / "logs" / "metrics.csv")
        kinds: dict[str, int] = {}
        for it in items:
            kinds[it.kind] = kinds.get(it.kind, 0) + 1
        return {
            "adapter": str(module.export_dir),
            "steps": steps,
            "conversations": kinds,
            "trainable": module.counts,
            "loss_first": losses[0] if losses else None,
            "loss_last": losses[-1] if losses else None,
        }

    def _settings(self) -> dict[str, Any]:
        cfg = self.config
        return {
            "system_prompt": cfg.system_prompt,
            "max_new_tokens": cfg.max_new_tokens,
            "max_length": 512,
            "attn_implementation": cfg.attn_implementation,
        }

    def stage1(self, folder: Path, check: Mapping[str, str] | None = None) -> dict[str, Any]:
        """Projector only, on captions; the adapter goes to ``folder/adapter``.

        Args:
            folder: Output folder.
            check: Feature key → audio file of a few held-out clips: the stored-feature path is compared with the
                live one (``encode_audio`` on the waveform) on them first; a mismatch raises.
        """
        cfg = self.config
        module = LalmModule(
            stage=1,
            llm=self.parts.get("llm", cfg.llm),
            projector=cfg.projector,
            projector_params=cfg.projector_params,
            settings=self._settings(),
            seed=self.seed,
            optimizer=_optim(cfg.stage1),
            export_dir=str(folder / "adapter"),
            **{k: v for k, v in self.parts.items() if k != "llm"},
        )
        result: dict[str, Any] = {}
        if check:
            diff = check_stored_features(module.model, self.data.features, check)
            self.log(f"        stored features vs live audio (tower → head → projector): max |difference| {diff:.2e}")
            if diff > 1e-3:
                raise RuntimeError(f"stored features disagree with the encoder's live output (max diff {diff:.2e})")
            result["stored_vs_live_max_diff"] = diff
        items = stage1_items(self.data, cfg.clip_repeats, cfg.scenes)
        result.update(self._fit(module, items, cfg.stage1.steps, folder))
        self.log(_loss_line(result))
        return result

    def stage2(self, stage1_adapter: str | Path, folder: Path) -> dict[str, Any]:
        """Projector + LoRA, on label and order questions with stage-1 replay; adapter to ``folder/adapter``."""
        cfg = self.config
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=_PEFT_DEPRECATION)  # peft's LoRA set-up, not ours
            module = LalmModule(
                stage=2,
                init_from=str(stage1_adapter),
                lora={"r": cfg.lora_rank, "lora_alpha": cfg.lora_alpha, "lora_dropout": 0.0},
                seed=self.seed,
                optimizer=_optim(cfg.stage2),
                export_dir=str(folder / "adapter"),
            )
        items = stage2_items(self.data, cfg.clip_repeats, cfg.scenes)
        if cfg.replay > 0:
            if not 0 <= cfg.replay < 1:
                raise ValueError(f"lalm.replay={cfg.replay}: a fraction in [0, 1)")
            replay = stage1_items(self.data, cfg.clip_repeats, cfg.scenes)
            count = min(len(replay), round(len(items) * cfg.replay / (1 - cfg.replay)))
            items += random.Random(self.seed).sample(replay, count)
        result = self._fit(module, items, cfg.stage2.steps, folder)
        self.log(_loss_line(result))
        return result

    def evaluate(self, adapter: str | Path | AudioLanguageModel, folder: Path) -> dict[str, Any]:
        """Held-out label and order questions; ``predictions.jsonl`` in ``folder``; metrics with chance levels."""
        cfg = self.config
        if isinstance(adapter, AudioLanguageModel):
            model = adapter
        else:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=_PEFT_DEPRECATION)
                model = load_lalm(adapter, merge_lora=True)
        autocast = cfg.precision.startswith("bf16")
        if autocast and not isinstance(adapter, AudioLanguageModel):  # a model of our own: cast it in place
            model.cast_frozen_linears(torch.bfloat16)  # the same products, without autocast's cast at every step
        samples = eval_samples(self.data, cfg.order_rows)
        with torch.autocast("cpu", dtype=torch.bfloat16) if autocast else nullcontext():
            records = predict(
                model,
                samples,
                batch_size=cfg.eval_batch_size,
                progress=self.progress,
                max_new_tokens=cfg.max_new_tokens,
            )
        for record, sample in zip(records, samples):
            if "row" in sample.meta:
                record["row"] = sample.meta["row"]
        atomic_write_text(folder / "predictions.jsonl", "".join(json.dumps(r) + "\n" for r in records))
        aliases = class_aliases(self.data.phrases, self.data.classes)
        metrics = score_predictions(records, self.data.classes, aliases)
        for kind in ("label", "mc"):
            for r in [r for r in records if r["kind"] == kind][:3]:
                self.log(f"        {r['key'].split('/', 1)[0]} e.g.: {r['prediction']!r} (answer: {r['answer']!r})")
        return metrics


def check_stored_features(
    model: AudioLanguageModel, features: Mapping[str, torch.Tensor], files: Mapping[str, str]
) -> float:
    """Largest |difference| between audio tokens from stored features and from the waveforms (``encode_audio``)."""
    keys = list(files)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            waves = [load_audio(files[k], model.sample_rate, name=files[k]) for k in keys]
            lengths = torch.tensor([len(w) for w in waves])
            audio = torch.nn.utils.rnn.pad_sequence(waves, batch_first=True)
            live, live_mask = model.encode_audio(audio, lengths)
            feats = torch.nn.utils.rnn.pad_sequence([features[k] for k in keys], batch_first=True)
            mask = torch.arange(feats.shape[1])[None] < torch.tensor([len(features[k]) for k in keys])[:, None]
            stored, stored_mask = model.project_audio(feats, mask)
    finally:
        model.train(was_training)
    width = min(live.shape[1], stored.shape[1])
    if not torch.equal(live_mask[:, :width], stored_mask[:, :width]) or live_mask[:, width:].any():
        return float("inf")
    real = live_mask[:, :width]
    return float((live[:, :width][real] - stored[:, :width][real]).abs().max())


def _optim(stage: LalmStageSection) -> OptimConfig:
    warmup = min(stage.warmup_steps, max(0, stage.steps - 1))  # a short run (a smoke test) warms up less
    return OptimConfig(lr=stage.lr, weight_decay=0.0, warmup_steps=warmup, min_lr_ratio=stage.min_lr_ratio)


def _logged_losses(path: Path) -> list[float]:
    if not path.is_file():
        return []
    rows = csv.DictReader(io.StringIO(path.read_text()))
    return [round(float(r["train/loss"]), 4) for r in rows if r.get("train/loss")]


def _loss_line(result: dict[str, Any]) -> str:
    return (
        f"        {result['steps']} steps on {result['conversations']} conversations, trainable {result['trainable']}; "
        f"train loss {result['loss_first']} → {result['loss_last']}"
    )


# ---------------------------------------------------------------------------------------------------- the demo
@torch.no_grad()
def stored_sequences(
    encoder: ClapModel, store: FeatureStore, keys: Sequence[str], batch_size: int = 256
) -> dict[str, torch.Tensor]:
    """Key → the encoder's ``audio_sequence`` [T, D] (real frames only), from stored audio-tower outputs."""
    was_training = encoder.training
    encoder.eval()
    out = {}
    try:
        keys = list(dict.fromkeys(keys))
        for start in range(0, len(keys), batch_size):
            chunk = keys[start : start + batch_size]
            feats, mask = audio_sequence_from_tower(encoder, store.batch(chunk, encoder.device))
            for key, f, m in zip(chunk, feats, mask):
                out[key] = f[m].float().cpu()
    finally:
        encoder.train(was_training)
    return out


def demo_data(demo: Demo, encoder: ClapModel) -> LalmData:
    """The demo's training clips and scenes (as stored in its shards) and held-out sets, with encoder features."""
    listing = demo.out / "scenes" / "train_listing.jsonl"
    lines = [json.loads(line) for line in listing.read_text().splitlines() if line.strip()]
    train = {str(demo.dataset_dir / r["audio"]): r for r in demo.records("train")}
    events = {r["scene"]: [e["label"] for e in r.get("events", [])] for r in lines if r.get("role") == "scene"}
    clips, scenes = [], []
    for index, line in enumerate(lines):
        key = f"train/{index:09d}"  # the shard key of listing line `index` (clapkit.data.writer.shard_key)
        if line.get("kind") == "clip":
            record = train.get(line["audio"])
            if record is not None:
                clips.append(TrainClip(key, record["class"], list(record["captions"])))
            continue
        captions = [*line.get("captions", []), *line.get("positives", [])]
        scenes.append(TrainScene(key, captions, _scene_order(line, events.get(line.get("scene"), []))))
    if not clips:
        raise ValueError("lalm: no training clips in the shards; set scenes.single_clips: true")
    test = [TrainClip(str(demo.dataset_dir / r["audio"]), r["class"], r["captions"]) for r in demo.records("test")]
    order = _order_rows(demo)
    store = demo.stores()[0]
    keys = [c.key for c in clips] + [s.key for s in scenes] + [c.key for c in test]
    keys += [k for row in order for k in (row.key, row.reversed_key)]
    missing = store.missing(keys)
    if missing:
        raise KeyError(f"lalm: the feature store lacks {len(missing)} clips, e.g. {missing[0]!r}; redo the features")
    classes = sorted({c.label for c in clips} | {c.label for c in test})
    return LalmData(demo.config.phrases, classes, clips, scenes, test, order, stored_sequences(encoder, store, keys))


def _scene_order(line: dict[str, Any], labels: list[str]) -> tuple[str, str] | None:
    """The two events of a training scene in playing order, or ``None`` when they overlap or are not two.

    The composer lists events in playing order for ``sequence`` and ``attribute`` scenes; their counterfactuals
    are the reversal (``sequence``) or the same order with the attributes swapped (``attribute``); an ``overlap``
    scene plays both at once, its counterfactual one after the other in the listed order.
    """
    if len(labels) != 2 or labels[0] == labels[1]:
        return None
    kind, counterfactual = line.get("kind"), line.get("role") == "counterfactual"
    if kind == "sequence":
        return (labels[1], labels[0]) if counterfactual else (labels[0], labels[1])
    if kind == "attribute" or (kind == "overlap" and counterfactual):
        return labels[0], labels[1]
    return None


def _order_rows(demo: Demo) -> list[OrderRow]:
    """The held-out CompA-order rows with the classes of each scene in playing order (benchmark ``items.jsonl``)."""
    items = demo.eval_sets().compositional.get("compa_order", [])
    path = demo.out / "benchmark" / "items.jsonl"
    meta = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    meta = sorted((m for m in meta if m.get("benchmark") == "compa_order"), key=lambda m: m["row"])
    if len(meta) != len(items):
        raise ValueError(f"{path}: {len(meta)} compa_order rows but the CSV has {len(items)}")
    rows = []
    for item, m in zip(items, meta):
        first, second = (e["label"] for e in m["events"])
        rows.append(OrderRow(item.audio[0], item.audio[1], first, second))
    return rows


def run_lalm(demo: Demo, trained: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The LALM steps of the demo (stage 1, stage 2, evaluation), each reused when unchanged.

    Returns:
        ``{arm: {"lalm": metrics}}`` for the demo's table (``LALM_METRICS``).
    """
    from train.demo import _fingerprint

    cfg = demo.config.lalm
    if cfg.encoder not in trained:
        raise KeyError(f"lalm.encoder={cfg.encoder!r}: not a trained arm; arms: {', '.join(trained)}")
    encoder_dir = Path(trained[cfg.encoder]["model"])
    seed = demo.config.seed if cfg.seed is None else cfg.seed
    folder = demo.out / "lalm"
    state: dict[str, Any] = {}

    def runner() -> LalmRunner:
        if "runner" not in state:
            data = demo_data(demo, clapkit.load(encoder_dir))
            parts = {"encoder": str(encoder_dir)}
            state["runner"] = LalmRunner(cfg, data, parts, seed=seed, progress=demo.progress, log=demo.log)
        return state["runner"]

    common = {k: v for k, v in vars(cfg).items() if k not in ("stage2", "lora_rank", "lora_alpha", "replay")}
    common = {k: v for k, v in common.items() if k not in ("order_rows", "max_new_tokens", "eval_batch_size")}
    data_fp = [demo._fp[f"train {cfg.encoder}"], demo._fp["features"], demo._fp["benchmark"], demo.config.phrases]
    fp1 = _fingerprint(*data_fp, common, seed)
    fp2 = _fingerprint(fp1, cfg.stage2, cfg.lora_rank, cfg.lora_alpha, cfg.replay)
    fp3 = _fingerprint(fp2, cfg.order_rows, cfg.max_new_tokens, cfg.eval_batch_size)

    def stage1() -> dict[str, Any]:
        run = runner()
        check = {c.key: c.key for c in run.data.test_clips[:4]}  # test clips: key = the file
        return run.stage1(folder / "stage1", check=check)

    def stage2() -> dict[str, Any]:
        return runner().stage2(s1["adapter"], folder / "stage2")

    def evaluate() -> dict[str, Any]:
        return runner().evaluate(s2["adapter"], folder / "eval")

    s1 = demo._step("lalm stage1", fp1, folder / "stage1", stage1)
    s2 = demo._step("lalm stage2", fp2, folder / "stage2", stage2)
    metrics = demo._step("lalm eval", fp3, folder / "eval", evaluate)
    spent = [demo.timings[n] for n in ("lalm stage1", "lalm stage2", "lalm eval")]
    wall, cpu = sum(t["wall_s"] for t in spent), sum(t["cpu_s"] for t in spent)
    label, chance, order = (100 * metrics[k] for k in ("label_accuracy", "label_chance", "order_accuracy"))
    demo.log(
        f"[lalm] {wall:.0f} s wall, {cpu:.0f} s CPU in all; held-out label accuracy {label:.1f} % (chance "
        f"{chance:.1f}), order MC accuracy {order:.1f} % (chance 50.0)"
    )
    return {cfg.encoder: {"lalm": metrics}}
