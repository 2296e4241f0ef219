"""Load checkpoints of other CLAP code bases as clapkit models.

- LAION-CLAP ``.pt`` files (``630k-audioset-best.pt``, ``music_audioset_epoch_15_esc_90.14.pt``, …) and
  CompA-CLAP's, which use the same format: ``laion.py``.
- Hugging Face ``ClapModel`` folders (``save_pretrained`` output, e.g. ``laion/clap-htsat-unfused``): ``hf.py``.

``clapkit.load(path)`` calls ``load_checkpoint`` for these; ``clapkit convert SRC --out DIR`` (``convert``) writes a
clapkit ``save_pretrained`` folder that loads offline, tokenizer included. Loading is strict: every weight of the
clapkit model must come from the checkpoint, and every checkpoint key must be used or be in a documented list of
keys that do not affect the embeddings (``laion.DROPPED``); anything else raises ``ValueError`` with a report.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from clapkit.config import ModelConfig
from clapkit.convert import hf, laion
from clapkit.factory import get_model_config, load_state, save_pretrained
from clapkit.model import ClapModel

__all__ = ["add_commands", "convert", "handles", "load_checkpoint"]

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
    state = laion.read_checkpoint(path)
    width = state.get("audio_branch.patch_embed.proj.weight")
    base = get_model_config(_LAION_BASES.get(width.shape[0] if width is not None else 0, _LAION_BASES[96])).to_dict()
    config = _with_tokenizer(laion.laion_config(state, base, str(path)), tokenizer, str(path))
    mapped, dropped = laion.laion_state(state)
    return config, mapped, dropped


def _read_hf(path: Path, tokenizer: str | Path | None) -> tuple[dict, dict, list[str]]:
    config = hf.hf_config(path, get_model_config(_LAION_BASES[96]).to_dict(), tokenizer)
    mapped, dropped = hf.hf_state(hf.read_hf_weights(path))
    return config, mapped, dropped


def _convert(path: str | Path, tokenizer: str | Path | None = None) -> tuple[ClapModel, list[str]]:
    """The converted model (eval mode) and the checkpoint keys left out as not affecting the embeddings."""
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
    return _convert(path, tokenizer)[0]


def convert(src: str | Path, out: str | Path, *, tokenizer: str | Path | None = None) -> Path:
    """Convert ``src`` (see ``load_checkpoint``) into a clapkit ``save_pretrained`` folder at ``out``."""
    return save_pretrained(load_checkpoint(src, tokenizer=tokenizer), out)


def _summary(dropped: list[str]) -> list[str]:
    """One line per reason for the dropped keys."""
    lines: dict[str, list[str]] = {}
    for key in dropped:
        why = laion.dropped_reason(key) or hf.dropped_reason(key)
        lines.setdefault(why, []).append(key)
    return [f"  {len(keys)} × {keys[0]}{' …' if len(keys) > 1 else ''}: {why}" for why, keys in lines.items()]


def _cmd_convert(args: argparse.Namespace) -> int:
    model, dropped = _convert(args.src, args.tokenizer)
    out = save_pretrained(model, args.out)
    cfg = model.config
    print(
        f"wrote {out}: audio={cfg.audio_tower.name} text={cfg.text_tower.name} dim={cfg.embed_dim} "
        f"rate={cfg.audio.sample_rate} Hz; every model weight loaded from {args.src}"
    )
    if dropped:
        print(f"left out {len(dropped)} checkpoint keys that do not affect the embeddings:")
        print("\n".join(_summary(dropped)))
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "convert",
        help="convert a LAION-CLAP / CompA-CLAP .pt file or a Hugging Face ClapModel folder",
        description="Load a LAION-CLAP or CompA-CLAP .pt checkpoint (unfused HTSAT) or a Hugging Face ClapModel "
        "folder strictly, and write a clapkit model folder (config.json, model.safetensors, tokenizer) that "
        "clapkit.load() opens offline. Pickles are read with torch.load(weights_only=True); a mismatch between "
        "checkpoint and architecture is reported key by key.",
    )
    p.add_argument("src", help="checkpoint file (.pt) or Hugging Face ClapModel folder")
    p.add_argument("--out", required=True, help="output folder (replaced atomically if it exists)")
    p.add_argument(
        "--tokenizer",
        help="RoBERTa tokenizer folder or hub id (default: the HF folder's own, else FacebookAI/roberta-base "
        "from the Hugging Face cache)",
    )
    p.set_defaults(func=_cmd_convert)
