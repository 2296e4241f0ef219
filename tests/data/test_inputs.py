import json

import pytest
import soundfile as sf

from clapkit.data.inputs import read_csv, read_dir, read_inputs, read_jsonl
from tests.data.conftest import RATE, noise


def _wav(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, noise(0, 0.05), RATE)
    return path


def test_folder_sidecars_and_label_folders(tmp_path):
    _wav(tmp_path / "a.wav")
    (tmp_path / "a.txt").write_text("a beep\n\nanother beep\n")
    _wav(tmp_path / "b.flac")
    (tmp_path / "b.json").write_text(json.dumps({"captions": ["rain"], "conversation": [{"role": "user"}]}))
    _wav(tmp_path / "dog_bark" / "1.wav")
    _wav(tmp_path / "lonely.wav")
    _wav(tmp_path / "c.wav")
    (tmp_path / "c.json").write_text("{oops")
    found = read_dir(tmp_path, label_caption="the sound of {}")
    records = {r.audio.removeprefix(str(tmp_path) + "/"): r for r in found}
    assert sorted(records) == ["a.wav", "b.flac", "c.wav", "dog_bark/1.wav", "lonely.wav"]
    assert records["a.wav"].fields == {"captions": ["a beep", "another beep"]}
    assert records["b.flac"].fields["conversation"] == [{"role": "user"}]
    assert records["dog_bark/1.wav"].fields == {"captions": ["the sound of dog bark"], "labels": ["dog_bark"]}
    assert records["lonely.wav"].fields == {} and records["lonely.wav"].error is None  # rejected later: no caption
    assert "invalid JSON" in records["c.wav"].error


def test_csv_columns(tmp_path):
    listing = tmp_path / "list.csv"
    listing.write_text(
        "path,caption,caption_2,label,label_2,negatives,split\n"
        "x.wav,a dog barks | a puppy yaps,,dog,animal,a cat meows,train\n"
        "/abs/y.wav,,,,,,test\n"
        "z.wav,too,many,columns,here,,,extra\n"
    )
    rows = read_csv(listing)
    assert rows[0].audio == str(tmp_path / "x.wav")
    assert rows[0].fields == {
        "captions": ["a dog barks ", " a puppy yaps"],
        "labels": ["dog", "animal"],
        "negatives": ["a cat meows"],
        "split": "train",
    }
    assert rows[0].origin == f"{listing}:2"
    assert rows[1].audio == "/abs/y.wav" and rows[1].fields["captions"] == [""]  # the writer rejects it
    assert "different number of columns" in rows[2].error


def test_csv_without_caption_column(tmp_path):
    (tmp_path / "list.csv").write_text("file,text\nx.wav,hi\n")
    with pytest.raises(ValueError, match="needs a 'path' and a 'caption' column"):
        read_csv(tmp_path / "list.csv")


def test_jsonl_passes_unknown_fields_and_reports_bad_lines(tmp_path):
    listing = tmp_path / "sub" / "list.jsonl"
    listing.parent.mkdir()
    turns = [{"role": "user", "content": "<Audio> describe it"}, {"role": "assistant", "content": "rain"}]
    listing.write_text(
        json.dumps({"audio": "a.wav", "captions": ["rain"], "conversation": turns})
        + "\n\nnot json\n"
        + json.dumps({"captions": ["no audio"]})
        + "\n"
    )
    records = read_jsonl(listing)
    assert len(records) == 3
    assert records[0].audio == str(listing.parent / "a.wav")
    assert records[0].fields == {"captions": ["rain"], "conversation": turns}
    assert records[1].error.startswith(f"{listing}:3: invalid JSON")
    assert "expected an object with an 'audio' path" in records[2].error


def test_dispatch(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_inputs(tmp_path / "missing.csv")
    (tmp_path / "x.parquet").write_text("")
    with pytest.raises(ValueError, match="unknown input kind"):
        read_inputs(tmp_path / "x.parquet")


def test_counterfactual_paths_are_resolved_like_the_audio(tmp_path):
    listing = tmp_path / "sub" / "list.jsonl"
    listing.parent.mkdir()
    lines = [
        {"audio": "a.wav", "captions": ["a then b"], "counterfactual_audio": "a.counterfactual.flac"},
        {"audio": "b.wav", "captions": ["b"], "counterfactual_audio": "/abs/b.cf.flac"},
        {"audio": "c.wav", "captions": ["c"], "counterfactual_audio": ""},
    ]
    listing.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    records = read_jsonl(listing)
    assert records[0].fields["counterfactual_audio"] == str(listing.parent / "a.counterfactual.flac")
    assert records[1].fields["counterfactual_audio"] == "/abs/b.cf.flac"
    assert "counterfactual_audio" not in records[2].fields  # empty: no counterfactual

    table = tmp_path / "sub" / "list.csv"
    table.write_text("path,caption,counterfactual_audio\na.wav,a then b,cf/a.flac\nb.wav,b,\n")
    rows = read_csv(table)
    assert rows[0].fields["counterfactual_audio"] == str(table.parent / "cf" / "a.flac")
    assert "counterfactual_audio" not in rows[1].fields

    clips = tmp_path / "clips"
    clips.mkdir()
    (clips / "x.wav").write_bytes(b"")
    (clips / "x.json").write_text(json.dumps({"captions": ["x"], "counterfactual_audio": "x_reversed.flac"}))
    assert read_dir(clips)[0].fields["counterfactual_audio"] == str(clips / "x_reversed.flac")
