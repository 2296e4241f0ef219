"""debian-sounds on the real Debian packages (installed by `make venv`; skipped with the reason if absent)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from demo.datasets import DATASETS, DEFAULT_CLASS_MAP, build_dataset, check_class_map, load_class_map
from demo.datasets.debian_sounds import APT_PACKAGES
from demo.datasets.render import NoteRenderer, PatchRenderer
from tests.demo.datasets.test_cross_source import assert_no_split_leaks

RAW = json.loads(DEFAULT_CLASS_MAP.read_text())
#: package → source in the cross split (csound-soundfont shares TimGM6mb's samples)
SOURCES = {name: pkg.source for name, pkg in load_class_map(DEFAULT_CLASS_MAP).packages.items()}
MISSING = [name for name, pkg in load_class_map(DEFAULT_CLASS_MAP).packages.items() if not pkg.installed()]
needs_packages = pytest.mark.skipif(
    bool(MISSING), reason=f"Debian packages not installed: {' '.join(MISSING)} (make venv installs them)"
)
SOUNDFONT = Path(RAW["packages"]["fluid-soundfont-gm"]["root"]) / RAW["packages"]["fluid-soundfont-gm"]["soundfont"]
PATCHES = Path(RAW["packages"]["freepats"]["root"]) / RAW["packages"]["freepats"]["patches"]


def test_registry_and_package_list_agree_with_the_class_map() -> None:
    assert "debian-sounds" in DATASETS.names()
    assert sorted(APT_PACKAGES) == sorted(RAW["packages"])


@needs_packages
def test_every_source_of_the_shipped_class_map_resolves() -> None:
    report = check_class_map(DEFAULT_CLASS_MAP)
    assert report["problems"] == [] and report["missing_packages"] == []
    cmap = load_class_map(DEFAULT_CLASS_MAP)
    events = [name for name, c in cmap.classes.items() if c.kind == "event"]
    assert len(events) >= 40
    # What the cross-source split needs: most event classes are heard in two or more packages.
    multi = [name for name in events if len({src.package for src in cmap.classes[name].sources}) >= 2]
    assert len(multi) >= 35, sorted(set(events) - set(multi))
    instruments = [c for c in cmap.classes.values() if c.kind == "instrument"]
    assert len(instruments) >= 60
    soundfonts = {"fluid-soundfont-gm", "timgm6mb-soundfont", "csound-soundfont"}
    for cls in instruments:  # every rendered instrument comes from the three SoundFonts, most also from freepats
        rendered = {s.package for s in cls.sources if s.render is not None}
        assert rendered in (set(), soundfonts, soundfonts | {"freepats"}), cls.name
    with_patches = [c.name for c in instruments if any(s.package == "freepats" for s in c.sources)]
    assert len(with_patches) >= 50
    # freepats only ever adds training clips: the split never holds it out.
    assert [n for n, p in cmap.packages.items() if not p.held_out] == ["freepats"]
    # Csound's GM bank reuses TimGM6mb's samples: one source. SoundFonts built on FluidR3's samples are left out.
    assert {n for n, s in SOURCES.items() if n != s} == {"csound-soundfont"}
    assert SOURCES["csound-soundfont"] == "timgm6mb-soundfont"
    assert not {"musescore-general-soundfont-small", "fluidr3mono-gm-soundfont", "fluid-soundfont-gs"} & set(SOURCES)
    assert all(report["planned"][name] >= cmap.min_clips for name in cmap.classes)


@needs_packages
def test_build_a_slice_of_debian_sounds(tmp_path: Path) -> None:
    """dog (tuxpaint, gcompris .rcc, scorched3d), fire (minetest), tom_drum (sonic-pi, tuxpaint, three SoundFonts),
    violin (GM notes)."""
    raw = dict(RAW, classes={k: RAW["classes"][k] for k in ("dog", "fire", "tom_drum", "violin")})
    raw["classes"]["violin"] = dict(raw["classes"]["violin"], sources=raw["classes"]["violin"]["sources"][:1])
    result = build_dataset(tmp_path, load_class_map(raw), progress=False)
    counts = result.counts()
    # dog: three gcompris clips, one tuxpaint clip, two scorched3d clips; the hash holds scorched3d out.
    assert counts["dog"] == {"train": 3, "test": 1, "cross": 2}
    held_out = assert_no_split_leaks((r.to_json() for r in result.records), SOURCES)
    assert held_out == {"dog": "scorched3d-data", "fire": "wesnoth-1.16-data", "tom_drum": "timgm6mb-soundfont"}
    # Every TimGM6mb render of the class and every Csound render (its samples are TimGM6mb's): 18 + 18.
    toms = [r for r in result.records if r.cls == "tom_drum"]
    assert {r.source_package for r in toms if r.split == "cross"} == {"timgm6mb-soundfont", "csound-soundfont"}
    assert counts["tom_drum"]["cross"] == 36
    assert not [r for r in toms if r.source_package == "csound-soundfont" and r.split != "cross"]
    # freepats' toms (GUS patches played by timidity): never held out, so they train or test in-source.
    patched = [r for r in toms if r.source_package == "freepats"]
    assert len(patched) == 18 and {r.split for r in patched} == {"train", "test"}
    assert {r.license for r in patched} == {"GPL-2+"} and {r.attributes["preset"] for r in patched} == {"drumset 0"}
    assert all(r.source.startswith("freepats:freepats.cfg#drums,key=") for r in patched)
    assert {r.source_file for r in patched} == {str(PATCHES)}
    # Any of tom_drum's sources leaves enough clips; the hash of class and source picks TimGM6mb.
    eligible = "['fluid-soundfont-gm', 'sonic-pi-samples', 'timgm6mb-soundfont', 'tuxpaint-stamps-default']"
    assert result.cross_sources["tom_drum"]["reason"] == (
        f"chosen by hash among {eligible}; with csound-soundfont, which shares its samples"
    )
    assert result.cross_sources["violin"] == {"package": None, "reason": "one package (fluid-soundfont-gm)"}
    assert counts["fire"]["cross"] == 2 and counts["violin"]["cross"] == 0
    assert sum(counts["violin"].values()) == 10  # 5 keys x 2 velocities
    assert {r.source_package for r in result.records if r.cls == "dog"} == {
        "tuxpaint-stamps-default",
        "gcompris-qt-data",
        "scorched3d-data",
    }
    assert {r.license for r in result.records if r.source_package == "minetest-data"} == {"CC-BY-SA-3.0"}
    toms = {r.attributes.get("pitch") for r in result.records if r.source_package == "sonic-pi-samples"}
    assert toms == {"high", "mid", "low"}
    for rec in result.records:
        info = sf.info(str(tmp_path / rec.audio))
        assert info.samplerate == 44100 and info.channels == 1 and info.duration >= 0.5
    # A4 on the violin: the spectrum's peak is a harmonic of 440 Hz.
    a4 = next(r for r in result.records if r.attributes.get("pitch") == "A4" and r.attributes["velocity"] > 80)
    wave, rate = sf.read(tmp_path / a4.audio)
    spectrum = np.abs(np.fft.rfft(wave))
    peak = np.fft.rfftfreq(len(wave), 1 / rate)[spectrum.argmax()]
    assert abs(peak / 440 - round(peak / 440)) < 0.02
    assert "a mid note on the violin" in a4.captions and "a violin" in a4.captions
    again = build_dataset(tmp_path, load_class_map(raw), progress=False)
    assert again.reused == len(result.records)


GAME_PACKAGES = ("scorched3d-data", "heroes-sound-effects", "lincity-ng-data", "btanks-data", "gcompris-qt-data")
MISSING_GAMES = [name for name in GAME_PACKAGES if not Path(RAW["packages"][name]["root"]).exists()]


@pytest.mark.skipif(
    bool(MISSING_GAMES), reason=f"Debian packages not installed: {' '.join(MISSING_GAMES)} (make venv installs them)"
)
def test_build_a_slice_of_the_game_packages(tmp_path: Path) -> None:
    """crowd_cheering (a chunked scorched3d loop, 8-bit heroes WAVs, stereo lincity, a gcompris .rcc) and
    clock_ticking (heroes + btanks): labels, licences from each DEP-5 file, one split per recording, real ticks."""
    raw = dict(RAW, classes={k: RAW["classes"][k] for k in ("crowd_cheering", "clock_ticking")})
    result = build_dataset(tmp_path, load_class_map(raw), progress=False)
    cheer = [r for r in result.records if r.cls == "crowd_cheering"]
    assert {r.source_package for r in cheer} == {
        "scorched3d-data",
        "heroes-sound-effects",
        "lincity-ng-data",
        "gcompris-qt-data",
    }
    loop = [r for r in cheer if r.source_package == "scorched3d-data"]
    # The 20 s loop in 5 s chunks: one recording, so one group and one split.
    assert len(loop) == 4 and len({r.group for r in loop}) == 1 and len({r.split for r in loop}) == 1
    assert {r.license for r in loop} == {"CC-BY-SA-3"}  # the Apocalypse mod's paragraph, not the GPL-2+ default
    assert {r.license for r in result.records if r.source_package == "btanks-data"} == {"Battle-Tanks-License"}
    assert {r.license for r in result.records if r.source_package == "heroes-sound-effects"} == {"GPL-2+"}
    assert {r.split for r in cheer} == {"train", "test", "cross"}
    assert_no_split_leaks(r.to_json() for r in result.records)
    # heroes clock01.wav (8-bit, 11 kHz): eight sharp clicks (measured), near-silence between them.
    clock = next(r for r in result.records if r.source.endswith("clock01.wav"))
    wave, rate = sf.read(tmp_path / clock.audio)
    assert rate == 44100 and abs(clock.duration - 2.76) < 0.1
    env = np.abs(wave[: len(wave) // 441 * 441]).reshape(-1, 441).max(axis=1)  # 10 ms frames
    ticks = np.flatnonzero((env[1:] > 0.3 * env.max()) & (env[:-1] <= 0.3 * env.max()))
    assert 6 <= len(ticks) <= 10 and np.median(env) < 0.1 * env.max()


@pytest.mark.skipif(not SOUNDFONT.is_file(), reason="fluid-soundfont-gm is not installed (make venv installs it)")
def test_note_renderer_plays_the_requested_pitch_and_hits() -> None:
    renderer = NoteRenderer(SOUNDFONT, sample_rate=22050)
    assert renderer.preset_name(0) and "Piano" in renderer.preset_name(0)
    note = renderer.render(69, 100, program=73, hold_seconds=0.5, release_seconds=0.2)  # flute A4
    assert note.shape == (round(0.7 * 22050),) and np.abs(note).max() > 0.01
    spectrum = np.abs(np.fft.rfft(note))
    assert abs(np.fft.rfftfreq(len(note), 1 / 22050)[spectrum.argmax()] - 440) < 10
    hits = renderer.render(38, 110, drums=True, hits=4, interval_seconds=0.25, hold_seconds=0.25, release_seconds=0.5)
    env = np.abs(hits[: len(hits) // 441 * 441]).reshape(-1, 441).max(axis=1)  # 20 ms frames
    onsets = np.flatnonzero((env[1:] > 0.5 * env.max()) & (env[:-1] <= 0.5 * env.max()))
    assert len(onsets) + (env[0] > 0.5 * env.max()) == 4
    with pytest.raises(ValueError, match="velocities 1-127"):
        renderer.render(60, 0)


@pytest.mark.skipif(
    not PATCHES.is_file() or shutil.which("timidity") is None,
    reason="freepats / timidity are not installed (make venv installs them)",
)
def test_patch_renderer_plays_freepats_notes_and_refuses_what_it_has_no_patch_for(tmp_path: Path) -> None:
    renderer = PatchRenderer(PATCHES, sample_rate=22050)
    assert renderer.preset_name(73) == "Flute" and renderer.patch(73).is_file()
    assert renderer.preset_name(3) is None and renderer.preset_name(0, drums=True) == "drumset 0"
    note = renderer.render(69, 100, program=73, hold_seconds=0.5, release_seconds=0.2)  # flute A4
    assert note.shape == (round(0.7 * 22050),) and note.dtype == np.float32 and np.abs(note).max() > 0.01
    spectrum = np.abs(np.fft.rfft(note))
    assert abs(np.fft.rfftfreq(len(note), 1 / 22050)[spectrum.argmax()] - 440) < 10
    assert np.array_equal(note, renderer.render(69, 100, program=73, hold_seconds=0.5, release_seconds=0.2))
    hits = renderer.render(38, 110, drums=True, hits=4, interval_seconds=0.25, hold_seconds=0.25, release_seconds=0.5)
    assert hits.shape == (round(1.5 * 22050),)
    env = np.abs(hits[: len(hits) // 441 * 441]).reshape(-1, 441).max(axis=1)  # 20 ms frames
    onsets = np.flatnonzero((env[1:] > 0.5 * env.max()) & (env[:-1] <= 0.5 * env.max()))
    assert len(onsets) + (env[0] > 0.5 * env.max()) == 4
    # The system's default TiMidity++ configuration may map program 3 to a SoundFont: refused, not rendered.
    with pytest.raises(ValueError, match=r"program 3 bank 0: no patch in .*freepats.cfg"):
        renderer.render(60, 100, program=3)
    with pytest.raises(ValueError, match="drum key 28 of drumset 0: no patch"):
        renderer.render(28, 100, drums=True)
    with pytest.raises(ValueError, match="velocities 1-127"):
        renderer.render(60, 0, program=73)
    empty = tmp_path / "empty.cfg"
    empty.write_text("dir /nowhere\n")
    with pytest.raises(ValueError, match="no bank or drumset entries"):
        PatchRenderer(empty)
    with pytest.raises(ValueError, match="configuration not found"):
        PatchRenderer(tmp_path / "missing.cfg")
    gone = tmp_path / "gone.cfg"  # maps a patch file that is not there: an error, not a silent render
    gone.write_text(f"dir {tmp_path}\nbank 0\n0 absent.pat\n")
    with pytest.raises(ValueError, match=r"program 0 bank 0: patch file .*absent.pat .* not found"):
        PatchRenderer(gone).render(60, 100)


@needs_packages
def test_build_speech_and_soundfont_classes(tmp_path: Path) -> None:
    """say_seven (espeak-ng, flite, Asterisk, Tux Paint) and marimba (FluidR3, TimGM6mb and Csound renders)."""
    raw = dict(RAW, classes={k: RAW["classes"][k] for k in ("say_seven", "marimba")})
    result = build_dataset(tmp_path, load_class_map(raw), progress=False)
    seven = [r for r in result.records if r.cls == "say_seven"]
    by_package = {p: [r for r in seven if r.source_package == p] for p in {r.source_package for r in seven}}
    assert set(by_package) == {"espeak-ng", "flite", "asterisk-core-sounds-en-wav", "tuxpaint-stamps-default"}
    assert 8 <= len(by_package["espeak-ng"]) <= 10 and 6 <= len(by_package["flite"]) <= 8
    licenses = {p: {r.license for r in recs} for p, recs in by_package.items()}
    assert licenses["espeak-ng"] == {"GPL-3+"} and licenses["asterisk-core-sounds-en-wav"] == {"CC-BY-SA-3.0"}
    espeak = by_package["espeak-ng"]
    assert len({r.attributes["voice"] for r in espeak}) == 5  # the plan takes turns between the voices
    assert all(r.group == f"espeak-ng:{r.attributes['voice']}:seven" for r in espeak)
    assert all(r.label == 'a voice saying "seven"' and r.kind == "speech" for r in seven)
    slow = next(r for r in espeak if r.attributes["speech_rate"] < 0.6)
    assert '"seven" spoken slowly' in slow.captions and 'a voice saying "seven"' in slow.captions
    assert all(0.4 <= r.duration < 2.0 for r in seven)  # one word; the class keeps clips from 0.4 s
    assert len({r.group for r in seven if r.split == "test"}) >= 1
    assert {r.split for r in seven} == {"train", "test", "cross"}
    assert_no_split_leaks((r.to_json() for r in result.records), SOURCES)

    marimba = [r for r in result.records if r.cls == "marimba"]
    assert {r.source_package for r in marimba} == {"fluid-soundfont-gm", "timgm6mb-soundfont", "csound-soundfont"}
    assert len(marimba) == 24 + 8 and {r.attributes["velocity"] for r in marimba} == {55, 85, 110}
    assert {r.license for r in marimba if r.source_package == "timgm6mb-soundfont"} == {"GPL-2"}
    assert {r.license for r in marimba if r.source_package == "csound-soundfont"} == {"public-domain"}
    # Csound's marimba is TimGM6mb's samples (why the two are one source): the same C4, spectrum for spectrum.
    c4 = [r for r in marimba if r.attributes["pitch"] == "C4" and r.attributes["velocity"] == 110]
    timgm, csound = (next(r for r in c4 if r.source_package == p) for p in ("timgm6mb-soundfont", "csound-soundfont"))
    same = [np.log1p(np.abs(np.fft.rfft(sf.read(tmp_path / r.audio)[0][:44100]))) for r in (timgm, csound)]
    assert np.corrcoef(*same)[0, 1] > 0.99
    # The two independent SoundFonts' C4 differ, and both peak at a harmonic of 261.6 Hz.
    spectra = []
    for package in ("fluid-soundfont-gm", "timgm6mb-soundfont"):
        rec = next(
            r
            for r in marimba
            if r.source_package == package and r.attributes["pitch"] == "C4" and r.attributes["velocity"] == 85
        )
        wave, rate = sf.read(tmp_path / rec.audio)
        wave = np.pad(wave, (0, max(0, rate - len(wave))))[:rate]  # 1 s: 1 Hz bins
        spectrum = np.abs(np.fft.rfft(wave))
        peak = np.fft.rfftfreq(rate, 1 / rate)[spectrum.argmax()]
        assert abs(peak / 261.63 - round(peak / 261.63)) < 0.03
        spectra.append(np.log1p(spectrum))
    assert np.corrcoef(*spectra)[0, 1] < 0.99
    again = build_dataset(tmp_path, load_class_map(raw), progress=False)
    assert again.reused == len(result.records)
