"""oneDNN linear layers on the CPU: the autograd function against F.linear, the mode, the towers that use it."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from clapkit.accel import onednn
from clapkit.factory import create_model
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
    """nn.Linear layers, and the two projections of nn.MultiheadAttention's self-attention, go through
    OneDnnLinear inside the block, with the same outputs and gradients; nothing does outside it."""
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
    assert len(counted) == 4  # the attention's in and out projections, the two nn.Linear layers
    assert torch.allclose(out, ref, atol=1e-5)
    for got, want in zip([x.grad] + [p.grad for p in params], ref_grads):
        assert torch.allclose(got, want, atol=1e-4, rtol=1e-5)


def _causal(length: int, kind: str) -> torch.Tensor:
    upper = torch.ones(length, length, dtype=torch.bool).triu(1)  # True: may not attend (nn.MultiheadAttention)
    if kind == "bool":
        return upper
    mask = torch.zeros(length, length).masked_fill(upper, float("-inf"))
    return mask if kind == "float" else mask.expand(2 * 4, length, length)  # "3d": [N·heads, L, L]


@pytest.mark.parametrize(
    ("call", "fast"),
    [
        ({}, True),
        ({"attn_mask": "float"}, True),
        ({"attn_mask": "bool"}, True),
        ({"attn_mask": "3d"}, True),
        ({"attn_mask": "float", "is_causal": True}, True),
        ({"key_padding_mask": True}, False),  # torch's own path for all of these
        ({"need_weights": True}, False),
        ({"cross": True}, False),
    ],
)
@pytest.mark.parametrize("batch_first", [True, False])
def test_self_attention_matches_torch(call, fast, batch_first, counted):
    """nn.MultiheadAttention's self-attention under the mode: the same output and gradients as torch's
    F.multi_head_attention_forward for every mask form; the calls it does not cover run as they are."""
    torch.manual_seed(0)
    attn = nn.MultiheadAttention(16, 4, batch_first=batch_first)
    x = torch.randn(2, 5, 16) if batch_first else torch.randn(5, 2, 16)
    x.requires_grad_(True)
    kwargs = {"need_weights": call.get("need_weights", False), "is_causal": call.get("is_causal", False)}
    if "attn_mask" in call:
        kwargs["attn_mask"] = _causal(5, call["attn_mask"])
    if call.get("key_padding_mask"):
        kwargs["key_padding_mask"] = torch.tensor([[False] * 5, [False] * 3 + [True] * 2])
    other = torch.randn_like(x) if call.get("cross") else x

    def run():
        x.grad = None
        attn.zero_grad()
        out = attn(x, other, other, **kwargs)[0]
        out.square().sum().backward()
        return [out.detach(), x.grad] + [p.grad for p in attn.parameters()]

    want = run()
    with onednn.onednn_linears(x):
        got = run()
    assert len(counted) == (2 if fast else 0)
    for g, w in zip(got, want):
        assert torch.allclose(g, w, atol=1e-5, rtol=1e-4)


def test_self_attention_takes_a_bool_mask_called_directly(counted):
    """nn.MultiheadAttention turns a bool mask into a float one before it calls F.multi_head_attention_forward;
    called directly with a bool mask (True: may not attend), the mode gives torch's result too."""
    torch.manual_seed(0)
    attn = nn.MultiheadAttention(16, 4)
    x = torch.randn(5, 2, 16)
    args = (x, x, x, 16, 4, attn.in_proj_weight, attn.in_proj_bias, None, None, False, 0.0)
    kwargs = {"out_proj_weight": attn.out_proj.weight, "out_proj_bias": attn.out_proj.bias, "need_weights": False}
    mask = _causal(5, "bool")
    want = F.multi_head_attention_forward(*args, attn_mask=mask, **kwargs)[0]
    with onednn.onednn_linears(x):
        got = F.multi_head_attention_forward(*args, attn_mask=mask, **kwargs)[0]
    assert len(counted) == 2
    assert torch.allclose(got, want, atol=1e-5)
    with onednn.onednn_linears(x), pytest.raises(AssertionError, match="was expecting embedding dimension of 8"):
        F.multi_head_attention_forward(x, x, x, 8, *args[4:], **kwargs)  # torch's own error, not a wrong result


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
    its own path, tests/accel/test_htsat.py), with the embeddings F.linear gives."""
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
