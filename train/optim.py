"""AdamW with per-parameter-group learning rates, and linear warmup + cosine decay (shared by the apps)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

__all__ = [
    "OptimConfig",
    "ParamGroup",
    "build_optimizer",
    "build_scheduler",
    "clean_name",
    "freeze_zero_lr",
    "param_ndims",
]

# Wrapper segments that FSDP / activation checkpointing insert into parameter names.
_WRAPPERS = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.", "_orig_mod.")


@dataclass
class ParamGroup:
    """Settings for the parameters whose name starts with ``prefix`` (first matching group wins).

    Attributes:
        prefix: Parameter-name prefix inside the LightningModule, e.g. ``model.audio_tower``,
            ``model.text_head`` or ``model.logit_scale``.
        lr: Learning rate of the group; ``0`` freezes it (kept out of the optimizer); ``None`` = the base lr.
        weight_decay: Weight decay of the group; ``None`` = the base rule (decay on matrices only).
    """

    prefix: str
    lr: float | None = None
    weight_decay: float | None = None


@dataclass
class OptimConfig:
    """AdamW + linear warmup + cosine decay.

    Attributes:
        lr: Peak learning rate after warmup.
        weight_decay: Applied to weight matrices; biases, norms and scalars (ndim < 2) get none, as open_clip.
        betas: AdamW betas.
        eps: AdamW epsilon.
        warmup_steps: Optimizer steps of linear warmup from 0.
        min_lr_ratio: Floor of the cosine decay as a fraction of each group's lr.
        total_steps: Steps of the schedule; ``None`` = the trainer's (``max_steps``, or epochs × batches).
        param_groups: Per-prefix overrides, e.g. a 10× lower lr for a pretrained tower.
    """

    lr: float = 1e-4
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-6
    warmup_steps: int = 0
    min_lr_ratio: float = 0.0
    total_steps: int | None = None
    param_groups: list[ParamGroup] = field(default_factory=list)


def clean_name(name: str) -> str:
    """A parameter name without the segments wrappers (FSDP, checkpointing, compile) insert."""
    for w in _WRAPPERS:
        name = name.replace(w, "")
    return name


def param_ndims(module: nn.Module) -> dict[str, int]:
    """Clean parameter name → number of dimensions, for :func:`build_optimizer` under FSDP.

    Take it before FSDP wraps the module: with ``use_orig_params`` the parameters it hands out afterwards are
    1-D views into flat shards, so their ``ndim`` no longer tells weight matrices from biases.
    """
    return {clean_name(name): param.ndim for name, param in module.named_parameters()}


def _no_decay(name: str, ndim: int) -> bool:
    return ndim < 2 or "logit_scale" in name


def _group_of(name: str, cfg: OptimConfig) -> int | None:
    return next((i for i, g in enumerate(cfg.param_groups) if name.startswith(g.prefix)), None)


def freeze_zero_lr(module: nn.Module, cfg: OptimConfig) -> int:
    """Set ``requires_grad=False`` on parameters whose group has ``lr: 0``; returns how many.

    Call it before DDP/FSDP wrap the module (e.g. in ``LightningModule.setup``): DDP must not wait for
    gradients of parameters that will never get one.
    """
    frozen = 0
    for name, param in module.named_parameters():
        index = _group_of(clean_name(name), cfg)
        if index is not None and cfg.param_groups[index].lr == 0 and param.requires_grad:
            param.requires_grad_(False)
            frozen += 1
    return frozen


def build_optimizer(module: nn.Module, cfg: OptimConfig, ndims: dict[str, int] | None = None) -> torch.optim.AdamW:
    """AdamW over the trainable parameters of ``module``, grouped by ``cfg.param_groups`` and decay.

    Parameters with ``requires_grad=False`` (frozen towers) and groups with ``lr: 0`` stay out of the
    optimizer; the latter are frozen here. Every ``param_groups`` prefix must match some parameter.

    Args:
        ndims: The parameters' original dimensions (:func:`param_ndims` before FSDP flattened them); the
            default reads them from the parameters.

    Raises:
        ValueError: a prefix that matches nothing, or nothing left to train.
    """
    freeze_zero_lr(module, cfg)
    buckets: dict[tuple[float, float], list[nn.Parameter]] = {}
    used = [False] * len(cfg.param_groups)
    for raw_name, param in module.named_parameters():
        name = clean_name(raw_name)
        index = _group_of(name, cfg)
        group = cfg.param_groups[index] if index is not None else None
        if index is not None:
            used[index] = True
        lr = cfg.lr if group is None or group.lr is None else group.lr
        if not param.requires_grad:
            continue
        if group is not None and group.weight_decay is not None:
            decay = group.weight_decay
        else:
            ndim = param.ndim if ndims is None else ndims[name]
            decay = 0.0 if _no_decay(name, ndim) else cfg.weight_decay
        buckets.setdefault((lr, decay), []).append(param)
    unused = [g.prefix for g, u in zip(cfg.param_groups, used) if not u]
    if unused:
        names = sorted({clean_name(n).rsplit(".", 2)[0] for n, _ in module.named_parameters()})[:12]
        raise ValueError(f"param_groups prefixes {unused} match no parameter; names look like: {', '.join(names)} …")
    if not buckets:
        raise ValueError("nothing to train: every parameter is frozen (tower freeze flags or lr: 0 groups)")
    groups = [{"params": p, "lr": lr, "weight_decay": wd} for (lr, wd), p in buckets.items()]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps)


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: OptimConfig, total_steps: float
) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-step schedule: linear warmup over ``cfg.warmup_steps``, then cosine to ``min_lr_ratio`` × lr.

    Args:
        total_steps: Optimizer steps of the whole run (after gradient accumulation).
    """
    from transformers.optimization import get_cosine_with_min_lr_schedule_with_warmup

    steps = cfg.total_steps or total_steps
    if steps is None or not math.isfinite(steps) or steps <= 0:
        raise ValueError(
            "optimizer schedule: the number of training steps is unknown (streaming shards have no length); "
            "set trainer.max_steps or model.optimizer.total_steps"
        )
    if cfg.warmup_steps >= steps:
        raise ValueError(f"optimizer: warmup_steps ({cfg.warmup_steps}) must be below the total steps ({int(steps)})")
    return get_cosine_with_min_lr_schedule_with_warmup(
        optimizer, num_warmup_steps=cfg.warmup_steps, num_training_steps=int(steps), min_lr_rate=cfg.min_lr_ratio
    )
