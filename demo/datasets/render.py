"""Render single instrument notes from a General MIDI SoundFont with ``tinysoundfont``.

``tinysoundfont`` (PyPI, wraps the TinySoundFont C library) is installed with ``--no-deps``: its
optional real-time playback needs PyAudio, which rendering to a buffer does not.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["NOTE_NAMES", "NoteRenderer", "note_name", "register"]

NOTE_NAMES = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")
#: MIDI channel 10 (index 9) plays the drum kit in General MIDI; bank 128 holds the drum presets.
DRUM_CHANNEL = 9
DRUM_BANK = 128


def note_name(key: int) -> str:
    """MIDI key → scientific pitch name (60 → ``C4``)."""
    return f"{NOTE_NAMES[key % 12]}{key // 12 - 1}"


def register(key: int) -> str:
    """A coarse pitch word for captions: below G3 low, above F5 high, mid between."""
    if key < 55:
        return "low"
    if key > 77:
        return "high"
    return "mid"


@dataclass
class NoteRenderer:
    """Renders one note at a time from a SoundFont.

    Args:
        soundfont: Path of an ``.sf2`` / ``.sf3`` file.
        sample_rate: Output rate, Hz.

    Raises:
        ValueError: tinysoundfont is missing or the file is not a SoundFont it can read.
    """

    soundfont: str | Path
    sample_rate: int = 44100

    def __post_init__(self) -> None:
        try:
            import tinysoundfont
        except ImportError as err:
            raise ValueError(
                "rendering instrument notes needs tinysoundfont: pip install --no-deps tinysoundfont==0.3.7"
            ) from err
        self._synth = tinysoundfont.Synth(samplerate=self.sample_rate)
        try:
            self._sfid = self._synth.sfload(str(self.soundfont))
        except Exception as err:  # tinysoundfont raises its own exception types for unreadable files
            raise ValueError(f"{self.soundfont}: cannot load SoundFont ({err})") from err

    def preset_name(self, program: int, bank: int = 0, drums: bool = False) -> str | None:
        """The SoundFont's name for a preset, ``None`` if it has none."""
        return self._synth.sfpreset_name(self._sfid, DRUM_BANK if drums else bank, 0 if drums else program)

    def render(
        self,
        key: int,
        velocity: int,
        *,
        program: int = 0,
        bank: int = 0,
        drums: bool = False,
        hold_seconds: float = 1.0,
        release_seconds: float = 1.0,
        hits: int = 1,
        interval_seconds: float = 0.25,
    ) -> np.ndarray:
        """One note: key down for ``hold_seconds``, then ``release_seconds`` of release tail.

        With ``hits`` > 1 the key is struck that many times, ``interval_seconds`` apart (a single
        drum hit is a fraction of a second; a few make a clip long enough to keep).

        Args:
            key: MIDI key (60 = middle C); for ``drums`` the GM percussion key (38 = acoustic snare).
            velocity: 1-127.
            program: GM program 0-127 (ignored for drums).
            bank: SoundFont bank of the program.
            drums: Play on the GM drum channel.
            hold_seconds: Time between note on and note off.
            release_seconds: Time rendered after note off.
            hits: Strikes of the key.
            interval_seconds: Time between strikes.

        Returns:
            Mono float32 audio [T], T = ((hits - 1) * interval + hold + release) * sample_rate.

        Raises:
            ValueError: a key, velocity or preset the SoundFont does not have.
        """
        if not 0 <= key <= 127 or not 1 <= velocity <= 127:
            raise ValueError(f"key {key} / velocity {velocity}: keys are 0-127, velocities 1-127")
        if hits < 1:
            raise ValueError(f"hits must be at least 1, got {hits}")
        chan = DRUM_CHANNEL if drums else 0
        try:
            self._synth.program_select(chan, self._sfid, DRUM_BANK if drums else bank, 0 if drums else program, drums)
        except RuntimeError as err:
            raise ValueError(f"program {program} bank {bank} drums={drums}: not in {self.soundfont} ({err})") from err
        self._synth.sounds_off()
        blocks = []
        for _ in range(hits - 1):
            self._synth.noteon(chan, key, velocity)
            blocks.append(self._block(interval_seconds))
            self._synth.noteoff(chan, key)
        self._synth.noteon(chan, key, velocity)
        blocks.append(self._block(hold_seconds))
        self._synth.noteoff(chan, key)
        blocks.append(self._block(release_seconds))
        self._synth.sounds_off()
        return np.concatenate(blocks).reshape(-1, 2).mean(axis=1)  # interleaved stereo → mono

    def _block(self, seconds: float) -> np.ndarray:
        frames = max(1, round(seconds * self.sample_rate))
        return np.frombuffer(self._synth.generate(frames), dtype=np.float32).copy()
