"""Projectors: encoder frame features → what the LLM consumes, chosen by name from ``PROJECTORS``.

Every projector maps ``(feats [B, T, D_audio], mask [B, T])`` to ``(tokens [B, N, H], mask [B, N])`` with
``H`` the LLM's hidden size. Splicing projectors (``linear``, ``mlp2x_gelu``, ``qformer``) have their tokens
inserted into the LLM's ``inputs_embeds`` after each ``<Audio>`` marker; ``xattn`` keeps the audio out of
the token stream and feeds it to gated cross-attention layers that run before chosen decoder blocks.

Builders are called as ``builder(in_dim, out_dim, num_layers=..., **params)``; ``num_layers`` is the
LLM's decoder depth (only ``xattn`` uses it).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from clapkit.registry import Registry

__all__ = [
    "PROJECTORS",
    "GatedCrossAttentionBlock",
    "LinearProjector",
    "MLPProjector",
    "Projector",
    "QFormerProjector",
    "XAttnProjector",
    "build_projector",
]

PROJECTORS: Registry = Registry("projector")


class Projector(nn.Module):
    """Base class: ``forward(feats [B, T, D], mask [B, T]) -> (tokens [B, N, H], mask [B, N])``.

    Attributes:
        splices: True when the tokens are inserted into the LLM's input sequence; False when they reach
            the LLM through layers added by ``attach``.
    """

    splices: bool = True
    registry_name: str | None = None  # set by build_projector
    params: dict[str, Any] | None = None

    def attach(self, llm: nn.Module) -> None:
        """Hook into the LLM (cross-attention projectors); a no-op for splicing projectors."""

    def num_tokens(self, frames: int) -> int:  # pragma: no cover - overridden
        """Tokens produced for ``frames`` encoder frames."""
        raise NotImplementedError


def _stack_frames(feats: torch.Tensor, mask: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Concatenate ``k`` consecutive frames: [B, T, D] → [B, ceil(T/k), k·D]; a group is real if any frame is."""
    if k == 1:
        return feats, mask
    batch, frames, dim = feats.shape
    pad = (-frames) % k
    feats = F.pad(feats * mask[..., None].to(feats.dtype), (0, 0, 0, pad))
    mask = F.pad(mask, (0, pad))
    return feats.reshape(batch, -1, k * dim), mask.reshape(batch, -1, k).any(-1)


class LinearProjector(Projector):
    """One linear map per (optionally stacked) frame.

    Args:
        in_dim: Encoder feature width.
        out_dim: LLM hidden size.
        downsample: Consecutive frames concatenated into one token (token rate = frame rate / downsample).
    """

    def __init__(self, in_dim: int, out_dim: int, downsample: int = 1) -> None:
        super().__init__()
        if downsample < 1:
            raise ValueError(f"projector downsample must be ≥ 1, got {downsample}")
        self.downsample = downsample
        self.proj = nn.Linear(in_dim * downsample, out_dim)

    def num_tokens(self, frames: int) -> int:
        return math.ceil(frames / self.downsample)

    def forward(self, feats: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats, mask = _stack_frames(feats, mask, self.downsample)
        return self.proj(feats), mask


class MLPProjector(LinearProjector):
    """LLaVA / LLaSO ``mlp2x_gelu``: Linear → GELU → Linear per (optionally stacked) frame."""

    def __init__(self, in_dim: int, out_dim: int, downsample: int = 1) -> None:
        super().__init__(in_dim, out_dim, downsample)
        self.proj = nn.Sequential(nn.Linear(in_dim * downsample, out_dim), nn.GELU(), nn.Linear(out_dim, out_dim))


class QFormerProjector(Projector):
    """Window-level Q-Former (SALMONN): learned queries cross-attend to each window of encoder frames.

    The frame sequence is cut into windows of ``window`` frames every ``stride`` frames; ``num_queries``
    learned queries attend (through ``layers`` transformer decoder layers: self-attention among the queries,
    cross-attention to the window's frames, feed-forward) to each window, so the LLM gets
    ``num_queries`` tokens per window, in time order.

    Args:
        in_dim: Encoder feature width.
        out_dim: LLM hidden size.
        num_queries: Learned queries (= output tokens) per window.
        window: Frames per window.
        stride: Frames between window starts (default ``window``: non-overlapping).
        hidden: Q-Former width.
        layers: Decoder layers.
        heads: Attention heads.
        ff_mult: Feed-forward width / ``hidden``.
        dropout: Dropout inside the layers.
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        num_queries: int = 1,
        window: int = 4,
        stride: int | None = None,
        hidden: int = 256,
        layers: int = 2,
        heads: int = 4,
        ff_mult: float = 4.0,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        stride = stride or window
        if window < 1 or stride < 1 or num_queries < 1:
            raise ValueError(f"qformer needs window, stride, num_queries ≥ 1, got {window}, {stride}, {num_queries}")
        self.window, self.stride, self.num_queries = window, stride, num_queries
        self.inp = nn.Sequential(nn.Linear(in_dim, hidden), nn.LayerNorm(hidden))
        self.frame_pos = nn.Parameter(torch.randn(window, hidden) * 0.02)  # order of frames inside a window
        self.queries = nn.Parameter(torch.randn(num_queries, hidden) * 0.02)
        layer = nn.TransformerDecoderLayer(
            hidden, heads, int(ff_mult * hidden), dropout=dropout, activation="gelu", batch_first=True, norm_first=True
        )
        self.decoder = nn.TransformerDecoder(layer, layers, norm=nn.LayerNorm(hidden))
        self.out = nn.Linear(hidden, out_dim)

    def _windows(self, frames: int) -> int:
        return 1 if frames <= self.window else math.ceil((frames - self.window) / self.stride) + 1

    def num_tokens(self, frames: int) -> int:
        return self._windows(frames) * self.num_queries

    def forward(self, feats: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        batch, frames, _ = feats.shape
        count = self._windows(frames)
        pad = (count - 1) * self.stride + self.window - frames
        x = F.pad(self.inp(feats), (0, 0, 0, pad))  # [B, T', hidden]
        m = F.pad(mask, (0, pad))
        x = x.unfold(1, self.window, self.stride).transpose(2, 3)  # [B, W, window, hidden]
        m = m.unfold(1, self.window, self.stride)  # [B, W, window]
        x = x.reshape(batch * count, self.window, -1) + self.frame_pos
        m = m.reshape(batch * count, self.window)
        real = m.any(-1)  # [B·W]
        # A window of padding only would give NaN attention; let it attend anywhere and mask its output.
        key_pad = ~(m | ~real[:, None])
        queries = self.queries.expand(batch * count, -1, -1)
        out = self.decoder(queries, x, memory_key_padding_mask=key_pad)  # [B·W, Q, hidden]
        out = self.out(out).reshape(batch, count * self.num_queries, -1)
        return out, real.reshape(batch, count).repeat_interleave(self.num_queries, dim=1)


class GatedCrossAttentionBlock(nn.Module):
    """Flamingo's gated cross-attention dense block: x + tanh(α)·xattn(x, media), then + tanh(β)·FFN.

    Both gates start at 0, so at initialisation the LLM computes exactly what it did without audio.

    Args:
        dim: LLM hidden size.
        heads: Attention heads.
        ff_mult: Feed-forward width / ``dim``.
    """

    def __init__(self, dim: int, heads: int = 8, ff_mult: float = 4.0) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.attn_gate = nn.Parameter(torch.zeros(1))
        hidden = int(ff_mult * dim)
        self.ff = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
        self.ff_gate = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor, media: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
        """Text states x [B, L, H], media tokens [B, M, H], visible [B, L, M] (True = may attend) → [B, L, H].

        Runs in the block's own dtype (the LLM may run in another) and returns x's dtype.
        """
        dtype = self.attn_gate.dtype
        has_media = visible.any(-1, keepdim=True)  # [B, L, 1]
        blocked = ~(visible | ~has_media)  # rows with nothing visible attend anywhere, then get zeroed
        blocked = blocked.repeat_interleave(self.attn.num_heads, dim=0)  # [B·heads, L, M]
        h, media = x.to(dtype), media.to(dtype)
        y, _ = self.attn(self.norm(h), media, media, attn_mask=blocked, need_weights=False)
        h = h + torch.tanh(self.attn_gate) * y * has_media.to(dtype)
        h = h + torch.tanh(self.ff_gate) * self.ff(h)
        return h.to(x.dtype)


class XAttnProjector(Projector):
    """Audio Flamingo: projected audio tokens reach the LLM through gated cross-attention blocks.

    A block runs before every ``every``-th decoder block (forward pre-hooks, so the LLM's own weights and
    state-dict keys are untouched). A text position attends to the audio of every clip whose ``<Audio>``
    marker appears at or before it (causal in the clip order).

    Args:
        in_dim: Encoder feature width.
        out_dim: LLM hidden size.
        num_layers: LLM decoder blocks.
        every: Insert a block before decoder blocks 0, every, 2·every, ….
        heads: Cross-attention heads.
        ff_mult: Feed-forward width / ``out_dim``.
        downsample: Consecutive frames stacked into one audio token.
    """

    splices = False

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        num_layers: int,
        every: int = 4,
        heads: int = 8,
        ff_mult: float = 4.0,
        downsample: int = 1,
    ) -> None:
        super().__init__()
        if every < 1:
            raise ValueError(f"xattn every must be ≥ 1, got {every}")
        self.every, self.downsample = every, downsample
        self.media = MLPProjector(in_dim, out_dim, downsample)
        self.layer_ids = list(range(0, num_layers, every))
        self.blocks = nn.ModuleList(GatedCrossAttentionBlock(out_dim, heads, ff_mult) for _ in self.layer_ids)
        self._ctx: dict[str, Any] | None = None
        self._handles: list[Any] = []

    def num_tokens(self, frames: int) -> int:
        return self.media.num_tokens(frames)

    def forward(self, feats: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.media(feats, mask)

    def attach(self, llm: nn.Module) -> None:
        """Register the pre-hooks on the LLM's decoder blocks (idempotent)."""
        for handle in self._handles:
            handle.remove()
        decoder = _decoder_of(llm)
        layers = decoder.layers
        if self.layer_ids and self.layer_ids[-1] >= len(layers):
            need = self.layer_ids[-1] + 1
            raise ValueError(f"xattn was built for ≥ {need} decoder blocks; the LLM has {len(layers)}")
        self._handles = [decoder.register_forward_pre_hook(self._track_offset, with_kwargs=True)]
        for block, idx in zip(self.blocks, self.layer_ids):
            self._handles.append(layers[idx].register_forward_pre_hook(self._hook(block), with_kwargs=True))

    @contextmanager
    def media_context(
        self, media: torch.Tensor, media_mask: torch.Tensor, media_clip: torch.Tensor, seen: torch.Tensor
    ) -> Iterator[None]:
        """Make audio visible to the hooks for the LLM calls inside the block.

        Args:
            media: Audio tokens per conversation [B, M, H].
            media_mask: Real tokens [B, M].
            media_clip: 1-based clip number of each token within its conversation [B, M].
            seen: ``<Audio>`` markers at or before each input position [B, L].
        """
        if not self._handles:
            raise ValueError("xattn projector is not attached to an LLM; call projector.attach(llm) first")
        self._ctx = {"media": media, "mask": media_mask, "clip": media_clip, "seen": seen, "offset": 0}
        try:
            yield
        finally:
            self._ctx = None

    def _track_offset(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        # During cached generation the decoder sees only new positions; the cache length says where they are.
        if self._ctx is not None:
            cache = kwargs.get("past_key_values")
            self._ctx["offset"] = int(cache.get_seq_length()) if cache is not None else 0

    def _hook(self, block: GatedCrossAttentionBlock):
        def hook(module: nn.Module, args: tuple, kwargs: dict):
            ctx = self._ctx
            if ctx is None:  # text-only call
                return None
            hidden = args[0] if args else kwargs["hidden_states"]
            length, offset, seen = hidden.shape[1], ctx["offset"], ctx["seen"]
            pos = torch.arange(offset, offset + length, device=seen.device).clamp(max=seen.shape[1] - 1)
            seen_here = seen[:, pos]  # [B, L]; positions past the prompt have seen every clip
            visible = (ctx["clip"][:, None, :] <= seen_here[:, :, None]) & ctx["mask"][:, None, :]
            hidden = block(hidden, ctx["media"], visible)
            if args:
                return (hidden, *args[1:]), kwargs
            return args, {**kwargs, "hidden_states": hidden}

        return hook


def _decoder_of(llm: nn.Module) -> nn.Module:
    """The module holding the decoder blocks as ``.layers`` (through a peft wrapper too)."""
    base = llm.get_base_model() if hasattr(llm, "get_base_model") else llm
    decoder = base.get_decoder() if hasattr(base, "get_decoder") else getattr(base, "model", None)
    if decoder is None or not isinstance(getattr(decoder, "layers", None), nn.ModuleList):
        raise ValueError(f"{type(base).__name__}: cannot find its decoder blocks (expected .get_decoder().layers)")
    return decoder


@PROJECTORS.register("linear")
def _linear(in_dim: int, out_dim: int, *, num_layers: int, **params: Any) -> Projector:
    return LinearProjector(in_dim, out_dim, **params)


@PROJECTORS.register("mlp2x_gelu")
def _mlp2x_gelu(in_dim: int, out_dim: int, *, num_layers: int, **params: Any) -> Projector:
    return MLPProjector(in_dim, out_dim, **params)


@PROJECTORS.register("qformer")
def _qformer(in_dim: int, out_dim: int, *, num_layers: int, **params: Any) -> Projector:
    return QFormerProjector(in_dim, out_dim, **params)


@PROJECTORS.register("xattn")
def _xattn(in_dim: int, out_dim: int, *, num_layers: int, **params: Any) -> Projector:
    return XAttnProjector(in_dim, out_dim, num_layers, **params)


def build_projector(name: str, in_dim: int, out_dim: int, *, num_layers: int, **params: Any) -> Projector:
    """Build the projector registered as ``name`` (``KeyError`` lists the valid names).

    The result remembers ``name`` and ``params`` (``registry_name``, ``params``) so it can be saved and rebuilt.
    """
    builder = PROJECTORS.get(name)
    try:
        projector = builder(in_dim, out_dim, num_layers=num_layers, **params)
    except TypeError as err:
        raise ValueError(f"projector {name!r}: bad parameters {sorted(params)} ({err})") from err
    projector.registry_name, projector.params = name, dict(params)
    return projector
