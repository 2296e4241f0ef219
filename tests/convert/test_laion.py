"""LAION-CLAP checkpoints: clapkit's embeddings vs laion-clap's own forward (float32, ≤ 1e-5)."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

import clapkit
from clapkit.checkpoint import read_torch_state
from clapkit.cli import main
from clapkit.convert import laion, load_checkpoint
from tests.convert.conftest import STAND_IN_TOKENIZER, build_laion, laion_tokenize, save_laion

TOL = 1e-5


def _laion_audio(model, wave: torch.Tensor) -> torch.Tensor:
    return model.get_audio_embedding([{"waveform": w} for w in wave])  # [B, 512], normalised


def test_htsat_tiny_transformer_text_matches_laion_clap(laion_tiny, laion_wave):
    model, path = laion_tiny
    ours = clapkit.load(path)  # the .pt path goes straight to the converter
    assert ours.config.audio_tower.params["patch_embeds_hidden_size"] == 96 and ours.config.text_tower.name == "clip"
    with torch.no_grad():
        assert (ours.encode_audio(laion_wave) - _laion_audio(model, laion_wave)).abs().max() <= TOL
        captions = ["a dog barks twice", "rain on a tin roof while thunder rolls in the distance"]
        theirs_ids = laion_tokenize(captions)  # LAION's CLIP BPE, [2, 77]
        ours_tokens = ours.tokenize(captions)
        assert torch.equal(ours_tokens["input_ids"], theirs_ids)
        theirs = F.normalize(model.encode_text(theirs_ids, device="cpu"), dim=-1)
        assert (ours.encode_text(ours_tokens) - theirs).abs().max() <= TOL
    assert torch.equal(ours.logit_scale, model.logit_scale_a)


def test_htsat_base_roberta_text_matches_laion_clap(tmp_path, laion_wave):
    model = build_laion("base", "roberta", seed=1)
    path = save_laion(model, tmp_path / "base.pt", stale_position_ids=True)
    ours = load_checkpoint(path, tokenizer=STAND_IN_TOKENIZER)
    params = ours.config.audio_tower.params
    assert (params["patch_embeds_hidden_size"], params["depths"], params["hidden_size"]) == (128, [2, 2, 12, 2], 1024)
    assert ours.config.text_tower.params["pooling"] == "pooler"
    gen = torch.Generator().manual_seed(3)
    ids = torch.randint(3, 1000, (2, 12), generator=gen)
    ids[:, 0], ids[0, -1], ids[1, 7], ids[1, 8:] = 0, 2, 2, 1  # <s> … </s>, row 1 padded with <pad> = 1
    mask = (ids != 1).long()
    with torch.no_grad():
        assert (ours.encode_audio(laion_wave[:1]) - _laion_audio(model, laion_wave[:1])).abs().max() <= TOL
        theirs = model.get_text_embedding({"input_ids": ids.clone(), "attention_mask": mask.clone()})
        assert (ours.encode_text({"input_ids": ids, "attention_mask": mask}) - theirs).abs().max() <= TOL


def test_front_end_matches_laion_torchlibrosa(laion_tiny, laion_wave):
    """clapkit's LogMel vs laion-clap's torchlibrosa STFT + librosa mel (dB) on the same audio.

    Tolerance: 2e-4 dB on noise; on tones, 1e-3 dB in bins within 60 dB of the peak. Further down, float32
    rounding of the two STFTs (a convolution vs an FFT) reaches ~0.1 dB near the -100 dB floor.
    """
    model, _ = laion_tiny
    ours = clapkit.load(laion_tiny[1]).audio_tower.frontend
    branch = model.audio_branch
    with torch.no_grad():
        theirs = branch.logmel_extractor(branch.spectrogram_extractor(laion_wave))[:, 0]  # [B, frames, mels]
        mine = ours(laion_wave)
    assert mine.shape == theirs.shape == (2, 1001, 64)
    diff = (mine - theirs).abs()
    assert diff[0].max() <= 2e-4
    loud = theirs[1] > theirs[1].max() - 60
    assert loud.float().mean() > 0.2 and diff[1][loud].max() <= 1e-3


def test_convert_command_writes_an_offline_folder(laion_tiny, laion_wave, tmp_path, capsys):
    model, path = laion_tiny
    assert main(["convert", str(path), "--out", str(tmp_path / "clap")]) == 0
    out = capsys.readouterr().out
    assert "left out" in out and "AudioSet tagging head" in out and "LAION's training loss" in out
    folder = clapkit.load(tmp_path / "clap")  # a clapkit save_pretrained folder now
    with torch.no_grad():
        assert (folder.encode_audio(laion_wave[:1]) - _laion_audio(model, laion_wave[:1])).abs().max() <= TOL


def test_strict_load_reports_what_does_not_fit(laion_tiny, tmp_path):
    model, _ = laion_tiny
    state = dict(model.state_dict())
    del state["audio_branch.norm.bias"]
    state["audio_branch.extra.weight"] = torch.zeros(3)
    torch.save({"state_dict": state}, tmp_path / "broken.pt")
    with pytest.raises(ValueError) as err:
        load_checkpoint(tmp_path / "broken.pt")
    text = str(err.value)
    assert "broken.pt" in text and "missing keys: audio_tower.model.audio_encoder.norm.bias" in text
    assert "unexpected keys: audio_tower.model.audio_encoder.extra.weight" in text


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ({"audio_branch.fusion_model.local_att.0.weight": torch.zeros(1)}, "fusion checkpoint"),
        ({"audio_branch.logmel_extractor.melW": torch.rand(513, 64)}, "mel filterbank"),
        ({"text_branch.embeddings.token_type_embeddings.weight": torch.zeros(2, 8)}, "BERT"),
    ],
)
def test_unsupported_variants_are_refused(laion_tiny, tmp_path, edit, message):
    state = {**laion_tiny[0].state_dict(), **edit}
    if "text_branch.embeddings.token_type_embeddings.weight" in edit:
        state["text_branch.embeddings.word_embeddings.weight"] = torch.zeros(10, 8)
    torch.save({"state_dict": state}, tmp_path / "variant.pt")
    with pytest.raises(ValueError, match=message):
        load_checkpoint(tmp_path / "variant.pt")


def test_every_dropped_key_has_a_reason(laion_tiny):
    state = read_torch_state(laion_tiny[1])
    _, dropped = laion.laion_state(state)
    assert dropped and all(laion.dropped_reason(k) for k in dropped)
    assert not any(k.startswith("module.") for k in state)
    assert {k.split(".")[0] for k in dropped} == {"audio_branch", "audio_transform", "text_transform", "logit_scale_t"}


def test_tokenizer_option_is_for_roberta_towers_only(laion_tiny):
    with pytest.raises(ValueError, match="CLIP-style"):
        load_checkpoint(laion_tiny[1], tokenizer=STAND_IN_TOKENIZER)
