"""CLIP-style text tower: open_clip's ``TextTransformer`` with open_clip's offline BPE tokenizer."""

from __future__ import annotations

import torch
from open_clip.tokenizer import SimpleTokenizer
from open_clip.transformer import TextTransformer, text_global_pool

from clapkit.accel.onednn import onednn_linears
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
        # open_clip pads every caption to context_length (77) and runs the full causal mask. Under a causal
        # mask no real token attends to later padding, so running only up to the longest caption in the
        # batch gives the same features at a fraction of the cost (captions are ~10-20 tokens).
        length = max(1, int(attention_mask.sum(dim=1).max()))
        ids = input_ids[:, :length]
        m = self.model
        x = m.token_embedding(ids) + m.positional_embedding[:length]
        with onednn_linears(x):
            x = m.ln_final(m.transformer(x, attn_mask=m.attn_mask[:length, :length]))  # [B, L, W]
        pooled = text_global_pool(x, ids, pool_type="argmax")  # the end-of-text token (highest BPE id)
        return TowerOutput(pooled=pooled, sequence=x, mask=attention_mask[:, :length].bool())
