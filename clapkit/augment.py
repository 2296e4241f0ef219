"""Seeded waveform augmentation that hides where a recording came from (its level, EQ, room, rate, noise, codec).

A model trained on clips of a few sources learns the source (one package's sample rate, loudness, room and
encoder) as readily as the sound. Each transform here varies one of those traits at random, within ranges set
in :class:`AugmentConfig`, built on ``torchaudio.functional``:

==============  ==========================================================================================
``speed``       played faster or slower by a random number of semitones (pitch and tempo together, as a tape
                or a sampler transposing a recording; ``resample``), cut or zero-padded back to the input's
                length. Off by default (``p=0``): captions may name pitch ("a high note") or rate ("fast")
``gain``        level change in dB (``gain``)
``eq``          1–N peaking filters at random centre frequencies, gains and Qs (``equalizer_biquad``)
``reverb``      convolution with a synthetic room response: exponentially decaying noise of a random RT60,
                mixed behind the direct sound (``fftconvolve``)
``bandlimit``   a low-pass (and a high-pass) at random cut-offs, cascaded biquads (``lowpass_biquad``)
``resample``    down to a lower standard rate and back (``resample``): the band limit and the windowed-sinc
                artefacts of a low-rate source
``noise``       white, pink or brown noise at a random SNR against the signal (``add_noise``)
``codec``       mu-law companding with a random bit depth, the G.711-like quantisation of a cheap codec
                (``mu_law_encoding`` / ``mu_law_decoding``; torchaudio 2.11 has no ffmpeg-free codec helper)
==============  ==========================================================================================

The chain always runs in that order (``ORDER``); ``AugmentConfig.transforms`` picks which ones may run and each
then runs with its own probability. Every random draw comes from a generator of its own, seeded by the item's
seed and the transform's name, so the same seed gives bit-identical output, and turning one transform off does not
change what the others draw. The output has the input's shape, is finite and its peak is at most
``AugmentConfig.peak`` (a louder result is scaled down, never clipped).

    augmenter = Augmenter(AugmentConfig())
    view = augmenter(wave, 44_100, seed=mix_seed(0, epoch, "clip_0042"))   # wave [T] or [..., T]
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torchaudio.functional as AF

from clapkit.config import from_mapping
from clapkit.registry import Registry

__all__ = [
    "ORDER",
    "TRANSFORMS",
    "AugmentConfig",
    "Augmenter",
    "BandLimitConfig",
    "CodecConfig",
    "EqConfig",
    "GainConfig",
    "NoiseConfig",
    "ResampleConfig",
    "ReverbConfig",
    "SpeedConfig",
    "augment",
    "coloured_noise",
    "mix_seed",
]

Range = tuple[float, float]

#: A transform: (wave [N, T] float32, sample rate Hz, its config section, its generator) → wave [N, T].
Transform = Callable[[torch.Tensor, int, Any, torch.Generator], torch.Tensor]

#: Transforms by name, filled by ``@TRANSFORMS.register``; unknown names raise ``KeyError`` with the valid ones.
TRANSFORMS: Registry[Transform] = Registry("augmentation")

#: The fixed chain order: the source (level, colour, room), then the recording path (band, rate, noise, codec).
ORDER: tuple[str, ...] = ("speed", "gain", "eq", "reverb", "bandlimit", "resample", "noise", "codec")


# ---------------------------------------------------------------------------------------------- config
@dataclass
class SpeedConfig:
    # Off by default: a transposed sound may no longer match a caption that names its pitch or its rate.
    p: float = 0.0
    semitones: Range = (-3.0, 3.0)  # pitch change (tempo changes by the same factor), uniform; within ±12


@dataclass
class GainConfig:
    p: float = 0.5  # probability the transform runs
    db: Range = (-9.0, 6.0)  # dB, uniform


@dataclass
class EqConfig:
    p: float = 0.5
    bands: tuple[int, int] = (1, 3)  # peaking filters, uniform integer in [min, max]
    freq_hz: Range = (100.0, 8000.0)  # Hz, log-uniform (capped below Nyquist)
    gain_db: Range = (-10.0, 10.0)  # dB per band, uniform
    q: Range = (0.5, 2.0)  # quality factor, uniform


@dataclass
class ReverbConfig:
    p: float = 0.3
    rt60_s: Range = (0.2, 1.0)  # s: time for the room's response to decay by 60 dB, uniform
    wet_db: Range = (-12.0, 0.0)  # dB: energy of the reverberant tail relative to the direct sound, uniform


@dataclass
class BandLimitConfig:
    p: float = 0.3
    lowpass_hz: Range = (3000.0, 12000.0)  # Hz, log-uniform (capped below Nyquist)
    highpass_hz: Range = (20.0, 300.0)  # Hz, log-uniform
    stages: int = 2  # cascaded biquads per filter: 12 dB/octave each past the cut-off


@dataclass
class ResampleConfig:
    p: float = 0.3
    # Hz: the intermediate rate, one of these below the input's rate. Standard rates keep the resampling ratio
    # small (44.1 kHz → 16 kHz is 441:160), so the windowed-sinc kernel stays short; a random integer rate could
    # need a kernel of thousands of phases.
    rates_hz: tuple[int, ...] = (8000, 11025, 16000, 22050, 24000, 32000)


@dataclass
class NoiseConfig:
    p: float = 0.3
    snr_db: Range = (10.0, 40.0)  # dB: signal energy over added noise energy, uniform
    colors: tuple[str, ...] = ("white", "pink", "brown")  # drawn with equal probability


@dataclass
class CodecConfig:
    p: float = 0.2
    bits: tuple[int, int] = (6, 8)  # mu-law bit depth, uniform integer in [min, max] (G.711: 8)


@dataclass
class AugmentConfig:
    """Which transforms may run, how likely each is and the ranges they draw from (see the module docstring).

    Attributes:
        transforms: Names of the transforms that may run (a subset of ``ORDER``; they always run in that order).
        seed: Mixed into every item's seed: another value gives another augmentation of the same items.
        peak: Largest absolute sample value of the output; a louder result is scaled down to it (0.99 ≈ -0.1 dBFS).
        speed, gain, eq, reverb, bandlimit, resample, noise, codec: Each transform's probability and ranges.
    """

    transforms: tuple[str, ...] = ORDER
    seed: int = 0
    peak: float = 0.99
    speed: SpeedConfig = field(default_factory=SpeedConfig)
    gain: GainConfig = field(default_factory=GainConfig)
    eq: EqConfig = field(default_factory=EqConfig)
    reverb: ReverbConfig = field(default_factory=ReverbConfig)
    bandlimit: BandLimitConfig = field(default_factory=BandLimitConfig)
    resample: ResampleConfig = field(default_factory=ResampleConfig)
    noise: NoiseConfig = field(default_factory=NoiseConfig)
    codec: CodecConfig = field(default_factory=CodecConfig)

    def __post_init__(self) -> None:
        self.transforms = tuple(self.transforms)
        for name in self.transforms:
            TRANSFORMS.get(name)  # KeyError naming the valid transforms
        if not 0 < self.peak <= 1:
            raise ValueError(f"augment.peak={self.peak}: expected 0 < peak ≤ 1 (full scale)")
        for name in ORDER:
            section = getattr(self, name)
            if not 0 <= section.p <= 1:
                raise ValueError(f"augment.{name}.p={section.p}: expected a probability in [0, 1]")
            for key, value in vars(section).items():
                if key in ("p", "stages", "rates_hz", "colors"):
                    continue
                if value[0] > value[1]:
                    raise ValueError(f"augment.{name}.{key}={value}: expected (min, max) with min ≤ max")
        if not -12 <= self.speed.semitones[0] <= self.speed.semitones[1] <= 12:
            raise ValueError(f"augment.speed.semitones={self.speed.semitones}: expected (min, max) within ±12")
        if self.eq.bands[0] < 1 or self.codec.bits[0] < 2 or self.codec.bits[1] > 16 or self.bandlimit.stages < 1:
            raise ValueError(
                f"augment: eq.bands {self.eq.bands} must be ≥ 1, codec.bits {self.codec.bits} within [2, 16], "
                f"bandlimit.stages {self.bandlimit.stages} ≥ 1"
            )
        unknown = set(self.noise.colors) - set(_NOISE_EXPONENTS)
        if unknown or not self.noise.colors:
            raise ValueError(f"augment.noise.colors={self.noise.colors}: choose from {', '.join(_NOISE_EXPONENTS)}")
        if not self.resample.rates_hz or min(self.resample.rates_hz) <= 0:
            raise ValueError(f"augment.resample.rates_hz={self.resample.rates_hz}: expected positive rates")

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any] | None, where: str = "augment") -> AugmentConfig:
        """Build from a mapping read from YAML/JSON (unknown keys and wrong types are errors naming ``where``)."""
        return from_mapping(cls, raw, where)


# ---------------------------------------------------------------------------------------------- seeds & draws
def mix_seed(*parts: object) -> int:
    """A 63-bit seed from any parts (ints, strings such as sample keys), the same on every machine and run."""
    text = "\x1f".join(repr(p) for p in parts)
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little") >> 1


def _uniform(gen: torch.Generator, bounds: Range) -> float:
    return bounds[0] + (bounds[1] - bounds[0]) * float(torch.rand((), generator=gen, dtype=torch.float64))


def _log_uniform(gen: torch.Generator, bounds: Range) -> float:
    return math.exp(_uniform(gen, (math.log(bounds[0]), math.log(bounds[1]))))


def _integer(gen: torch.Generator, bounds: tuple[int, int]) -> int:
    return int(torch.randint(bounds[0], bounds[1] + 1, (), generator=gen))


def _below_nyquist(freq: float, rate: int) -> float:
    return min(freq, 0.45 * rate)


#: Peak the biquads run at: torchaudio's biquads clamp their output to [-1, 1] (lfilter's ``clamp=True``), so
#: the input is scaled to 36 dB below full scale first, leaving room for any boost, and scaled back after.
_BIQUAD_PEAK = 1 / 64


def _unclamped(filters: Callable[[torch.Tensor], torch.Tensor], wave: torch.Tensor) -> torch.Tensor:
    """``filters(wave)`` without the biquads' clipping at full scale."""
    scale = float(wave.abs().max()) / _BIQUAD_PEAK
    if scale == 0:
        return wave
    return filters(wave / scale) * scale


# ---------------------------------------------------------------------------------------------- transforms
@TRANSFORMS.register("speed")
def _speed(wave: torch.Tensor, rate: int, cfg: SpeedConfig, gen: torch.Generator) -> torch.Tensor:
    # Played back ``factor`` times faster: resampled to rate / factor and read at ``rate``. The target rate is
    # rounded to 100 Hz so the resampling ratio (and torchaudio's windowed-sinc kernel) stays small.
    factor = 2.0 ** (_uniform(gen, cfg.semitones) / 12.0)
    target = max(100, round(rate / factor / 100) * 100)
    if target == rate:
        return wave
    out = AF.resample(wave, rate, target)
    length = wave.shape[-1]
    if out.shape[-1] >= length:
        return out[..., :length]
    return torch.nn.functional.pad(out, (0, length - out.shape[-1]))


@TRANSFORMS.register("gain")
def _gain(wave: torch.Tensor, rate: int, cfg: GainConfig, gen: torch.Generator) -> torch.Tensor:
    return AF.gain(wave, _uniform(gen, cfg.db))


@TRANSFORMS.register("eq")
def _eq(wave: torch.Tensor, rate: int, cfg: EqConfig, gen: torch.Generator) -> torch.Tensor:
    bands = [
        (_below_nyquist(_log_uniform(gen, cfg.freq_hz), rate), _uniform(gen, cfg.gain_db), _uniform(gen, cfg.q))
        for _ in range(_integer(gen, cfg.bands))
    ]

    def filters(x: torch.Tensor) -> torch.Tensor:
        for freq, gain_db, q in bands:
            x = AF.equalizer_biquad(x, rate, freq, gain_db, q)
        return x

    return _unclamped(filters, wave)


@TRANSFORMS.register("reverb")
def _reverb(wave: torch.Tensor, rate: int, cfg: ReverbConfig, gen: torch.Generator) -> torch.Tensor:
    """The direct sound plus a tail of noise decaying 60 dB over RT60 s, ``wet_db`` below it in energy."""
    rt60 = _uniform(gen, cfg.rt60_s)
    wet = 10 ** (_uniform(gen, cfg.wet_db) / 10)
    length = max(2, round(rt60 * rate))
    t = torch.arange(1, length, dtype=torch.float32) / rate
    tail = torch.randn(length - 1, generator=gen) * torch.exp(-math.log(1000.0) * t / rt60)  # -60 dB at rt60
    tail = tail * math.sqrt(wet / float(tail.square().sum()))
    rir = torch.cat([torch.ones(1), tail])  # [L]: unit direct path, then the room
    # Zeros after the response make the FFT length (T + L - 1) a power of two: ~4x faster than an odd length
    # (measured: 10 s at 44.1 kHz with a 1 s response, 20 ms instead of 90 ms); the result is the same.
    n = wave.shape[-1]
    fft_size = 1 << (n + length - 2).bit_length()
    rir = torch.nn.functional.pad(rir, (0, fft_size - n + 1 - length))
    return AF.fftconvolve(wave, rir.expand(wave.shape[0], -1))[..., :n]


@TRANSFORMS.register("bandlimit")
def _bandlimit(wave: torch.Tensor, rate: int, cfg: BandLimitConfig, gen: torch.Generator) -> torch.Tensor:
    low = _below_nyquist(_log_uniform(gen, cfg.lowpass_hz), rate)
    high = _log_uniform(gen, cfg.highpass_hz)

    def filters(x: torch.Tensor) -> torch.Tensor:
        for _ in range(cfg.stages):
            x = AF.highpass_biquad(AF.lowpass_biquad(x, rate, low), rate, high)
        return x

    return _unclamped(filters, wave)


@TRANSFORMS.register("resample")
def _resample(wave: torch.Tensor, rate: int, cfg: ResampleConfig, gen: torch.Generator) -> torch.Tensor:
    rates = sorted(r for r in cfg.rates_hz if r < rate)
    if not rates:  # already at or below every intermediate rate: nothing to take away
        return wave
    low = rates[int(torch.randint(len(rates), (), generator=gen))]
    back = AF.resample(AF.resample(wave, rate, low), low, rate)
    length = wave.shape[-1]
    if back.shape[-1] >= length:
        return back[..., :length]
    return torch.nn.functional.pad(back, (0, length - back.shape[-1]))


#: Power-spectrum exponent of each noise colour: power ∝ 1 / f^exponent.
_NOISE_EXPONENTS = {"white": 0.0, "pink": 1.0, "brown": 2.0}


def coloured_noise(shape: tuple[int, ...], color: str, gen: torch.Generator) -> torch.Tensor:
    """Gaussian noise [..., T] shaped to a 1 / f^k power spectrum (white k = 0, pink 1, brown 2), unit variance."""
    noise = torch.randn(shape, generator=gen)
    exponent = _NOISE_EXPONENTS[color]
    if exponent > 0:
        spectrum = torch.fft.rfft(noise)
        freqs = torch.arange(spectrum.shape[-1], dtype=torch.float32)
        freqs[0] = 1.0  # the DC bin keeps the lowest bin's weight instead of an infinite one
        noise = torch.fft.irfft(spectrum / freqs ** (exponent / 2), n=shape[-1])
    noise = noise - noise.mean(dim=-1, keepdim=True)
    return noise / noise.square().mean(dim=-1, keepdim=True).sqrt().clamp_min(1e-12)


@TRANSFORMS.register("noise")
def _noise(wave: torch.Tensor, rate: int, cfg: NoiseConfig, gen: torch.Generator) -> torch.Tensor:
    color = cfg.colors[int(torch.randint(len(cfg.colors), (), generator=gen))]
    snr = torch.full(wave.shape[:-1], _uniform(gen, cfg.snr_db))
    noise = coloured_noise(tuple(wave.shape), color, gen)
    if not bool(wave.any()) or not bool(noise.any()):  # silence has no level to set noise against (nor 1 sample)
        return wave
    return AF.add_noise(wave, noise, snr)


@TRANSFORMS.register("codec")
def _codec(wave: torch.Tensor, rate: int, cfg: CodecConfig, gen: torch.Generator) -> torch.Tensor:
    channels = 2 ** _integer(gen, cfg.bits)
    scale = max(1.0, float(wave.abs().max()))  # mu-law codes [-1, 1]; louder audio is coded at its own peak
    return AF.mu_law_decoding(AF.mu_law_encoding(wave / scale, channels), channels) * scale


# ---------------------------------------------------------------------------------------------- the chain
class Augmenter:
    """The seeded chain of :class:`AugmentConfig`; call it per item.

    Args:
        config: Transforms, probabilities and ranges (default: ``AugmentConfig()``).
    """

    def __init__(self, config: AugmentConfig | None = None) -> None:
        self.config = config or AugmentConfig()
        self.chain = [(name, TRANSFORMS.get(name)) for name in ORDER if name in self.config.transforms]

    def __call__(
        self,
        wave: torch.Tensor,
        sample_rate: int,
        *,
        seed: int | None = None,
        generator: torch.Generator | None = None,
        name: str = "wave",
    ) -> torch.Tensor:
        """One augmented view of ``wave``.

        Args:
            wave: Audio [..., T] (mono [T], channels [C, T] or a batch [B, T]: every row gets the same draws).
            sample_rate: Hz of ``wave``.
            seed: The item's seed (e.g. ``mix_seed(seed, epoch, key)``); mixed with ``config.seed``.
            generator: Instead of ``seed``: one draw from it seeds the item (it advances by one draw).
            name: Names the input in errors.

        Returns:
            float32 [..., T], finite, peak ≤ ``config.peak``; the same ``seed`` gives the same output bit for bit.

        Raises:
            ValueError: empty or non-finite input, a bad rate, or both / neither of ``seed`` and ``generator``.
        """
        if (seed is None) == (generator is None):
            raise ValueError(f"augment {name}: give exactly one of seed= and generator=")
        if generator is not None:
            seed = int(torch.randint(2**62, (), generator=generator))
        _check_input(wave, sample_rate, name)
        shape = wave.shape
        x = wave.detach().to("cpu", torch.float32).reshape(-1, shape[-1])  # [N, T]
        for transform_name, transform in self.chain:
            section = getattr(self.config, transform_name)
            gen = torch.Generator().manual_seed(mix_seed(self.config.seed, seed, transform_name))
            if float(torch.rand((), generator=gen, dtype=torch.float64)) < section.p:
                x = transform(x, sample_rate, section, gen)
        if not torch.isfinite(x).all():  # a defect of a transform, not of the input (checked above)
            raise RuntimeError(
                f"augment {name}: the chain {self.config.transforms} made non-finite samples (seed {seed})"
            )
        top = float(x.abs().max())
        if top > self.config.peak:
            x = x * (self.config.peak / top)
        return x.reshape(shape).to(wave.device)


def _check_input(wave: torch.Tensor, sample_rate: int, name: str) -> None:
    if not isinstance(wave, torch.Tensor) or wave.ndim == 0:
        raise ValueError(f"augment {name}: expected a waveform tensor [..., T], got {type(wave).__name__}")
    if wave.shape[-1] == 0 or wave.numel() == 0:
        raise ValueError(f"augment {name}: 0 samples; expected audio of at least 1 sample")
    if not torch.isfinite(wave).all():
        raise ValueError(f"augment {name}: NaN or Inf samples; decode and check the audio first")
    if sample_rate <= 0:
        raise ValueError(f"augment {name}: sample_rate={sample_rate}; expected a positive rate in Hz")


def augment(
    wave: torch.Tensor,
    sample_rate: int,
    *,
    seed: int | None = None,
    generator: torch.Generator | None = None,
    config: AugmentConfig | None = None,
) -> torch.Tensor:
    """One augmented view of ``wave`` [..., T] (see :class:`Augmenter`; ``config`` defaults to ``AugmentConfig()``)."""
    return Augmenter(config)(wave, sample_rate, seed=seed, generator=generator)
