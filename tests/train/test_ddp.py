"""The DDP path with 2 CPU processes (gloo), launched by Lightning as ``python -m train`` would be on GPUs."""

import json
import types

import pytest
import torch

import clapkit
from tests.train.conftest import CONFIGS, run_train, write_overlay
from train.clap import ClapDataModule


def test_two_process_ddp(tiny_data, tmp_path):
    record = {"class_path": "tests.train.helpers.RecordWorld", "init_args": {"folder": str(tmp_path / "ranks")}}
    overlay = write_overlay(tmp_path / "record.yaml", [record])
    args = ["clap", "fit", "-c", str(CONFIGS / "tiny.yaml"), "-c", str(overlay)]
    args += ["--data.train_shards", str(tiny_data["shards"]), "--data.val_shards", str(tiny_data["shards"])]
    args += ["--data.resampled", "true", "--data.batch_size", "2", "--trainer.max_steps", "3"]
    args += ["--trainer.devices", "2", "--trainer.strategy", "ddp", "--trainer.enable_progress_bar", "false"]
    args += ["--eval.retrieval", str(tiny_data["retrieval"])]  # rank 0 evaluates, every rank logs
    proc = run_train(args, cwd=tmp_path)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    ranks = [json.loads((tmp_path / "ranks" / f"rank{r}.json").read_text()) for r in (0, 1)]
    for r in ranks:
        assert r["world_size"] == 2 and r["loss_world_size"] == 2  # the loss gathered across both ranks
        assert r["global_step"] == 3 and r["batches"] == 3
    assert ranks[0]["params_sum"] == pytest.approx(ranks[1]["params_sum"], rel=1e-6)  # replicas stay equal
    final = torch.load(tmp_path / "runs/tiny/checkpoints/last.ckpt", weights_only=True)
    assert final["global_step"] == 3
    clapkit.load(tmp_path / "runs/tiny/model")
    (metrics,) = (tmp_path / "runs/tiny/csv").glob("version_*/metrics.csv")
    header = metrics.read_text().splitlines()[0]
    assert "eval/retrieval/text_to_audio_R@1" in header and "val/text_to_audio_R@1" in header


def test_several_ranks_need_resampled_shards(tiny_data):
    dm = ClapDataModule(train_shards=str(tiny_data["shards"]))
    dm.trainer = types.SimpleNamespace(world_size=2)
    with pytest.raises(ValueError, match="data.resampled: true"):
        dm.setup("fit")
