import numpy as np
import pytest
import soundfile as sf

from clapkit.evaluate.zeroshot import classification_metrics, load_labelled_audio, save_confusion_matrix

CLASSES = ["bird", "dog", "rain"]


def test_hand_built_scores():
    scores = np.array(
        [
            [0.9, 0.05, 0.05],  # bird → bird
            [0.2, 0.7, 0.1],  # bird → dog
            [0.1, 0.8, 0.1],  # dog → dog
            [0.1, 0.3, 0.6],  # rain → rain
            [0.5, 0.1, 0.4],  # rain → bird (rain second)
        ]
    )
    m = classification_metrics(scores, np.array([0, 0, 1, 2, 2]), CLASSES)
    assert m["top1"] == pytest.approx(3 / 5)
    assert m["top3"] == 1.0  # top-min(5, C)
    assert m["per_class"] == {"bird": 0.5, "dog": 1.0, "rain": 0.5}
    assert m["mean_class_accuracy"] == pytest.approx(2 / 3)
    assert m["confusion"] == [[1, 1, 0], [0, 1, 0], [1, 0, 1]]


def test_top5_with_many_classes():
    scores = np.tile(np.arange(10, 0, -1, dtype=float), (2, 1))  # class 0 best … class 9 worst
    m = classification_metrics(scores, np.array([4, 5]), [str(i) for i in range(10)])
    assert m["top1"] == 0.0 and m["top5"] == 0.5


def test_confusion_png(tmp_path):
    path = save_confusion_matrix([[3, 1], [0, 4]], ["a", "b"], tmp_path / "cm.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(tmp_path.glob(".*"))  # no temp file left


def test_load_folder_and_csv(tmp_path):
    for cls in ("dog", "rain"):
        (tmp_path / "data" / cls).mkdir(parents=True)
        sf.write(tmp_path / "data" / cls / "x.wav", np.zeros(160, dtype=np.float32), 16000)
    (tmp_path / "data" / "dog" / "notes.txt").write_text("not audio")
    d = load_labelled_audio(tmp_path / "data")
    assert d.classes == ["dog", "rain"] and d.targets.tolist() == [0, 1] and len(d.paths) == 2
    (tmp_path / "l.csv").write_text("path,label\ndata/dog/x.wav,dog\ndata/rain/x.wav,rain\n")
    assert load_labelled_audio(tmp_path / "l.csv").paths[0] == str(tmp_path / "data/dog/x.wav")
    (tmp_path / "one.csv").write_text("path,label\na.wav,dog\n")
    with pytest.raises(ValueError, match="at least 2"):
        load_labelled_audio(tmp_path / "one.csv")
