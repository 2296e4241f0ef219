"""retrieval embed (parts, resume, worker processes) and retrieval build (index from parts)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from clapkit.cli_helpers import UntrainedModelWarning
from clapkit.index import AudioIndex
from retrieval.__main__ import main, parse
from retrieval.build import build_index
from retrieval.config import BuildConfig, EmbedConfig, ServeConfig
from retrieval.embed import embed_collection, finished_parts
from tests.index.conftest import register_tiny_architecture
from tests.retrieval.conftest import embed_config

WINDOWS = 18  # 6 tones (1+1+1+2+2+3) + 3 s sweep (5) + shard clips of 1.2 s (2) and 1 s (1)


def test_parts_hold_windows_metadata_and_counts(index_dir, collection):
    parts_dir = index_dir.parent / "parts"
    plan, parts = finished_parts(parts_dir)
    assert plan["parts"] == ["part-00000", "part-00001", "part-00002", "part-00003"]  # 8 files / 3 + 1 shard
    assert sum(p.stats["windows"] for p in parts) == WINDOWS
    assert sum(p.stats["skipped"] for p in parts) == 1 and "broken.wav" in parts[0].stats["errors"][0]
    shard = [json.loads(line) for line in parts[3].metadata.read_text().splitlines()]
    spans = [(r["member"], r["start"], r["end"]) for r in shard]
    assert spans == [("s0.flac", 0.0, 1.0), ("s0.flac", 0.2, 1.2), ("s1.flac", 0.0, 1.0)]
    assert shard[0]["captions"] == ["a 500 Hz tone"] and "negatives" not in shard[0]["fields"]
    emb = np.load(parts[3].embeddings)
    assert emb.shape == (3, 32) and np.allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-5)
    index = AudioIndex.load(index_dir)
    assert len(index) == WINDOWS and index.window == {"seconds": 1.0, "hop_seconds": 0.5}


def test_resume_skips_finished_parts(collection, tiny_model, tmp_path):
    cfg = embed_config(collection, tmp_path / "parts", max_parts=1)
    first = embed_collection(cfg, model=tiny_model)
    assert (first["done_before"], first["done_now"]) == (0, 1)
    done = tmp_path / "parts" / "part-00000.npy"
    stamp = done.stat().st_mtime_ns
    # A part killed half-way (arrays written, no done marker) is redone.
    (tmp_path / "parts" / "part-00001.npy").write_bytes(b"half")
    cfg.max_parts = None
    second = embed_collection(cfg, model=tiny_model)
    assert (second["done_before"], second["done_now"]) == (1, 3)
    assert done.stat().st_mtime_ns == stamp  # the finished part was not rewritten
    assert np.load(tmp_path / "parts" / "part-00001.npy").shape[1] == 32
    assert embed_collection(cfg, model=tiny_model)["done_now"] == 0


def test_worker_processes_give_the_same_parts(collection, tiny_model, index_dir, tmp_path):
    embed_collection(embed_config(collection, tmp_path / "parts", workers=2), model=tiny_model)
    _, ours = finished_parts(tmp_path / "parts")
    _, ref = finished_parts(index_dir.parent / "parts")
    for a, b in zip(ours, ref):
        assert a.metadata.read_text() == b.metadata.read_text()
        np.testing.assert_allclose(np.load(a.embeddings), np.load(b.embeddings), atol=1e-5)


def test_a_different_run_is_refused(collection, tiny_model, tmp_path):
    embed_collection(embed_config(collection, tmp_path / "parts", max_parts=1), model=tiny_model)
    with pytest.raises(ValueError, match="different run.*window_seconds"):
        embed_collection(embed_config(collection, tmp_path / "parts", window_seconds=0.5), model=tiny_model)


def test_an_untrained_architecture_name_is_warned_about(collection, tmp_path, monkeypatch):
    name = register_tiny_architecture(monkeypatch)
    with pytest.warns(UntrainedModelWarning, match="randomly initialised"):
        embed_collection(embed_config(collection, tmp_path / "parts", max_parts=1, model=name))


def test_build_needs_all_parts_unless_partial(collection, tiny_model, tmp_path):
    embed_collection(embed_config(collection, tmp_path / "parts", max_parts=2), model=tiny_model)
    cfg = BuildConfig(parts=str(tmp_path / "parts"), out=str(tmp_path / "ix"))
    with pytest.raises(ValueError, match="2 of 4 parts are not embedded yet"):
        build_index(cfg)
    cfg.allow_partial = True
    summary = build_index(cfg)
    assert summary["parts"] == 2 and summary["plan"]["key"] == "Flat"


def test_build_trains_ivf_on_a_sample_across_parts(index_dir, tmp_path):
    cfg = BuildConfig(parts=str(index_dir.parent / "parts"), out=str(tmp_path / "tuned"), index="IVF2,Flat")
    assert build_index(cfg)["tuned"]["param"] == "nprobe"  # defaults tuned to the target recall
    cfg = BuildConfig(parts=str(index_dir.parent / "parts"), out=str(tmp_path / "ix"), index="IVF2,Flat", nprobe=2)
    summary = build_index(cfg)
    assert summary["count"] == WINDOWS and summary["tuned"] == {}
    index = AudioIndex.load(tmp_path / "ix")
    ref = AudioIndex.load(index_dir)
    q = np.load(finished_parts(index_dir.parent / "parts")[1][0].embeddings)[:3]
    assert [h.id for h in index.search(embedding=q, k=1)[0]] == [h.id for h in ref.search(embedding=q, k=1)[0]]


def test_cli_runs_embed_and_build(collection, tmp_path, capsys):
    out = tmp_path / "parts"
    argv = ["embed", str(collection["audio"]), "--model", str(collection["model"]), "--out", str(out)]
    assert main([*argv, "--workers", "0", "--part_size", "100"]) == 0
    assert json.loads(capsys.readouterr().out)["windows"] == 15
    assert main(["build", "--parts", str(out), "--out", str(tmp_path / "ix")]) == 0
    assert json.loads(capsys.readouterr().out)["count"] == 15
    assert main(["build", "--parts", str(tmp_path), "--out", str(tmp_path / "x")]) == 2
    assert "no plan.json" in capsys.readouterr().err


@pytest.mark.parametrize("name, cls", [("embed", EmbedConfig), ("build", BuildConfig), ("serve", ServeConfig)])
def test_shipped_configs_parse(name, cls):
    command, cfg = parse([name, "-c", f"configs/retrieval/{name}.yaml"])
    assert command == name and cfg == cls(**yaml.safe_load(Path(f"configs/retrieval/{name}.yaml").read_text()))


def test_defaults_without_a_config():
    assert parse(["embed"]) == ("embed", EmbedConfig())
    assert parse(["serve", "--index", "a", "b=c"])[1].indices == ["a", "b=c"]


def test_flags_after_the_config_override_it(tmp_path):
    cfg_file = tmp_path / "embed.yaml"
    cfg_file.write_text("inputs: [a, b]\nworkers: 1\nout: from-file\n")
    _, cfg = parse(["embed", "-c", str(cfg_file), "--workers", "3", "--precision", "bf16"])
    assert (cfg.inputs, cfg.workers, cfg.out, cfg.precision) == (["a", "b"], 3, "from-file", "bf16")
    _, cfg = parse(["embed", "-c", str(cfg_file), "c"])  # positional inputs replace the file's
    assert cfg.inputs == ["c"] and cfg.workers == 1


@pytest.mark.parametrize(
    "argv, message",
    [
        (["embed", "-c", "{cfg}"], "does not accept option 'workerz'"),  # an unknown key in the file
        (["embed", "--workerz", "3"], "unrecognized arguments: --workerz"),
        (["embed", "--precision", "fp32"], "precision"),
        (["build", "--seed", "x"], "seed"),
    ],
)
def test_unknown_keys_and_bad_values_are_refused(argv, message, tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("workerz: 3\n")
    with pytest.raises(SystemExit) as exit_:
        parse([a.format(cfg=bad) for a in argv])
    assert exit_.value.code == 2 and message in capsys.readouterr().err
