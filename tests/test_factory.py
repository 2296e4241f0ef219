import json

import pytest
import torch
from safetensors.torch import load_file, save_file

import clapkit
from clapkit.config import ModelConfig
from clapkit.towers import AUDIO_TOWERS, TEXT_TOWERS
from tests.conftest import build_tiny_model


def test_registries_name_the_valid_choices():
    assert {"htsat", "vit", "aisfx"} <= set(AUDIO_TOWERS.names())
    assert {"clip", "hf"} <= set(TEXT_TOWERS.names())
    with pytest.raises(KeyError, match="valid names: .*htsat"):
        AUDIO_TOWERS.get("wav2vec")
    with pytest.raises(KeyError, match="registered models: .*clapkit-small"):
        clapkit.create_model("no-such-model")


def test_config_rejects_unknown_keys_and_merges_overrides():
    base = clapkit.get_model_config("htsat-tiny").to_dict()
    with pytest.raises(ValueError, match=r"model config: unknown keys \['embed_dims'\]; valid keys: .*'embed_dim'"):
        ModelConfig.from_dict({**base, "embed_dims": 3})
    with pytest.raises(ValueError, match=r"model config\.audio: unknown keys \['rate'\]; valid keys: .*'sample_rate'"):
        ModelConfig.from_dict({**base, "audio": {"rate": 3}})
    with pytest.raises(ValueError, match=r"model config: .*\"embed_dim\".*int"):
        ModelConfig.from_dict({**base, "embed_dim": "128"})
    with pytest.raises(ValueError, match=r"model config: missing value for field \"text_tower\""):
        ModelConfig.from_dict({k: v for k, v in base.items() if k != "text_tower"})
    # JSON writes 5 for 5.0: ints become floats where the field is a float
    assert ModelConfig.from_dict({**base, "audio": {"clip_seconds": 5}}).audio.clip_seconds == 5.0
    cfg = clapkit.get_model_config("htsat-tiny", embed_dim=128, audio={"clip_seconds": 5.0})
    assert cfg.embed_dim == 128 and cfg.audio.clip_seconds == 5.0 and cfg.audio.sample_rate == 48000


def test_register_custom_architecture(tmp_path):
    cfg = clapkit.get_model_config("htsat-tiny").to_dict()
    cfg.pop("name")
    path = tmp_path / "mine.json"
    path.write_text(json.dumps(cfg))
    clapkit.register_model_config("my-arch", path)
    try:
        assert "my-arch" in clapkit.list_models()
    finally:
        clapkit.config._CONFIGS.pop("my-arch")


def test_save_is_atomic_and_overwrites(tmp_path):
    model = build_tiny_model()
    target = model.save_pretrained(tmp_path / "m")
    model2 = build_tiny_model(seed=1)
    model2.save_pretrained(target)
    reloaded = clapkit.load(target)
    assert torch.equal(reloaded.logit_scale, model2.logit_scale)
    assert torch.equal(reloaded.audio_projection[0].weight, model2.audio_projection[0].weight)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]  # no temporary leftovers


def test_load_reports_wrong_or_broken_weights(tmp_path):
    model = build_tiny_model()
    path = model.save_pretrained(tmp_path / "m")
    state = load_file(path / "model.safetensors")
    state["audio_projection.0.weight"] = torch.zeros(3, 3)
    del state["logit_scale"]
    state["extra.weight"] = torch.zeros(1)
    save_file(state, path / "model.safetensors")
    with pytest.raises(ValueError) as err:
        clapkit.load(path)
    text = str(err.value)
    assert "missing keys: logit_scale" in text and "unexpected keys: extra.weight" in text
    assert "shape mismatch audio_projection.0.weight" in text
    (path / "model.safetensors").write_bytes(b"\x00" * 20)
    with pytest.raises(ValueError, match="cannot read safetensors"):
        clapkit.load(path)
    (path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="malformed JSON"):
        clapkit.load(path)
    with pytest.raises(ValueError, match="neither a model directory"):
        clapkit.load(tmp_path / "nowhere")
