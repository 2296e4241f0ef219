import json

import numpy as np
import pytest

from clapkit.cli import build_parser, main
from clapkit.cli_helpers import UntrainedModelWarning
from tests.index.conftest import register_tiny_architecture


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from tests.conftest import build_tiny_model

    path = tmp_path_factory.mktemp("model") / "tiny"
    build_tiny_model().save_pretrained(path)
    return path


def test_every_command_has_help(capsys):
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for name in sub.choices:
        with pytest.raises(SystemExit) as exit_info:
            parser.parse_args([name, "--help"])
        assert exit_info.value.code == 0
        assert "usage" in capsys.readouterr().out


def test_embed_folder_writes_rows_in_order(model_dir, wav_file, tmp_path):
    a = wav_file("a.wav", freq=300)
    wav_file("b.flac", freq=900)
    out = tmp_path / "emb.npy"
    names = tmp_path / "names.txt"
    assert main(["embed", str(a.parent), "--model", str(model_dir), "--out", str(out), "--names", str(names)]) == 0
    emb = np.load(out)
    assert emb.shape == (2, 32) and np.allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-5)
    assert [p.rsplit("/", 1)[-1] for p in names.read_text().split()] == ["a.wav", "b.flac"]
    single = tmp_path / "one.npy"
    main(["embed", str(a), "--model", str(model_dir), "--out", str(single)])
    assert np.abs(np.load(single)[0] - emb[0]).max() < 1e-5


def test_embed_text_and_zeroshot_json(model_dir, wav_file, tmp_path, capsys):
    out = tmp_path / "t.npy"
    assert main(["embed", "--text", "a dog", "rain", "--model", str(model_dir), "--out", str(out)]) == 0
    assert np.load(out).shape == (2, 32)
    capsys.readouterr()
    clip = wav_file("x.wav")
    assert main(["zeroshot", str(clip), "--labels", "dog,rain,siren", "--model", str(model_dir), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows[0]["file"] == str(clip) and len(rows[0]["top"]) == 3
    assert abs(sum(t["prob"] for t in rows[0]["top"]) - 1) < 1e-3


def test_errors_are_reported_not_raised(model_dir, tmp_path, capsys):
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"not audio at all")
    code = main(["embed", str(broken), "--model", str(model_dir), "--out", str(tmp_path / "e.npy")])
    assert code == 2
    assert "broken.wav" in capsys.readouterr().err
    assert not (tmp_path / "e.npy").exists()
    assert main(["embed", "x.wav", "--model", "no-such-model", "--out", str(tmp_path / "e.npy")]) == 2
    assert "registered models" in capsys.readouterr().err


def test_embed_names_a_folder_that_holds_no_audio(model_dir, wav_file, tmp_path, capsys):
    fake = tmp_path / "clips.wav"  # a folder named like a file, with no audio in it
    fake.mkdir()
    (fake / "readme.txt").write_text("not audio")
    out = tmp_path / "e.npy"
    assert main(["embed", str(fake), "--model", str(model_dir), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"{fake}: a folder with no audio files" in err and not out.exists()
    real = wav_file("a.wav")
    assert main(["embed", str(real), str(fake), "--model", str(model_dir), "--out", str(out)]) == 2
    assert "clips.wav: a folder with no audio files" in capsys.readouterr().err


def test_embed_skips_folders_named_like_audio_inside_a_folder(model_dir, wav_file, tmp_path):
    clip = wav_file("a.wav")
    (clip.parent / "clips.wav").mkdir()
    out = tmp_path / "e.npy"
    assert main(["embed", str(clip.parent), "--model", str(model_dir), "--out", str(out)]) == 0
    assert np.load(out).shape == (1, 32)


def test_embed_warns_for_an_untrained_architecture_name(wav_file, tmp_path, monkeypatch):
    name = register_tiny_architecture(monkeypatch)
    with pytest.warns(UntrainedModelWarning, match="architecture name.*randomly initialised.*save_pretrained"):
        assert main(["embed", str(wav_file("a.wav")), "--model", name, "--out", str(tmp_path / "e.npy")]) == 0
