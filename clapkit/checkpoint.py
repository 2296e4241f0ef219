"""Weights on disk: safetensors, PyTorch pickles read with ``torch.load(weights_only=True)``, strict loading, hashes.

A leaf of the package (torch, safetensors, numpy and the standard library only), so that the model factory,
the checkpoint converters and the LALM adapter folders share one reader and writer without importing each other.
Every reader raises ``ValueError`` naming the file; nothing is unpickled except through ``weights_only=True``.
"""

from __future__ import annotations

import hashlib
import pickle
import re
import zipfile
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

__all__ = ["load_state", "read_safetensors", "read_torch_state", "weights_sha256", "write_safetensors"]

# Numpy scalars (e.g. a metric logged into the checkpoint) are plain data; nothing else outside torch's
# weights-only allowlist is let through.
_SAFE_NUMPY = [
    (np.core.multiarray.scalar, "numpy.core.multiarray.scalar"),
    np.dtype,
    *{type(np.dtype(t)) for t in "fdil"},
]


def read_safetensors(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a ``.safetensors`` file, on the CPU.

    Raises:
        ValueError: The file is missing, truncated or not safetensors.
    """
    try:
        return load_file(path)
    except Exception as err:  # safetensors raises SafetensorError, OSError… on bad bytes
        raise ValueError(f"{path}: cannot read safetensors weights ({err})") from err


def write_safetensors(state: dict[str, torch.Tensor], path: str | Path) -> Path:
    """Write ``state`` (detached, contiguous, on the CPU) as safetensors with ``{"format": "pt"}`` metadata.

    The metadata is what transformers and timm expect of a PyTorch safetensors file.
    """
    tensors = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    save_file(tensors, path, metadata={"format": "pt"})
    return Path(path)


def read_torch_state(path: str | Path) -> dict[str, torch.Tensor]:
    """The state dict of a ``.pt`` / ``.bin`` file, unpickled by ``torch.load(weights_only=True)``.

    Accepts LAION's ``{"state_dict": …}`` layout or a bare state dict, and strips DDP's ``module.`` prefix.

    Raises:
        ValueError: The file is truncated, not a PyTorch checkpoint, or pickles anything other than tensors
            and plain data (which is refused without being executed).
    """
    try:
        with torch.serialization.safe_globals(_SAFE_NUMPY):
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except pickle.UnpicklingError as err:
        if "Weights only load failed" in str(err):
            found = re.search(r"Unsupported global: GLOBAL (\S+)", str(err))
            what = f" (it references {found.group(1)})" if found else ""
            raise ValueError(
                f"{path}: refused to unpickle{what}: the file holds objects other than tensors and plain data, "
                "which could run code when loaded; re-save its state_dict with torch.save, or convert it to "
                "safetensors, from a trusted environment"
            ) from None
        raise ValueError(f"{path}: not a PyTorch checkpoint ({err})") from None
    except Exception as err:  # torch.load raises RuntimeError, EOFError, KeyError… on bad bytes
        raise ValueError(
            f"{path}: cannot read it as a PyTorch checkpoint ({type(err).__name__}: {str(err)[:200]}); "
            "the file is truncated, corrupt or not a checkpoint — download it again"
        ) from None
    state = obj.get("state_dict", obj) if isinstance(obj, dict) else None
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(
            f"{path}: not a model checkpoint: expected a state dict of tensors (or LAION's "
            f"{{'state_dict': …}}), found {type(obj).__name__}"
        )
    if all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    return state


def load_state(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Strict ``load_state_dict`` with a readable report of missing / unexpected / mismatched keys.

    Args:
        model: The module to fill.
        state: Its weights.
        source: Where ``state`` came from (a file name), named in the error.

    Raises:
        ValueError: The keys or shapes of ``state`` and ``model`` differ (up to 8 of each kind are listed).
    """
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    mismatched = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or mismatched:
        lines = [f"{source}: weights do not match the model architecture"]
        for title, keys in (("missing", missing), ("unexpected", unexpected)):
            if keys:
                lines.append(f"  {len(keys)} {title} keys: {', '.join(keys[:8])}{' …' if len(keys) > 8 else ''}")
        for k in mismatched[:8]:
            lines.append(f"  shape mismatch {k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}")
        raise ValueError("\n".join(lines))
    model.load_state_dict(state, strict=True)


_HASH_CACHE: dict[int, tuple[tuple, str]] = {}


def weights_sha256(model: torch.nn.Module) -> str:
    """SHA-256 over the state dict (names, dtypes, shapes and bytes, in name order).

    Cached per model until any tensor is modified in place (an optimizer step) or replaced.
    """
    state = model.state_dict()
    stamp = tuple((k, v.data_ptr(), v._version) for k, v in sorted(state.items()))
    cached = _HASH_CACHE.get(id(model))
    if cached is not None and cached[0] == stamp:
        return cached[1]
    digest = hashlib.sha256()
    for key in sorted(state):
        tensor = state[key].detach().cpu().contiguous()
        digest.update(f"{key}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    _HASH_CACHE[id(model)] = (stamp, digest.hexdigest())
    return digest.hexdigest()
