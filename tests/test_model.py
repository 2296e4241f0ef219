"""Every registered architecture: forward, backward, save → load, batch invariance, long audio, bad input."""

import numpy as np
import pytest
import torch

import clapkit
from clapkit.model import ClapModel

#: LAION's published architectures need the roberta-base tokenizer from the Hugging Face hub (not available offline);
#: they are verified against laion-clap and transformers in tests/convert/ instead.
MODELS = [m for m in clapkit.list_models() if not m.startswith("laion-")]


@pytest.fixture(scope="module", params=MODELS)
def model(request) -> ClapModel:
    torch.manual_seed(0)
    return clapkit.create_model(request.param).eval()


def _clip(model: ClapModel, seconds: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n = int(seconds * model.sample_rate)
    t = np.arange(n) / model.sample_rate
    return (0.3 * np.sin(2 * np.pi * (200 + 100 * seed) * t) + 0.05 * rng.standard_normal(n)).astype(np.float32)


def test_forward_shapes_and_normalisation(model):
    wave = torch.from_numpy(np.stack([_clip(model, model.config.audio.clip_seconds, s) for s in (0, 1)]))
    with torch.no_grad():
        out = model(wave, model.tokenize(["a dog barks", "rain falls, then thunder"]))
    assert out["audio_embeds"].shape == out["text_embeds"].shape == (2, model.embed_dim)
    for key in ("audio_embeds", "text_embeds"):
        assert torch.allclose(out[key].norm(dim=-1), torch.ones(2), atol=1e-5)
    assert out["logit_scale"].ndim == 0 and 1.0 < float(out["logit_scale"]) <= model.config.logit_scale_max


def test_backward_reaches_trainable_parameters_only(model):
    model.train()
    try:
        clip = model.config.audio.clip_samples
        wave = torch.randn(2, clip) * 0.1
        out = model(wave, model.tokenize(["a dog barks", "a cat meows"]))
        logits = out["logit_scale"] * out["audio_embeds"] @ out["text_embeds"].T
        loss = torch.nn.functional.cross_entropy(logits, torch.arange(2))
        loss.backward()
        trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        assert trainable
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for n, p in trainable if "logit" in n)
        with_grad = [n for n, p in trainable if p.grad is not None and p.grad.abs().sum() > 0]
        assert any("audio_projection" in n for n in with_grad) and any("text_projection" in n for n in with_grad)
        for tower_cfg, tower in (
            (model.config.audio_tower, model.audio_tower),
            (model.config.text_tower, model.text_tower),
        ):
            if tower_cfg.freeze:
                assert all(p.grad is None for p in tower.parameters())
                assert not tower.training  # frozen towers stay in eval mode (BatchNorm statistics)
    finally:
        model.zero_grad(set_to_none=True)
        model.eval()


def test_save_load_round_trip(model, tmp_path):
    clips = [_clip(model, 1.5, 0), _clip(model, 3.0, 1)]
    texts = ["a dog barking followed by rain", "rain followed by a dog barking"]
    before_a, before_t = model.embed_audio(clips), model.embed_text(texts)
    model.save_pretrained(tmp_path / "m")
    assert (tmp_path / "m" / "config.json").is_file() and (tmp_path / "m" / "model.safetensors").is_file()
    loaded = clapkit.load(tmp_path / "m")
    assert np.array_equal(loaded.embed_audio(clips), before_a)
    assert np.array_equal(loaded.embed_text(texts), before_t)
    assert [n for n, p in loaded.named_parameters() if p.requires_grad] == [
        n for n, p in model.named_parameters() if p.requires_grad
    ]


def test_batch_invariance_and_long_audio(model):
    """A clip's embedding is the same alone and in a batch of clips of other lengths (≤ 1e-5)."""
    clip_s = model.config.audio.clip_seconds
    target = _clip(model, 0.6 * clip_s, 0)
    others = [_clip(model, 2.6 * clip_s, 1), _clip(model, 0.2 * clip_s, 2), _clip(model, clip_s, 3)]
    alone = model.embed_audio([target])[0]
    mixed = model.embed_audio([others[0], target, *others[1:]], batch_size=3)
    assert np.abs(mixed[1] - alone).max() <= 1e-5
    # Long audio: deterministic windows, mean of window embeddings, same result every call.
    long_clip = others[0]
    first = model.embed_audio([long_clip], batch_size=2)[0]
    second = model.embed_audio([long_clip], batch_size=5)[0]
    assert np.abs(first - second).max() <= 1e-5
    cfg = model.config.audio
    wins = clapkit.audio.sliding_windows(torch.from_numpy(long_clip), cfg.clip_samples, cfg.hop_samples, pad=cfg.pad)
    assert len(wins) == 5  # 2.6 clips with a half-clip hop
    with torch.no_grad():
        manual = torch.nn.functional.normalize(model.encode_audio(wins).mean(0), dim=0).numpy()
    assert np.abs(manual - first).max() <= 1e-5


def test_audio_sequence_masks_padding(model):
    clip = model.config.audio.clip_samples
    wave = torch.zeros(2, int(2.5 * clip))
    wave[0] = torch.randn(wave.shape[1]) * 0.1
    wave[1, : clip // 2] = torch.randn(clip // 2) * 0.1
    with torch.no_grad():
        feats, mask = model.audio_sequence(wave, torch.tensor([wave.shape[1], clip // 2]))
    assert feats.shape[:2] == mask.shape and feats.shape[2] == model.sequence_dim
    per_window = mask.shape[1] // 3  # 2.5 clips → 3 windows, the last one half real
    assert mask[0, : 2 * per_window + per_window // 2 - 1].all() and not mask[0, -1]
    assert 0 < mask[1].sum() <= per_window // 2 + 1 and not mask[1, per_window:].any()


def test_bad_audio_names_the_input(model, tmp_path):
    with pytest.raises(ValueError, match="NaN/Inf"):
        model.embed_audio([np.array([0.0, np.nan, 0.1], dtype=np.float32)])
    bad = tmp_path / "broken.wav"
    bad.write_bytes(b"RIFF....WAVEfmt garbage")
    with pytest.raises(ValueError, match="broken.wav"):
        model.embed_audio([bad])
    with pytest.raises(ValueError, match="empty"):
        model.embed_text(["   "])
