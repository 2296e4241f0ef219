"""Spoken words from espeak-ng and flite: the plan of renders, the command lines, errors, real renders."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from clapkit.tts import Synthesizer, Utterance, plan_utterances, speed_word
from demo.datasets.curation import trim_silence

RATE = 16000
needs_espeak = pytest.mark.skipif(
    shutil.which("espeak-ng") is None, reason="espeak-ng is not installed (make venv installs it)"
)
needs_flite = pytest.mark.skipif(shutil.which("flite") is None, reason="flite is not installed (make venv installs it)")


def _fake_program(folder: Path, name: str, script: str) -> None:
    """A stand-in for a synthesizer on PATH that runs ``script`` (sh)."""
    path = folder / name
    path.write_text(f"#!/bin/sh\n{script}\n")
    path.chmod(0o755)


def test_plan_is_deterministic_capped_and_takes_turns_between_voices() -> None:
    voices = ("a", "b", "c")
    plan = plan_utterances("seven", voices, (0.6, 0.8, 1.0), (30, 50), max_renders=7)
    assert plan == plan_utterances("seven", voices, (0.6, 0.8, 1.0), (30, 50), max_renders=7)
    assert len(plan) == 7 and len(set(plan)) == 7
    assert [u.voice for u in plan] == ["a", "b", "c", "a", "b", "c", "a"]
    assert all(u.text == "seven" and u.rate in (0.6, 0.8, 1.0) and u.pitch in (30, 50) for u in plan)
    everything = plan_utterances("seven", voices, (0.6, 0.8, 1.0), (30, 50))
    assert len(everything) == 18 and len(set(everything)) == 18
    # Another text draws another mix of rate and pitch for the same voice.
    firsts = {
        tuple((u.rate, u.pitch) for u in plan_utterances(w, voices, (0.6, 0.8, 1.0), (30, 50), 3)) for w in "abcdef"
    }
    assert len(firsts) > 1


@pytest.mark.parametrize("args", [("", ("a",)), ("seven", ()), ("seven", ("a",), ()), ("seven", ("a",), (1.0,), ())])
def test_plan_rejects_empty_inputs(args) -> None:
    with pytest.raises(ValueError, match="needs a non-empty text"):
        plan_utterances(*args)


def test_speed_words() -> None:
    assert [speed_word(r) for r in (0.6, 1.0, 1.3)] == ["slowly", "at a normal pace", "quickly"]


def test_unknown_or_missing_program_is_a_clear_error(tmp_path: Path, monkeypatch) -> None:
    with pytest.raises(ValueError, match="synthesizer 'say'"):
        Synthesizer("say")
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(
        FileNotFoundError, match="espeak-ng: program not found; install it with `apt-get install espeak-ng`"
    ):
        Synthesizer("espeak-ng")


def test_command_lines(tmp_path: Path, monkeypatch) -> None:
    _fake_program(tmp_path, "espeak-ng", "exit 0")
    _fake_program(tmp_path, "flite", "exit 0")
    monkeypatch.setenv("PATH", str(tmp_path))
    wav = tmp_path / "x.wav"
    espeak = Synthesizer("espeak-ng").command(Utterance("two words", "en-us+f2", 0.75, 70), wav)
    assert espeak == ["-v", "en-us+f2", "-s", "131", "-w", str(wav), "-p", "70", "--", "two words"]
    flite = Synthesizer("flite").command(Utterance("hi", "slt", 0.8), wav)
    assert flite == ["-voice", "slt", "-o", str(wav), "--setf", "duration_stretch=1.2500", "-t", "hi"]


def test_a_failing_program_is_reported_with_voice_and_text(tmp_path: Path, monkeypatch) -> None:
    _fake_program(tmp_path, "espeak-ng", "echo 'voice data missing' >&2; exit 3")
    monkeypatch.setenv("PATH", str(tmp_path))
    synth = Synthesizer("espeak-ng")
    with pytest.raises(ValueError, match="espeak-ng voice 'en' saying 'seven': exit status 3: voice data missing"):
        synth.render(Utterance("seven", "en"), RATE)
    _fake_program(tmp_path, "espeak-ng", "exit 0")  # succeeds but writes nothing
    with pytest.raises(ValueError, match="espeak-ng voice 'en' saying 'seven': wrote no audio"):
        synth.render(Utterance("seven", "en"), RATE)
    with pytest.raises(ValueError, match="pitch 120 outside 0-99"):
        synth.render(Utterance("seven", "en", 1.0, 120), RATE)


def _voiced_seconds(wave: torch.Tensor) -> float:
    start, end = trim_silence(wave, RATE, top_db=50.0)  # as the class map trims
    return (end - start) / RATE


@needs_espeak
def test_espeak_ng_speaks_deterministically_and_slower_is_longer() -> None:
    synth = Synthesizer("espeak-ng")
    assert "NG" in synth.version() and any(ch.isdigit() for ch in synth.version())
    slow = synth.render(Utterance("seven", "en-us+m1", 0.6, 50), RATE)
    assert slow.dtype == torch.float32 and slow.ndim == 1 and torch.isfinite(slow).all()
    assert float(slow.abs().max()) > 0.05  # not silent
    assert 0.4 < _voiced_seconds(slow) < 1.5  # one word
    assert torch.equal(slow, synth.render(Utterance("seven", "en-us+m1", 0.6, 50), RATE))
    fast = synth.render(Utterance("seven", "en-us+m1", 1.5, 50), RATE)
    assert _voiced_seconds(fast) < 0.8 * _voiced_seconds(slow)
    sentence = synth.render(Utterance("the weather will be sunny this afternoon", "en-us+m1"), RATE)
    assert _voiced_seconds(sentence) > 2 * _voiced_seconds(fast)
    with pytest.raises(ValueError, match="espeak-ng voice 'xx-nonexistent' saying 'seven': exit status"):
        synth.render(Utterance("seven", "xx-nonexistent"), RATE)


@needs_flite
def test_flite_speaks_and_rejects_voices_it_does_not_have() -> None:
    synth = Synthesizer("flite")
    voices = synth.voices()
    assert voices is not None and {"slt", "kal16"} <= set(voices)
    assert "flite-2" in synth.version()
    wave = synth.render(Utterance("hello", "slt", 0.85), RATE)
    assert float(wave.abs().max()) > 0.05 and 0.4 < _voiced_seconds(wave) < 1.5
    assert torch.equal(wave, synth.render(Utterance("hello", "slt", 0.85), RATE))
    # flite itself falls back to its default voice without a word; the wrapper refuses.
    with pytest.raises(ValueError, match="flite voice 'nobody' saying 'hello': unknown voice"):
        synth.render(Utterance("hello", "nobody"), RATE)
