"""Decoding one clip of a shard sample at the model rate, cropped or padded in place.

Audio longer than the clip is cut while decoding (a seek, then one clip's worth of frames), so a long recording
costs one clip's decode.
"""

from __future__ import annotations

import io
import math

import soundfile as sf
import torch

from clapkit.audio import PadMode, fit_length, load_audio

__all__ = ["read_clip"]


def read_clip(
    data: bytes,
    name: str,
    out: torch.Tensor,
    *,
    sample_rate: int,
    pad: PadMode,
    random_crop: bool,
    generator: torch.Generator,
) -> int:
    """Decode one clip at ``sample_rate``, cropped or padded to ``out`` [T] (written in place).

    Audio longer than the clip is cut while decoding (a seek, then one clip's worth of frames at the
    random or centre offset), so a 5-minute recording costs a 10-second decode. The writer's own format
    (integer PCM, mono, at the model rate) is read straight into ``out``; anything else goes through
    :func:`clapkit.audio.load_audio` (downmix, resampling, NaN / Inf check) and :func:`fit_length`.

    Args:
        data: The encoded audio (a tar member's bytes).
        name: Names the audio in errors.
        out: Where the clip goes [T].
        sample_rate: Hz the model takes.
        pad: How a short clip is padded (``repeatpad`` or ``zero``).
        random_crop: A random offset into longer audio (drawn from ``generator``), else the centre.
        generator: Crop offsets.

    Returns:
        Samples of real audio in ``out`` (the rest is padding).

    Raises:
        ValueError: undecodable, empty or non-finite audio.
    """
    clip = out.shape[0]
    try:
        with sf.SoundFile(io.BytesIO(data)) as f:
            rate, frames, channels = f.samplerate, f.frames, f.channels
            need = math.ceil(clip * rate / sample_rate)  # source frames for one clip
            if frames > need:
                if random_crop:
                    f.seek(int(torch.randint(0, frames - need + 1, (1,), generator=generator)))
                else:
                    f.seek((frames - need) // 2)
            direct = f.subtype.startswith("PCM") and channels == 1 and rate == sample_rate
            if direct:  # integer PCM is never NaN, and needs no downmix or resampling
                n = min(frames, clip)
                length = len(f.read(n, dtype="float32", out=out[:n].numpy()))
            else:
                window = f.read(min(frames, need), dtype="float32", always_2d=True)  # [S, C]
    except (sf.LibsndfileError, RuntimeError, TypeError) as err:
        raise ValueError(f"{name}: cannot decode audio ({err})") from err
    if direct:
        if length == 0:
            raise ValueError(f"{name}: 0 samples after decoding; expected audio of at least 1 frame")
        if length < clip:
            out[length:] = fit_length(out[:length], clip, pad=pad)[length:]
        return length
    mono = window[:, 0] if channels == 1 else window.mean(axis=1)
    wave = load_audio((mono, rate), sample_rate, name=name)  # [S']
    crop = "random" if random_crop else "center"
    out.copy_(fit_length(wave, clip, pad=pad, crop=crop, generator=generator))
    return min(len(wave), clip)
