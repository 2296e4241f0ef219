"""``AudioLanguageModel``: a clapkit encoder (frozen by default) → projector → any transformers causal LM.

Audio of any length is cut into the encoder's clip-length windows (minutes of audio become many windows,
encoded ``encoder_batch`` at a time); the windows' frame features are concatenated in time, projected,
and either inserted after each ``<Audio>`` marker of the text (splicing projectors) or handed to the
gated cross-attention layers (``xattn``).

The training stages (``configure_stage``) are set in ``stages.py``, the adapter folder is written by
``adapter.py`` and read by ``io.py``, and the model's names and settings are ``config.LalmConfig``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from clapkit.accel.onednn import onednn_linears
from clapkit.audio import AudioSource
from clapkit.lalm.adapter import save_pretrained
from clapkit.lalm.chat import (
    AUDIO_TOKEN,
    IGNORE_INDEX,
    ChatFormatter,
    add_audio_tokens,
    count_audio,
    end_of_turn_ids,
)
from clapkit.lalm.config import LalmConfig
from clapkit.lalm.data import ConversationCollator, ConversationSample
from clapkit.lalm.projectors import Projector, XAttnProjector
from clapkit.model import ClapModel

__all__ = [
    "BATCH_KEYS",
    "AudioLanguageModel",
    "PreparedInputs",
    "audio_sequence_from_tower",
]

#: Batch entries the model consumes (the collator also returns keys, meta, references). A batch holds either
#: waveforms (``audio``, ``audio_lengths``) or precomputed encoder features (``audio_features``, ``…_mask``).
BATCH_KEYS = (
    "input_ids",
    "attention_mask",
    "labels",
    "audio",
    "audio_lengths",
    "audio_features",
    "audio_features_mask",
)


@dataclass
class PreparedInputs:
    """What the LLM receives.

    Attributes:
        embeds: ``inputs_embeds`` [B, L', H] (audio tokens inserted for splicing projectors).
        attention_mask: [B, L'].
        labels: [B, L'] with ``IGNORE_INDEX`` on audio, padding and non-assistant tokens (``None`` without labels).
        context: Context manager to hold around the LLM call (gives audio to ``xattn`` layers).
    """

    embeds: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor | None
    context: AbstractContextManager


class AudioLanguageModel(nn.Module):
    """A large audio-language model built from a clapkit encoder, a projector and a causal LM.

    At construction ``<Audio>`` / ``</Audio>`` are added to the tokenizer (their embeddings start at the
    mean of the existing ones), the projector is attached to the LLM, and the trainable parameters are
    those of stage 1: the projector only (see ``configure_stage``).

    Args:
        encoder: A ``ClapModel``; its ``audio_sequence`` gives the frame features.
        projector: From ``build_projector`` (input width ``encoder.sequence_dim``, output the LLM's hidden size).
        llm: Any transformers ``AutoModelForCausalLM`` (or a peft wrapper of one).
        tokenizer: The LLM's fast tokenizer, with a chat template.
        config: Names and settings (derived from the parts when omitted).
    """

    def __init__(
        self,
        encoder: ClapModel,
        projector: Projector,
        llm: nn.Module,
        tokenizer: Any,
        config: LalmConfig | None = None,
    ) -> None:
        super().__init__()
        if config is None:
            config = LalmConfig(
                encoder=encoder.config.name,
                llm=getattr(llm.config, "name_or_path", "") or "",
                projector=projector.registry_name or "",
                projector_params=dict(projector.params or {}),
            )
        self.config = config
        self.encoder, self.projector, self.llm = encoder, projector, llm
        self.tokenizer = tokenizer
        self._add_audio_tokens()
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        self.formatter = ChatFormatter(tokenizer, config.system_prompt, config.max_length)
        self._frames_per_window: int | None = None
        if config.attn_implementation is not None:
            llm.set_attn_implementation(config.attn_implementation)
        projector.attach(llm)
        llm.requires_grad_(False)
        projector.requires_grad_(True)
        if config.freeze_encoder:
            encoder.requires_grad_(False)
        self.train(self.training)

    # ------------------------------------------------------------------ setup
    def _add_audio_tokens(self) -> None:
        before = len(self.tokenizer)
        self.audio_id, self.audio_end_id = add_audio_tokens(self.tokenizer)
        emb = self.llm.get_input_embeddings()
        rows = emb.weight.shape[0]
        if len(self.tokenizer) == before and rows >= len(self.tokenizer):
            return
        out = self.llm.get_output_embeddings()
        untied = out is not None and out.weight is not emb.weight
        with torch.no_grad():
            mean_in = emb.weight[:before].mean(0)
            mean_out = out.weight[:before].mean(0) if untied else None
        if len(self.tokenizer) > rows:
            self.llm.resize_token_embeddings(len(self.tokenizer), mean_resizing=False)
        ids = [self.audio_id, self.audio_end_id]
        with torch.no_grad():
            self.llm.get_input_embeddings().weight[ids] = mean_in
            if mean_out is not None:
                self.llm.get_output_embeddings().weight[ids] = mean_out

    def train(self, mode: bool = True) -> AudioLanguageModel:
        """Like ``nn.Module.train``, but a frozen encoder, and the unused text side of an unfrozen one, stay in eval."""
        super().train(mode)
        if not any(p.requires_grad for p in self.encoder.parameters()):
            self.encoder.eval()
        else:
            for part in (self.encoder.text_tower, self.encoder.text_head):
                if part is not None:
                    part.eval()
        return self

    @property
    def device(self) -> torch.device:
        return self.llm.get_input_embeddings().weight.device

    @property
    def sample_rate(self) -> int:
        """Rate (Hz) audio must have before ``encode_audio``; ``generate`` resamples to it."""
        return self.encoder.sample_rate

    def collator(self, generation: bool = False) -> ConversationCollator:
        """A collator for this model's tokenizer, system prompt and audio limits."""
        return ConversationCollator(
            self.formatter,
            self.tokenizer.pad_token_id,
            self.sample_rate,
            max_audio_seconds=self.config.max_audio_seconds,
            generation=generation,
        )

    def sequence_length(self, sample: ConversationSample) -> int:
        """Positions the LLM runs over for ``sample`` in training: its text tokens (chat template and system prompt
        included) and, when the projector splices audio tokens into the sequence, each clip's audio tokens.

        Exact for clips given as ``features``; for waveforms the frames are counted at the encoder's frame rate
        of a full window (``audio_frames_per_window``), which a partial window can round by a token.
        """
        count = len(self.formatter.encode(sample.messages).input_ids)
        if not self.projector.splices:
            return count
        for feats in sample.features:
            count += self.projector.num_tokens(int(feats.shape[0]))
        if sample.audio:
            clip, frames = self.encoder.config.audio.clip_samples, self.audio_frames_per_window()
            for wave in sample.audio:
                count += self.projector.num_tokens(math.ceil(wave.shape[-1] * frames / clip))
        return count

    def audio_frames_per_window(self) -> int:
        """Encoder frames (``audio_sequence``) of one full window of audio, measured once on silence."""
        if self._frames_per_window is None:
            clip = self.encoder.config.audio.clip_samples
            was_training = self.encoder.training
            self.encoder.eval()
            try:
                with torch.no_grad():
                    silence = torch.zeros(1, clip, device=self.device)
                    feats, _ = self.encoder.audio_sequence(silence, torch.tensor([clip], device=self.device))
            finally:
                self.encoder.train(was_training)
            self._frames_per_window = int(feats.shape[1])
        return self._frames_per_window

    def trainable_counts(self) -> dict[str, int]:
        """Trainable parameters per part."""
        return {
            name: sum(p.numel() for p in part.parameters() if p.requires_grad)
            for name, part in (("encoder", self.encoder), ("projector", self.projector), ("llm", self.llm))
        }

    # ------------------------------------------------------------------ audio
    def encode_audio(self, audio: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Clips → projected audio tokens.

        Args:
            audio: Zero-padded waveforms [C, S] at ``sample_rate``.
            lengths: Real samples per clip [C].

        Returns:
            tokens [C, N, H] in the LLM's dtype and mask [C, N] (True = real audio).
        """
        if (lengths < 1).any():
            raise ValueError(f"audio_lengths must be ≥ 1 sample per clip, got {lengths.tolist()}")
        clip = self.encoder.config.audio.clip_samples
        count, total = audio.shape
        windows = max(1, math.ceil(total / clip))
        flat = F.pad(audio, (0, windows * clip - total)).reshape(count * windows, clip)  # [C·W, clip]
        starts = torch.arange(windows, device=audio.device) * clip
        real = (lengths.to(audio.device)[:, None] - starts[None, :]).clamp(0, clip).reshape(-1)  # [C·W]
        keep = real.nonzero().squeeze(1)  # windows holding audio; the rest stay masked
        trainable = any(p.requires_grad for p in self.encoder.parameters())
        feats, masks = [], []
        with torch.set_grad_enabled(torch.is_grad_enabled() and trainable):
            for idx in keep.split(self.config.encoder_batch):
                f, m = self.encoder.audio_sequence(flat[idx], real[idx])  # [n, F, D], [n, F]
                feats.append(f)
                masks.append(m)
        f, m = torch.cat(feats), torch.cat(masks)
        frames = f.shape[1]
        feats_all = f.new_zeros(count * windows, frames, f.shape[-1]).index_copy(0, keep, f)
        mask_all = m.new_zeros(count * windows, frames).index_copy(0, keep, m)
        return self.project_audio(feats_all.reshape(count, windows * frames, -1), mask_all.reshape(count, -1))

    def project_audio(self, feats: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Encoder frame features (``audio_sequence``'s output, e.g. precomputed for a frozen encoder) → audio tokens.

        Args:
            feats: Frame features [C, T, D] (``encoder.sequence_dim`` wide).
            mask: [C, T] (True = real frame).

        Returns:
            tokens [C, N, H] in the LLM's dtype and mask [C, N].
        """
        dtype = next(self.projector.parameters()).dtype
        tokens, mask = self.projector(feats.to(dtype), mask.bool())
        return tokens.to(self.llm.get_input_embeddings().weight.dtype), mask

    # ------------------------------------------------------------------ inputs
    def prepare_inputs(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        labels: torch.Tensor | None = None,
        audio: torch.Tensor | None = None,
        audio_lengths: torch.Tensor | None = None,
        audio_features: torch.Tensor | None = None,
        audio_features_mask: torch.Tensor | None = None,
        *,
        padding_side: str = "right",
    ) -> PreparedInputs:
        """Token ids + clips → ``inputs_embeds`` with the audio in place.

        Args:
            input_ids: [B, L] with one ``<Audio>`` marker per clip.
            attention_mask: [B, L] (1 = token; either padding side).
            labels: [B, L] or ``None``.
            audio: Clips of all conversations in marker order [C, S].
            audio_lengths: Real samples per clip [C].
            audio_features: Instead of ``audio``: the clips' encoder frame features [C, T, D] (``audio_sequence``
                output, e.g. computed once for a frozen encoder); the encoder does not run.
            audio_features_mask: [C, T] (True = real frame) for ``audio_features``.
            padding_side: Padding of the result: ``right`` for training, ``left`` for generation.
        """
        device = self.device
        input_ids, attention_mask = input_ids.to(device), attention_mask.to(device).bool()
        markers = ((input_ids == self.audio_id) & attention_mask).sum(1).tolist()  # per conversation
        if audio_features is not None and audio is not None and audio.shape[0]:
            raise ValueError("give the clips either as audio or as audio_features, not both")
        source = audio_features if audio_features is not None else audio
        clips = 0 if source is None else source.shape[0]
        if sum(markers) != clips:
            raise ValueError(
                f"the batch has {sum(markers)} <Audio> markers but {clips} clips; each clip needs one marker"
            )
        tokens = mask = None
        if clips and audio_features is not None:
            if audio_features_mask is None:
                audio_features_mask = torch.ones(audio_features.shape[:2], dtype=torch.bool)
            tokens, mask = self.project_audio(audio_features.to(device), audio_features_mask.to(device))
        elif clips:
            lengths = audio_lengths if audio_lengths is not None else torch.full((clips,), audio.shape[1])
            tokens, mask = self.encode_audio(audio.to(device), lengths.to(device))
        embeds = self.llm.get_input_embeddings()(input_ids)  # [B, L, H]
        splice = self.projector.splices
        rows_e, rows_l, rows_ids, first = [], [], [], 0
        for b, k in enumerate(markers):
            keep = attention_mask[b]
            ids, emb = input_ids[b][keep], embeds[b][keep]
            lab = labels[b].to(device)[keep] if labels is not None else torch.full_like(ids, IGNORE_INDEX)
            if splice and k:
                emb, lab = self._splice(ids, emb, lab, tokens[first : first + k], mask[first : first + k])
            rows_e.append(emb)
            rows_l.append(lab)
            rows_ids.append(ids)
            first += k
        embeds, attn = _pad_rows(rows_e, 0.0, padding_side)
        out_labels = _pad_rows(rows_l, IGNORE_INDEX, padding_side)[0] if labels is not None else None
        context: AbstractContextManager = nullcontext()
        if not splice and isinstance(self.projector, XAttnProjector):
            ids_padded = _pad_rows(rows_ids, -1, padding_side)[0]
            seen = torch.cumsum((ids_padded == self.audio_id).long(), dim=1)  # [B, L]
            context = self.projector.media_context(*self._media(markers, tokens, mask, embeds), seen)
        return PreparedInputs(embeds, attn.long(), out_labels, context)

    def _splice(
        self, ids: torch.Tensor, emb: torch.Tensor, lab: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Insert each clip's real tokens after its ``<Audio>`` marker (one conversation)."""
        pieces_e, pieces_l, prev = [], [], 0
        for clip, pos in enumerate((ids == self.audio_id).nonzero().squeeze(1).tolist()):
            audio = tokens[clip][mask[clip]]  # [n, H]
            pieces_e += [emb[prev : pos + 1], audio]
            pieces_l += [lab[prev : pos + 1], lab.new_full((audio.shape[0],), IGNORE_INDEX)]
            prev = pos + 1
        pieces_e.append(emb[prev:])
        pieces_l.append(lab[prev:])
        return torch.cat(pieces_e), torch.cat(pieces_l)

    def _media(
        self, markers: list[int], tokens: torch.Tensor | None, mask: torch.Tensor | None, like: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Audio tokens grouped per conversation: media [B, M, H], mask [B, M], 1-based clip number [B, M]."""
        per_clip = tokens.shape[1] if tokens is not None else 1
        width = max(1, max(markers) * per_clip)
        batch, hidden = len(markers), like.shape[-1]
        media = like.new_zeros(batch, width, hidden)
        media_mask = torch.zeros(batch, width, dtype=torch.bool, device=like.device)
        clip_no = torch.zeros(batch, width, dtype=torch.long, device=like.device)
        first = 0
        for b, k in enumerate(markers):
            if k:
                media[b, : k * per_clip] = tokens[first : first + k].reshape(k * per_clip, hidden)
                media_mask[b, : k * per_clip] = mask[first : first + k].reshape(-1)
                clip_no[b, : k * per_clip] = torch.arange(1, k + 1, device=like.device).repeat_interleave(per_clip)
            first += k
        return media, media_mask, clip_no

    # ------------------------------------------------------------------ forward / generate
    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        labels: torch.Tensor | None = None,
        audio: torch.Tensor | None = None,
        audio_lengths: torch.Tensor | None = None,
        audio_features: torch.Tensor | None = None,
        audio_features_mask: torch.Tensor | None = None,
        return_logits: bool = True,
        **llm_kwargs: Any,
    ) -> Any:
        """The LLM's output (``loss`` over assistant tokens when ``labels`` are given, ``logits`` [B, L', V]).

        With ``labels`` and ``return_logits=False`` the output holds the loss only, and the LM head runs only on
        the positions that predict an assistant token: the same loss and gradients without the vocabulary-wide
        logits of the prompt, audio and padding positions, which are most of the sequence in instruction data
        (the head is ~20 % of a 135M LLM's compute per position, and its log-softmax over 49k entries is
        memory-bound on the CPU).
        """
        inputs = self.prepare_inputs(
            input_ids, attention_mask, labels, audio, audio_lengths, audio_features, audio_features_mask
        )
        with inputs.context, onednn_linears(inputs.embeds):  # float32 on the CPU: oneDNN GEMMs (accel/onednn.py)
            if not return_logits and inputs.labels is not None and _keeps_logits(self.llm):
                return self._target_loss(inputs, **llm_kwargs)
            return self.llm(
                inputs_embeds=inputs.embeds, attention_mask=inputs.attention_mask, labels=inputs.labels, **llm_kwargs
            )

    def _target_loss(self, inputs: PreparedInputs, num_items_in_batch: Any = None, **llm_kwargs: Any) -> Any:
        """The LLM's causal-LM loss with logits computed only where there are targets (see ``forward``).

        ``logits_to_keep`` narrows the sequence to the positions where some row has a target (their union over the
        batch: rows of different prompt lengths answer at different positions); a pre-hook on the LM head then
        passes it only the (row, position) pairs that have one, so the vocabulary-wide head, its log-softmax and
        their backward run on the target tokens alone. Anything the model applies after its head (e.g. logit
        soft-capping) is elementwise and sees the same values.
        """
        from transformers.modeling_outputs import CausalLMOutput

        targets = inputs.labels[:, 1:]  # position t predicts token t + 1
        keep = (targets != IGNORE_INDEX).any(0).nonzero().squeeze(1)  # [K]
        kept = targets[:, keep]  # [B, K]
        rows = (kept != IGNORE_INDEX).flatten().nonzero().squeeze(1)  # [N] of B * K
        base = self.llm.get_base_model() if hasattr(self.llm, "get_base_model") else self.llm
        head = base.get_output_embeddings()
        narrowed = []

        def only_targets(module: nn.Module, args: tuple) -> tuple | None:
            hidden = args[0]
            if narrowed or hidden.shape[:-1] != kept.shape:
                return None  # not the call on the kept positions: leave it alone
            narrowed.append(True)
            return (hidden.reshape(-1, hidden.shape[-1]).index_select(0, rows).unsqueeze(0), *args[1:])

        handle = head.register_forward_pre_hook(only_targets) if head is not None else None
        try:
            out = self.llm(
                inputs_embeds=inputs.embeds, attention_mask=inputs.attention_mask, logits_to_keep=keep, **llm_kwargs
            )
        finally:
            if handle is not None:
                handle.remove()
        logits = out.logits.float()
        if narrowed:  # [1, N, V]: the target rows only
            logits, labels = logits.flatten(0, 1), kept.flatten().index_select(0, rows)
        else:  # [B, K, V]
            logits, labels = logits.flatten(0, 1), kept.flatten()
        if num_items_in_batch is None:  # transformers' loss: the mean over target tokens, or the sum / the count given
            loss = F.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX)
        else:
            loss = F.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX, reduction="sum") / num_items_in_batch
        return CausalLMOutput(loss=loss)

    def step(self, batch: dict[str, Any], **kwargs: Any) -> Any:
        """``forward`` on a collated batch (ignores its keys, meta and references); ``kwargs`` go to ``forward``."""
        return self(**{k: batch[k] for k in BATCH_KEYS if k in batch}, **kwargs)

    @torch.inference_mode()
    def generate_batch(self, batch: dict[str, Any], **generate_kwargs: Any) -> list[str]:
        """Replies to a batch from ``collator(generation=True)`` (greedy unless ``do_sample=True``)."""
        was_training = self.training
        self.eval()
        try:
            inputs = self.prepare_inputs(
                batch["input_ids"],
                batch["attention_mask"],
                audio=batch.get("audio"),
                audio_lengths=batch.get("audio_lengths"),
                audio_features=batch.get("audio_features"),
                audio_features_mask=batch.get("audio_features_mask"),
                padding_side="left",
            )
            kwargs = {"max_new_tokens": self.config.max_new_tokens, "do_sample": False, **generate_kwargs}
            with inputs.context, onednn_linears(inputs.embeds):
                out = self.llm.generate(
                    inputs_embeds=inputs.embeds,
                    attention_mask=inputs.attention_mask,
                    pad_token_id=self.tokenizer.pad_token_id,
                    eos_token_id=end_of_turn_ids(self.llm, self.tokenizer),
                    **kwargs,
                )
        finally:
            self.train(was_training)
        return [t.strip() for t in self.tokenizer.batch_decode(out, skip_special_tokens=True)]

    def generate(
        self,
        audio: AudioSource | Sequence[AudioSource] | None,
        prompt: str,
        *,
        history: Sequence[dict[str, str]] | None = None,
        sample_rate: int | None = None,
        **generate_kwargs: Any,
    ) -> str:
        """Answer ``prompt`` about ``audio``.

        Args:
            audio: One clip or a list (paths, bytes, arrays, ``(array, rate)``), or ``None`` for text only.
                Clips are matched in order to the ``<Audio>`` markers of ``history`` and ``prompt``; clips
                without a marker get one at the start of the prompt.
            prompt: The user's message.
            history: Earlier turns of the conversation (``{"role", "content"}``).
            sample_rate: Rate of bare arrays (default: the encoder's).
            **generate_kwargs: Passed to transformers' ``generate`` (``max_new_tokens``, ``do_sample`` …).
        """
        if audio is None:
            clips: list[AudioSource] = []
        elif isinstance(audio, list) or (isinstance(audio, tuple) and not _is_array_with_rate(audio)):
            clips = list(audio)
        else:
            clips = [audio]
        if sample_rate is not None:
            clips = [(c, sample_rate) if not isinstance(c, (str, bytes, tuple)) else c for c in clips]
        messages = list(history or [])
        missing = len(clips) - count_audio([*messages, {"role": "user", "content": prompt}])
        if missing > 0:
            prompt = AUDIO_TOKEN * missing + "\n" + prompt
        messages.append({"role": "user", "content": prompt})
        sample = ConversationSample.from_sources("input", messages, clips, self.sample_rate)
        return self.generate_batch(self.collator(generation=True)([sample]), **generate_kwargs)[0]

    def cast_frozen_linears(self, dtype: torch.dtype) -> int:
        """Store the LLM's frozen linear weights in ``dtype``, for inference under autocast to ``dtype``.

        Autocast casts every float32 weight at every call, which in token-by-token generation on a CPU costs as
        much as the products themselves; stored in the autocast dtype, the products get the same numbers without
        the casts. The output embedding is left alone (it is often tied to the input embedding, whose dtype sets
        the residual stream's), and so are trainable weights (LoRA adapters in training).

        Returns:
            The number of linear layers cast.
        """
        head = self.llm.get_output_embeddings()
        count = 0
        for module in self.llm.modules():
            if type(module) is nn.Linear and module is not head and not module.weight.requires_grad:
                module.to(dtype)
                count += 1
        return count

    def save_pretrained(self, directory: str | Path) -> Path:
        """Write the adapter folder (see ``clapkit.lalm.adapter``); ``clapkit.lalm.load`` reads it back."""
        return save_pretrained(self, directory)


def _keeps_logits(llm: nn.Module) -> bool:
    """Whether the (possibly peft-wrapped) causal LM's forward takes ``logits_to_keep`` (transformers ≥ 4.50)."""
    import inspect

    base = llm.get_base_model() if hasattr(llm, "get_base_model") else llm
    return "logits_to_keep" in inspect.signature(base.forward).parameters


def audio_sequence_from_tower(encoder: ClapModel, tower_out: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """``encoder.audio_sequence`` from its audio tower's output (e.g. stored by ``clapkit.cache``).

    For clips of one window this equals ``audio_sequence(wave)`` (the head, if any, over the tower's frames), so a
    frozen tower's outputs computed once serve LALM training without running the tower again.

    Args:
        encoder: The clapkit model.
        tower_out: ``TowerOutput`` of its audio tower (``sequence`` [B, T, D_tower], ``mask`` [B, T]).

    Returns:
        feats [B, T, sequence_dim] and mask [B, T] (True = real frame), for ``AudioLanguageModel.project_audio``.
    """
    out = encoder.audio_head(tower_out) if encoder.audio_head is not None else tower_out
    return out.sequence, out.mask


def _is_array_with_rate(source: tuple) -> bool:
    return len(source) == 2 and isinstance(source[1], int) and not isinstance(source[0], (str, bytes))


def _pad_rows(rows: list[torch.Tensor], value: float, side: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack rows [n_i, ...] into [B, max n, ...] padded on ``side``; also return the mask [B, max n]."""
    if side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {side!r}")
    width = max(r.shape[0] for r in rows)
    out = rows[0].new_full((len(rows), width, *rows[0].shape[1:]), value)
    mask = torch.zeros(len(rows), width, dtype=torch.bool, device=rows[0].device)
    for i, r in enumerate(rows):
        span = slice(width - r.shape[0], width) if side == "left" else slice(0, r.shape[0])
        out[i, span] = r
        mask[i, span] = True
    return out, mask
