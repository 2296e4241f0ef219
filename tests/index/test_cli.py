"""``clapkit index build|info`` and ``clapkit search`` through the console script's main()."""

from __future__ import annotations

import json

import pytest

import clapkit
from clapkit import cli
from clapkit.cli_helpers import UntrainedModelWarning
from clapkit.index import AudioIndex
from tests.index.conftest import make_shard, register_tiny_architecture


def test_cli_build_and_search(tiny_model, recordings, tmp_path, capsys):
    tiny_model.save_pretrained(tmp_path / "model")
    make_shard(tmp_path / "s0.tar", [("a", 440, "a 440 Hz tone"), ("b", 2000, "a 2 kHz tone")])
    (tmp_path / "audio").mkdir()
    for name in ("low", "mid"):
        (tmp_path / "audio" / f"{name}.wav").write_bytes(recordings[name].read_bytes())
    (tmp_path / "audio" / "broken.wav").write_bytes(b"not audio")
    out = tmp_path / "ix"
    argv = ["index", "build", str(tmp_path / "audio"), str(tmp_path / "s0.tar"), "--model", str(tmp_path / "model")]
    assert cli.main([*argv, "--out", str(out)]) == 0
    printed = capsys.readouterr()
    assert "indexed 6 windows as Flat" in printed.out and "skipped 1" in printed.err and "broken.wav" in printed.err
    assert cli.main(["search", str(out), "a tone", "-k", "3", "--json"]) == 0
    hits = json.loads(capsys.readouterr().out)
    assert len(hits) == 3 and {"path", "start", "end", "score"} <= set(hits[0])
    assert cli.main(["search", str(out), "--audio", str(recordings["mid"]), "-k", "1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["path"].endswith("mid.wav")
    index = AudioIndex.load(out)
    shard_rows = [e for _, e in index.entries() if e.member]
    assert {e.member for e in shard_rows} == {"a.flac", "b.flac"}
    assert shard_rows[0].captions == ["a 440 Hz tone"] and shard_rows[0].fields == {"source": "synth"}
    assert cli.main(["search", str(out)]) == 2  # neither text nor --audio
    assert "give a text query" in capsys.readouterr().err


def _tone_folder(recordings, root):
    root.mkdir()
    for name in ("low", "mid"):
        (root / f"{name}.wav").write_bytes(recordings[name].read_bytes())
    return root


def test_build_refuses_an_untrained_architecture_name(recordings, tmp_path, monkeypatch, capsys):
    name = register_tiny_architecture(monkeypatch)
    audio = _tone_folder(recordings, tmp_path / "audio")
    assert cli.main(["index", "build", str(audio), "--model", name, "--out", str(tmp_path / "ix")]) == 2
    err = capsys.readouterr().err
    assert "architecture name" in err and "randomly initialised" in err and "--allow-untrained" in err
    assert "save_pretrained folder" in err and not (tmp_path / "ix").exists()


def test_untrained_index_is_built_with_its_model_and_searchable(recordings, tmp_path, monkeypatch, capsys):
    name = register_tiny_architecture(monkeypatch)
    audio, out = _tone_folder(recordings, tmp_path / "audio"), tmp_path / "ix"
    argv = ["index", "build", str(audio), "--model", name, "--out", str(out), "--allow-untrained"]
    with pytest.warns(UntrainedModelWarning, match="randomly initialised.*save_pretrained folder"):
        assert cli.main(argv) == 0
    assert (out / "model" / "config.json").is_file()
    assert AudioIndex.read_manifest(out)["files"]["model"] == "model"
    out = out.rename(tmp_path / "moved")  # the stored model travels with the folder
    capsys.readouterr()
    # Searching loads the stored model, not a fresh draw of the architecture, so the identity check passes.
    assert cli.main(["search", str(out), "--audio", str(recordings["mid"]), "-k", "1", "--json"]) == 0
    top = json.loads(capsys.readouterr().out)[0]
    assert top["path"].endswith("mid.wav") and top["score"] == pytest.approx(1.0, abs=1e-3)
    assert cli.main(["search", str(out), "a tone", "-k", "2", "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 2


def test_search_explains_an_index_from_an_untrained_name(recordings, tmp_path, monkeypatch, capsys):
    name = register_tiny_architecture(monkeypatch)
    # As the library (or an older clapkit) builds it: the manifest records only the architecture name.
    index = AudioIndex.for_model(clapkit.load(name), source=name, index="flat")
    index.add_audio([recordings["low"]])
    index.save(tmp_path / "ix")
    assert cli.main(["search", str(tmp_path / "ix"), "a tone"]) == 2
    err = capsys.readouterr().err
    assert "cannot be rebuilt" in err and repr(name) in err and "model mismatch" not in err
    with pytest.raises(ValueError, match="cannot be rebuilt"):
        AudioIndex.load(tmp_path / "ix").attach(clapkit.load(name))


def test_build_help_names_the_flags(capsys):
    with pytest.raises(SystemExit):
        cli.main(["index", "build", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--allow-untrained" in text and "powers of 1000" in text and "powers of 1024" in text
