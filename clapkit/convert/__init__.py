"""Load checkpoints of other CLAP code bases as clapkit models.

- LAION-CLAP ``.pt`` files (``630k-audioset-best.pt``, ``music_audioset_epoch_15_esc_90.14.pt``, …) and
  CompA-CLAP's, which use the same format: ``laion.py``.
- Hugging Face ``ClapModel`` folders (``save_pretrained`` output, e.g. ``laion/clap-htsat-unfused``): ``hf.py``.

``clapkit.load(path)`` calls ``load_checkpoint`` for these; ``convert`` (and the ``clapkit convert SRC --out DIR``
command, ``cli.py``) writes a clapkit ``save_pretrained`` folder that loads offline, tokenizer included. Loading is
strict: every weight of the clapkit model must come from the checkpoint, and every checkpoint key must be used or be
in a documented list of keys that do not affect the embeddings (``laion.DROPPED``); anything else raises
``ValueError`` with a report.
"""

from __future__ import annotations

import logging
from pathlib import Path

from clapkit.checkpoint import load_state, read_torch_state
from clapkit.config import ModelConfig, get_model_config
from clapkit.convert import hf, laion
from clapkit.model import ClapModel

__all__ = ["convert", "convert_with_report", "handles", "load_checkpoint"]

log = logging.getLogger(__name__)

#: Registered LAION architecture per HTSAT patch-embedding width (tiny 96, base 128). Other sizes start from the
#: tiny config; their shapes are read from the checkpoint either way.
_LAION_BASES = {96: "laion-htsat-tiny-roberta", 128: "laion-htsat-base-roberta"}


def handles(path: str | Path) -> bool:
    """True if ``path`` is a file (a candidate ``.pt`` checkpoint) or a Hugging Face ClapModel folder."""
    path = Path(path).expanduser()
    return path.is_file() or hf.is_hf_clap_dir(path)


def _with_tokenizer(config: dict, tokenizer: str | Path | None, source: str) -> dict:
    if tokenizer is None:
        return config
    if config["text_tower"]["name"] != "hf":
        raise ValueError(
            f"{source}: tokenizer= applies to RoBERTa text towers; this checkpoint's text tower is CLIP-style "
            "(its BPE vocabulary ships with open_clip)"
        )
    params = {**config["text_tower"]["params"], "path": str(tokenizer)}
    return {**config, "text_tower": {**config["text_tower"], "params": params}}


def _read_laion(path: Path, tokenizer: str | Path | None) -> tuple[dict, dict, list[str]]:
    state = read_torch_state(path)
    width = state.get("audio_branch.patch_embed.proj.weight")
    base = get_model_config(_LAION_BASES.get(width.shape[0] if width is not None else 0, _LAION_BASES[96])).to_dict()
    config = _with_tokenizer(laion.laion_config(state, base, str(path)), tokenizer, str(path))
    mapped, dropped = laion.laion_state(state)
    return config, mapped, dropped


def _read_hf(path: Path, tokenizer: str | Path | None) -> tuple[dict, dict, list[str]]:
    config = hf.hf_config(path, get_model_config(_LAION_BASES[96]).to_dict(), tokenizer)
    mapped, dropped = hf.hf_state(hf.read_hf_weights(path))
    return config, mapped, dropped


def convert_with_report(path: str | Path, tokenizer: str | Path | None = None) -> tuple[ClapModel, list[str]]:
    """The converted model (eval mode) and the checkpoint keys left out as not affecting the embeddings.

    See ``load_checkpoint`` for the arguments.
    """
    path = Path(path).expanduser()
    if hf.is_hf_clap_dir(path):
        config, state, dropped = _read_hf(path, tokenizer)
    elif path.is_file():
        config, state, dropped = _read_laion(path, tokenizer)
    else:
        raise ValueError(
            f"{path}: neither a checkpoint file nor a Hugging Face ClapModel folder (config.json with model_type clap)"
        )
    try:
        model = ClapModel(ModelConfig.from_dict({**config, "name": path.stem}), pretrained=False)
    except ValueError as err:
        if "tokenizer" not in str(err):
            raise
        raise ValueError(
            f"{path}: {err}. Pass tokenizer= (clapkit convert --tokenizer DIR) a folder with the RoBERTa tokenizer "
            "files, e.g. a downloaded laion/clap-htsat-unfused"
        ) from err
    # The front end's buffers (STFT window, filterbank) follow from the config; they are not learned.
    state.update({k: v for k, v in model.state_dict().items() if k.startswith("audio_tower.frontend.")})
    load_state(model, state, str(path))
    log.info("%s: converted; left out %d keys that do not affect the embeddings", path, len(dropped))
    return model.eval(), dropped


def load_checkpoint(path: str | Path, *, tokenizer: str | Path | None = None) -> ClapModel:
    """A LAION-CLAP / CompA-CLAP ``.pt`` file or a Hugging Face ClapModel folder as a clapkit model (eval mode).

    Args:
        path: The checkpoint file or folder.
        tokenizer: Folder (or hub id) of the RoBERTa tokenizer. Default: an HF folder's own tokenizer files, else
            ``FacebookAI/roberta-base`` from the Hugging Face cache.

    Raises:
        ValueError: Unreadable or unsafe file, another architecture, a fusion model, or weights that do not match.
    """
    return convert_with_report(path, tokenizer)[0]


def convert(src: str | Path, out: str | Path, *, tokenizer: str | Path | None = None) -> Path:
    """Convert ``src`` (see ``load_checkpoint``) into a clapkit ``save_pretrained`` folder at ``out``."""
    return load_checkpoint(src, tokenizer=tokenizer).save_pretrained(out)
