import json

import numpy as np
import pytest
import torch

from clapkit.config import CONFIG_DIR, MelConfig
from clapkit.features import LAION_PRESET, LogMel


def test_laion_preset_matches_transformers_feature_extractor():
    """clapkit's LAION front end equals ClapFeatureExtractor(rand_trunc, repeatpad) within 1e-4 dB."""
    from transformers import ClapFeatureExtractor

    x = (np.random.default_rng(0).standard_normal(480000) * 0.1).astype(np.float32)  # 10 s at 48 kHz
    fe = ClapFeatureExtractor(frequency_min=50, frequency_max=14000, truncation="rand_trunc", padding="repeatpad")
    ref = fe(x, sampling_rate=48000, return_tensors="np")["input_features"][0, 0]  # [frames, mels]
    ours = LogMel(LAION_PRESET)(torch.from_numpy(x)[None])[0].numpy()
    assert ours.shape == ref.shape == (1001, 64)
    assert np.abs(ours - ref).max() < 1e-4  # measured 6.3e-5 dB on values up to 37 dB


def test_aisfx_preset_matches_the_package_preprocessing(tmp_path):
    """The clapkit-small front end reproduces aisfx's own (librosa) spectrogram + normalisation."""
    import soundfile as sf
    from aisfx.preprocessing import spectrogram_normalize
    from aisfx.spectrogram.spectrogram_librosa import compute_spectrogram

    rng = np.random.default_rng(1)
    t = np.arange(44100 * 3) / 44100
    y = (0.3 * np.sin(2 * np.pi * 440 * t) + 0.05 * rng.standard_normal(t.size)).astype(np.float32)
    sf.write(tmp_path / "a.wav", y, 44100, subtype="FLOAT")
    ref = spectrogram_normalize(compute_spectrogram(str(tmp_path / "a.wav"), 44100, 2048, 1024, 96, 0.0, 22050.0))
    cfg = MelConfig(**json.loads((CONFIG_DIR / "clapkit-small.json").read_text())["frontend"])
    wave = torch.from_numpy(y)
    ours = LogMel(cfg)((wave / wave.abs().max())[None])[0].numpy()  # the package peak-normalises the file
    assert ours.shape == ref.T.shape == (130, 96)
    assert np.abs(ours - ref.T).max() < 1e-5  # measured 5.4e-7


def test_num_frames_matches_output():
    mel = LogMel(MelConfig(sample_rate=16000, n_fft=400, hop_length=160, n_mels=16, f_min=0, f_max=8000))
    for n in (400, 16000, 16161):
        assert mel(torch.zeros(1, n)).shape[1] == mel.num_frames(n)


def test_front_end_ignores_autocast_and_bad_configs_raise():
    mel = LogMel(LAION_PRESET)
    x = torch.randn(1, 48000)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = mel(x)
    assert y.dtype == torch.float32
    assert torch.allclose(y, mel(x))
    with pytest.raises(ValueError, match="unknown log type"):
        LogMel(MelConfig(log="log2"))
    with pytest.raises(ValueError, match="unknown mel norm"):
        LogMel(MelConfig(norm="l2"))
