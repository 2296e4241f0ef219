import io

import numpy as np
import pytest
import soundfile as sf
import torch

from clapkit import audio
from tests.conftest import tone


def test_load_file_resamples_and_downmixes(wav_file):
    path = wav_file("stereo.flac", seconds=0.5, rate=22050, channels=2)
    wave = audio.load_audio(path, 16000)
    assert wave.dtype == torch.float32 and wave.dim() == 1
    assert abs(wave.shape[0] - 8000) <= 1
    # A 440 Hz tone stays a 440 Hz tone after resampling.
    spectrum = np.abs(np.fft.rfft(wave.numpy()))
    assert abs(np.argmax(spectrum) * 16000 / len(wave) - 440) < 5


@pytest.mark.parametrize("fmt", ["WAV", "FLAC", "OGG", "MP3"])
def test_formats_from_bytes_and_file_objects(fmt):
    buf = io.BytesIO()
    sf.write(buf, tone(440, 0.5, 16000), 16000, format=fmt)
    data = buf.getvalue()
    from_bytes = audio.load_audio(data, 16000)
    from_file = audio.load_audio(io.BytesIO(data), 16000)
    assert torch.equal(from_bytes, from_file)
    assert abs(len(from_bytes) - 8000) < 2000  # lossy codecs pad a little


def test_arrays_with_rates():
    x = tone(440, 1.0, 8000)
    up = audio.load_audio((x, 8000), 16000)
    assert up.shape[0] == 16000
    same = audio.load_audio(x, 16000)  # bare array: already at the target rate
    assert torch.equal(same, torch.from_numpy(x))
    stereo = np.stack([x, x])  # [C, T]
    assert torch.allclose(audio.load_audio(stereo, 8000), torch.from_numpy(x))
    assert torch.allclose(audio.load_audio(stereo.T, 8000), torch.from_numpy(x))  # [T, C]
    pcm = (x * 32767).astype(np.int16)
    assert torch.allclose(audio.load_audio(pcm, 8000), torch.from_numpy(x), atol=1e-4)


@pytest.mark.parametrize(
    "source, message",
    [
        (b"", "empty bytes"),
        (b"definitely not audio" * 10, "cannot decode"),
        (np.zeros(0, dtype=np.float32), "0 samples"),
        (np.array([0.1, np.nan, 0.2], dtype=np.float32), "NaN/Inf"),
        (np.array([0.1, np.inf], dtype=np.float32), "NaN/Inf"),
        (np.zeros((2, 2, 2), dtype=np.float32), "1-D"),
        (object(), "unsupported audio input"),
    ],
)
def test_bad_input_raises_value_error(source, message):
    with pytest.raises(ValueError, match=message):
        audio.load_audio(source, 16000)


def test_bad_files_are_named(tmp_path):
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match=r"empty\.wav: empty file"):
        audio.load_audio(empty, 16000)
    junk = tmp_path / "junk.flac"
    junk.write_bytes(b"RIFF1234notreallyaudio")
    with pytest.raises(ValueError, match=r"junk\.flac: cannot decode"):
        audio.load_audio(junk, 16000)
    with pytest.raises(ValueError, match="no such audio file"):
        audio.load_audio(tmp_path / "missing.wav", 16000)


def test_fit_length_policies():
    x = torch.arange(1, 4, dtype=torch.float32)  # [1, 2, 3]
    assert audio.fit_length(x, 8, pad="repeatpad").tolist() == [1, 2, 3, 1, 2, 3, 0, 0]
    assert audio.fit_length(x, 5, pad="zero").tolist() == [1, 2, 3, 0, 0]
    y = torch.arange(10, dtype=torch.float32)
    assert audio.fit_length(y, 4, crop="center").tolist() == [3, 4, 5, 6]
    assert audio.fit_length(y, 4, crop="start").tolist() == [0, 1, 2, 3]
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    a = audio.fit_length(y, 4, crop="random", generator=g1)
    b = audio.fit_length(y, 4, crop="random", generator=g2)
    assert torch.equal(a, b) and a.tolist() == list(range(int(a[0]), int(a[0]) + 4))
    with pytest.raises(ValueError, match="unknown pad mode"):
        audio.fit_length(x, 8, pad="mirror")


def test_sliding_windows_cover_the_end_deterministically():
    x = torch.arange(25, dtype=torch.float32)
    w = audio.sliding_windows(x, 10, 5)
    assert w.shape == (4, 10)
    assert w[0, 0] == 0 and w[-1, -1] == 24  # last window ends at the end
    assert audio.window_starts(25, 10, 5) == [0, 5, 10, 15]
    assert audio.window_starts(10, 10, 5) == [0]
    short = audio.sliding_windows(torch.ones(3), 10, 5, pad="zero")
    assert short.shape == (1, 10) and short.sum() == 3


def test_chunk_reports_real_samples():
    chunks, valid = audio.chunk(torch.ones(25), 10)
    assert chunks.shape == (3, 10) and valid.tolist() == [10, 10, 5]
    assert chunks[2, 5:].abs().sum() == 0
