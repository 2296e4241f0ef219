import pytest
import torch

import clapkit
from clapkit.losses import LOSSES
from tests.conftest import build_tiny_model
from train.clap import ClapModule

HEAD = {"layers": 1, "width": 16, "heads": 2, "max_len": 64, "dropout": 0.0}


def reader_batch(n: int = 3, seconds: float = 1.0, rate: int = 16000) -> dict:
    """A batch as ``clapkit.data.batch.collate`` builds it."""
    g = torch.Generator().manual_seed(0)
    audio = torch.rand(n, int(seconds * rate), generator=g) - 0.5
    return {
        "audio": audio,
        "lengths": torch.tensor([audio.shape[1], audio.shape[1] // 2, audio.shape[1]][:n]),
        "captions": [f"caption {i}" for i in range(n)],
        "positives": [["p0a", "p0b"], [], ["p2"]][:n],
        "negatives": [["n0"], ["n1a", "n1b", "n1c"], []][:n],
    }


def test_groups_are_padded_and_masked():
    module = ClapModule(model=build_tiny_model(), loss="afclap").eval()
    batch = reader_batch()
    with torch.no_grad():
        out = module.embed_batch(batch)
        assert out["negative_embeds"].shape == (3, 3, 32) and out["positive_embeds"].shape == (3, 2, 32)
        assert out["negative_mask"].tolist() == [[True, False, False], [True, True, True], [False, False, False]]
        assert out["positive_mask"].tolist() == [[True, True], [False, False], [True, False]]
        direct = module.model.encode_text(module.model.tokenize(["n1b", "p2", "caption 1"]))
        torch.testing.assert_close(out["negative_embeds"][1, 1], direct[0])
        torch.testing.assert_close(out["positive_embeds"][2, 0], direct[1])
        torch.testing.assert_close(out["text_embeds"][1], direct[2])
        assert out["negative_embeds"][0, 1:].abs().sum() == 0  # padding is zero
        # Losses that do not use a group are not given it.
        assert "negative_embeds" not in ClapModule(model=module.model, loss="infonce").embed_batch(batch)


@pytest.mark.parametrize("loss", LOSSES.names())
def test_training_step_is_the_registered_loss(loss):
    module = ClapModule(model=build_tiny_model(), loss=loss).eval()
    module.log = lambda *a, **k: None  # no trainer attached
    module.optimizers = lambda: torch.optim.SGD(module.parameters(), lr=0.1)
    batch = reader_batch()
    value = module.training_step(batch, 0)
    with torch.no_grad():
        expected = LOSSES.get(loss)()(**module.embed_batch(batch), logit_scale=module.model.scale())["loss"]
    torch.testing.assert_close(value.detach(), expected)
    value.backward()
    assert module.model.audio_projection[0].weight.grad.abs().sum() > 0


def frozen_model():
    towers = {"audio_tower": {"freeze": True}, "text_tower": {"freeze": True}}
    return build_tiny_model(**towers, audio_head=HEAD, text_head=HEAD, audio={"pad": "zero"})


def test_frozen_tower_cache_is_exact():
    model = frozen_model()
    plain = ClapModule(model=model, loss="compa_modular").eval()
    cached = ClapModule(model=model, loss="compa_modular", cache_frozen_towers=True, cache_dtype="float32").eval()
    batch = reader_batch()
    with torch.no_grad():
        want = plain.embed_batch(batch)
        for _ in range(2):
            got = cached.embed_batch(cached.on_before_batch_transfer(dict(batch), 0))
            for key in want:
                torch.testing.assert_close(got[key], want[key], atol=1e-5, rtol=1e-5)
    texts = 3 + 3 + 4  # captions, positives, negatives of the batch
    assert cached.text_cache.misses == texts and cached.text_cache.hits == texts
    assert cached.audio_cache.misses == 3 and cached.audio_cache.hits == 3
    # A different crop of the same clip is a different window: computed, not looked up.
    shifted = dict(batch, audio=torch.roll(batch["audio"], 1, dims=1))
    with torch.no_grad():
        cached.embed_batch(cached.on_before_batch_transfer(shifted, 0))
    assert cached.audio_cache.misses == 6


def test_cache_needs_a_frozen_tower():
    with pytest.raises(ValueError, match="neither tower is frozen"):
        ClapModule(model=build_tiny_model(), cache_frozen_towers=True)


@pytest.mark.parametrize("sharded", [False, True], ids=["as-is", "from-full-state"])
def test_export_round_trip(tmp_path, sharded):
    module = ClapModule(model=frozen_model(), export_dir=str(tmp_path / "out")).eval()
    path = module.export(state=module.state_dict() if sharded else None)  # FSDP hands over the gathered state
    loaded = clapkit.load(path)
    wave = torch.rand(2, 16000) - 0.5
    with torch.no_grad():
        torch.testing.assert_close(loaded.encode_audio(wave), module.model.encode_audio(wave))
    assert loaded.config.audio_tower.freeze


def test_init_from_with_overrides(tiny_model_dir):
    module = ClapModule(init_from=str(tiny_model_dir), model_overrides={"text_tower": {"freeze": True}})
    source = clapkit.load(tiny_model_dir)
    assert module.model.config.text_tower.freeze
    assert not any(p.requires_grad for p in module.model.text_tower.parameters())
    torch.testing.assert_close(module.model.logit_scale, source.logit_scale)
    ids = source.tokenize(["a dog"])
    with torch.no_grad():
        torch.testing.assert_close(module.model.eval().encode_text(ids), source.encode_text(ids))


def with_counterfactuals(batch: dict, seconds: float = 1.0, rate: int = 16000) -> dict:
    """Add the counterfactual fields of a reader batch: samples 0 and 2 have one, sample 1 has none."""
    g = torch.Generator().manual_seed(1)
    counterfactual = torch.rand(3, int(seconds * rate), generator=g) - 0.5
    counterfactual[1] = 0
    has = torch.tensor([True, False, True])
    lengths = torch.tensor([counterfactual.shape[1], 0, counterfactual.shape[1] // 3])
    return dict(batch, counterfactual=counterfactual, counterfactual_lengths=lengths, has_counterfactual=has)


def test_counterfactual_audio_become_audio_negatives():
    module = ClapModule(model=build_tiny_model(), loss="compa_hardneg").eval()
    batch = with_counterfactuals(reader_batch())
    with torch.no_grad():
        out = module.embed_batch(batch)
        assert out["audio_negative_embeds"].shape == (3, 1, 32)
        assert out["audio_negative_mask"].tolist() == [[True], [False], [True]]
        direct = module.model.encode_audio(batch["counterfactual"][[0, 2]])  # the same tower and head
        torch.testing.assert_close(out["audio_negative_embeds"][[0, 2], 0], direct)
        assert out["audio_negative_embeds"][1].abs().sum() == 0
        torch.testing.assert_close(out["audio_embeds"], module.model.encode_audio(batch["audio"]))
        # Losses without audio negatives leave the counterfactual audio alone.
        assert "audio_negative_embeds" not in ClapModule(model=module.model, loss="afclap").embed_batch(batch)
    out = module.embed_batch(batch)  # with grad: the negatives train the audio tower like the audio does
    assert out["audio_negative_embeds"].requires_grad
    terms = module.loss_fn(**out, logit_scale=module.model.scale())
    plain = module.loss_fn(**module.embed_batch(reader_batch()), logit_scale=module.model.scale())
    assert terms["text_to_audio"] > plain["text_to_audio"]  # more terms in the text→audio denominator
    terms["loss"].backward()
    assert module.model.audio_projection[0].weight.grad.abs().sum() > 0


def test_counterfactual_audio_through_the_frozen_tower_cache():
    model = frozen_model()
    plain = ClapModule(model=model, loss="compa_hardneg").eval()
    cached = ClapModule(model=model, loss="compa_hardneg", cache_frozen_towers=True, cache_dtype="float32").eval()
    batch = with_counterfactuals(reader_batch())
    with torch.no_grad():
        want = plain.embed_batch(batch)
        for _ in range(2):
            got = cached.embed_batch(cached.on_before_batch_transfer(dict(batch), 0))
            for key in want:
                torch.testing.assert_close(got[key], want[key], atol=1e-5, rtol=1e-5)
    assert cached.audio_cache.misses == 3 + 2 and cached.audio_cache.hits == 3 + 2  # audio + counterfactuals
