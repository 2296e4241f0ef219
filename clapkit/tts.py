"""Spoken words from the espeak-ng and flite command-line synthesizers (the Debian packages of the same names).

A text is spoken by several voices at several speeds and pitches; :func:`plan_utterances` picks the
combinations deterministically and :class:`Synthesizer` runs the program into a temporary WAV file
and decodes it. The knobs of the two programs differ, so:

- ``rate`` is a speed factor, 1.0 being the program's normal speed: espeak-ng ``-s`` (words per
  minute, 175 × rate), flite ``--setf duration_stretch=1/rate``;
- ``pitch`` is the program's own unit: espeak-ng ``-p`` (0-99, 50 normal), flite's mean F0 target
  ``--setf int_f0_target_mean`` in Hz; ``None`` keeps the voice's own.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

from clapkit.audio import load_audio

__all__ = ["PITCH_RANGES", "SYNTHESIZERS", "Synthesizer", "Utterance", "plan_utterances", "speed_word"]

SYNTHESIZERS = ("espeak-ng", "flite")
#: Valid ``pitch`` values per program (espeak-ng's 0-99 scale; flite's F0 in Hz).
PITCH_RANGES = {"espeak-ng": (0, 99), "flite": (50, 400)}
#: espeak-ng's normal speed, words per minute.
ESPEAK_WPM = 175
TIMEOUT_SECONDS = 60


@dataclass(frozen=True)
class Utterance:
    """One rendering of a text: which voice says it, how fast and at which pitch."""

    text: str
    voice: str
    rate: float = 1.0
    pitch: int | None = None

    @property
    def tag(self) -> str:
        """A short file-name-safe description (``en-us+f2 r1.20 p70``)."""
        pitch = "default" if self.pitch is None else str(self.pitch)
        return f"{self.voice} r{self.rate:.2f} p{pitch}"


def speed_word(rate: float) -> str:
    """A caption word for a speed factor: below 0.9 slowly, above 1.1 quickly."""
    if rate < 0.9:
        return "slowly"
    if rate > 1.1:
        return "quickly"
    return "at a normal pace"


def _stable(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()


def plan_utterances(
    text: str,
    voices: tuple[str, ...],
    rates: tuple[float, ...] = (1.0,),
    pitches: tuple[int | None, ...] = (None,),
    max_renders: int | None = None,
) -> list[Utterance]:
    """The voice × rate × pitch combinations to render, at most ``max_renders``, always the same ones.

    Each voice's combinations are ordered by a hash of (text, voice, rate, pitch); the voices then take
    turns, so a cap keeps every voice (as far as it allows) and different texts get different mixes.

    Raises:
        ValueError: an empty text or no voices, rates or pitches.
    """
    if not text.strip() or not voices or not rates or not pitches:
        raise ValueError(f"text {text!r}: needs a non-empty text and at least one voice, rate and pitch")
    per_voice = []
    for voice in voices:
        combos = [Utterance(text, voice, float(r), p) for r in rates for p in pitches]
        per_voice.append(sorted(combos, key=lambda u: _stable(f"{u.text}|{u.voice}|{u.rate}|{u.pitch}")))
    turns = [c[i] for i in range(max(len(c) for c in per_voice)) for c in per_voice if i < len(c)]
    return turns if max_renders is None else turns[:max_renders]


@dataclass
class Synthesizer:
    """Runs one of :data:`SYNTHESIZERS`.

    Args:
        program: ``"espeak-ng"`` or ``"flite"``.

    Raises:
        ValueError: an unknown program.
        FileNotFoundError: the program is not installed (the message names the Debian package).
    """

    program: str
    path: str = field(init=False)

    def __post_init__(self) -> None:
        if self.program not in SYNTHESIZERS:
            raise ValueError(f"synthesizer {self.program!r}: must be one of {SYNTHESIZERS}")
        found = shutil.which(self.program)
        if found is None:
            raise FileNotFoundError(
                f"{self.program}: program not found; install it with `apt-get install {self.program}`"
            )
        self.path = found
        self._version: str | None = None
        self._voices: tuple[str, ...] | None = None

    def _run(self, args: list[str], what: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        try:
            done = subprocess.run(
                [self.path, *args], capture_output=True, text=True, timeout=TIMEOUT_SECONDS, check=False
            )
        except (OSError, subprocess.TimeoutExpired) as err:
            raise ValueError(f"{self.program} {what}: {err}") from err
        if check and done.returncode != 0:
            message = (done.stderr or done.stdout).strip() or "no message"
            raise ValueError(f"{self.program} {what}: exit status {done.returncode}: {message}")
        return done

    def version(self) -> str:
        """The program's version line (part of every render's content key)."""
        if self._version is None:
            out = self._run(["--version"], "--version", check=False)  # flite --version exits with 1
            lines = [line.strip() for line in (out.stdout + out.stderr).splitlines() if line.strip()]
            versioned = [line for line in lines if "version" in line.lower()]
            self._version = (versioned or lines or ["unknown"])[0]
        return self._version

    def voices(self) -> tuple[str, ...] | None:
        """flite's voice names (``flite -lv``); ``None`` for espeak-ng, which rejects unknown voices itself."""
        if self.program != "flite":
            return None
        if self._voices is None:
            out = self._run(["-lv"], "-lv").stdout
            self._voices = tuple(out.split(":", 1)[-1].split())
        return self._voices

    def command(self, utt: Utterance, wav: Path) -> list[str]:
        """The arguments (after the program) that speak ``utt`` into ``wav``."""
        if self.program == "espeak-ng":
            args = ["-v", utt.voice, "-s", str(round(ESPEAK_WPM * utt.rate)), "-w", str(wav)]
            if utt.pitch is not None:
                args += ["-p", str(utt.pitch)]
            return [*args, "--", utt.text]
        args = ["-voice", utt.voice, "-o", str(wav), "--setf", f"duration_stretch={1 / utt.rate:.4f}"]
        if utt.pitch is not None:
            args += ["--setf", f"int_f0_target_mean={utt.pitch}"]
        return [*args, "-t", utt.text]

    def render(self, utt: Utterance, sample_rate: int) -> torch.Tensor:
        """Speak ``utt``: mono float32 [T] at ``sample_rate``.

        Raises:
            ValueError: an unknown voice, a pitch out of range, or the program failed or wrote no audio
                (the message names the program, voice and text).
        """
        what = f"voice {utt.voice!r} saying {utt.text!r}"
        low, high = PITCH_RANGES[self.program]
        if utt.pitch is not None and not low <= utt.pitch <= high:
            raise ValueError(f"{self.program} {what}: pitch {utt.pitch} outside {low}-{high}")
        if utt.rate <= 0:
            raise ValueError(f"{self.program} {what}: rate {utt.rate} must be positive")
        known = self.voices()
        if known is not None and utt.voice not in known:
            raise ValueError(f"{self.program} {what}: unknown voice; {self.program} has {list(known)}")
        with tempfile.TemporaryDirectory(prefix="clapkit-tts-") as tmp:
            wav = Path(tmp) / "speech.wav"
            self._run(self.command(utt, wav), what)
            raw = wav.read_bytes() if wav.is_file() else b""
        if len(raw) <= 44:  # a bare WAV header
            raise ValueError(f"{self.program} {what}: wrote no audio")
        return load_audio(raw, sample_rate, name=f"{self.program} {what}")
