"""The fast HTSAT forward against transformers' own ClapAudioModel forward: outputs, gradients, fallbacks."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import ClapAudioConfig, ClapAudioModel
from transformers.models.clap.modeling_clap import ClapAudioEncoder

from clapkit.accel import onednn
from clapkit.accel.htsat import FastClapAudioEncoder, disable_fast_htsat, enable_fast_htsat
from clapkit.config import get_model_config
from clapkit.towers.htsat import HTSATTower
from tests.conftest import TINY_OVERRIDES

#: The tiny tower of tests/conftest.py (a 16×16 patch grid, windows of 4, stages 16² → 8² → 4², 16 mel bins)
#: with two blocks in the first two stages, so that shifted windows are covered.
TINY = {**TINY_OVERRIDES["audio_tower"]["params"], "depths": [2, 2, 1]}
TINY_MEL = (1, 101, 16)  # [1, frames, n_mels] of 1 s at 16 kHz, hop 160


def audio_model(seed: int = 0, **overrides) -> ClapAudioModel:
    """A seeded ClapAudioModel with non-zero relative-position tables (their init is zeros)."""
    torch.manual_seed(seed)
    params = {"num_mel_bins": 16, **TINY, **overrides}
    model = ClapAudioModel(ClapAudioConfig(enable_fusion=False, **params)).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "relative_position_bias_table" in name:
                param.normal_(0.0, 0.5)
    return model


def pair(model: ClapAudioModel, **kwargs) -> tuple[ClapAudioModel, ClapAudioModel]:
    """(transformers' forward, fast forward) on the same weights."""
    reference = disable_fast_htsat(copy.deepcopy(model))
    return reference, enable_fast_htsat(copy.deepcopy(model), **kwargs)


def mel(batch: int, shape=TINY_MEL, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return 10 * torch.randn(batch, *shape, generator=generator) - 40  # dB-like log-mel


def max_diff(reference: ClapAudioModel, fast: ClapAudioModel, x: torch.Tensor) -> float:
    """Largest absolute difference over ``pooler_output`` and ``last_hidden_state``."""
    with torch.inference_mode():
        ref, out = reference(input_features=x), fast(input_features=x)
    assert out.last_hidden_state.shape == ref.last_hidden_state.shape
    return max(
        float((out.pooler_output - ref.pooler_output).abs().max()),
        float((out.last_hidden_state - ref.last_hidden_state).abs().max()),
    )


@pytest.mark.parametrize("micro_batch", [1, 2, 16])
@pytest.mark.parametrize("use_onednn", [True, False])
def test_inference_matches_transformers(micro_batch, use_onednn, monkeypatch):
    if not use_onednn:
        monkeypatch.setattr(onednn, "_AVAILABLE", False)  # the plain F.linear path
    reference, fast = pair(audio_model(), micro_batch=micro_batch)
    assert max_diff(reference, fast, mel(3)) <= 1e-5


def test_inference_matches_transformers_at_htsat_tiny_shape():
    """The registered htsat-tiny tower (64×64 grid, windows of 8, 4 stages) on a batch of 2 ten-second clips."""
    cfg = get_model_config("htsat-tiny")
    torch.manual_seed(0)
    tower = HTSATTower(cfg.audio, cfg.frontend, fast=False, **cfg.audio_tower.params).eval()
    assert type(tower.model.audio_encoder) is ClapAudioEncoder
    with torch.no_grad():
        for name, param in tower.model.named_parameters():
            if "relative_position_bias_table" in name:
                param.normal_(0.0, 0.5)
    reference, fast = pair(tower.model)
    x = mel(2, shape=(1, tower.frontend.num_frames(cfg.audio.clip_samples), cfg.frontend.n_mels))
    assert max_diff(reference, fast, x) <= 1e-5


@pytest.mark.parametrize("use_onednn", [True, False])
def test_training_gradients_match_transformers(use_onednn, monkeypatch):
    """Train mode with grad: same loss and gradients for every parameter and the input, drop path included, with
    the dense layers as oneDNN products (float32 on the CPU) and as ``F.linear``."""
    calls = []
    if use_onednn:
        apply = onednn.OneDnnLinear.apply
        monkeypatch.setattr(onednn.OneDnnLinear, "apply", lambda *a: calls.append(1) or apply(*a))
    else:
        monkeypatch.setattr(onednn, "_AVAILABLE", False)
    model = audio_model(hidden_dropout_prob=0.0, drop_path_rate=0.2).train()
    reference, fast = pair(model)
    x = mel(2)
    results = []
    for m in (reference, fast):
        torch.manual_seed(3)  # the same drop-path draws
        xi = x.clone().requires_grad_()
        out = m(input_features=xi)
        loss = out.pooler_output.square().sum() + out.last_hidden_state.sin().sum()
        loss.backward()
        results.append((loss.detach(), xi.grad, {n: p.grad for n, p in m.named_parameters()}))
    (loss_ref, x_ref, grads_ref), (loss_fast, x_fast, grads_fast) = results
    assert torch.allclose(loss_fast, loss_ref, rtol=1e-5)
    assert torch.allclose(x_fast, x_ref, atol=1e-5)
    assert grads_fast.keys() == grads_ref.keys()
    for name, grad in grads_ref.items():
        assert grad is not None, name
        assert torch.allclose(grads_fast[name], grad, atol=1e-4, rtol=1e-4), name
    table = "audio_encoder.layers.0.blocks.1.attention.self.relative_position_bias_table"
    assert grads_fast[table].abs().sum() > 0  # the bias reaches the loss through the attention mask
    # 5 blocks × (qkv, attention output, MLP in, MLP out) + 2 patch mergings, or none at all.
    assert len(calls) == (22 if use_onednn else 0)


def test_state_dict_and_class_swap_round_trip():
    model = audio_model()
    keys = list(model.state_dict())
    enable_fast_htsat(model)
    assert isinstance(model.audio_encoder, FastClapAudioEncoder)
    assert list(model.state_dict()) == keys
    other = audio_model(seed=5)
    model.load_state_dict(other.state_dict())  # strict: the same names and shapes
    assert max_diff(other, model, mel(2)) <= 1e-5
    disable_fast_htsat(model)
    assert type(model.audio_encoder) is ClapAudioEncoder


def test_cached_weights_follow_in_place_updates():
    """qkv concatenation and attention masks are cached without grad; changing a weight must invalidate them."""
    reference, fast = pair(audio_model())
    x = mel(2)
    assert max_diff(reference, fast, x) <= 1e-5  # fills the caches
    for m in (reference, fast):
        layer = m.audio_encoder.layers[0].blocks[1].attention.self
        with torch.no_grad():
            layer.query.weight.mul_(2.0)
            layer.relative_position_bias_table.add_(1.0)
    assert max_diff(reference, fast, x) <= 1e-5


def test_copies_and_dtype_moves_rebuild_their_caches():
    reference, fast = pair(audio_model())
    x = mel(2)
    assert max_diff(reference, fast, x) <= 1e-5  # fills the caches
    clone = copy.deepcopy(fast)
    assert "_fast_cache" not in clone.audio_encoder.__dict__
    for m in (reference, clone):
        with torch.no_grad():
            m.audio_encoder.layers[1].blocks[1].attention.self.value.bias.add_(0.5)
    assert max_diff(reference, clone, x) <= 1e-5
    reference.double(), clone.double()
    assert "_fast_cache" not in clone.audio_encoder.__dict__
    assert max_diff(reference, clone, x.double()) <= 1e-10


def test_bf16_autocast_stays_close():
    reference, fast = pair(audio_model())
    x = mel(2)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        ref, out = reference(input_features=x).pooler_output, fast(input_features=x).pooler_output
    cosine = torch.nn.functional.cosine_similarity(out.float(), ref.float(), dim=-1)
    assert cosine.min() > 0.999


def test_unsupported_calls_fall_back_to_transformers():
    reference, fast = pair(audio_model())
    x = mel(2)
    with torch.inference_mode():
        out = fast(input_features=x, output_hidden_states=True)
        ref = reference(input_features=x, output_hidden_states=True)
        assert len(out.hidden_states) == len(ref.hidden_states) > 0
        assert torch.equal(out.pooler_output, ref.pooler_output)
        as_tuple = fast(input_features=x, return_dict=False)
        assert isinstance(as_tuple, tuple) and torch.allclose(as_tuple[1], ref.pooler_output, atol=1e-5)

        calls = []
        hook = fast.audio_encoder.layers[1].blocks[0].register_forward_hook(lambda *_: calls.append(1))
        fast(input_features=x)
        hook.remove()
    assert calls == [1]  # hooks inside the stack see the original forward


def test_padded_geometry_falls_back_and_matches():
    """A 16×16 grid with windows of 3 needs padding, which only transformers' forward handles."""
    reference, fast = pair(audio_model(window_size=3))
    assert fast.audio_encoder._plan(torch.device("cpu")) is None
    assert max_diff(reference, fast, mel(2)) == 0.0


def test_tower_uses_the_fast_forward_by_default():
    cfg = get_model_config("htsat-tiny", **TINY_OVERRIDES)
    fast = HTSATTower(cfg.audio, cfg.frontend, **cfg.audio_tower.params)
    plain = HTSATTower(cfg.audio, cfg.frontend, fast=False, **cfg.audio_tower.params)
    assert isinstance(fast.model.audio_encoder, FastClapAudioEncoder)
    assert type(plain.model.audio_encoder) is ClapAudioEncoder


def test_enable_rejects_bad_input():
    with pytest.raises(ValueError, match="ClapAudioModel"):
        enable_fast_htsat(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="micro_batch"):
        enable_fast_htsat(audio_model(), micro_batch=0)


def test_plan_built_under_inference_mode_serves_training():
    """An encoder first run under inference_mode (e.g. generation) must still train afterwards."""
    from tests.conftest import build_tiny_model

    model = build_tiny_model().train()
    wave = torch.randn(2, 16000) * 0.1
    with torch.inference_mode():
        model.encode_audio(wave)
    model.encode_audio(wave).sum().backward()
    assert model.audio_tower.model.audio_encoder.patch_embed.proj.weight.grad is not None


def test_wrapped_layers_fall_back_to_their_own_forward():
    """FSDP units / activation-checkpoint wrappers around blocks: their weights are only whole inside their own
    forward, so the fast path (which reads the weights directly) must step aside and still match."""
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper

    reference, fast = pair(audio_model())
    x = mel(2)
    blocks = fast.audio_encoder.layers[0].blocks
    blocks[0] = checkpoint_wrapper(blocks[0])
    assert fast.audio_encoder._has_hooks()
    with torch.inference_mode():
        assert torch.allclose(
            fast(input_features=x).pooler_output, reference(input_features=x).pooler_output, atol=1e-5
        )


def test_fsdp_unit_inside_the_encoder(tmp_path):
    """One-process gloo group, one block as an FSDP unit (its parameters flat shards outside its forward)."""
    import torch.distributed as dist
    from torch.distributed.fsdp import FullyShardedDataParallel

    if dist.is_initialized():
        pytest.skip("a process group already exists in this process; this test needs its own")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        reference, fast = pair(audio_model())
        x = mel(2)
        blocks = fast.audio_encoder.layers[1].blocks
        blocks[0] = FullyShardedDataParallel(blocks[0], device_id=torch.device("cpu"), use_orig_params=True)
        assert fast.audio_encoder._plan(x.device) is None  # the fast plan steps aside for the unit
        with torch.no_grad():
            out = fast(input_features=x).pooler_output
        assert torch.allclose(out, reference(input_features=x).pooler_output, atol=1e-5)
    finally:
        dist.destroy_process_group()
