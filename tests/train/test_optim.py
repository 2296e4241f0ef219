import itertools
import math

import pytest
import torch
from torch import nn

from tests.conftest import build_tiny_model
from train.optim import OptimConfig, ParamGroup, build_optimizer, build_scheduler, freeze_zero_lr


def wrapped(**overrides) -> nn.Module:
    """The model under the attribute name the LightningModule uses, so names start with ``model.``."""
    holder = nn.Module()
    holder.model = build_tiny_model(**overrides)
    return holder


def lr_and_decay(optimizer) -> dict[int, tuple[float, float]]:
    return {id(p): (g["lr"], g["weight_decay"]) for g in optimizer.param_groups for p in g["params"]}


def test_groups_frozen_towers_and_decay():
    holder = wrapped(text_tower={"freeze": True})
    m = holder.model
    cfg = OptimConfig(
        lr=1e-3,
        weight_decay=0.1,
        param_groups=[ParamGroup("model.audio_tower", lr=1e-4), ParamGroup("model.audio_projection", lr=0.0)],
    )
    opt = build_optimizer(holder, cfg)
    got = lr_and_decay(opt)
    assert not any(id(p) in got for p in m.text_tower.parameters())  # frozen tower: out of the optimizer
    assert not any(p.requires_grad for p in m.audio_projection.parameters())  # lr 0: frozen here
    assert not any(id(p) in got for p in m.audio_projection.parameters())
    tower_weights = [p for p in m.audio_tower.parameters() if p.ndim >= 2]
    assert {got[id(p)] for p in tower_weights} == {(1e-4, 0.1)}
    assert got[id(m.logit_scale)] == (1e-3, 0.0)
    proj = m.text_projection[0]
    assert got[id(proj.weight)] == (1e-3, 0.1) and got[id(proj.bias)] == (1e-3, 0.0)
    trainable = {id(p) for p in holder.parameters() if p.requires_grad}
    assert set(got) == trainable


def test_unknown_prefix_and_nothing_to_train():
    with pytest.raises(ValueError, match=r"match no parameter.*model\."):
        build_optimizer(wrapped(), OptimConfig(param_groups=[ParamGroup("audio_tower", lr=1.0)]))
    with pytest.raises(ValueError, match="nothing to train"):
        build_optimizer(wrapped(), OptimConfig(param_groups=[ParamGroup("model", lr=0.0)]))


def test_freeze_zero_lr_counts():
    holder = wrapped()
    n = freeze_zero_lr(holder, OptimConfig(param_groups=[ParamGroup("model.logit_scale", lr=0.0)]))
    assert n == 1 and not holder.model.logit_scale.requires_grad


def test_warmup_then_cosine_to_floor():
    p = nn.Parameter(torch.zeros(2, 2))
    cfg = OptimConfig(lr=1.0, warmup_steps=10, min_lr_ratio=0.1)
    opt = torch.optim.AdamW([p], lr=1.0)
    sched = build_scheduler(opt, cfg, total_steps=110)
    lrs = []
    for _ in range(111):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == 0.0 and lrs[5] == pytest.approx(0.5) and lrs[10] == pytest.approx(1.0)
    assert lrs[60] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert lrs[110] == pytest.approx(0.1)
    assert all(a >= b for a, b in itertools.pairwise(lrs[10:]))  # monotone after warmup


def test_schedule_needs_a_length():
    opt = torch.optim.AdamW([nn.Parameter(torch.zeros(1))])
    with pytest.raises(ValueError, match="max_steps"):
        build_scheduler(opt, OptimConfig(), total_steps=float("inf"))
    with pytest.raises(ValueError, match="warmup_steps"):
        build_scheduler(opt, OptimConfig(warmup_steps=10), total_steps=10)
    assert build_scheduler(opt, OptimConfig(total_steps=50), total_steps=float("inf")) is not None
