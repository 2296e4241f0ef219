"""Hugging Face ClapModel folders: clapkit's embeddings vs transformers' get_audio/text_features (≤ 1e-5)."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoTokenizer, ClapConfig, ClapFeatureExtractor, ClapModel

import clapkit
from clapkit.convert import convert
from clapkit.towers.hf_text import resolve_path
from tests.convert.conftest import STAND_IN_TOKENIZER, perturb

TOL = 1e-5
RATE = 16000  # Hz
#: A small ClapModel: 3-stage HTSAT on 16 mel bins (2 s at 16 kHz → 201 frames ≤ 64·4), 1-layer RoBERTa-like text.
SMALL = {
    "text_config": {
        "vocab_size": 1000,
        "hidden_size": 32,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "intermediate_size": 37,
        "max_position_embeddings": 40,
    },
    "audio_config": {
        "patch_embeds_hidden_size": 16,
        "depths": [1, 1, 1],
        "num_attention_heads": [1, 2, 2],
        "window_size": 4,
        "spec_size": 64,
        "hidden_size": 64,
        "num_mel_bins": 16,
    },
    "projection_dim": 24,
}
FEATURES = {
    "feature_size": 16,
    "sampling_rate": RATE,
    "hop_length": 160,
    "max_length_s": 2,
    "fft_window_size": 400,
    "frequency_min": 50,
    "frequency_max": 8000,
}


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
    """(transformers ClapModel, feature extractor, save_pretrained folder with a tokenizer, as on the hub)."""
    torch.manual_seed(0)
    model = perturb(ClapModel(ClapConfig(**SMALL)), seed=1)
    folder = tmp_path_factory.mktemp("hf") / "clap"
    model.save_pretrained(folder)
    extractor = ClapFeatureExtractor(**FEATURES)
    extractor.save_pretrained(folder)
    AutoTokenizer.from_pretrained(resolve_path(STAND_IN_TOKENIZER)).save_pretrained(folder)
    return model, extractor, folder


def test_embeddings_match_transformers(hf_folder):
    model, extractor, folder = hf_folder
    ours = clapkit.load(folder)  # an HF ClapModel folder goes straight to the converter
    assert ours.config.frontend.n_mels == 16 and ours.config.frontend.f_min == 50.0 and ours.sample_rate == RATE
    gen = torch.Generator().manual_seed(2)
    wave = 0.1 * torch.randn(2, 2 * RATE, generator=gen)
    ids = torch.randint(3, 1000, (2, 12), generator=gen)
    ids[:, 0], ids[0, -1], ids[1, 7], ids[1, 8:] = 0, 2, 2, 1
    mask = (ids != 1).long()
    with torch.no_grad():
        inputs = extractor(list(wave.numpy()), sampling_rate=RATE, truncation="rand_trunc", return_tensors="pt")
        theirs = model.get_audio_features(**inputs).pooler_output
        # End to end: clapkit's torch front end vs the extractor's numpy one, then each model.
        assert (ours.encode_audio(wave) - theirs).abs().max() <= TOL
        # Same log-mel into both encoders: the converted weights alone.
        pooled = ours.audio_tower.model(input_features=inputs["input_features"]).pooler_output
        assert (torch.nn.functional.normalize(ours.audio_projection(pooled), dim=-1) - theirs).abs().max() <= TOL
        theirs_text = model.get_text_features(input_ids=ids, attention_mask=mask).pooler_output
        assert (ours.encode_text({"input_ids": ids, "attention_mask": mask}) - theirs_text).abs().max() <= TOL
    assert torch.equal(ours.logit_scale, model.logit_scale_a)
    assert ours.text_tower.model.config.layer_norm_eps == model.config.text_config.layer_norm_eps


def test_fusion_models_are_refused(tmp_path):
    config = ClapConfig(**{**SMALL, "audio_config": {**SMALL["audio_config"], "enable_fusion": True}})
    config.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "clap"
    with pytest.raises(ValueError, match="fusion model .*unfused"):
        clapkit.load(tmp_path)


def test_converted_folder_keeps_tokenizer_and_weights(hf_folder, tmp_path):
    model, _, folder = hf_folder
    out = convert(folder, tmp_path / "converted")
    restored = clapkit.load(out)
    assert len(restored.text_tower.tokenizer) == len(AutoTokenizer.from_pretrained(folder))
    captions = ["a dog barks", "rain falls on a roof"]
    tokens = restored.tokenize(captions)
    expected = AutoTokenizer.from_pretrained(folder)(captions, padding=True, return_tensors="pt")
    assert torch.equal(tokens["input_ids"], expected["input_ids"])
    # The stand-in tokenizer's ids exceed the small model's vocabulary: fold them into it for the forward pass.
    tokens["input_ids"] = tokens["input_ids"] % SMALL["text_config"]["vocab_size"]
    with torch.no_grad():
        theirs = model.get_text_features(**tokens).pooler_output
        assert (restored.encode_text(tokens) - theirs).abs().max() <= TOL


def test_missing_tokenizer_is_a_clear_error(hf_folder, tmp_path):
    model, extractor, _ = hf_folder
    model.save_pretrained(tmp_path / "no-tokenizer")  # no tokenizer files
    extractor.save_pretrained(tmp_path / "no-tokenizer")
    expected = r"(?s)no-tokenizer: .*cannot load a tokenizer from 'no-such-org/no-such-tokenizer'.*--tokenizer"
    with pytest.raises(ValueError, match=expected):
        convert(tmp_path / "no-tokenizer", tmp_path / "out", tokenizer="no-such-org/no-such-tokenizer")
    assert not (tmp_path / "out").exists()
