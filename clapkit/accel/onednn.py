"""oneDNN inner products for float32 linear layers on the CPU.

``F.linear`` and its backward call MKL's sgemm for float32 CPU tensors, and on AMD CPUs MKL takes a generic,
non-AVX-512 path. oneDNN's inner product (``torch.ops.mkldnn._linear_pointwise``, the op behind inductor's CPU
linear fusions) does not. Measured on an AVX-512 AMD EPYC, one thread, at the shapes of the towers here:

- output and input gradient 2.2-2.5x faster, weight gradient 1.3-2.3x (``OneDnnLinear``);
- all-MiniLM-L6-v2 embedding 64 captions: 0.20 s → 0.12 s; the 12-layer CLIP text tower, forward + backward
  of 16 captions: 0.59 s → 0.31 s (its MLPs and ``nn.MultiheadAttention``'s self-attention projections, see
  ``_self_attention``); HTSAT-tiny (``clapkit.accel.htsat``), forward + backward of 2 clips: 0.94 s → 0.59 s;
- the LALM's LLM (``clapkit.lalm.AudioLanguageModel`` runs its forward and ``generate`` in the mode): a stage-2
  LoRA step of a SmolLM2-shaped Llama, 4 conversations, 2.30 s → 1.56 s.

Outputs and gradients equal ``F.linear``'s up to float32 summation order. Nothing changes under autocast (there
``F.linear`` already runs oneDNN's bf16 GEMMs), for other dtypes or devices, or where this build of torch lacks
the op (``available()`` probes it once). ``CLAPKIT_ONEDNN=0`` in the environment turns it off.
"""

from __future__ import annotations

import contextlib
import inspect
import os
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

__all__ = ["LINEAR_POINTWISE", "OneDnnLinear", "available", "eligible", "linear", "onednn_linears"]

#: torch's own registration, not public API, hence the probe in ``available`` and the ``F.linear`` fallback.
LINEAR_POINTWISE = getattr(getattr(torch.ops, "mkldnn", None), "_linear_pointwise", None)
_AVAILABLE: bool | None = None


def available() -> bool:
    """Whether oneDNN inner products work in this torch build (and ``CLAPKIT_ONEDNN`` is not ``0``)."""
    global _AVAILABLE
    if _AVAILABLE is None:
        try:
            x, w = torch.ones(2, 3), torch.ones(4, 3)
            out = LINEAR_POINTWISE.binary(x, torch.ones(2, 4), w, torch.ones(4), "add")
            _AVAILABLE = bool(torch.backends.mkldnn.is_available() and torch.equal(out, torch.full((2, 4), 5.0)))
        except (AttributeError, RuntimeError, TypeError):
            _AVAILABLE = False
        _AVAILABLE = _AVAILABLE and os.environ.get("CLAPKIT_ONEDNN", "1") != "0"
    return _AVAILABLE


def eligible(x: torch.Tensor) -> bool:
    """A float32 CPU input outside autocast, with oneDNN available: where ``OneDnnLinear`` replaces ``F.linear``."""
    return x.device.type == "cpu" and x.dtype == torch.float32 and not torch.is_autocast_enabled("cpu") and available()


class OneDnnLinear(torch.autograd.Function):
    """``F.linear(x, weight, bias)`` whose three products are oneDNN inner products: the output, and in the
    backward pass the input gradient ``g @ W`` and the weight gradient ``gᵀ @ x``. Float32 CPU tensors only."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return LINEAR_POINTWISE(x, weight, bias, "none", [], "")

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, weight = ctx.saved_tensors
        grad_x = grad_weight = grad_bias = None
        grad2d = grad.reshape(-1, grad.shape[-1])  # [M, N]
        if ctx.needs_input_grad[0]:
            grad_x = LINEAR_POINTWISE(grad, weight.t(), None, "none", [], "")  # [..., K] = g @ W
        if ctx.needs_input_grad[1]:
            x2d = x.reshape(-1, x.shape[-1])  # [M, K]
            grad_weight = LINEAR_POINTWISE(grad2d.t(), x2d.t(), None, "none", [], "")  # [N, K] = gᵀ @ x
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = grad2d.sum(0)
        return grad_x, grad_weight, grad_bias


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear`` through ``OneDnnLinear`` where ``eligible``, else ``F.linear`` itself."""
    if eligible(x) and weight.dtype == torch.float32 and weight.device.type == "cpu" and x.ndim >= 2:
        return OneDnnLinear.apply(x, weight, bias)
    return F.linear(x, weight, bias)


_MHA_PARAMETERS = inspect.signature(F.multi_head_attention_forward)


def _self_attention(*args, **kwargs) -> tuple[torch.Tensor, None] | None:
    """``F.multi_head_attention_forward`` for self-attention with packed projections and no attention weights (what
    ``nn.MultiheadAttention(x, x, x, need_weights=False)`` calls), with its two projections through ``linear`` and
    the attention as ``F.scaled_dot_product_attention``, as torch computes it; ``None`` for any other call."""
    try:
        a = _MHA_PARAMETERS.bind(*args, **kwargs).arguments
    except TypeError:
        return None
    q = a["query"]
    if not (
        q is a["key"] is a["value"]
        and q.dim() == 3
        and q.shape[-1] == a["embed_dim_to_check"]  # else torch's own check raises
        and not a.get("need_weights", True)
        and a.get("key_padding_mask") is None
        and not a.get("use_separate_proj_weight", False)
        and a["in_proj_weight"] is not None
        and a["bias_k"] is None
        and a["bias_v"] is None
        and not a["add_zero_attn"]
        and a.get("static_k") is None
        and a.get("static_v") is None
        and eligible(q)
    ):
        return None
    length, batch, width = q.shape  # [L, N, E]: nn.MultiheadAttention hands batch_first inputs over transposed
    heads = a["num_heads"]
    mask, causal = a.get("attn_mask"), a.get("is_causal", False)
    if causal and mask is None:
        return None  # torch raises for this; let it
    if causal:
        mask = None  # torch's hint: the given mask is the causal one
    elif mask is not None:
        if mask.dim() == 3:  # [N·heads, L, L]
            mask = mask.reshape(batch, heads, length, -1)
        elif mask.dim() != 2:
            return None
        if mask.dtype == torch.bool:
            mask = ~mask  # nn.MultiheadAttention: True = may not attend; SDPA: True = may attend
    qkv = linear(q, a["in_proj_weight"], a["in_proj_bias"])  # [L, N, 3E]
    qkv = qkv.view(length, batch, 3, heads, width // heads).permute(2, 1, 3, 0, 4)  # [3, N, heads, L, E/heads]
    dropout = a["dropout_p"] if a.get("training", True) else 0.0
    out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], mask, dropout, is_causal=causal)
    out = out.permute(2, 0, 1, 3).reshape(length, batch, width)
    return linear(out, a["out_proj_weight"], a["out_proj_bias"]), None


class _LinearMode(TorchFunctionMode):
    """Routes ``F.linear`` calls (``nn.Linear`` layers) through ``linear``, and the self-attention of
    ``nn.MultiheadAttention`` (``F.multi_head_attention_forward``: the mode sees only that outer call, and is off
    while it runs) through ``_self_attention``; everything else runs as it is."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.linear:
            named = dict(zip(("input", "weight", "bias"), args), **kwargs)
            return linear(named["input"], named["weight"], named.get("bias"))
        if func is F.multi_head_attention_forward:
            out = _self_attention(*args, **kwargs)
            if out is not None:
                return out
        return func(*args, **kwargs)


@contextlib.contextmanager
def onednn_linears(x: torch.Tensor) -> Iterator[None]:
    """Within the block, ``F.linear`` runs as ``OneDnnLinear`` when ``x`` (the block's input) is ``eligible``.

    Not for modules with a native fast path that a torch-function mode disables (``nn.TransformerEncoderLayer``
    in inference); use it around towers built from plain ``nn.Linear`` / ``nn.MultiheadAttention`` layers.
    """
    if not eligible(x):
        yield
        return
    with _LinearMode():
        yield
