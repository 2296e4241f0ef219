"""Losses: each equals a naive per-sample loop, masks padding, lets gradients flow, and gathers exactly."""

from __future__ import annotations

import math

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn import functional as F

from clapkit.losses import LOSSES

GROUPS = {  # loss input group → (embeds kwarg, mask kwarg)
    "negatives": ("negative_embeds", "negative_mask"),
    "positives": ("positive_embeds", "positive_mask"),
    "audio_negatives": ("audio_negative_embeds", "audio_negative_mask"),
}
# Real items per sample in each group: K, P and Ka differ per sample (0 included).
COUNTS = {"negatives": [0, 1, 2, 4, 3, 1], "positives": [1, 0, 2, 2, 1, 0], "audio_negatives": [1, 1, 0, 1, 0, 1]}
DIM = 8
SCALE = 7.0

# (registry name, constructor options) — every registered loss, afclap in both modes.
CASES = [(name, {}) for name in LOSSES.names()] + [("afclap", {"symmetric": True})]
CASE_IDS = [name + ("-symmetric" if opts else "") for name, opts in CASES]


def _unit(*shape: int, generator: torch.Generator) -> torch.Tensor:
    return F.normalize(torch.randn(*shape, DIM, generator=generator), dim=-1)


def make_batch(seed: int = 0, garbage: float = 0.0) -> dict[str, torch.Tensor]:
    """A batch of 6 with every group padded to its maximum; padding slots hold ``garbage``."""
    g = torch.Generator().manual_seed(seed)
    batch = {"audio_embeds": _unit(6, generator=g), "text_embeds": _unit(6, generator=g)}
    for group, (embeds_key, mask_key) in GROUPS.items():
        counts = torch.tensor(COUNTS[group])
        mask = torch.arange(int(counts.max()))[None, :] < counts[:, None]  # [B, K]
        embeds = _unit(6, mask.shape[1], generator=g)
        batch[embeds_key] = embeds.masked_fill(~mask[..., None], garbage)
        batch[mask_key] = mask
    return batch


def loss_inputs(loss, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    keys = ["audio_embeds", "text_embeds"] + [k for g in sorted(loss.inputs) for k in GROUPS[g]]
    return {k: batch[k] for k in keys if k in batch}


def naive_loss(name: str, opts: dict, b: dict[str, torch.Tensor], scale: float) -> float:
    """The published formulas, one sample and one term at a time, in float64."""
    a, t = b["audio_embeds"].double(), b["text_embeds"].double()
    n = len(a)

    def s(x, y):  # exp(scale · cos)
        return math.exp(scale * float(x @ y))

    def real(key, i):
        embeds, mask = b[key].double(), b[key.replace("embeds", "mask")]
        return [embeds[i, k] for k in range(embeds.shape[1]) if mask[i, k]]

    def t2a(i, audio_negatives=False):
        extra = sum(s(t[i], x) for x in real("audio_negative_embeds", i)) if audio_negatives else 0.0
        return -math.log(s(t[i], a[i]) / (sum(s(t[i], a[j]) for j in range(n)) + extra))

    def a2t_plain(i):
        return -math.log(s(a[i], t[i]) / sum(s(a[i], t[j]) for j in range(n)))

    if name == "infonce":
        return sum(a2t_plain(i) + t2a(i) for i in range(n)) / (2 * n)
    if name == "compa_hardneg":
        total = 0.0
        for i in range(n):
            den = sum(s(a[i], t[j]) for j in range(n)) + sum(s(a[i], x) for x in real("negative_embeds", i))
            total += -math.log(s(a[i], t[i]) / den) + t2a(i, audio_negatives=True)
        return total / (2 * n)
    if name == "compa_modular":
        total = 0.0
        for i in range(n):
            own = [t[i], *real("positive_embeds", i)]
            pos = sum(s(a[i], p) for p in own)
            den = pos + sum(s(a[i], t[j]) for j in range(n) if j != i)
            den += sum(s(a[i], x) for x in real("negative_embeds", i))
            total += -math.log((pos / len(own)) / den) + t2a(i, audio_negatives=True)
        return total / (2 * n)
    if name == "afclap":

        def big_s(j, i):  # S(j, i): sample j's captions against audio i
            return sum(s(p, a[i]) for p in [t[j], *real("positive_embeds", j)])

        a2t = 0.0
        for i in range(n):
            s_neg = sum(s(x, a[i]) for x in real("negative_embeds", i))
            a2t += -math.log(big_s(i, i) / (s_neg + sum(big_s(j, i) for j in range(n))))
        a2t /= n
        if not opts.get("symmetric"):
            return a2t
        return (a2t + sum(t2a(i, audio_negatives=True) for i in range(n)) / n) / 2
    raise AssertionError(f"no naive loop for {name}")


def test_registry_lists_losses_and_rejects_unknown_names():
    assert LOSSES.names() == ["afclap", "compa_hardneg", "compa_modular", "infonce"]
    with pytest.raises(KeyError, match="compa_hardneg"):
        LOSSES.get("hardneg")


@pytest.mark.parametrize(("name", "opts"), CASES, ids=CASE_IDS)
def test_matches_naive_loop(name, opts):
    loss = LOSSES.get(name)(**opts)
    batch = make_batch(seed=1)
    terms = loss(**loss_inputs(loss, batch), logit_scale=torch.tensor(SCALE))
    assert set(terms) >= {"loss", "audio_to_text"}
    assert all(v.ndim == 0 for v in terms.values())
    assert terms["loss"].item() == pytest.approx(naive_loss(name, opts, batch, SCALE), abs=1e-5)


@pytest.mark.parametrize(("name", "opts"), CASES, ids=CASE_IDS)
def test_padding_is_masked_not_multiplied(name, opts):
    """NaN or huge values in padded slots change neither the loss nor the gradients."""
    loss = LOSSES.get(name)(**opts)
    clean, dirty = make_batch(seed=2), make_batch(seed=2, garbage=float("nan"))
    results = []
    for batch in (clean, dirty):
        inputs = {k: v.clone().requires_grad_(v.is_floating_point()) for k, v in loss_inputs(loss, batch).items()}
        out = loss(**inputs, logit_scale=torch.tensor(SCALE))["loss"]
        out.backward()
        results.append((out.detach(), {k: v.grad for k, v in inputs.items() if v.grad is not None}))
    (clean_loss, clean_grads), (dirty_loss, dirty_grads) = results
    torch.testing.assert_close(dirty_loss, clean_loss)
    for key, grad in dirty_grads.items():
        assert torch.isfinite(grad).all(), key
        torch.testing.assert_close(grad, clean_grads[key])


@pytest.mark.parametrize(("name", "opts"), CASES, ids=CASE_IDS)
def test_gradients_reach_every_input(name, opts):
    loss = LOSSES.get(name)(**opts)
    batch = make_batch(seed=3)
    inputs = {k: v.clone().requires_grad_(v.is_floating_point()) for k, v in loss_inputs(loss, batch).items()}
    scale = torch.tensor(SCALE, requires_grad=True)
    loss(**inputs, logit_scale=scale)["loss"].backward()
    assert scale.grad is not None and scale.grad.abs() > 0
    for key, tensor in inputs.items():
        if not tensor.is_floating_point():
            continue
        norms = tensor.grad.norm(dim=-1)  # [B] or [B, K]
        if key.endswith("_embeds") and tensor.ndim == 3:
            mask = batch[key.replace("embeds", "mask")]
            assert (norms[mask] > 0).all(), f"{key}: a real item got no gradient"
            assert (norms[~mask] == 0).all(), f"{key}: padding got a gradient"
        else:
            assert (norms > 0).all(), key


def test_hard_negatives_raise_the_loss_and_reduce_to_infonce_without_them():
    batch = make_batch(seed=4)
    scale = torch.tensor(SCALE)
    pair = {"audio_embeds": batch["audio_embeds"], "text_embeds": batch["text_embeds"], "logit_scale": scale}
    base = LOSSES.get("infonce")()(**pair)
    for name in ("compa_hardneg", "compa_modular"):
        torch.testing.assert_close(LOSSES.get(name)()(**pair)["loss"], base["loss"])
    torch.testing.assert_close(LOSSES.get("afclap")()(**pair)["loss"], base["audio_to_text"])
    # A negative identical to the true caption adds exactly exp(s·aᵢ·tᵢ) to every denominator.
    same = batch["text_embeds"][:, None]
    hard = LOSSES.get("compa_hardneg")()(**pair, negative_embeds=same)
    assert hard["audio_to_text"] > base["audio_to_text"]
    torch.testing.assert_close(hard["text_to_audio"], base["text_to_audio"])


def test_bad_inputs_name_the_input():
    batch = make_batch()
    pair = {"audio_embeds": batch["audio_embeds"], "text_embeds": batch["text_embeds"], "logit_scale": SCALE}
    with pytest.raises(ValueError, match="does not use negative_embeds"):
        LOSSES.get("infonce")()(**pair, negative_embeds=batch["negative_embeds"])
    with pytest.raises(ValueError, match="audio_negative_embeds"):
        LOSSES.get("afclap")()(**pair, audio_negative_embeds=batch["audio_negative_embeds"])
    with pytest.raises(ValueError, match="negative_embeds .*expected"):
        LOSSES.get("compa_hardneg")()(**pair, negative_embeds=batch["negative_embeds"][:, :, :4])
    with pytest.raises(ValueError, match="negative_mask given without"):
        LOSSES.get("compa_hardneg")()(**pair, negative_mask=batch["negative_mask"])
    with pytest.raises(ValueError, match="text_embeds"):
        LOSSES.get("infonce")()(batch["audio_embeds"], batch["text_embeds"][:3], SCALE)
    with pytest.raises(ValueError, match="rank"):
        LOSSES.get("infonce")(rank=0)


# ---------------------------------------------------------------------------------------------- distributed
WORLD = 2
DIST_CONFIGS = [(name, opts, local) for name, opts in CASES for local in (True, False)]


def _run(name, opts, batch, **dist_opts):
    """Loss and gradients of every float input (and the scale) on ``batch``."""
    loss = LOSSES.get(name)(**opts, **dist_opts)
    inputs = {k: v.clone().requires_grad_(v.is_floating_point()) for k, v in loss_inputs(loss, batch).items()}
    scale = torch.tensor(SCALE, requires_grad=True)
    out = loss(**inputs, logit_scale=scale)["loss"]
    out.backward()
    grads = {k: v.grad for k, v in inputs.items() if v.grad is not None}
    return out.detach(), grads, scale.grad


def _shard(batch: dict[str, torch.Tensor], rank: int) -> dict[str, torch.Tensor]:
    """This rank's rows; groups trimmed to this rank's own maximum, so ranks pass different K."""
    rows = slice(rank * 3, rank * 3 + 3)
    out = {k: v[rows] for k, v in batch.items()}
    for embeds_key, mask_key in GROUPS.values():
        width = int(out[mask_key].sum(dim=1).max())
        out[embeds_key], out[mask_key] = out[embeds_key][:, :width], out[mask_key][:, :width]
    return out


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        batch = _shard(make_batch(seed=5), rank)
        results = {}
        for i, (name, opts, local) in enumerate(DIST_CONFIGS):
            loss, grads, scale_grad = _run(name, opts, batch, local_loss=local)  # rank/world from the group
            results[f"{i}/loss"], results[f"{i}/scale"] = loss, scale_grad
            results.update({f"{i}/{k}": g for k, g in grads.items()})
        torch.save(results, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_process_gather_equals_one_process(tmp_path):
    mp.spawn(_worker, args=(str(tmp_path / "rendezvous"), str(tmp_path)), nprocs=WORLD, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]
    full = make_batch(seed=5)
    for i, (name, opts, local) in enumerate(DIST_CONFIGS):
        ref_loss, ref_grads, ref_scale = _run(name, opts, full, rank=0, world_size=1)
        losses = torch.stack([r[f"{i}/loss"] for r in ranks])
        if local:  # each rank holds the mean over its rows
            torch.testing.assert_close(losses.mean(), ref_loss, msg=f"{name} local")
        else:  # each rank computes the whole batch's loss
            torch.testing.assert_close(losses, ref_loss.expand(WORLD), msg=f"{name} global")
        torch.testing.assert_close(torch.stack([r[f"{i}/scale"] for r in ranks]).mean(), ref_scale)
        for key, ref in ref_grads.items():
            for rank, r in enumerate(ranks):
                mine = _shard({**full, key: ref}, rank)[key]  # the reference gradient of this rank's rows
                # DDP averages over ranks, so each rank's gradient is world_size x the single-process one.
                torch.testing.assert_close(r[f"{i}/{key}"] / WORLD, mine, msg=f"{name} local={local} {key}")
