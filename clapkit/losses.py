"""Contrastive audio-text losses, chosen by name from ``LOSSES``.

Every loss is an ``nn.Module`` built on open_clip's ``ClipLoss`` (rank, world size, ``local_loss``,
``gather_with_grad``, cached labels) and its ``gather_features``, and every loss is called the same way::

    loss_fn = LOSSES.get(name)(**kwargs)  # kwargs: local_loss, gather_with_grad, rank, world_size, + loss options
    terms = loss_fn(
        audio_embeds,                     # [B, D] L2-normalised audio embeddings
        text_embeds,                      # [B, D] L2-normalised captions; text_embeds[i] describes audio_embeds[i]
        logit_scale,                      # [] the multiplier 1/σ (``ClapModel.scale()``), not its log
        negative_embeds=None,             # [B, K, D] hard-negative captions that belong to sample i alone
        negative_mask=None,               # [B, K] bool, True = real, False = padding (None = all real)
        positive_embeds=None,             # [B, P, D] paraphrase positives of sample i, besides text_embeds[i]
        positive_mask=None,               # [B, P] bool
        audio_negative_embeds=None,       # [B, Ka, D] counterfactual audio of sample i (e.g. its events reversed)
        audio_negative_mask=None,         # [B, Ka] bool
    )
    terms["loss"].backward()              # terms also holds the named parts ("audio_to_text", "text_to_audio")

``loss_fn.inputs`` names the optional groups a loss consumes (``"negatives"``, ``"positives"``,
``"audio_negatives"``), so a training loop can skip encoding what the loss does not use; passing a group the
loss does not use raises ``ValueError`` instead of being silently ignored. K, P and Ka may differ per sample:
pad to the batch maximum and mark padding in the mask. Padded logits are removed with ``masked_fill(-inf)``
(never by multiplying logits), and padded rows are zeroed first so NaN padding cannot leak into gradients.

Distributed training: ``rank`` / ``world_size`` default to ``torch.distributed``'s when a process group is
initialised at call time (so the loss can be built before DDP starts). Every rank must pass the same batch
size and the same optional groups; K, P and Ka are padded to their maximum over ranks. The defaults
(``local_loss=True, gather_with_grad=True``) are exact: after DDP averages gradients, training on N ranks
equals one process on the concatenated batch (the gradient each rank sees for its own embeddings is
``world_size`` times that of the single process, which DDP's mean divides out — open_clip's convention).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
from open_clip.loss import ClipLoss, gather_features
from torch.nn import functional as F

from clapkit.registry import Registry

__all__ = ["LOSSES", "AFClapLoss", "CompaHardNegativeLoss", "CompaModularLoss", "ContrastiveLoss", "InfoNCELoss"]

LOSSES: Registry[type[ContrastiveLoss]] = Registry("loss")

_GROUPS = {
    "negatives": ("negative_embeds", "negative_mask"),
    "positives": ("positive_embeds", "positive_mask"),
    "audio_negatives": ("audio_negative_embeds", "audio_negative_mask"),
}


@dataclass
class _Group:
    """Per-sample extra embeddings: embeds [B, K, D] (padding zeroed) and mask [B, K] (True = real)."""

    embeds: torch.Tensor
    mask: torch.Tensor

    @classmethod
    def empty(cls, like: torch.Tensor) -> _Group:
        batch, dim = like.shape
        return cls(like.new_zeros(batch, 0, dim), torch.zeros(batch, 0, dtype=torch.bool, device=like.device))


class _ContiguousGrad(torch.autograd.Function):
    """Identity whose backward hands on a contiguous gradient.

    The backward of ``torch.distributed.nn.all_gather`` on gloo scatters into buffers laid out like the
    incoming gradient, and gloo's scatter fills non-contiguous buffers wrongly (pytorch/pytorch#24836,
    #192920): a strided gradient, e.g. from ``einsum``, came back scrambled without this.
    """

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        return tensor.view_as(tensor)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return grad.contiguous()


def _masked(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return logits.masked_fill(~mask, float("-inf"))


class ContrastiveLoss(ClipLoss):
    """Base class: input checks, cross-rank gathering of embeddings and per-sample groups.

    Args:
        local_loss: Each rank computes the loss rows of its own samples against the gathered batch
            (memory B x N instead of N x N); exact with ``gather_with_grad``.
        gather_with_grad: Gather through ``torch.distributed.nn.all_gather`` so gradients reach every rank.
        cache_labels: Cache the target indices between calls of the same size.
        rank: This process's rank; ``None`` = ``torch.distributed``'s at call time (0 without a process group).
        world_size: Number of ranks; ``None`` = ``torch.distributed``'s at call time (1 without a process group).
    """

    inputs: frozenset[str] = frozenset()  # the optional groups this loss consumes

    def __init__(
        self,
        *,
        local_loss: bool = True,
        gather_with_grad: bool = True,
        cache_labels: bool = False,
        rank: int | None = None,
        world_size: int | None = None,
    ) -> None:
        if (rank is None) != (world_size is None):
            raise ValueError(f"rank={rank}, world_size={world_size}: give both or neither (neither = auto-detect)")
        super().__init__(
            local_loss=local_loss,
            gather_with_grad=gather_with_grad,
            cache_labels=cache_labels,
            rank=rank or 0,
            world_size=world_size or 1,
        )
        self._auto_world = rank is None

    # ------------------------------------------------------------------ public entry point
    def forward(
        self,
        audio_embeds: torch.Tensor,
        text_embeds: torch.Tensor,
        logit_scale: torch.Tensor | float,
        *,
        negative_embeds: torch.Tensor | None = None,
        negative_mask: torch.Tensor | None = None,
        positive_embeds: torch.Tensor | None = None,
        positive_mask: torch.Tensor | None = None,
        audio_negative_embeds: torch.Tensor | None = None,
        audio_negative_mask: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Audio [B, D], text [B, D], scale [] (+ optional groups [B, K, D] / masks [B, K]) → dict of scalars."""
        if audio_embeds.ndim != 2 or audio_embeds.shape != text_embeds.shape:
            raise ValueError(
                f"audio_embeds {tuple(audio_embeds.shape)} and text_embeds {tuple(text_embeds.shape)}: "
                "expected two [B, D] tensors of the same shape (one caption per audio clip)"
            )
        if not isinstance(logit_scale, torch.Tensor):
            logit_scale = torch.tensor(float(logit_scale), device=audio_embeds.device)
        given = {
            "negative_embeds": negative_embeds,
            "negative_mask": negative_mask,
            "positive_embeds": positive_embeds,
            "positive_mask": positive_mask,
            "audio_negative_embeds": audio_negative_embeds,
            "audio_negative_mask": audio_negative_mask,
        }
        groups = {
            group: self._check_group(group, given[e], given[m], audio_embeds) for group, (e, m) in _GROUPS.items()
        }
        self._sync_world()
        return self.compute(audio_embeds, text_embeds, logit_scale, **groups)

    def compute(
        self,
        audio: torch.Tensor,
        text: torch.Tensor,
        scale: torch.Tensor,
        negatives: _Group,
        positives: _Group,
        audio_negatives: _Group,
    ) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    # ------------------------------------------------------------------ helpers for subclasses
    def _check_group(
        self, group: str, embeds: torch.Tensor | None, mask: torch.Tensor | None, audio: torch.Tensor
    ) -> _Group:
        embeds_name, mask_name = _GROUPS[group]
        if embeds is None:
            if mask is not None:
                raise ValueError(f"{mask_name} given without {embeds_name}")
            return _Group.empty(audio)
        if group not in self.inputs:
            uses = ", ".join(f"{_GROUPS[g][0]}" for g in sorted(self.inputs)) or "no optional inputs"
            users = ", ".join(n for n in LOSSES.names() if group in LOSSES.get(n).inputs)
            raise ValueError(
                f"{type(self).__name__} does not use {embeds_name} (it uses {uses}); "
                f"drop them or pick a loss that does: {users}"
            )
        batch, dim = audio.shape
        if embeds.ndim != 3 or embeds.shape[0] != batch or embeds.shape[2] != dim:
            raise ValueError(f"{embeds_name} {tuple(embeds.shape)}: expected [B={batch}, K, D={dim}]")
        if mask is None:
            mask = torch.ones(embeds.shape[:2], dtype=torch.bool, device=embeds.device)
        elif mask.shape != embeds.shape[:2]:
            raise ValueError(f"{mask_name} {tuple(mask.shape)}: expected {tuple(embeds.shape[:2])} like {embeds_name}")
        mask = mask.to(device=embeds.device, dtype=torch.bool)
        return _Group(embeds.masked_fill(~mask[..., None], 0.0), mask)

    def _sync_world(self) -> None:
        if self._auto_world:
            on = dist.is_available() and dist.is_initialized()
            self.rank = dist.get_rank() if on else 0
            self.world_size = dist.get_world_size() if on else 1

    def _gather(self, first: torch.Tensor, second: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """open_clip's ``gather_features`` of two per-sample tensors → [N, ...] each."""
        all_first, all_second = gather_features(
            first,
            second,
            local_loss=self.local_loss,
            gather_with_grad=self.gather_with_grad,
            rank=self.rank,
            world_size=self.world_size,
        )
        return _ContiguousGrad.apply(all_first), _ContiguousGrad.apply(all_second)

    def _pair(self, audio: torch.Tensor, text: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(audio rows, text rows, all audio [N, D], all text [N, D]); rows = this rank's (local loss) or all."""
        if self.world_size == 1:
            return audio, text, audio, text
        all_audio, all_text = self._gather(audio, text)
        if self.local_loss:
            return audio, text, all_audio, all_text
        return all_audio, all_text, all_audio, all_text

    def _all(self, group: _Group) -> _Group:
        """The group of every sample on every rank [N, K, D], K padded to the maximum over ranks."""
        if self.world_size == 1:
            return group
        size = torch.tensor([group.embeds.shape[1]], device=group.embeds.device)
        dist.all_reduce(size, op=dist.ReduceOp.MAX)
        pad = int(size.item()) - group.embeds.shape[1]
        embeds = F.pad(group.embeds, (0, 0, 0, pad))
        mask = F.pad(group.mask, (0, pad), value=False)
        all_embeds, all_mask = self._gather(embeds, mask.to(embeds.dtype))
        return _Group(all_embeds, all_mask > 0.5)

    def _rows(self, group: _Group) -> _Group:
        """The group for this rank's loss rows: local under ``local_loss``, else gathered."""
        return group if self.world_size == 1 or self.local_loss else self._all(group)

    def _labels(self, rows: torch.Tensor) -> torch.Tensor:
        return self.get_ground_truth(rows.device, rows.shape[0])

    def _with_negatives(
        self, query: torch.Tensor, batch: torch.Tensor, scale: torch.Tensor, negatives: _Group
    ) -> torch.Tensor:
        """InfoNCE of queries [R, D] over the batch [N, D] plus each query's own negatives [R, K, D]."""
        logits = scale * query @ batch.T  # [R, N]
        extra = _masked(scale * torch.einsum("rd,rkd->rk", query, negatives.embeds), negatives.mask)  # [R, K]
        return F.cross_entropy(torch.cat([logits, extra], dim=1), self._labels(query))


@LOSSES.register("infonce")
class InfoNCELoss(ContrastiveLoss):
    """Symmetric CLAP/CLIP loss. Audio [B, D], text [B, D], scale [] → {"loss", "audio_to_text", "text_to_audio"}."""

    def compute(
        self,
        audio: torch.Tensor,
        text: torch.Tensor,
        scale: torch.Tensor,
        negatives: _Group,
        positives: _Group,
        audio_negatives: _Group,
    ) -> dict[str, torch.Tensor]:
        a_rows, t_rows, all_audio, all_text = self._pair(audio, text)
        labels = self._labels(a_rows)
        a2t = F.cross_entropy(scale * a_rows @ all_text.T, labels)
        t2a = F.cross_entropy(scale * t_rows @ all_audio.T, labels)
        return {"loss": (a2t + t2a) / 2, "audio_to_text": a2t, "text_to_audio": t2a}


@LOSSES.register("compa_hardneg")
class CompaHardNegativeLoss(ContrastiveLoss):
    """CompA hard-negative loss. Audio, text [B, D]; negatives [B, K, D]; audio negatives [B, Ka, D] → dict.

    Audio→text for audio i adds its own K hard-negative captions to the denominator:
    ``ℓᵃ²ᵗᵢ = −s·aᵢ·tᵢ + log(Σⱼ exp(s·aᵢ·tⱼ) + Σₖ exp(s·aᵢ·nᵢₖ))``. Text→audio runs over the batch's
    captions only; with ``audio_negative_embeds`` (an extension of CompA) the counterfactual audio of sample i
    joins the denominator of caption i: ``ℓᵗ²ᵃᵢ = −s·tᵢ·aᵢ + log(Σⱼ exp(s·tᵢ·aⱼ) + Σₖ exp(s·tᵢ·bᵢₖ))``.
    ``loss = (mean ℓᵃ²ᵗ + mean ℓᵗ²ᵃ) / 2``.
    """

    inputs = frozenset({"negatives", "audio_negatives"})

    def compute(
        self,
        audio: torch.Tensor,
        text: torch.Tensor,
        scale: torch.Tensor,
        negatives: _Group,
        positives: _Group,
        audio_negatives: _Group,
    ) -> dict[str, torch.Tensor]:
        a_rows, t_rows, all_audio, all_text = self._pair(audio, text)
        a2t = self._with_negatives(a_rows, all_text, scale, self._rows(negatives))
        t2a = self._with_negatives(t_rows, all_audio, scale, self._rows(audio_negatives))
        return {"loss": (a2t + t2a) / 2, "audio_to_text": a2t, "text_to_audio": t2a}


@LOSSES.register("compa_modular")
class CompaModularLoss(ContrastiveLoss):
    """CompA modular multi-positive loss. Audio, text [B, D]; positives [B, P, D]; negatives [B, K, D] → dict.

    Audio i has the positive set Pᵢ = {tᵢ} ∪ {its paraphrases pᵢₘ}; the numerator averages over Pᵢ and the
    denominator holds Pᵢ, the other samples' captions and i's hard negatives:
    ``ℓᵃ²ᵗᵢ = −log((1/|Pᵢ|) Σ_{p∈Pᵢ} exp(s·aᵢ·p)) + log(Σ_{p∈Pᵢ} exp(s·aᵢ·p) + Σ_{j≠i} exp(s·aᵢ·tⱼ)
    + Σₖ exp(s·aᵢ·nᵢₖ))``. Text→audio as in ``compa_hardneg`` (optionally with audio negatives).
    Without positives and negatives it equals ``infonce``.
    """

    inputs = frozenset({"negatives", "positives", "audio_negatives"})

    def compute(
        self,
        audio: torch.Tensor,
        text: torch.Tensor,
        scale: torch.Tensor,
        negatives: _Group,
        positives: _Group,
        audio_negatives: _Group,
    ) -> dict[str, torch.Tensor]:
        a_rows, t_rows, all_audio, all_text = self._pair(audio, text)
        positives, negatives = self._rows(positives), self._rows(negatives)
        labels = self._labels(a_rows)
        batch = scale * a_rows @ all_text.T  # [R, N], column labels[r] is the caption of row r
        para = _masked(scale * torch.einsum("rd,rpd->rp", a_rows, positives.embeds), positives.mask)  # [R, P]
        neg = _masked(scale * torch.einsum("rd,rkd->rk", a_rows, negatives.embeds), negatives.mask)  # [R, K]
        own = torch.cat([batch.gather(1, labels[:, None]), para], dim=1)  # [R, 1 + P]
        count = 1 + positives.mask.sum(dim=1)  # [R]
        numerator = torch.logsumexp(own, dim=1) - count.log()
        denominator = torch.logsumexp(torch.cat([batch, para, neg], dim=1), dim=1)
        a2t = (denominator - numerator).mean()
        t2a = self._with_negatives(t_rows, all_audio, scale, self._rows(audio_negatives))
        return {"loss": (a2t + t2a) / 2, "audio_to_text": a2t, "text_to_audio": t2a}


@LOSSES.register("afclap")
class AFClapLoss(ContrastiveLoss):
    """AF-CLAP (Audio Flamingo 2) loss. Audio, text [B, D]; positives [B, P, D]; negatives [B, K, D] → dict.

    With s(x, a) = exp(scale·x·a), S(j, i) = Σ_{p∈Pⱼ} s(p, aᵢ) over sample j's captions Pⱼ = {tⱼ} ∪ {pⱼₘ}
    and S_neg(i) = Σₖ s(nᵢₖ, aᵢ) over i's composition-aware negatives (all of them, flattened to K):
    ``L = −1/B Σᵢ log(S(i, i) / (S_neg(i) + Σⱼ S(j, i)))``.

    Args:
        symmetric: Also add text→audio InfoNCE of the captions (with ``audio_negative_embeds`` if given) and
            return the mean of both directions; the published loss is audio→text only.
        **kwargs: Distributed options of ``ContrastiveLoss``.
    """

    inputs = frozenset({"negatives", "positives"})

    def __init__(self, *, symmetric: bool = False, **kwargs) -> None:
        super().__init__(**kwargs)
        self.symmetric = symmetric
        if symmetric:  # audio negatives only enter a text→audio term
            self.inputs = self.inputs | {"audio_negatives"}

    def compute(
        self,
        audio: torch.Tensor,
        text: torch.Tensor,
        scale: torch.Tensor,
        negatives: _Group,
        positives: _Group,
        audio_negatives: _Group,
    ) -> dict[str, torch.Tensor]:
        a_rows, t_rows, all_audio, all_text = self._pair(audio, text)
        everyone = self._all(positives)  # [N, P, D]: the denominator sums every sample's captions
        captions = torch.cat([all_text[:, None], everyone.embeds], dim=1)  # [N, 1 + P, D]
        caption_mask = F.pad(everyone.mask, (1, 0), value=True)  # [N, 1 + P]
        logits = _masked(scale * torch.einsum("rd,npd->rnp", a_rows, captions), caption_mask)  # [R, N, 1 + P]
        labels = self._labels(a_rows)
        own = logits[torch.arange(len(labels), device=labels.device), labels]  # [R, 1 + P]
        negatives = self._rows(negatives)
        neg = _masked(scale * torch.einsum("rd,rkd->rk", a_rows, negatives.embeds), negatives.mask)  # [R, K]
        denominator = torch.logsumexp(torch.cat([logits.flatten(1), neg], dim=1), dim=1)
        a2t = (denominator - torch.logsumexp(own, dim=1)).mean()
        if not self.symmetric:
            return {"loss": a2t, "audio_to_text": a2t}
        t2a = self._with_negatives(t_rows, all_audio, scale, self._rows(audio_negatives))
        return {"loss": (a2t + t2a) / 2, "audio_to_text": a2t, "text_to_audio": t2a}
