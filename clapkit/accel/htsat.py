"""A faster forward for transformers' HTSAT encoder (``ClapAudioModel``), same parameters and outputs.

``enable_fast_htsat(model)`` swaps the class of ``model.audio_encoder`` for ``FastClapAudioEncoder``, a subclass
that owns no new parameters: the state dict, checkpoints and conversions are unchanged, and
``disable_fast_htsat`` swaps it back. The forward computes what ``transformers.models.clap.modeling_clap``
(5.23.0: ``ClapAudioEncoder``, ``ClapAudioStage``, ``ClapAudioLayer``, ``ClapAudioSelfAttention``,
``ClapAudioPatchMerging``) computes, with less data movement:

- Tokens stay in window order between layers. Every op of a Swin block except attention works per token, so
  the residual stream is kept in the order the next attention needs: one row gather per layer replaces
  roll + window partition + window reverse + roll back (+ the head-merging copy), and one gather per stage
  replaces patch merging's four strided slices + cat, landing directly in the next stage's window order.
- Window attention is one ``scaled_dot_product_attention`` call whose float mask is the relative-position bias
  plus the shifted-window mask (one op instead of matmul, div, two adds, softmax, matmul, and the bias gather).
- q, k and v come from one GEMM over the concatenated weights.
- Without grad, in eval mode, on CPU: dense layers run as oneDNN inner products with the bias, the GELU and
  the residual add fused in (``F.linear`` calls MKL's sgemm, which takes a generic, non-AVX-512 path on AMD
  CPUs); batches above ``micro_batch`` clips run in slices after the patch embedding, bounding activation memory.
- In training (or with grad) in float32 on CPU, without autocast: the dense layers' three products (output,
  input gradient, weight gradient) run as oneDNN inner products too (``clapkit.accel.onednn``); the bias, GELU and
  residual add stay separate ops, as autograd needs their inputs. HTSAT-tiny forward + backward of 2 clips:
  0.59 s instead of 0.94 s of CPU on one thread. Under autocast ``F.linear`` already runs oneDNN's bf16 GEMMs.

Under bf16 autocast the GEMMs, attention and the residual stream run in bf16 (LayerNorm statistics and the
attention softmax accumulate in fp32 inside their kernels). Measured on HTSAT-tiny, random weights with
trained-like BatchNorm statistics and relative-position tables, 16 ten-second clips: the relative error to fp32
is 3e-3 after the patch embedding (bf16 rounding) and grows evenly to 1e-2 at the last stage, with no stage
standing out; the pooled output keeps a cosine ≥ 0.99998 to fp32. Keeping the residual stream in fp32 raised
that by 2e-6 for 5% more CPU time, so it stays bf16. (``ClapModel`` L2-normalises embeddings in fp32.)

Built tensors (the mask, the concatenated q/k/v weight, weights cast to the autocast dtype) are cached without
grad and rebuilt when a parameter changes (storage or version counter); with grad everything is recomputed
through differentiable ops, so training gets the original gradients. Calls the fast path does not cover go to
the original forward: fusion models, ``output_attentions`` / ``output_hidden_states``, ``always_partition``,
forward hooks inside the encoder stack, and geometries that need padding (a grid not divisible by the window,
or odd before patch merging).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import ClapAudioModel
from transformers.activations import GELUActivation
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.models.clap.modeling_clap import ClapAudioEncoder, ClapAudioLayer
from transformers.utils import can_return_tuple

from clapkit.accel import onednn

__all__ = ["DEFAULT_MICRO_BATCH", "FastClapAudioEncoder", "disable_fast_htsat", "enable_fast_htsat"]

#: Clips per slice in inference. One HTSAT-tiny clip's largest activation (the first-stage MLP hidden,
#: 4096 tokens × 384 channels × 4 B) is 6 MB. Measured on 2 cores at batch 16: slices of 4 save ~5% CPU time
#: on one thread but lose far more on two threads (4× the parallel regions), so only larger batches are sliced.
DEFAULT_MICRO_BATCH = 16

#: oneDNN inner product with fused post-ops (``clapkit.accel.onednn``). Measured on an AVX-512 AMD EPYC, one
#: thread, HTSAT-tiny shapes: 2-4× faster than ``F.linear`` in fp32.
_LINEAR_POINTWISE = onednn.LINEAR_POINTWISE


@dataclass
class _LayerPlan:
    layer: ClapAudioLayer
    grid: tuple[int, int]  # (height, width) in tokens
    window: int  # tokens per window side
    shifted: bool
    gather: torch.Tensor | None  # [L] previous layout position of each token of this layout; None: same layout


@dataclass
class _StagePlan:
    layers: list[_LayerPlan]
    merge: torch.Tensor | None  # [L] patch-merging gather into the next stage's layout (4 rows per merged token)


@dataclass
class _Plan:
    stages: list[_StagePlan]
    to_raster: torch.Tensor | None  # [L] last layout → row-major grid


def _window_order(height: int, width: int, window: int, shift: int) -> torch.Tensor:
    """Row-major grid index of each token in (window, token in window) order after a cyclic shift [H·W]."""
    grid = torch.arange(height * width).view(height, width)
    if shift:
        grid = torch.roll(grid, shifts=(-shift, -shift), dims=(0, 1))  # as ClapAudioLayer
    grid = grid.view(height // window, window, width // window, window).permute(0, 2, 1, 3)
    return grid.reshape(-1)


def _positions(source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Position in layout ``source`` (grid index per position) of each grid index in ``target``."""
    where = torch.empty_like(source)
    where[source] = torch.arange(source.numel())
    return where[target]


def _gather_index(source: torch.Tensor, target: torch.Tensor) -> torch.Tensor | None:
    """Row gather taking layout ``source`` to layout ``target``; None when they are the same."""
    index = _positions(source, target)
    return None if torch.equal(index, torch.arange(index.numel())) else index


def _merge_sources(height: int, width: int) -> torch.Tensor:
    """Grid index of the 4 tokens each merged token concatenates, in ClapAudioPatchMerging's order [H·W/4, 4]."""
    grid = torch.arange(height * width).view(height, width)
    return torch.stack([grid[row::2, col::2] for col in range(2) for row in range(2)], dim=-1).view(-1, 4)


@dataclass(frozen=True)
class _Mode:
    """How a forward runs.

    ``inference`` (no grad, eval): micro-batches, dropouts skipped, residual adds in place. ``onednn``: dense
    layers as oneDNN inner products in ``dtype`` (the autocast dtype under autocast) with fused bias, GELU and
    residual add. ``onednn_grad`` (not inference, float32 on CPU, no autocast): dense layers as
    ``onednn.OneDnnLinear``, differentiable, nothing fused.
    """

    inference: bool
    onednn: bool
    dtype: torch.dtype
    onednn_grad: bool = False

    @staticmethod
    def of(module: nn.Module, hidden: torch.Tensor) -> _Mode:
        device = hidden.device.type
        inference = not torch.is_grad_enabled() and not module.training
        dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else hidden.dtype
        fused = inference and device == "cpu" and dtype in (torch.float32, torch.bfloat16) and onednn.available()
        # Training in float32 (under autocast F.linear already runs oneDNN's bf16 GEMMs).
        grad = not inference and onednn.eligible(hidden)
        return _Mode(inference, fused, dtype, grad)


def _wrapper_types() -> tuple[type, ...]:
    types: list[type] = []
    try:
        from torch.distributed.fsdp import FullyShardedDataParallel

        types.append(FullyShardedDataParallel)
    except ImportError:  # torch built without distributed support
        pass
    try:
        from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import ActivationWrapper

        types.append(ActivationWrapper)
    except ImportError:
        pass
    return tuple(types)


_WRAPPERS = _wrapper_types()


def _plain_linear(module: nn.Module) -> bool:
    return type(module) is nn.Linear and not module._forward_hooks and not module._forward_pre_hooks


def _key(*tensors: torch.Tensor | None) -> tuple:
    return tuple((t.data_ptr(), t._version, t.dtype, t.device) if t is not None else None for t in tensors)


class FastClapAudioEncoder(ClapAudioEncoder):
    """``ClapAudioEncoder`` with the fast forward described in the module docstring (install with
    ``enable_fast_htsat``; the class is never built directly)."""

    #: Clips per slice in inference.
    micro_batch: int = DEFAULT_MICRO_BATCH

    def __getstate__(self) -> dict:
        state = dict(super().__getstate__())
        state.pop("_fast_cache", None)  # copies and pickles rebuild their own
        return state

    def _apply(self, fn, recurse: bool = True):
        self.__dict__.pop("_fast_cache", None)  # .to() / .half() / .cuda() move the parameters
        return super()._apply(fn, recurse)

    @can_return_tuple
    def forward(
        self,
        input_features: torch.Tensor,
        is_longer: torch.Tensor | None = None,
        output_attentions: bool | None = False,
        output_hidden_states: bool | None = False,
        output_hidden_states_before_downsampling: bool | None = False,
        always_partition: bool | None = False,
        return_dict: bool | None = True,
    ) -> BaseModelOutputWithPooling:
        """Log-mel [B, 1, frames, n_mels] → ``last_hidden_state`` [B, C, F', T'] and ``pooler_output`` [B, C]."""
        plan = None
        if not (
            output_attentions
            or output_hidden_states
            or always_partition
            or self.config.output_attentions
            or self.config.output_hidden_states
        ):
            plan = self._plan(input_features.device)
        if plan is None:
            return ClapAudioEncoder.forward(
                self,
                input_features,
                is_longer=is_longer,
                output_attentions=output_attentions,
                output_hidden_states=output_hidden_states,
                output_hidden_states_before_downsampling=output_hidden_states_before_downsampling,
                always_partition=always_partition,
                return_dict=True,
            )
        normalized = self.batch_norm(input_features.transpose(1, 3)).transpose(1, 3)
        image = self.reshape_mel2img(normalized)  # [B, 1, H·p, W·p]
        frames_num = image.shape[2]
        hidden = self.patch_embed(image)  # [B, L, C], row-major grid
        mode = _Mode.of(self, hidden)
        if mode.inference:
            chunks = hidden.split(max(1, self.micro_batch))
            hidden = torch.cat([self._stages(chunk, plan, mode) for chunk in chunks])
        else:
            hidden = self._stages(hidden, plan, mode)
        if plan.to_raster is not None:
            hidden = hidden.index_select(1, plan.to_raster)
        return self._head(self.norm(hidden), frames_num)

    # ---- planning -------------------------------------------------------------------------------------------

    def _plan(self, device: torch.device) -> _Plan | None:
        """Gather indices for this encoder's geometry, or None where the fast path does not apply."""
        cache = self.__dict__.setdefault("_fast_cache", {})
        key = ("plan", device, tuple(id(block) for stage in self.layers for block in stage.blocks))
        if key not in cache:
            # Plain tensors even when first built under inference_mode: the plan is reused with grad enabled.
            with torch.inference_mode(False):
                cache[key] = self._build_plan(device)
        plan = cache[key]
        if plan is None or self._has_hooks():
            return None
        return plan

    def _has_hooks(self) -> bool:
        """Hooks or wrappers (FSDP units, activation checkpointing) on the layers: they need each layer's own
        forward to run (an FSDP unit's weights are flat shards until its forward gathers them)."""
        return any(
            module._forward_hooks or module._forward_pre_hooks or isinstance(module, _WRAPPERS)
            for module in self.layers.modules()
        )

    def _build_plan(self, device: torch.device) -> _Plan | None:
        if self.enable_fusion or not self.patch_embed.flatten:
            return None
        stages: list[_StagePlan] = []
        height, width = self.input_resolutions[0]
        order = torch.arange(height * width)  # the patch embedding is row-major
        merge_sources: torch.Tensor | None = None  # [L, 4] grid indices each merged token concatenates
        for stage, (height, width) in zip(self.layers, self.input_resolutions):
            layers = []
            for i, layer in enumerate(stage.blocks):
                window, shift = layer.window_size, layer.shift_size
                if min(height, width) <= window:  # as ClapAudioLayer.set_shift_and_window_size
                    window, shift = min(height, width), 0
                if height % window or width % window or tuple(layer.attention.self.window_size) != (window, window):
                    return None
                new = _window_order(height, width, window, shift)
                gather = None
                if i == 0 and merge_sources is not None:
                    stages[-1].merge = _positions(order, merge_sources[new].reshape(-1)).to(device)
                else:
                    gather = _gather_index(order, new)
                layers.append(_LayerPlan(layer, (height, width), window, shift > 0, _to(gather, device)))
                order = new
            stages.append(_StagePlan(layers, None))
            if stage.downsample is not None:
                if height % 2 or width % 2:
                    return None
                merge_sources = _merge_sources(height, width)
        return _Plan(stages, _to(_gather_index(order, torch.arange(order.numel())), device))

    # ---- compute --------------------------------------------------------------------------------------------

    def _stages(self, hidden: torch.Tensor, plan: _Plan, mode: _Mode) -> torch.Tensor:
        """Patch embeddings [b, L, C] (row-major) → last stage output [b, L', C'] in the last layer's layout."""
        for stage_plan, stage in zip(plan.stages, self.layers):
            for layer_plan in stage_plan.layers:
                if layer_plan.gather is not None:
                    hidden = hidden.index_select(1, layer_plan.gather)
                hidden = self._layer(hidden, layer_plan, mode)
            if stage_plan.merge is not None:
                batch, length, channels = hidden.shape
                merged = hidden.index_select(1, stage_plan.merge).view(batch, length // 4, 4 * channels)
                downsample = stage.downsample
                hidden = self._dense(downsample.reduction, downsample.norm(merged), mode)
        return hidden

    def _layer(self, hidden: torch.Tensor, plan: _LayerPlan, mode: _Mode) -> torch.Tensor:
        """One Swin block (ClapAudioLayer) on tokens in its window layout [b, L, C] → [b, L, C]."""
        layer = plan.layer
        batch, length, channels = hidden.shape
        windows = batch * (plan.grid[0] // plan.window) * (plan.grid[1] // plan.window)
        tokens = plan.window * plan.window
        self_attn = layer.attention.self
        heads, head_dim = self_attn.num_attention_heads, self_attn.attention_head_size

        normed = layer.layernorm_before(hidden)
        query, key, value = self._qkv(self_attn, normed, (windows, tokens, heads, head_dim), mode)
        mask = self._attn_mask(plan, batch, query.dtype)
        dropout = self_attn.dropout.p if self_attn.training else 0.0
        context = F.scaled_dot_product_attention(query, key, value, attn_mask=mask, dropout_p=dropout)
        context = context.transpose(1, 2).reshape(batch, length, channels)  # a view: SDPA's output is [W, N, h, d]
        if mode.inference:  # dropout and drop path are identities in eval
            hidden = self._dense(layer.attention.output.dense, context, mode, residual=hidden)
            act = layer.intermediate.intermediate_act_fn
            gelu = isinstance(act, GELUActivation) and act.act is F.gelu
            inner = self._dense(layer.intermediate.dense, layer.layernorm_after(hidden), mode, gelu=gelu)
            if not gelu:
                inner = act(inner)
            return self._dense(layer.output.dense, inner, mode, residual=hidden)
        # ClapAudioSelfOutput, ClapAudioIntermediate and ClapAudioOutput, with their dense layers through _dense.
        attn_out = layer.attention.output
        hidden = hidden + layer.drop_path(attn_out.dropout(self._dense(attn_out.dense, context, mode)))
        inter = layer.intermediate
        inner = inter.intermediate_act_fn(self._dense(inter.dense, layer.layernorm_after(hidden), mode))
        return hidden + layer.output.dropout(self._dense(layer.output.dense, inner, mode))

    def _qkv(
        self, self_attn: nn.Module, normed: torch.Tensor, shape: tuple[int, int, int, int], mode: _Mode
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q, k, v as [windows, heads, tokens, head_dim] views."""
        windows, tokens, heads, head_dim = shape
        linears = (self_attn.query, self_attn.key, self_attn.value)
        if not all(_plain_linear(m) for m in linears):
            return tuple(m(normed).view(windows, tokens, heads, head_dim).transpose(1, 2) for m in linears)
        weights = [m.weight for m in linears]
        biases = [m.bias for m in linears] if all(m.bias is not None for m in linears) else None
        dtype = mode.dtype if mode.onednn else weights[0].dtype
        weight, bias = self._cached(
            ("qkv", id(self_attn), dtype), (*weights, *(biases or ())), lambda: _cat(weights, biases, dtype)
        )
        if mode.onednn:
            qkv = _LINEAR_POINTWISE(normed.to(dtype), weight, bias, "none", [], "")
        elif mode.onednn_grad:
            qkv = onednn.OneDnnLinear.apply(normed, weight, bias)
        else:
            qkv = F.linear(normed, weight, bias)
        qkv = qkv.view(windows, tokens, 3, heads, head_dim)
        return qkv.permute(2, 0, 3, 1, 4).unbind(0)

    def _dense(
        self,
        linear: nn.Module,
        x: torch.Tensor,
        mode: _Mode,
        *,
        gelu: bool = False,
        residual: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``linear(x)``, then exact GELU if ``gelu``, plus ``residual`` if given (in place outside autograd)."""
        if mode.onednn and _plain_linear(linear):
            weight, bias = linear.weight, linear.bias
            if weight.dtype != mode.dtype:
                weight, bias = self._cached(
                    ("dense", id(linear), mode.dtype),
                    (weight, bias),
                    lambda: _cat([weight], [bias] if bias is not None else None, mode.dtype),
                )
            x = x.to(mode.dtype)
            if residual is not None and residual.dtype == mode.dtype:
                return _LINEAR_POINTWISE.binary(x, residual, weight, bias, "add")
            out = _LINEAR_POINTWISE(x, weight, bias, "gelu" if gelu else "none", [], "none" if gelu else "")
        elif mode.onednn_grad and _plain_linear(linear):
            out = onednn.OneDnnLinear.apply(x, linear.weight, linear.bias)
            if gelu:
                out = F.gelu(out)
        else:
            out = linear(x)
            if gelu:
                out = F.gelu(out)
        if residual is None:
            return out
        return residual.add_(out) if mode.inference else residual + out

    def _cached(self, tag: tuple, tensors: tuple[torch.Tensor | None, ...], build):
        """``build()``, kept while ``tensors`` are unchanged (same storage and version); rebuilt under grad."""
        if torch.is_grad_enabled():
            return build()
        cache = self.__dict__.setdefault("_fast_cache", {})
        key = _key(*tensors)
        entry = cache.get(tag)
        if entry is None or entry[0] != key:
            entry = (key, build())
            cache[tag] = entry
        return entry[1]

    def _attn_mask(self, plan: _LayerPlan, batch: int, dtype: torch.dtype) -> torch.Tensor:
        """Relative-position bias (+ shifted-window mask) as an additive mask [1 or b·nW, heads, N, N]."""
        self_attn = plan.layer.attention.self
        tensors = (self_attn.relative_position_bias_table, self_attn.relative_position_index)
        mask = self._cached(("mask", id(self_attn), dtype), tensors, lambda: _window_mask(plan, dtype))
        return mask.repeat(batch, 1, 1, 1) if plan.shifted and batch > 1 else mask

    def _head(self, last_hidden_state: torch.Tensor, frames_num: int) -> BaseModelOutputWithPooling:
        """ClapAudioEncoder's output reshaping and pooling (transformers 5.23.0) on row-major tokens [B, L, C]."""
        batch_size, _, n_channels = last_hidden_state.shape
        freq_shape = frames_num // (2 ** (len(self.depths) - 1)) // self.patch_stride[0]
        temporal_shape = frames_num // (2 ** (len(self.depths) - 1)) // self.patch_stride[1]
        last_hidden_state = (
            last_hidden_state.permute(0, 2, 1).contiguous().reshape(batch_size, n_channels, freq_shape, temporal_shape)
        )
        batch_size, n_channels, n_frequencies, n_temp = last_hidden_state.shape
        c_freq_bin = n_frequencies // self.freq_ratio
        last_hidden_state = last_hidden_state.reshape(
            batch_size, n_channels, n_frequencies // c_freq_bin, c_freq_bin, n_temp
        )
        last_hidden_state = (
            last_hidden_state.permute(0, 1, 3, 2, 4).contiguous().reshape(batch_size, n_channels, c_freq_bin, -1)
        )
        latent_output = torch.flatten(self.avgpool(torch.flatten(last_hidden_state, 2)), 1)
        return BaseModelOutputWithPooling(last_hidden_state=last_hidden_state, pooler_output=latent_output)


def _window_mask(plan: _LayerPlan, dtype: torch.dtype) -> torch.Tensor:
    """Bias [1, h, N, N] of a plain layer, bias + shift mask [nW, h, N, N] of a shifted one (differentiable)."""
    self_attn = plan.layer.attention.self
    tokens = plan.window * plan.window
    bias = self_attn.relative_position_bias_table[self_attn.relative_position_index.view(-1)]
    bias = bias.view(tokens, tokens, -1).permute(2, 0, 1).unsqueeze(0).to(dtype)  # [1, h, N, N]
    if not plan.shifted:
        return bias
    shift = plan.layer.get_attn_mask(*plan.grid, dtype=dtype, device=bias.device)  # [nW, N, N]
    return bias + shift.unsqueeze(1)


def _cat(
    weights: list[torch.Tensor], biases: list[torch.Tensor] | None, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Weights [ΣN, K] and biases [ΣN] stacked along outputs, in ``dtype``."""
    weight = torch.cat(weights).to(dtype)
    return weight, None if biases is None else torch.cat(biases).to(dtype)


def _to(index: torch.Tensor | None, device: torch.device) -> torch.Tensor | None:
    return None if index is None else index.to(device)


def enable_fast_htsat(model: ClapAudioModel, micro_batch: int = DEFAULT_MICRO_BATCH) -> ClapAudioModel:
    """Install the fast forward on ``model.audio_encoder`` in place (parameters and state dict unchanged).

    Args:
        model: A transformers ``ClapAudioModel``.
        micro_batch: Clips per micro-batch when grad is disabled.

    Returns:
        ``model``.
    """
    if not isinstance(model, ClapAudioModel):
        raise ValueError(f"enable_fast_htsat: expected a transformers ClapAudioModel, got {type(model).__name__}")
    if micro_batch < 1:
        raise ValueError(f"enable_fast_htsat: micro_batch={micro_batch}; expected a positive number of clips")
    encoder = model.audio_encoder
    encoder.__class__ = FastClapAudioEncoder
    encoder.micro_batch = micro_batch
    encoder.__dict__.pop("_fast_cache", None)
    return model


def disable_fast_htsat(model: ClapAudioModel) -> ClapAudioModel:
    """Restore transformers' own forward on ``model.audio_encoder`` (in place); returns ``model``."""
    encoder = model.audio_encoder
    if isinstance(encoder, FastClapAudioEncoder):
        encoder.__class__ = ClapAudioEncoder
        encoder.__dict__.pop("_fast_cache", None)
        encoder.__dict__.pop("micro_batch", None)
    return model
