import json

import pytest

from clapkit.data.schema import Manifest, SampleMeta, ShardInfo, load_manifest


def test_aliases_merge_and_unknown_fields_pass_through():
    conversation = [{"role": "user", "content": "<Audio> what is this?"}, {"role": "assistant", "content": "a dog"}]
    meta = SampleMeta.from_dict(
        {"caption": " a dog barks ", "captions": ["a puppy yaps"], "label": "dog", "conversation": conversation}
    )
    assert meta.captions == ["a puppy yaps", "a dog barks"]  # stripped; list field first, alias after
    assert meta.labels == ["dog"]
    assert meta.extra == {"conversation": conversation}
    again = SampleMeta.from_json_bytes(meta.to_json_bytes())
    assert again == meta
    assert list(meta.to_dict())[:6] == ["captions", "positives", "negatives", "labels", "duration", "source"]


def test_laion_text_field_is_a_caption():
    assert SampleMeta.from_dict({"text": ["rain on a roof"], "tag": ["rain"]}).captions == ["rain on a roof"]


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"captions": ["a dog", "  "]}, r"captions\[1\] is empty"),
        ({"captions": [3]}, r"captions\[0\] must be a string"),
        ({"negatives": {"a": 1}}, "negatives must be a string or a list"),
        ({"duration": "long"}, "duration must be a number"),
        ({"duration": -1.0}, "must not be negative"),
        ({"source": 5}, "source must be a string"),
        ({"counterfactual_audio": ["a.wav"]}, "counterfactual_audio must name the counterfactual audio file"),
        ({"counterfactual_audio": " "}, "counterfactual_audio must name"),
        (["a list"], "must be a JSON object"),
    ],
)
def test_invalid_metadata_names_the_field(raw, message):
    with pytest.raises(ValueError, match=message):
        SampleMeta.from_dict(raw, "x.json")


def test_invalid_json_bytes():
    with pytest.raises(ValueError, match="x.json: invalid JSON"):
        SampleMeta.from_json_bytes(b"{not json", "x.json")
    with pytest.raises(ValueError, match="invalid JSON"):
        SampleMeta.from_json_bytes(b"\xff\xfe", "x.json")


def test_unserialisable_extra_field():
    with pytest.raises(ValueError, match="not JSON-serialisable"):
        SampleMeta(captions=["x"], extra={"bad": object()}).to_json_bytes()


def test_manifest_round_trip(tmp_path):
    manifest = Manifest(shards=[ShardInfo("shard-000000.tar", 3, 1024, 0, 4)], num_inputs=4, skipped=1)
    (tmp_path / "manifest.json").write_text(json.dumps(manifest.to_dict()))
    loaded = load_manifest(tmp_path)
    assert loaded == manifest and loaded.total == 3
    (tmp_path / "manifest.json").write_text(json.dumps({"version": 99, "shards": []}))
    with pytest.raises(ValueError, match="not a clapkit shard manifest"):
        load_manifest(tmp_path)
    broken = {**manifest.to_dict(), "shards": [{"name": "shard-000000.tar", "count": "3"}]}
    (tmp_path / "manifest.json").write_text(json.dumps(broken))
    with pytest.raises(ValueError, match=r"manifest\.json\.shards: unknown keys|manifest\.json: .*count"):
        load_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({**manifest.to_dict(), "shard_count": 1}))
    with pytest.raises(ValueError, match=r"manifest\.json: unknown keys \['shard_count'\]"):
        load_manifest(tmp_path)
    with pytest.raises(FileNotFoundError, match="clapkit shards write"):
        load_manifest(tmp_path / "elsewhere")
