"""Render single instrument notes from a General MIDI SoundFont with ``tinysoundfont``, or from a set of
Gravis UltraSound patches (``.pat``, e.g. Debian's ``freepats``) with TiMidity++.

``tinysoundfont`` (PyPI, wraps the TinySoundFont C library) is installed with ``--no-deps``: its
optional real-time playback needs PyAudio, which rendering to a buffer does not. Patches are played by the
``timidity`` program from a one-note MIDI file written with ``mido``.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf

__all__ = ["NOTE_NAMES", "NoteRenderer", "PatchRenderer", "note_name", "register"]

NOTE_NAMES = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")
#: MIDI channel 10 (index 9) plays the drum kit in General MIDI; bank 128 holds the drum presets.
DRUM_CHANNEL = 9
DRUM_BANK = 128


def _check_note(key: int, velocity: int, hits: int) -> None:
    if not 0 <= key <= 127 or not 1 <= velocity <= 127:
        raise ValueError(f"key {key} / velocity {velocity}: keys are 0-127, velocities 1-127")
    if hits < 1:
        raise ValueError(f"hits must be at least 1, got {hits}")


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
        _check_note(key, velocity, hits)
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


#: TiMidity++ options for a dry, mono render: no reverb or chorus of its own (the SoundFont renders have none).
TIMIDITY_OPTIONS = ("-Ow", "--output-mono", "-EFreverb=0", "-EFchorus=0")


@dataclass
class PatchRenderer:
    """Renders one note at a time from a TiMidity++ configuration of GUS patches (``bank`` / ``drumset`` tables).

    Only the programs and drum keys the configuration maps to a patch are played: TiMidity++ also reads the
    system's default configuration (which may map every program to a SoundFont), so anything else is refused
    rather than rendered from another source. The interface is :class:`NoteRenderer`'s.

    Args:
        config: Path of the ``.cfg`` file (e.g. ``/etc/timidity/freepats.cfg``).
        sample_rate: Output rate, Hz.

    Raises:
        ValueError: ``timidity`` or ``mido`` is missing, or the configuration maps no patch.
    """

    config: str | Path
    sample_rate: int = 44100
    tones: dict[tuple[int, int], Path] = field(init=False, repr=False)
    drumkit: dict[tuple[int, int], Path] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if shutil.which("timidity") is None:
            raise ValueError("rendering GUS patches needs TiMidity++: apt-get install timidity")
        try:
            import mido  # noqa: F401
        except ImportError as err:
            raise ValueError("rendering GUS patches needs mido: pip install mido==1.3.3") from err
        self.config = Path(self.config)
        self.tones, self.drumkit = parse_timidity_config(self.config)
        if not self.tones and not self.drumkit:
            raise ValueError(f"{self.config}: no bank or drumset entries (not a TiMidity++ patch configuration?)")

    def patch(self, program: int, bank: int = 0, drums: bool = False, key: int | None = None) -> Path | None:
        """The patch file that plays ``program`` (or drum ``key`` of drumset ``program``), ``None`` if unmapped."""
        if drums:
            return self.drumkit.get((program, key)) if key is not None else None
        return self.tones.get((bank, program))

    def preset_name(self, program: int, bank: int = 0, drums: bool = False) -> str | None:
        """The patch's file name without number and suffix (``071_Clarinet.pat`` → ``Clarinet``); for drums the
        drumset :meth:`render` plays (``drumset 0``)."""
        if drums:
            return "drumset 0" if any(k[0] == 0 for k in self.drumkit) else None
        path = self.patch(program, bank)
        return re.sub(r"^\d+_", "", path.stem).replace("_", " ") if path is not None else None

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
        """One note, as :meth:`NoteRenderer.render` (drums play drumset 0 on the GM drum channel).

        Returns:
            Mono float32 audio [T], T = ((hits - 1) * interval + hold + release) * sample_rate (TiMidity++'s
            trailing silence cut, a short render padded).

        Raises:
            ValueError: a key, velocity, program or drum key the configuration has no patch for, or a failed render.
        """
        import mido

        _check_note(key, velocity, hits)
        patch = self.patch(0 if drums else program, bank, drums, key)
        what = f"drum key {key} of drumset 0" if drums else f"program {program} bank {bank}"
        if patch is None:
            raise ValueError(f"{what}: no patch in {self.config}")
        if not patch.is_file():  # TiMidity++ would play silence for it
            raise ValueError(f"{what}: patch file {patch} (from {self.config}) not found")
        ticks = 960  # per second: 480 per beat at the default 120 beats per minute
        track = mido.MidiTrack()
        chan = DRUM_CHANNEL if drums else 0
        if not drums:
            track.append(mido.Message("program_change", channel=chan, program=program, time=0))
        for _ in range(hits - 1):
            track.append(mido.Message("note_on", channel=chan, note=key, velocity=velocity, time=0))
            track.append(mido.Message("note_off", channel=chan, note=key, time=round(interval_seconds * ticks)))
        track.append(mido.Message("note_on", channel=chan, note=key, velocity=velocity, time=0))
        track.append(mido.Message("note_off", channel=chan, note=key, time=round(hold_seconds * ticks)))
        track.append(mido.MetaMessage("end_of_track", time=round(release_seconds * ticks)))
        song = mido.MidiFile(ticks_per_beat=ticks // 2)
        song.tracks.append(track)
        with tempfile.TemporaryDirectory(prefix="clapkit-timidity-") as tmp:
            midi, wav = Path(tmp) / "note.mid", Path(tmp) / "note.wav"
            song.save(midi)
            cmd = ["timidity", "-c", str(self.config), "-s", str(self.sample_rate), *TIMIDITY_OPTIONS]
            done = subprocess.run([*cmd, "-o", str(wav), str(midi)], capture_output=True, text=True)
            if done.returncode != 0 or not wav.is_file() or wav.stat().st_size <= 44:
                tail = (done.stderr or done.stdout).strip()[-300:]
                raise ValueError(f"timidity could not render key {key} of program {program} ({tail})")
            audio, rate = sf.read(wav, dtype="float32", always_2d=True)
        if rate != self.sample_rate:
            raise ValueError(f"timidity wrote {rate} Hz, asked for {self.sample_rate}")
        frames = round(((hits - 1) * interval_seconds + hold_seconds + release_seconds) * self.sample_rate)
        audio = audio.mean(axis=1)[:frames]
        return np.pad(audio, (0, frames - len(audio)))


def parse_timidity_config(path: Path) -> tuple[dict[tuple[int, int], Path], dict[tuple[int, int], Path]]:
    """The ``(bank, program) → patch`` and ``(drumset, key) → patch`` tables of a TiMidity++ configuration.

    Reads ``dir``, ``bank N`` / ``drumset N`` and ``number file [options]`` lines; other statements are ignored.

    Raises:
        ValueError: the file is missing, or an entry comes before any ``bank`` / ``drumset`` line.
    """
    if not path.is_file():
        raise ValueError(f"{path}: TiMidity++ configuration not found")
    dirs: list[Path] = [path.parent]
    tables: dict[str, dict[tuple[int, int], Path]] = {"bank": {}, "drumset": {}}
    section: tuple[str, int] | None = None
    for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        words = line.split("#", 1)[0].split()
        if not words:
            continue
        if words[0] == "dir" and len(words) > 1:
            dirs.insert(0, Path(words[1]))
        elif words[0] in tables and len(words) > 1 and words[1].isdigit():
            section = (words[0], int(words[1]))
        elif words[0].isdigit() and len(words) > 1:
            if section is None:
                raise ValueError(f"{path}:{number}: patch entry before any bank or drumset line")
            name = words[1] if words[1].endswith(".pat") else words[1] + ".pat"
            found = next((d / name for d in dirs if (d / name).is_file()), dirs[0] / name)
            tables[section[0]][(section[1], int(words[0]))] = found
    return tables["bank"], tables["drumset"]
