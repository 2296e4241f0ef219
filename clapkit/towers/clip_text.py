"""CLIP-style text tower: open_clip's ``TextTransformer`` with open_clip's offline BPE tokenizer."""

from __future__ import annotations

import torch
from open_clip.tokenizer import SimpleTokenizer
from open_clip.transformer import TextTransformer

from clapkit.towers.base import TEXT_TOWERS, TextTower, TowerOutput


@TEXT_TOWERS.register("clip")
class ClipTextTower(TextTower):
    """Causal transformer pooled at the end-of-text token (CLIP).

    The BPE vocabulary ships inside open_clip, so nothing is fetched and nothing extra is saved.

    Args:
        context_length: Tokens per caption (longer captions are truncated, keeping end-of-text).
        vocab_size, width, heads, layers: ``open_clip.transformer.TextTransformer`` shape.
    """

    def __init__(
        self,
        pretrained: bool = False,
        root=None,
        context_length: int = 77,
        vocab_size: int = 49408,
        width: int = 512,
        heads: int = 8,
        layers: int = 12,
    ):
        super().__init__()
        self.tokenizer = SimpleTokenizer(context_length=context_length)
        if vocab_size < len(self.tokenizer.encoder):
            raise ValueError(f"clip text tower: vocab_size {vocab_size} < BPE vocabulary {len(self.tokenizer.encoder)}")
        self.model = TextTransformer(
            context_length=context_length,
            vocab_size=vocab_size,
            width=width,
            heads=heads,
            layers=layers,
            output_dim=None,
            output_tokens=True,
            pool_type="argmax",
        )
        self.width = self.seq_width = width

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        ids = self.tokenizer(list(texts))  # [B, L], 0 = padding
        return {"input_ids": ids, "attention_mask": (ids != 0).long()}

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> TowerOutput:
        pooled, tokens = self.model(input_ids)  # [B, W], [B, L, W]
        return TowerOutput(pooled=pooled, sequence=tokens, mask=attention_mask.bool())
