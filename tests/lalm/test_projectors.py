"""Every registered projector: output shapes, masking, gradient flow through the whole model."""

from __future__ import annotations

import pytest
import torch

from clapkit.lalm import PROJECTORS, ConversationSample, build_projector
from tests.lalm.conftest import PROJECTOR_PARAMS, make_lalm, tone


def test_every_projector_has_test_settings():
    assert sorted(PROJECTOR_PARAMS) == PROJECTORS.names()


def _batch(model):
    samples = [
        ConversationSample(
            "a",
            [{"role": "user", "content": "<Audio>\nWhat sound is this?"}, {"role": "assistant", "content": "A dog."}],
            [tone(440, 1.5)],
        ),
        ConversationSample(
            "b",
            [
                {"role": "user", "content": "<Audio> then <Audio>: which comes first?"},
                {"role": "assistant", "content": "The bell."},
            ],
            [tone(300, 0.4), tone(900, 0.8)],
        ),
    ]
    return model.collator()(samples)


@pytest.mark.parametrize("name", PROJECTORS.names())
def test_shapes_and_mask(name):
    torch.manual_seed(0)
    proj = build_projector(name, 24, 32, num_layers=2, **PROJECTOR_PARAMS[name])
    lengths = torch.tensor([37, 20, 1])
    feats = torch.randn(3, 37, 24)
    mask = torch.arange(37)[None, :] < lengths[:, None]
    tokens, tmask = proj(feats, mask)
    assert tokens.shape == (3, proj.num_tokens(37), 32)
    assert tmask.shape == tokens.shape[:2] and tmask.dtype == torch.bool
    assert tmask.sum(1).tolist() == [proj.num_tokens(int(n)) for n in lengths]
    assert torch.isfinite(tokens).all()
    # What lies under the mask must not change the real tokens.
    noisy = feats.clone()
    noisy[~mask] = torch.randn(int((~mask).sum()), 24) * 100
    tokens2, _ = proj(noisy, mask)
    torch.testing.assert_close(tokens2[tmask], tokens[tmask])


@pytest.mark.parametrize("name", PROJECTORS.names())
def test_gradient_reaches_every_projector_parameter_only(name):
    model = make_lalm(name, **PROJECTOR_PARAMS[name])
    with torch.no_grad():  # xattn gates start closed (no gradient behind them); open them for this check
        for pname, p in model.projector.named_parameters():
            if "gate" in pname:
                p.fill_(0.5)
    out = model.step(_batch(model))
    assert torch.isfinite(out.loss)
    out.loss.backward()
    for pname, p in model.projector.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, pname
    assert all(p.grad is None for p in model.llm.parameters())
    assert all(p.grad is None for p in model.encoder.parameters())


def test_xattn_starts_as_the_unchanged_llm():
    model = make_lalm("xattn", **PROJECTOR_PARAMS["xattn"])
    batch = _batch(model)
    out = model.step(batch)
    text_only = model.llm(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    torch.testing.assert_close(out.logits, text_only.logits, rtol=0, atol=0)
    out.loss.backward()
    gates = [p.grad for n, p in model.projector.named_parameters() if n.endswith("attn_gate")]
    assert gates and all(g.abs().sum() > 0 for g in gates)  # the gates learn to open
    with torch.no_grad():
        for n, p in model.projector.named_parameters():
            if "gate" in n:
                p.fill_(0.5)
    assert not torch.allclose(model.step(batch).logits, text_only.logits)


def test_xattn_text_before_the_first_marker_sees_no_audio():
    model = make_lalm("xattn", **PROJECTOR_PARAMS["xattn"])
    with torch.no_grad():
        for n, p in model.projector.named_parameters():
            if "gate" in n:
                p.fill_(0.5)
    sample = ConversationSample(
        "x", [{"role": "user", "content": "Listen: <Audio>"}, {"role": "assistant", "content": "Rain."}], [tone(500, 1)]
    )
    batch = model.collator()([sample])
    logits = model.step(batch).logits
    first_marker = int((batch["input_ids"][0] == model.audio_id).nonzero()[0])
    ffn_only = model.llm(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    # Before the marker only the (open) feed-forward gates act, with no audio: same as with different audio.
    other = ConversationSample("y", sample.messages, [tone(2000, 1) * 0.1])
    logits_other = model.step(model.collator()([other])).logits
    torch.testing.assert_close(logits[0, :first_marker], logits_other[0, :first_marker])
    assert not torch.allclose(logits[0, first_marker:], logits_other[0, first_marker:])
    assert not torch.allclose(logits, ffn_only.logits)


def test_unknown_projector_and_bad_params():
    with pytest.raises(KeyError, match="linear, mlp2x_gelu, qformer, xattn"):
        build_projector("perceiver", 8, 8, num_layers=1)
    with pytest.raises(ValueError, match="bad parameters"):
        build_projector("linear", 8, 8, num_layers=1, depth=3)
