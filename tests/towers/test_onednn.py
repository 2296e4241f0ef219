"""oneDNN linear layers on the CPU: the autograd function against F.linear, the mode, the towers that use it."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from clapkit.factory import create_model
from clapkit.towers import onednn
from tests.conftest import build_tiny_model

pytestmark = pytest.mark.skipif(
    not onednn.available(), reason="this torch build has no oneDNN linear kernel (torch.ops.mkldnn._linear_pointwise)"
)


@pytest.fixture
def counted(monkeypatch) -> list[int]:
    """Counts the calls of OneDnnLinear."""
    calls: list[int] = []
    apply = onednn.OneDnnLinear.apply
    monkeypatch.setattr(onednn.OneDnnLinear, "apply", lambda *a: calls.append(1) or apply(*a))
    return calls


@pytest.mark.parametrize("bias", [True, False])
def test_function_matches_f_linear(bias):
    """Output and the gradients of input, weight and bias equal F.linear's, for a 3-d input and an upstream
    gradient that arrives non-contiguous."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(3, 50, 24, generator=generator)
    w = torch.randn(40, 24, generator=generator)
    b = torch.randn(40, generator=generator) if bias else None
    upstream = torch.randn(40, 50, 3, generator=generator).permute(2, 1, 0)  # [3, 50, 40], non-contiguous
    results = []
    for fn in (F.linear, onednn.OneDnnLinear.apply):
        leaves = [t.clone().requires_grad_() for t in (x, w, b) if t is not None]
        out = fn(leaves[0], leaves[1], leaves[2] if bias else None)
        out.backward(upstream)
        results.append([out.detach()] + [t.grad for t in leaves])
    for ref, got in zip(*results):
        assert got.shape == ref.shape
        assert torch.allclose(got, ref, atol=1e-4, rtol=1e-5)


def test_only_the_needed_gradients_are_computed():
    x = torch.randn(8, 6)
    w = torch.randn(5, 6, requires_grad=True)
    onednn.OneDnnLinear.apply(x, w, None).sum().backward()
    assert torch.allclose(w.grad, torch.ones(8, 5).T @ x, atol=1e-5)
    assert x.grad is None


def test_mode_routes_linear_layers(counted):
    """nn.Linear layers go through OneDnnLinear inside the block, with the same outputs and gradients; nothing does
    outside it. nn.MultiheadAttention runs as it is (the mode sees F.multi_head_attention_forward, not the
    projections inside it)."""
    torch.manual_seed(0)
    attn = nn.MultiheadAttention(16, 2, batch_first=True)
    mlp = nn.Sequential(nn.Linear(16, 32), nn.GELU(), nn.Linear(32, 16))
    params = [*attn.parameters(), *mlp.parameters()]

    def run(x):
        return mlp(attn(x, x, x, need_weights=False)[0])

    x = torch.randn(2, 5, 16, requires_grad=True)
    ref = run(x)
    ref.square().sum().backward()
    ref_grads = [x.grad.clone()] + [p.grad.clone() for p in params]
    assert counted == []
    x.grad = None
    for p in params:
        p.grad = None
    with onednn.onednn_linears(x):
        out = run(x)
    out.square().sum().backward()
    assert len(counted) == 2  # the two nn.Linear layers
    assert torch.allclose(out, ref, atol=1e-5)
    for got, want in zip([x.grad] + [p.grad for p in params], ref_grads):
        assert torch.allclose(got, want, atol=1e-4, rtol=1e-5)


def test_mode_takes_keyword_arguments(counted):
    x, w, b = torch.randn(3, 8), torch.randn(4, 8), torch.randn(4)
    with onednn.onednn_linears(x):
        out = F.linear(input=x, weight=w, bias=b)
        no_bias = F.linear(x, weight=w)
    assert len(counted) == 2
    assert torch.allclose(out, F.linear(x, w, b), atol=1e-5)
    assert torch.allclose(no_bias, F.linear(x, w), atol=1e-5)


def test_mode_stays_out_of_autocast_other_dtypes_and_when_disabled(counted, monkeypatch):
    layer = nn.Linear(8, 4)
    x = torch.randn(3, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16), onednn.onednn_linears(x):
        assert layer(x).dtype == torch.bfloat16
    with onednn.onednn_linears(x.double()):
        layer.double()(x.double())
    assert counted == []
    monkeypatch.setattr(onednn, "_AVAILABLE", False)
    with onednn.onednn_linears(x):
        layer.float()(x)
    assert counted == []


@pytest.mark.parametrize("name", ["htsat-tiny", "vit-tiny", "clapkit-small"])
def test_towers_use_it_and_keep_their_outputs(name, counted, monkeypatch):
    """The CLIP text, Hugging Face text and ViT audio towers run their linear layers through oneDNN (HTSAT has
    its own path, tests/towers/test_htsat_fast.py), with the embeddings F.linear gives."""
    model = build_tiny_model() if name == "htsat-tiny" else create_model(name).eval()
    wave = torch.randn(2, model.config.audio.clip_samples, generator=torch.Generator().manual_seed(0)) * 0.1
    tokens = model.tokenize(["a dog barks then a bell rings", "rain"])
    with torch.no_grad():
        text = model.encode_text(tokens)
        after_text = len(counted)
        audio = model.encode_audio(wave)
    assert after_text > 0  # the text tower's layers
    if name == "vit-tiny":
        assert len(counted) > after_text  # the ViT's layers
    n = len(counted)
    monkeypatch.setattr(onednn, "_AVAILABLE", False)
    with torch.no_grad():
        audio_ref, text_ref = model.encode_audio(wave), model.encode_text(tokens)
    assert len(counted) == n
    assert torch.allclose(audio, audio_ref, atol=1e-5)
    assert torch.allclose(text, text_ref, atol=1e-5)
