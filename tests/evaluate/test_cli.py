"""`clapkit eval …` end to end on a tiny saved model and a few generated clips."""

import json

import numpy as np
import pytest
import soundfile as sf

from clapkit.cli import main
from tests.conftest import TINY_RATE, tone


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tiny_model):
    return str(tiny_model.save_pretrained(tmp_path_factory.mktemp("m") / "tiny"))


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    root = tmp_path_factory.mktemp("clips")
    for cls, freqs in {"high_tone": (2000, 2500), "low_tone": (200, 300)}.items():
        (root / cls).mkdir()
        for f in freqs:
            sf.write(root / cls / f"{f}.wav", tone(f, 1.5, TINY_RATE), TINY_RATE)
    return root


def test_eval_zeroshot(model_dir, clips, tmp_path, capsys):
    out, png = tmp_path / "zs.json", tmp_path / "cm.png"
    assert main(["eval", "zeroshot", str(clips), "--model", model_dir, "--out", str(out), "--confusion", str(png)]) == 0
    res = json.loads(out.read_text())
    m = res["metrics"]
    assert res["task"] == "zeroshot" and m["num_samples"] == 4
    assert np.asarray(m["confusion"]).sum() == 4 and set(m["per_class"]) == {"high_tone", "low_tone"}
    assert m["top2"] == 1.0  # two classes: the right one is always in the top 2
    assert png.read_bytes()[:4] == b"\x89PNG"
    assert "top1" in capsys.readouterr().out


def test_eval_retrieval(model_dir, clips, tmp_path, capsys):
    rows = ["path,caption"]
    for f in sorted(clips.rglob("*.wav")):
        rows += [f"{f},a tone at {f.stem} hertz", f"{f},a steady beep"]
    (tmp_path / "caps.csv").write_text("\n".join(rows) + "\n")
    out = tmp_path / "r.json"
    assert main(["eval", "retrieval", str(tmp_path / "caps.csv"), "--model", model_dir, "--out", str(out)]) == 0
    m = json.loads(out.read_text())["metrics"]
    assert m["num_audio"] == 4 and m["num_captions"] == 8
    assert m["text_to_audio_R@5"] == 1.0 and m["audio_to_text_R@10"] == 1.0  # 4 clips, 8 captions
    assert "text→audio" in capsys.readouterr().out


def test_eval_compositional(model_dir, clips, tmp_path, capsys):
    files = sorted(clips.rglob("*.wav"))
    csv = "pair_caption,reversed_pair_caption,triplet_caption,pair_file,reversed_pair_file,triplet_file\n"
    csv += f"low then high,high then low,-,{files[0]},{files[2]},-\n"
    csv += f"a high tone,a low tone,a beep,{files[1]},{files[3]},{files[0]}\n"
    (tmp_path / "compa.csv").write_text(csv)
    out = tmp_path / "c.json"
    args = ["eval", "compositional", str(tmp_path / "compa.csv"), "--model", model_dir, "--out", str(out)]
    assert main([*args, "--triplets"]) == 0
    m = json.loads(out.read_text())["metrics"]
    assert m["num_instances"] == 2
    assert m["random_group_score"] == pytest.approx((1 / 6 + 1 / 60) / 2)
    printed = capsys.readouterr().out
    assert "group score" in printed and "random" in printed


def test_eval_bad_input_is_a_clean_error(model_dir, tmp_path, capsys):
    (tmp_path / "bad.csv").write_text("a,b\n1,2\n")
    assert main(["eval", "compositional", str(tmp_path / "bad.csv"), "--model", model_dir]) == 2
    assert "missing CompA columns" in capsys.readouterr().err
