"""Scene composer: compositional training audio built from labeled single-event clips (as CompA did).

From clips of single events ("dog", "bell", …) it builds scenes whose composition is known exactly:

- ``sequence``: A, a gap, then B.
- ``overlap``: A in the foreground over B, mixed at an SNR (loudness difference in LU).
- ``sequence3``: A, B, C one after another.
- ``attribute``: A then B, one loud and one soft: normalised ``attribute_db`` LU apart (±10 LU around the event level).
- ``rate``: A then B, one fast and one slow: a short unit of each repeated at ``rate_factor`` × / ÷ the base rate.

Each scene carries a caption, paraphrase positives (other phrasings of the same scene, lexicon synonyms)
and hard negatives that describe a different scene built from the same events (reversed order, sequence
vs overlap, swapped binding, attributes swapped between the events or given to both), plus the audio of one
of those scenes — its counterfactual (the same clips reversed, in sequence, or with the attributes swapped) —
for audio-side negatives.

Captions come from template pools, not one template (``clapkit.compose.templates``): ``TEMPLATES["train"]`` and
``TEMPLATES["test"]`` use disjoint connectives ("followed by", "then", "while", … vs "precedes", "after which",
"alongside", …), so a held-out benchmark composed with ``pool="test"`` asks for phrasings training never saw.

Every scene is deterministic given its seed, each event is loudness-normalised (ITU-R BS.1770 via
``torchaudio.functional.loudness``, see ``clapkit.compose.waveform``) before gains and SNRs are applied, the mix is
normalised to a target loudness and scaled down if its peak would pass ``peak`` — never clipped. Attribute contrasts
are audible by construction: loudness is set in LU, rate by spacing repetitions (not by resampling, which changes
pitch), and both are measured by the tests.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from clapkit import audio as audio_io
from clapkit.augment import AugmentConfig, Augmenter
from clapkit.compose import waveform
from clapkit.compose.captions import compare_compositions, paraphrases
from clapkit.compose.lexicon import Lexicon
from clapkit.compose.phrases import ATTRIBUTES, EventPhrase, Said, bind_swapped, phrase_for, render
from clapkit.compose.templates import TEMPLATES, without_connectives
from clapkit.io import atomic_write_bytes, atomic_write_text
from clapkit.progress import progress_bar

__all__ = ["KINDS", "ComposerConfig", "EventClip", "EventPhrase", "Scene", "SceneComposer", "phrase_for"]

Kind = Literal["sequence", "overlap", "sequence3", "attribute", "rate"]
KINDS: tuple[str, ...] = ("sequence", "overlap", "sequence3", "attribute", "rate")


# ---------------------------------------------------------------------------------------------- config & data
@dataclass
class ComposerConfig:
    """Knobs of the composer, with their units.

    Attributes:
        sample_rate: Hz of the scenes (match the model: 48000 for HTSAT models, 44100 for clapkit-small).
        kinds: Relative frequency of each scene kind.
        gap_seconds: Silence between sequential events, drawn uniformly from [min, max].
        edge_seconds: Silence before the first and after the last event.
        snr_db: Foreground minus background loudness (LU ≈ dB) of overlaps, drawn from [min, max].
        max_event_seconds: Events are cut to this length (a short fade-out avoids a click).
        max_scene_seconds: Events are shortened further so a scene fits (keep ≤ the model's clip length,
            or a training crop may cut an event off and make the caption wrong).
        event_lufs: Loudness every event is normalised to before gains and SNRs (LUFS).
        target_lufs: Loudness of the finished scene (LUFS).
        peak: Largest absolute sample value allowed (0.891 = -1 dBFS); louder mixes are scaled down.
        trim_db: Trim leading/trailing audio quieter than the clip's peak minus this (dB); None = keep.
        attribute_db: Loudness difference between the "loud" and the "soft" event of ``attribute`` scenes (LU ≈ dB):
            they are normalised to ``event_lufs`` + and − half of it.
        repeat_unit_seconds: Length of the unit ``rate`` scenes repeat: the event's loudest stretch, faded in and out.
        rate_period_seconds: Base repetition period of ``rate`` scenes (s): "fast" events repeat the unit every
            ``rate_period_seconds / rate_factor``, "slow" ones every ``rate_period_seconds * rate_factor``.
        rate_factor: How many times faster than the base rate "fast" events repeat and slower "slow" ones do
            (> 1; 2 puts fast and slow 4× apart).
        num_positives: Paraphrase positives per scene (other templates + one lexicon rewrite).
        fade_seconds: Fade-out applied where an event is cut.
        augment: Augment each event (``clapkit.augment``) after its excerpt is cut, before its loudness is
            normalised — so an event's level and the scene's attribute / SNR contrasts stay as composed while its
            colour, room, band, noise and codec vary. ``None``: off. Scenes keep the same composition, captions
            and draws either way; the counterfactual hears the same augmented events.
    """

    sample_rate: int = 48000
    kinds: dict[str, float] = field(
        default_factory=lambda: {"sequence": 1.0, "overlap": 1.0, "sequence3": 0.5, "attribute": 1.0, "rate": 0.5}
    )
    gap_seconds: tuple[float, float] = (0.2, 1.0)
    edge_seconds: float = 0.1
    snr_db: tuple[float, float] = (6.0, 15.0)
    max_event_seconds: float = 3.0
    max_scene_seconds: float = 10.0
    event_lufs: float = -23.0
    target_lufs: float = -20.0
    peak: float = 0.891
    trim_db: float | None = 40.0
    attribute_db: float = 20.0
    repeat_unit_seconds: float = 0.3
    rate_period_seconds: float = 0.8
    rate_factor: float = 2.0
    num_positives: int = 3
    fade_seconds: float = 0.02
    # --- augmentation hook (clapkit.augment); keep it last, apart from the shaping knobs above
    augment: AugmentConfig | None = None

    def __post_init__(self) -> None:
        unknown = set(self.kinds) - set(KINDS)
        if unknown or not any(w > 0 for w in self.kinds.values()):
            raise ValueError(f"kinds {self.kinds}: give positive weights for some of {', '.join(KINDS)}")
        if not 0 < self.peak <= 1:
            raise ValueError(f"peak={self.peak}: expected 0 < peak ≤ 1 (full scale)")
        if self.gap_seconds[0] < 0 or self.gap_seconds[0] > self.gap_seconds[1]:
            raise ValueError(f"gap_seconds={self.gap_seconds}: expected 0 ≤ min ≤ max")
        self._check_attributes()

    def _check_attributes(self) -> None:
        """Contrasts that are audible: a positive level difference, repetitions that neither merge nor vanish."""
        if self.attribute_db <= 0:
            raise ValueError(f"attribute_db={self.attribute_db}: expected a positive loudness difference (LU)")
        if self.rate_factor <= 1:
            raise ValueError(f"rate_factor={self.rate_factor}: expected > 1 (fast = base rate × it, slow = ÷ it)")
        unit, fast, slow = self.repeat_unit_seconds, *self.rate_periods
        if not 0 < unit < fast:
            raise ValueError(
                f"repeat_unit_seconds={unit}: expected 0 < unit < the fast period rate_period_seconds / rate_factor "
                f"= {fast:g} s, so that fast repetitions stay apart"
            )
        room = min(self.max_event_seconds, (self.max_scene_seconds - 2 * self.edge_seconds - self.gap_seconds[1]) / 2)
        if self.kinds.get("rate", 0) > 0 and slow + unit > room:
            raise ValueError(
                f"rate scenes: a slow event (period {slow:g} s + unit {unit:g} s) does not repeat twice in the "
                f"{room:g} s an event may last; shorten rate_period_seconds or raise max_event_seconds"
            )

    @property
    def rate_periods(self) -> tuple[float, float]:
        """(fast, slow) repetition periods of ``rate`` scenes (s)."""
        return self.rate_period_seconds / self.rate_factor, self.rate_period_seconds * self.rate_factor


@dataclass
class EventClip:
    """One labeled single-event clip.

    Attributes:
        audio: Mono waveform [T] (or anything ``clapkit.audio.load_audio`` takes: a path, bytes, …).
        label: Class name ("dog").
        sample_rate: Rate of ``audio`` when it is an array (None for files).
        phrase: How captions name it; default ``phrase_for(label)``.
        source: Where it came from (kept in the scene's events).
    """

    audio: Any
    label: str
    sample_rate: int | None = None
    phrase: EventPhrase | None = None
    source: str = ""


@dataclass
class Scene:
    """A composed scene.

    Attributes:
        audio: Mono waveform [T] float32 at ``sample_rate``.
        caption: Describes the scene.
        positives: Other descriptions of the same scene.
        negatives: Descriptions of different scenes made from the same events.
        counterfactual_audio: Audio of a different scene [T'] (reversed order, in sequence, or attributes
            swapped) — an audio-side hard negative for ``caption``.
        counterfactual_caption: Describes ``counterfactual_audio`` (it is also in ``negatives``).
        kind: Scene kind.
        events: Per event, in time order: label, onset/offset seconds, gain_db (loudness relative to
            ``event_lufs``), period (repetition period in seconds of ``rate`` events, else None), attribute, source.
        sample_rate: Hz.
        seed: The seed that reproduces it.
        pool: Template pool of the captions.
    """

    audio: np.ndarray
    caption: str
    positives: list[str]
    negatives: list[str]
    counterfactual_audio: np.ndarray
    counterfactual_caption: str
    kind: str
    events: list[dict[str, Any]]
    sample_rate: int
    seed: Any
    pool: str

    @property
    def duration(self) -> float:
        return len(self.audio) / self.sample_rate

    def metadata(self) -> dict[str, Any]:
        """Shard fields (captions, positives, negatives, labels, duration) plus the scene description."""
        return {
            "captions": [self.caption],
            "positives": self.positives,
            "negatives": self.negatives,
            "labels": sorted({e["label"] for e in self.events}),
            "duration": round(self.duration, 4),
            "kind": self.kind,
            "events": self.events,
            "counterfactual_caption": self.counterfactual_caption,
            "seed": list(self.seed) if isinstance(self.seed, tuple) else self.seed,
            "pool": self.pool,
        }


@dataclass
class _Event:
    """A picked event: trimmed audio, its phrase, the attribute bound to it and provenance."""

    audio: np.ndarray  # [T] float64
    label: str
    phrase: EventPhrase
    source: str
    gain_db: float = 0.0  # LU relative to event_lufs
    period: float | None = None  # s between repetitions of the unit (rate scenes), None: played once
    attribute: str | None = None
    adverb: str = ""
    augment_seed: int = 0  # seeds this event's augmentation (ComposerConfig.augment)


# ---------------------------------------------------------------------------------------------- the composer
class SceneComposer:
    """Builds ``Scene`` s from labeled single-event clips.

    Args:
        clips: At least two labels' worth of ``EventClip`` s (three for ``sequence3``). Clips that are empty,
            silent or undecodable are skipped and listed in ``skipped``.
        config: See ``ComposerConfig``.
        pool: Template pool: "train", "test" (held-out phrasings) or "all".
        lexicon: Synonyms for the lexicon paraphrase (default: the packaged lexicon). Entries that would
            change a connective are left out, so one pool's phrasings never leak into the other's.
    """

    def __init__(
        self,
        clips: Sequence[EventClip],
        *,
        config: ComposerConfig | None = None,
        pool: str = "train",
        lexicon: Lexicon | None = None,
    ) -> None:
        self.config = config or ComposerConfig()
        if pool not in TEMPLATES:
            raise ValueError(f"pool {pool!r}: expected one of {', '.join(TEMPLATES)}")
        self.pool = pool
        self.templates = TEMPLATES[pool]
        self.lexicon = without_connectives(lexicon or Lexicon.default())
        self.skipped: list[str] = []
        self.clips: dict[str, list[tuple[np.ndarray, EventClip]]] = {}
        for index, clip in enumerate(clips):
            name = clip.source or f"clip #{index} ({clip.label})"
            try:
                loaded = audio_io.load_audio(
                    clip.audio, self.config.sample_rate, source_rate=clip.sample_rate, name=name
                )
            except ValueError as err:
                self.skipped.append(str(err))
                continue
            wave = loaded.numpy().astype(np.float64)
            if np.any(wave):
                wave = waveform.trim(wave, self.config.trim_db)
            if not math.isfinite(waveform.loudness(wave, self.config.sample_rate)):
                self.skipped.append(f"{name}: silent; expected an audible event")
                continue
            self.clips.setdefault(clip.label, []).append((wave, clip))
        self.labels = sorted(self.clips)
        if len(self.labels) < 2:
            raise ValueError(
                f"clips: {len(self.labels)} usable label(s) ({', '.join(self.labels) or 'none'}); "
                f"scenes need at least 2 distinct labels ({len(self.skipped)} clip(s) skipped)"
            )
        self.kinds = [k for k, w in self.config.kinds.items() if w > 0 and (k != "sequence3" or len(self.labels) > 2)]
        weights = np.array([self.config.kinds[k] for k in self.kinds], dtype=np.float64)
        self._kind_p = weights / weights.sum()
        self.augmenter = None if self.config.augment is None else Augmenter(self.config.augment)

    # ------------------------------------------------------------------ public API
    def compose(self, seed: int | Sequence[int], kind: str | None = None) -> Scene:
        """One scene, fully determined by ``seed`` (and ``kind``: None = drawn by the configured weights)."""
        rng = np.random.default_rng(seed)
        kind = kind or str(rng.choice(self.kinds, p=self._kind_p))
        if kind not in self.kinds:
            raise ValueError(f"kind {kind!r}: expected one of {', '.join(self.kinds)}")
        build = {
            "sequence": self._sequence,
            "overlap": self._overlap,
            "sequence3": self._sequence3,
            "attribute": lambda r: self._bound(r, "attribute"),
            "rate": lambda r: self._bound(r, "rate"),
        }[kind]
        scene = build(rng)
        scene.seed = tuple(seed) if isinstance(seed, Sequence) else seed
        return scene

    def generate(self, n: int, *, seed: int = 0, progress: bool = False) -> Iterator[Scene]:
        """``n`` scenes; scene i is ``compose((seed, i))`` so any one can be rebuilt alone."""
        for i in progress_bar(range(n), desc="compose scenes", unit="scene", disable=not progress):
            yield self.compose((seed, i))

    def write(self, directory: str | Path, n: int, *, seed: int = 0, progress: bool = True) -> Path:
        """Write ``n`` scenes as FLAC (+ counterfactual FLAC) and a ``scenes.jsonl`` listing.

        The listing has one object per scene with ``audio`` (a path relative to the listing) and the fields
        of ``Scene.metadata`` plus ``counterfactual_audio`` — the JSONL input of ``clapkit shards write``.
        """
        directory = Path(directory)
        lines = []
        for i, scene in enumerate(self.generate(n, seed=seed, progress=progress)):
            key = f"scene_{seed}_{i:07d}"
            for name, wave in (
                (f"{key}.flac", scene.audio),
                (f"{key}.counterfactual.flac", scene.counterfactual_audio),
            ):
                atomic_write_bytes(directory / name, waveform.to_flac(wave, scene.sample_rate))
            record = {"audio": f"{key}.flac", **scene.metadata(), "counterfactual_audio": f"{key}.counterfactual.flac"}
            lines.append(json.dumps(record))
        return atomic_write_text(directory / "scenes.jsonl", "\n".join(lines) + "\n")

    # ------------------------------------------------------------------ events
    def _pick(self, rng: np.random.Generator, count: int) -> list[_Event]:
        labels = rng.choice(len(self.labels), size=count, replace=False)
        events = []
        for i in labels:
            label = self.labels[int(i)]
            wave, clip = self.clips[label][int(rng.integers(len(self.clips[label])))]
            phrase = clip.phrase or phrase_for(label)
            events.append(_Event(wave, label, phrase, clip.source, augment_seed=self._augment_seed(rng)))
        return events

    def _augment_seed(self, rng: np.random.Generator) -> int:
        """A seed for an event's augmentation, from a child of ``rng``: the scene's own draws stay as they were."""
        return 0 if self.augmenter is None else int(rng.spawn(1)[0].integers(2**62))

    def _shape(self, events: list[_Event], budget: float) -> list[np.ndarray]:
        """Excerpt each event, normalise it to ``event_lufs`` + its gain, repeat it if it has a period → [T] float64.

        The excerpt is the event cut to the time budget, or for a repeated event its loudest
        ``repeat_unit_seconds`` faded in and out; the loudness is set on the excerpt, so a repeated unit is
        equally loud at any rate and a gain is an exact level difference.
        """
        cfg = self.config
        rate = cfg.sample_rate
        limit = int(min(cfg.max_event_seconds, budget) * rate)
        fade = int(cfg.fade_seconds * rate)
        out = []
        for event in events:
            if event.period is None:
                wave = waveform.cut(event.audio, limit, fade)
            else:
                wave = waveform.fade(waveform.loudest_window(event.audio, int(cfg.repeat_unit_seconds * rate)), fade)
            if self.augmenter is not None:  # after the excerpt, before the level: attribute contrasts stay exact
                view = self.augmenter(torch.from_numpy(wave.astype(np.float32)), rate, seed=event.augment_seed)
                wave = view.numpy().astype(np.float64)
            wave = waveform.normalise(wave, rate, cfg.event_lufs + event.gain_db)
            if event.period is not None:
                wave = waveform.repeat(wave, round(event.period * rate), limit)  # the same span at any rate
            out.append(wave)
        return out

    def _budget(self, count: int, gaps: float) -> float:
        cfg = self.config
        return (cfg.max_scene_seconds - 2 * cfg.edge_seconds - gaps) / count

    def _in_sequence(self, waves: list[np.ndarray], gaps: list[float]) -> tuple[np.ndarray, list[tuple[float, float]]]:
        rate = self.config.sample_rate
        edge = np.zeros(int(self.config.edge_seconds * rate))
        parts, spans, t = [edge], [], len(edge)
        for i, wave in enumerate(waves):
            spans.append((t / rate, (t + len(wave)) / rate))
            parts.append(wave)
            t += len(wave)
            if i < len(gaps):
                gap = np.zeros(int(gaps[i] * rate))
                parts.append(gap)
                t += len(gap)
        parts.append(edge)
        return np.concatenate(parts), spans

    def _together(
        self, front: np.ndarray, back: np.ndarray, offset: float
    ) -> tuple[np.ndarray, list[tuple[float, float]]]:
        """Mix two events; the shorter one starts at ``offset`` (0..1) of the slack."""
        rate = self.config.sample_rate
        length = max(len(front), len(back))
        edge = int(self.config.edge_seconds * rate)
        mix = np.zeros(length + 2 * edge)
        starts = []
        for wave in (front, back):
            start = edge + int(offset * (length - len(wave)))
            mix[start : start + len(wave)] += wave
            starts.append((start / rate, (start + len(wave)) / rate))
        return mix, starts

    def _finish(self, wave: np.ndarray) -> np.ndarray:
        """Normalise to the target loudness, then scale down (never clip) if the peak passes ``peak``."""
        cfg = self.config
        wave = waveform.normalise(wave, cfg.sample_rate, cfg.target_lufs)
        top = np.abs(wave).max()
        if top > cfg.peak:
            wave = wave * (cfg.peak / top)
        return wave.astype(np.float32)

    def _describe(self, events: list[_Event], spans: list[tuple[float, float]]) -> list[dict[str, Any]]:
        out = []
        for event, (start, end) in zip(events, spans):
            out.append(
                {
                    "label": event.label,
                    "onset": round(start, 4),
                    "offset": round(end, 4),
                    "gain_db": round(event.gain_db, 2),
                    "period": None if event.period is None else round(event.period, 4),
                    "attribute": event.attribute,
                    "source": event.source,
                }
            )
        return sorted(out, key=lambda e: e["onset"])

    # ------------------------------------------------------------------ captions
    def _choose(self, rng: np.random.Generator, templates: Sequence[str]) -> str:
        return templates[int(rng.integers(len(templates)))]

    def _positives(self, rng: np.random.Generator, caption: str, same: list[str], exclude: set[str]) -> list[str]:
        """Other phrasings of the scene (``same`` rendered by other templates) + one lexicon paraphrase.

        A lexicon paraphrase that ``compare_compositions`` reads as a different scene is dropped: a synonym of one
        event's attribute can be an antonym of the other's ("softly" → "quietly" next to "loudly").
        """
        budget = self.config.num_positives
        if budget <= 0:
            return []
        lexical = paraphrases(caption, seed=int(rng.integers(2**31)), max_paraphrases=1, lexicon=self.lexicon)
        lexical = [x for x in lexical if x not in exclude and compare_compositions(caption, x) != "different"]
        others = [s for s in dict.fromkeys(same) if s != caption and s not in exclude]
        order = rng.permutation(len(others))
        chosen = [others[i] for i in order[: max(0, budget - len(lexical))]]
        return list(dict.fromkeys(chosen + lexical))[:budget]

    def _scene(
        self,
        kind: str,
        audio: np.ndarray,
        counter: np.ndarray,
        caption: str,
        counter_caption: str,
        negatives: list[str],
        positives: list[str],
        events: list[dict],
    ) -> Scene:
        negatives = [n for n in dict.fromkeys([counter_caption, *negatives]) if n != caption]
        positives = [p for p in positives if p not in negatives]
        return Scene(
            audio=self._finish(audio),
            caption=caption,
            positives=positives,
            negatives=negatives,
            counterfactual_audio=self._finish(counter),
            counterfactual_caption=counter_caption,
            kind=kind,
            events=events,
            sample_rate=self.config.sample_rate,
            seed=None,
            pool=self.pool,
        )

    # ------------------------------------------------------------------ scene kinds
    def _gaps(self, rng: np.random.Generator, count: int) -> list[float]:
        low, high = self.config.gap_seconds
        return [float(rng.uniform(low, high)) for _ in range(count)]

    def _sequence(self, rng: np.random.Generator) -> Scene:
        events = self._pick(rng, 2)
        gaps = self._gaps(rng, 1)
        waves = self._shape(events, self._budget(2, sum(gaps)))
        audio, spans = self._in_sequence(waves, gaps)
        counter, _ = self._in_sequence(waves[::-1], gaps)
        a, b = (Said(e.phrase) for e in events)
        template = self._choose(rng, self.templates.sequence)
        caption = render(template, a, b)
        reverse = render(template, b, a)
        negatives = [render(self._choose(rng, self.templates.overlap), a, b)]
        swapped = bind_swapped(a, b)
        if swapped:
            negatives.append(render(template, *swapped))
        same = [render(t, a, b) for t in self.templates.sequence]
        positives = self._positives(rng, caption, same, {reverse, *negatives})
        return self._scene(
            "sequence", audio, counter, caption, reverse, negatives, positives, self._describe(events, spans)
        )

    def _overlap(self, rng: np.random.Generator) -> Scene:
        events = self._pick(rng, 2)
        gaps = self._gaps(rng, 1)
        events[1].gain_db = -float(rng.uniform(*self.config.snr_db))  # the background, snr dB below
        offset = float(rng.uniform())
        # Cut for the sequence budget so the counterfactual (the same two events one after the other) fits too.
        waves = self._shape(events, self._budget(2, sum(gaps)))
        audio, spans = self._together(waves[0], waves[1], offset)
        counter, _ = self._in_sequence(waves, gaps)
        a, b = (Said(e.phrase) for e in events)
        foreground = bool(
            rng.uniform()
            < len(self.templates.foreground) / (len(self.templates.foreground) + len(self.templates.overlap))
        )
        template = self._choose(rng, self.templates.foreground if foreground else self.templates.overlap)
        caption = render(template, a, b)
        in_sequence = render(self._choose(rng, self.templates.sequence), a, b)
        negatives = []
        swapped = bind_swapped(a, b)
        if swapped:
            negatives.append(render(template, *swapped))
        if foreground:
            negatives.append(render(template, b, a))  # b in the foreground instead
            same = [render(t, a, b) for t in self.templates.foreground]
        else:
            same = [render(t, x, y) for t in self.templates.overlap for x, y in ((a, b), (b, a))]
        positives = self._positives(rng, caption, same, {in_sequence, *negatives})
        return self._scene(
            "overlap", audio, counter, caption, in_sequence, negatives, positives, self._describe(events, spans)
        )

    def _sequence3(self, rng: np.random.Generator) -> Scene:
        events = self._pick(rng, 3)
        gaps = self._gaps(rng, 2)
        waves = self._shape(events, self._budget(3, sum(gaps)))
        audio, spans = self._in_sequence(waves, gaps)
        counter, _ = self._in_sequence(waves[::-1], gaps)
        said = [Said(e.phrase) for e in events]
        template = self._choose(rng, self.templates.sequence3)
        caption = render(template, *said)
        reverse = render(template, *said[::-1])
        swaps = [(1, 0, 2), (0, 2, 1), (1, 2, 0), (2, 0, 1)]
        order = swaps[int(rng.integers(len(swaps)))]
        negatives = [render(template, *(said[i] for i in order))]
        same = [render(t, *said) for t in self.templates.sequence3]
        positives = self._positives(rng, caption, same, {reverse, *negatives})
        return self._scene(
            "sequence3", audio, counter, caption, reverse, negatives, positives, self._describe(events, spans)
        )

    def _bind(self, event: _Event, attribute: tuple[str, str]) -> _Event:
        """``event`` with ``attribute`` (name, adverb): loud/soft set its level, fast/slow its repetition period."""
        cfg = self.config
        name, adverb = attribute
        gain = {"loud": cfg.attribute_db / 2, "soft": -cfg.attribute_db / 2}.get(name, 0.0)
        period = dict(zip(("fast", "slow"), cfg.rate_periods)).get(name)
        return dataclasses.replace(event, gain_db=gain, period=period, attribute=name, adverb=adverb)

    def _bound(self, rng: np.random.Generator, kind: str) -> Scene:
        """A then B with the opposite attributes of ``kind`` (``ATTRIBUTES``); the counterfactual swaps them."""
        events = self._pick(rng, 2)
        gaps = self._gaps(rng, 1)
        first, second = ATTRIBUTES[kind]
        if rng.uniform() < 0.5:
            first, second = second, first
        actual = [self._bind(events[0], first), self._bind(events[1], second)]
        swapped = [self._bind(events[0], second), self._bind(events[1], first)]
        budget = self._budget(2, sum(gaps))
        audio, spans = self._in_sequence(self._shape(actual, budget), gaps)
        counter, _ = self._in_sequence(self._shape(swapped, budget), gaps)
        a, b = (Said(e.phrase, e.adverb) for e in actual)
        template = self._choose(rng, self.templates.sequence)
        caption = render(template, a, b)
        counter_caption = render(template, *(Said(e.phrase, e.adverb) for e in swapped))  # the binding swap
        negatives = [
            render(template, b, a),  # the same bindings in the other order
            render(template, a, Said(b.phrase, a.adverb)),  # both events with A's attribute
            render(template, Said(a.phrase, b.adverb), b),  # both with B's
        ]
        same = [render(t, a, b) for t in self.templates.sequence]
        positives = self._positives(rng, caption, same, {counter_caption, *negatives})
        return self._scene(
            kind, audio, counter, caption, counter_caption, negatives, positives, self._describe(actual, spans)
        )
