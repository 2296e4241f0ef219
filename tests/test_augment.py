"""clapkit.augment: determinism per seed, each transform's effect measured, the output guarantees, bad input."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from clapkit.augment import (
    ORDER,
    TRANSFORMS,
    AugmentConfig,
    Augmenter,
    SpeedConfig,
    augment,
    coloured_noise,
    mix_seed,
)

RATE = 16_000


def only(name: str, **section: object) -> AugmentConfig:
    """A config that always runs just ``name``, with ``section`` overriding its ranges."""
    cfg = AugmentConfig(transforms=(name,))
    return dataclasses.replace(cfg, **{name: dataclasses.replace(getattr(cfg, name), p=1.0, **section)})


def noise(seconds: float = 1.0, scale: float = 0.1, seed: int = 0) -> torch.Tensor:
    return torch.randn(round(seconds * RATE), generator=torch.Generator().manual_seed(seed)) * scale


def db(x: torch.Tensor) -> float:
    return 10 * math.log10(float(x.double().square().sum()))


def band_energy_db(wave: torch.Tensor, low_hz: float, high_hz: float) -> float:
    power = torch.fft.rfft(wave.double()).abs().square()
    freqs = torch.fft.rfftfreq(wave.shape[-1], 1 / RATE)
    return 10 * math.log10(float(power[(freqs >= low_hz) & (freqs < high_hz)].sum()))


# ---------------------------------------------------------------------------------------------- determinism
def test_same_seed_same_output_different_seeds_differ():
    wave = noise()
    augmenter = Augmenter()
    first = augmenter(wave, RATE, seed=mix_seed(0, 3, "clip_7"))
    again = Augmenter(AugmentConfig())(wave.clone(), RATE, seed=mix_seed(0, 3, "clip_7"))
    assert torch.equal(first, again)
    others = [augmenter(wave, RATE, seed=mix_seed(0, 3, f"clip_{i}")) for i in range(8)]
    assert sum(not torch.equal(first, o) for o in others[:7] + others[8:]) >= 6  # clip_7 itself is the same
    assert not torch.equal(augmenter(wave, RATE, seed=1), augmenter(wave, RATE, seed=2))


def test_generator_api_and_config_seed():
    wave = noise()
    a = augment(wave, RATE, generator=torch.Generator().manual_seed(5))
    b = augment(wave, RATE, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b)
    reseeded = Augmenter(AugmentConfig(seed=1))(wave, RATE, seed=9)
    assert not torch.equal(Augmenter()(wave, RATE, seed=9), reseeded)


def test_turning_a_transform_off_leaves_the_others_draws_alone():
    wave = noise()
    gain_only = only("gain")
    with_codec_off = dataclasses.replace(gain_only, transforms=("gain", "codec"))
    with_codec_off.codec.p = 0.0
    assert torch.equal(Augmenter(gain_only)(wave, RATE, seed=4), Augmenter(with_codec_off)(wave, RATE, seed=4))


def test_mix_seed_is_stable_and_spreads():
    assert mix_seed(0, 1, "a") == mix_seed(0, 1, "a")
    assert len({mix_seed(0, e, k) for e in range(10) for k in "abcdefghij"}) == 100
    assert 0 <= mix_seed("x") < 2**63


# ---------------------------------------------------------------------------------------------- guarantees
@pytest.mark.parametrize("name", TRANSFORMS.names())
def test_each_transform_keeps_shape_finite_and_peak_and_changes_the_signal(name):
    wave = torch.stack([noise(seed=1), noise(seed=2)])[None] * 8  # [1, 2, T], peak far above full scale
    cfg = only(name)
    out = Augmenter(cfg)(wave, RATE, seed=0)
    assert out.shape == wave.shape and out.dtype == torch.float32
    assert torch.isfinite(out).all()
    assert float(out.abs().max()) <= cfg.peak + 1e-6
    quiet = wave / 100  # below the peak limit: what changes is the transform's doing
    assert not torch.allclose(Augmenter(cfg)(quiet, RATE, seed=0), quiet, atol=1e-4)


def test_registry_holds_the_chain_in_order():
    assert sorted(ORDER) == TRANSFORMS.names()
    with pytest.raises(KeyError, match="valid names: bandlimit, codec"):
        AugmentConfig(transforms=("gain", "chorus"))


def test_no_transform_drawn_returns_the_input():
    wave = noise()
    cfg = dataclasses.replace(only("gain"), gain=dataclasses.replace(only("gain").gain, p=0.0))
    assert torch.equal(Augmenter(cfg)(wave, RATE, seed=0), wave)


def test_default_chain_on_speech_like_input_is_peak_limited_and_finite():
    t = torch.arange(RATE * 2) / RATE
    wave = 0.98 * torch.sin(2 * math.pi * 220 * t) * (torch.sin(2 * math.pi * 3 * t) > 0)
    for seed in range(10):
        out = augment(wave, RATE, seed=seed)
        assert torch.isfinite(out).all() and float(out.abs().max()) <= 0.99 + 1e-6


@pytest.mark.parametrize("length", [1, 2, 7])
def test_every_transform_on_very_short_and_silent_input(length):
    cfg = AugmentConfig()
    for name in ORDER:
        getattr(cfg, name).p = 1.0
    for wave in (noise()[:length], torch.zeros(length)):
        out = Augmenter(cfg)(wave, RATE, seed=0)
        assert out.shape == wave.shape and torch.isfinite(out).all()


# ---------------------------------------------------------------------------------------------- effects
def test_gain_changes_the_level_by_the_drawn_db():
    wave = noise(scale=0.01)
    out = augment(wave, RATE, seed=0, config=only("gain", db=(-6.0, -6.0)))
    assert db(out) - db(wave) == pytest.approx(-6.0, abs=0.01)


def test_bandlimit_removes_energy_above_the_cutoff():
    wave = noise()
    out = augment(wave, RATE, seed=0, config=only("bandlimit", lowpass_hz=(1000.0, 1000.0), highpass_hz=(20.0, 20.0)))
    kept = band_energy_db(out, 100, 800) - band_energy_db(wave, 100, 800)
    above = band_energy_db(out, 2000, RATE / 2) - band_energy_db(wave, 2000, RATE / 2)
    assert kept > -3.0  # the pass band stays
    assert above < -25.0  # two cascaded 12 dB/octave stages: > 24 dB from one octave above the cut-off


def test_resample_chain_band_limits_to_the_lower_rate():
    wave = noise()
    out = augment(wave, RATE, seed=0, config=only("resample", rates_hz=(8000,)))
    assert band_energy_db(out, 100, 3000) - band_energy_db(wave, 100, 3000) > -0.5
    # torchaudio's windowed sinc (rolloff 0.99, width 6) rolls off over ~4–5 kHz, then holds > 40 dB
    assert band_energy_db(out, 4000, RATE / 2) - band_energy_db(wave, 4000, RATE / 2) < -20.0
    assert band_energy_db(out, 5000, RATE / 2) - band_energy_db(wave, 5000, RATE / 2) < -40.0
    unchanged = augment(wave, RATE, seed=0, config=only("resample", rates_hz=(RATE, 48_000)))
    assert torch.equal(unchanged, wave)  # no rate below the input's: nothing to take away


def test_reverb_adds_a_decaying_tail():
    wave = torch.zeros(RATE)
    wave[: RATE // 20] = noise(0.05)  # a 50 ms burst, then silence
    out = augment(wave, RATE, seed=0, config=only("reverb", rt60_s=(0.6, 0.6), wet_db=(0.0, 0.0)))
    early, late = out[RATE // 10 : RATE * 3 // 10], out[RATE * 3 // 10 : RATE // 2]
    assert float(wave[RATE // 10 :].abs().max()) == 0.0
    assert db(early) > db(wave) - 20  # the room carries the burst on past its end
    assert db(late) < db(early) - 10  # and it dies away: ~60 dB per 0.6 s
    short = augment(wave, RATE, seed=0, config=only("reverb", rt60_s=(0.1, 0.1), wet_db=(0.0, 0.0)))
    assert db(short[RATE * 3 // 10 : RATE // 2]) < db(late) - 30  # a shorter RT60, a shorter tail


@pytest.mark.parametrize("color", ["white", "pink", "brown"])
def test_noise_snr_is_within_the_requested_range(color):
    t = torch.arange(RATE) / RATE
    clean = 0.1 * torch.sin(2 * math.pi * 440 * t)
    cfg = only("noise", snr_db=(10.0, 20.0), colors=(color,))
    measured = []
    for seed in range(6):
        out = augment(clean, RATE, seed=seed, config=cfg)
        measured.append(db(clean) - db(out - clean))
    assert all(10.0 - 0.05 <= m <= 20.0 + 0.05 for m in measured), measured
    assert max(measured) - min(measured) > 1.0  # drawn, not fixed


def test_noise_colours_tilt_the_spectrum():
    gen = torch.Generator().manual_seed(0)
    tilt = {}
    for color in ("white", "pink", "brown"):
        n = coloured_noise((RATE * 4,), color, gen)
        tilt[color] = band_energy_db(n, 50, 500) - band_energy_db(n, 5000, 5450)
        assert float(n.std()) == pytest.approx(1.0, rel=1e-3)
    assert abs(tilt["white"]) < 1.0 and tilt["pink"] > 8.0 and tilt["brown"] > tilt["pink"] + 8.0


def test_codec_quantises_but_keeps_the_signal():
    t = torch.arange(RATE) / RATE
    clean = 0.5 * torch.sin(2 * math.pi * 330 * t) * torch.linspace(1.0, 0.05, RATE)
    errors = {}
    for bits in (4, 8):
        out = augment(clean, RATE, seed=0, config=only("codec", bits=(bits, bits)))
        errors[bits] = db(clean) - db(out - clean)  # signal-to-quantisation-noise, dB
        assert torch.corrcoef(torch.stack([clean, out]))[0, 1] > 0.95
    assert 25.0 < errors[8] < 45.0  # 8-bit mu-law (G.711): ~38 dB
    assert errors[4] < errors[8] - 15.0  # fewer bits, more error


# ---------------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    ("wave", "match"),
    [
        (torch.zeros(0), "0 samples"),
        (torch.tensor([0.1, float("nan")]), "NaN or Inf"),
        (torch.tensor([0.1, float("inf")]), "NaN or Inf"),
        (torch.tensor(0.5), "expected a waveform tensor"),
    ],
)
def test_bad_input_is_refused_by_name(wave, match):
    with pytest.raises(ValueError, match=f"augment clip.wav: .*{match}"):
        Augmenter()(wave, RATE, seed=0, name="clip.wav")


def test_bad_call_and_config():
    wave = noise()
    with pytest.raises(ValueError, match="exactly one of seed= and generator="):
        Augmenter()(wave, RATE)
    with pytest.raises(ValueError, match="exactly one"):
        Augmenter()(wave, RATE, seed=1, generator=torch.Generator())
    with pytest.raises(ValueError, match="sample_rate=0"):
        Augmenter()(wave, 0, seed=1)
    with pytest.raises(ValueError, match=r"augment.gain.p=1.5"):
        AugmentConfig.from_mapping({"gain": {"p": 1.5}})
    with pytest.raises(ValueError, match=r"augment.noise.snr_db=\(30.0, 10.0\)"):
        AugmentConfig.from_mapping({"noise": {"snr_db": [30, 10]}})
    with pytest.raises(ValueError, match=r"augment.reverb: unknown keys \['rt60'\]"):
        AugmentConfig.from_mapping({"reverb": {"rt60": [0.1, 0.2]}})
    with pytest.raises(ValueError, match="choose from white, pink, brown"):
        AugmentConfig.from_mapping({"noise": {"colors": ["blue"]}})


def test_from_mapping_reads_yaml_shapes():
    cfg = AugmentConfig.from_mapping({"transforms": ["noise", "gain"], "gain": {"db": [-3, 3]}, "seed": 2})
    assert cfg.transforms == ("noise", "gain") and cfg.gain.db == (-3.0, 3.0) and cfg.seed == 2
    assert [name for name, _ in Augmenter(cfg).chain] == ["gain", "noise"]  # the fixed order, whatever the listing


def test_speed_transposes_by_the_drawn_semitones_and_keeps_the_length():
    t = torch.arange(RATE) / RATE
    wave = 0.5 * torch.sin(2 * math.pi * 440 * t)

    def peak_hz(x: torch.Tensor) -> float:
        spectrum = torch.fft.rfft(x.double()[: RATE // 2]).abs()
        return float(torch.fft.rfftfreq(RATE // 2, 1 / RATE)[spectrum.argmax()])

    up = augment(wave, RATE, seed=0, config=only("speed", semitones=(3.0, 3.0)))
    down = augment(wave, RATE, seed=0, config=only("speed", semitones=(-3.0, -3.0)))
    assert up.shape == down.shape == wave.shape
    assert peak_hz(up) == pytest.approx(440 * 2 ** (3 / 12), rel=0.01)  # 523 Hz (target rate rounded to 100 Hz)
    assert peak_hz(down) == pytest.approx(440 * 2 ** (-3 / 12), rel=0.01)  # 370 Hz
    # Faster: the tone ends early and the rest is silence; slower: the window is cut.
    assert float(up[-RATE // 10 :].abs().max()) == 0.0 and float(down[-RATE // 10 :].abs().max()) > 0.4
    # Seeded like the others, and off unless asked for: captions may name the pitch or the rate.
    drawn = only("speed")
    assert torch.equal(augment(wave, RATE, seed=5, config=drawn), augment(wave, RATE, seed=5, config=drawn))
    assert not torch.equal(augment(wave, RATE, seed=5, config=drawn), augment(wave, RATE, seed=6, config=drawn))
    assert AugmentConfig().speed.p == 0.0
    with pytest.raises(ValueError, match="augment.speed.semitones"):
        AugmentConfig(speed=SpeedConfig(semitones=(-13.0, 0.0)))
