"""Smoke test of ``python -m demo`` on a tiny synthetic dataset and a tiny model (every step, twice)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

import clapkit
from clapkit.compose.benchmark import COMPA_COLUMNS, scene_pairs
from clapkit.config import merge
from clapkit.steps import StepRunner
from demo.__main__ import main
from demo.config import load_config
from demo.data import Workspace, build_dataset
from demo.pipeline import OUT_MARKER, Demo, fresh_start
from tests.conftest import TINY_OVERRIDES, TINY_RATE, tone

CLASSES = {  # class → (label, how its clips sound)
    "low_tone": ("low tone", lambda i, t: tone(180 + 20 * i, t, TINY_RATE)),
    "high_tone": ("high tone", lambda i, t: tone(2400 + 200 * i, t, TINY_RATE)),
    "noise": ("noise burst", lambda i, t: np.random.default_rng(i).uniform(-0.4, 0.4, int(t * TINY_RATE))),
    "beeps": ("beeping", lambda i, t: tone(900, t, TINY_RATE) * (np.arange(int(t * TINY_RATE)) % 1600 < 800)),
}


#: Cross-source clips: two of low_tone and one of noise, from a package those classes never train on (low_tone's
#: second one from a package that shares the first's samples: one held-out source of two packages).
CROSS = {"low_tone": range(4, 6), "noise": range(4, 5)}


def _package(split: str, cls: str, i: int) -> str:
    if split != "cross":
        return "pkg"
    return "other-pkg-copy" if (cls, i) == ("low_tone", 5) else "other-pkg"


def _dataset(root: Path) -> Path:
    """Three training clips and one test clip per class, and the ``CROSS`` clips, in the layout of
    ``python -m demo.datasets build``."""
    for split, indices in (("train", range(3)), ("test", range(3, 4)), ("cross", None)):
        lines = []
        for cls, (label, make) in CLASSES.items():
            for i in CROSS.get(cls, ()) if indices is None else indices:
                rel = f"clips/{cls}/{cls}_{i}.flac"
                (root / rel).parent.mkdir(parents=True, exist_ok=True)
                sf.write(root / rel, np.asarray(make(i, 0.35), dtype=np.float32), TINY_RATE)
                record = {
                    "audio": rel,
                    "class": cls,
                    "labels": [label],
                    "captions": [f"a {label}", label],
                    "duration": 0.35,
                    "split": split,
                    "source_package": _package(split, cls, i),
                }
                lines.append(json.dumps(record))
        (root / f"{split}.jsonl").write_text("\n".join(lines) + "\n")
    return root


def _config(tmp: Path) -> dict:
    head = {"layers": 1, "width": 16, "heads": 2, "max_len": 64, "pool": "cls", "dropout": 0.0}
    overrides = merge(
        TINY_OVERRIDES,
        {"audio_tower": {"freeze": True}, "text_tower": {"freeze": True}, "audio_head": head, "text_head": head},
    )
    return {
        "out_dir": str(tmp / "run"),
        "threads": 1,
        "data": {"dataset_dir": str(_dataset(tmp / "data"))},
        "model": {"name": "htsat-tiny", "pretrained": False, "overrides": overrides},
        "phrases": {
            "low_tone": [["a low tone", "hums", "humming"]],
            "high_tone": [["a high tone", "whistles", "whistling"], ["a whistle", "sounds", "sounding"]],
            "noise": [["noise", "hisses", "hissing"]],
            "beeps": [["a beeper", "beeps", "beeping"]],
        },
        "scenes": {
            "count": 10,
            "held_out_pair_fraction": 0.34,  # 2 of the 6 pairs
            "composer": {
                "kinds": {"sequence": 1.0, "overlap": 1.0, "attribute": 1.0, "rate": 1.0},
                "max_scene_seconds": 0.95,
                "max_event_seconds": 0.3,
                "repeat_unit_seconds": 0.03,  # s: fast = every 0.05 s, slow = every 0.2 s
                "rate_period_seconds": 0.1,
                "gap_seconds": [0.05, 0.1],
                "edge_seconds": 0.02,
            },
        },
        "benchmark": {"compa_order": 6, "compa_attribute": 4},
        "shards": {"workers": 0},
        "features": {"batch_size": 8, "channels_last": False},
        "train": {
            "steps": 3,
            "batch_size": 4,
            "max_negatives": 2,
            "precision": "32-true",
            "optimizer": {"lr": 1.0e-3, "warmup_steps": 1},
            "arms": {
                "infonce": {"loss": "infonce"},
                "compa_hardneg": {"loss": "compa_hardneg", "negatives": True, "audio_negatives": True},
            },
        },
        "search": {"model": "compa_hardneg", "text_queries": ["a low tone"], "audio_query_class": "beeps", "k": 3},
    }


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("demo")
    lines: list[str] = []
    config = _config(tmp)
    # Relative folders, as `make demo` gives them (out_dir: runs/demo): listings must not resolve them twice.
    config["out_dir"], config["data"]["dataset_dir"] = "run", "data"
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(tmp)
        demo = Demo(load_config(config), progress=False, log=lines.append)
        return demo, demo.run(), lines


def test_demo_writes_every_output(demo_run):
    demo, out, lines = demo_run
    root = demo.out
    results = json.loads((root / "results" / "results.json").read_text())["results"]
    assert set(results) == {"infonce", "compa_hardneg"}
    for metrics in results.values():
        assert 0 <= metrics["zeroshot"]["top1"] <= 1
        assert metrics["zeroshot"]["chance_top1"] == pytest.approx(1 / 4)
        assert metrics["compa_order"]["num_instances"] == 6
        assert metrics["compa_attribute"]["num_instances"] == 4
        assert metrics["compa_order"]["random_group_score"] == pytest.approx(1 / 6)
        assert metrics["retrieval"]["num_audio"] == 2 * (6 + 4)
    assert (root / "results" / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = (root / "results" / "table.txt").read_text()
    assert "CompA-order group" in table and "compa_hardneg" in table
    # The cross-source clips: scored against the same four classes, in the table, per class in a CSV, in the log.
    assert "zero-shot top-1, cross-source" in table and "zero-shot class-mean, cross-source" in table
    assert "4 in-source clips / 4 classes + 3 cross-source clips / 2 classes" in table
    for name, metrics in results.items():
        cross = metrics["zeroshot_cross_source"]
        assert cross["num_samples"] == 3 and cross["chance_top1"] == pytest.approx(1 / 4)
        assert set(cross["per_class"]) == {"low tone", "noise burst"}
        assert any(line.startswith(f"{name}: zero-shot classes with no cross-source clip right") for line in lines)
    with open(root / "results" / "cross_source_classes.csv", newline="") as f:
        rows = {row["class"]: row for row in csv.DictReader(f)}
    assert set(rows) == {"low_tone", "noise"}
    assert rows["low_tone"]["held_out_package"] == "other-pkg + other-pkg-copy" and rows["low_tone"]["clips"] == "2"
    assert rows["noise"]["held_out_package"] == "other-pkg"
    for name, metrics in results.items():
        assert float(rows["noise"][name]) == pytest.approx(metrics["zeroshot_cross_source"]["per_class"]["noise burst"])
    for arm in ("infonce", "compa_hardneg"):
        model = clapkit.load(root / "models" / arm / "model")
        assert model.config.audio_tower.freeze and model.config.text_tower.freeze
    # The search printed a ranked list for the text query and for the audio query.
    assert "a low tone" in out["search"] and len(out["search"]["a low tone"]) == 3
    assert any(q.startswith("<audio: clips/beeps/") for q in out["search"])
    assert any("max |difference|" in line for line in lines)


def test_training_data_keeps_held_out_pairs_and_phrasings_out(demo_run):
    demo, _, _ = demo_run
    held_out = set(map(tuple, demo.work.held_out_pairs()))
    assert len(held_out) == 2
    scenes = [json.loads(line) for line in (demo.out / "scenes" / "scenes.jsonl").read_text().splitlines()]
    assert len(scenes) == 10
    for scene in scenes:
        assert not scene_pairs(e["label"] for e in scene["events"]) & held_out
        assert scene["pool"] == "train"
    items = [json.loads(line) for line in (demo.out / "benchmark" / "items.jsonl").read_text().splitlines()]
    assert {tuple(sorted(it["classes"])) for it in items} <= held_out
    train_clips = {json.loads(line)["audio"] for line in (demo.out.parent / "data" / "train.jsonl").open()}
    for it in items:
        assert not {e["source"] for e in it["events"]} & train_clips  # benchmark audio comes from test clips only
    with open(demo.out / "benchmark" / "compa_order.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert tuple(rows[0]) == COMPA_COLUMNS and len(rows) == 1 + 6
    train_captions = {c for s in scenes for c in (*s["captions"], *s["positives"])}
    assert not {r[0] for r in rows[1:]} & train_captions
    bench = demo.out / "benchmark"
    assert all((bench / r[3]).is_file() and (bench / r[4]).is_file() for r in rows[1:])


def test_data_fingerprint_follows_the_splits_of_a_given_folder(tmp_path):
    config = load_config(_config(tmp_path))
    work, runner = Workspace(config, progress=False), StepRunner(lambda line: None)
    build_dataset(work, runner)
    first = runner.fingerprints["data"]
    build_dataset(work, runner)
    assert runner.fingerprints["data"] == first
    cross = tmp_path / "data" / "cross.jsonl"
    cross.write_text(cross.read_text().splitlines()[0] + "\n")  # one cross-source clip fewer
    build_dataset(work, runner)
    assert runner.fingerprints["data"] != first


def test_second_run_reuses_every_step(demo_run, capsys, monkeypatch):
    demo, first, _ = demo_run
    monkeypatch.chdir(demo.out.parent)  # the config's folders are relative to where the first run started
    lines: list[str] = []
    again = Demo(demo.config, progress=False, log=lines.append).run()
    reused = [line for line in lines if line.startswith("[") and "reused" in line]
    assert len(reused) == 6  # scenes, benchmark, shards, features, both trainings (the data folder is given)
    assert again["results"]["compa_hardneg"]["compa_order"] == first["results"]["compa_hardneg"]["compa_order"]


def test_benchmark_beside_the_scenes_matches_one_after_the_other(demo_run, tmp_path):
    # With two threads the benchmark is composed in a second process while the scenes are composed here; the files,
    # the fingerprint and the reuse on the next run are those of the sequential run (the module's run, 1 thread).
    demo, _, _ = demo_run
    config = load_config({**_config(tmp_path), "threads": 2, "data": {"dataset_dir": str(demo.out.parent / "data")}})
    lines: list[str] = []
    parallel = Demo(config, progress=False, log=lines.append)
    parallel.dataset()
    _, bench = parallel.scenes_and_benchmark()
    assert bench["compa_order"] == 6 and bench["compa_attribute"] == 4
    assert parallel.runner.fingerprints["benchmark"] == demo.runner.fingerprints["benchmark"]
    assert parallel.runner.timings["benchmark"]["wall_s"] > 0
    assert any(line.startswith("[benchmark] done") for line in lines)
    for name in ("compa_order.csv", "compa_attribute.csv", "items.jsonl"):
        assert (parallel.out / "benchmark" / name).read_bytes() == (demo.out / "benchmark" / name).read_bytes()
    assert (parallel.out / "scenes" / "scenes.jsonl").read_bytes() == (
        demo.out / "scenes" / "scenes.jsonl"
    ).read_bytes()
    lines.clear()
    again = Demo(config, progress=False, log=lines.append)
    again.dataset()
    again.scenes_and_benchmark()
    assert sum("reused" in line for line in lines) == 2


def test_head_settings_reuse_the_stored_features(demo_run):
    # The stored features are the frozen towers' outputs: the heads' settings do not change them, a tower's do.
    from demo.features import tower_settings

    demo, _, _ = demo_run
    base = _config(demo.out.parent)
    heads = merge(base["model"]["overrides"], {"audio_head": {"dropout": 0.1}, "text_head": {"layers": 2}})
    tower = merge(base["model"]["overrides"], {"audio_tower": {"autocast": "bfloat16"}})
    same = tower_settings(demo.work)
    assert tower_settings(Workspace(load_config({**base, "model": {**base["model"], "overrides": heads}}))) == same
    assert tower_settings(Workspace(load_config({**base, "model": {**base["model"], "overrides": tower}}))) != same
    assert tower_settings(Workspace(load_config({**base, "seed": 1}))) != same  # random towers follow the seed


def test_fresh_only_deletes_demo_folders(tmp_path):
    other = tmp_path / "not_a_demo"
    other.mkdir()
    with pytest.raises(ValueError, match="not made by the demo"):
        fresh_start(other)
    ours = tmp_path / "demo"
    ours.mkdir()
    (ours / OUT_MARKER).touch()
    fresh_start(ours)
    assert not ours.exists()


def test_cli_help(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    assert "--fresh" in capsys.readouterr().out
