"""Both training apps across 2 "nodes" x 1 process: each node started by hand as on a cluster without a launcher
(``MASTER_ADDR`` / ``MASTER_PORT`` / ``NODE_RANK`` / ``WORLD_SIZE``, ``trainer.num_nodes 2``), DDP over gloo."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.train.conftest import CONFIGS, ROOT, write_overlay
from tests.train.test_lalm import CONFIGS as LALM_CONFIGS
from tests.train.test_lalm import _tiny_parts, lalm_data  # noqa: F401 (a fixture)

NODES = 2
TIMEOUT = int(os.environ.get("MULTINODE_TIMEOUT", 300))  # s per node


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_nodes(args: list[str], cwd: Path) -> list[dict]:
    """``python -m train …`` once per node, as a cluster's job script would start it; each rank's record."""
    port = _free_port()
    procs = []
    for node in range(NODES):
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
        env.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), NODE_RANK=str(node), WORLD_SIZE=str(NODES))
        for var in ("CUDA_VISIBLE_DEVICES", "LOCAL_RANK", "RANK", "SLURM_JOB_ID", "SLURM_NTASKS"):
            env.pop(var, None)
        command = [sys.executable, "-m", "train", *args, "--trainer.num_nodes", str(NODES)]
        command += ["--trainer.devices", "1", "--trainer.strategy", "ddp", "--trainer.enable_progress_bar", "false"]
        procs.append(
            subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        )
    outputs = []
    try:
        for proc in procs:
            outputs.append(proc.communicate(timeout=TIMEOUT)[0])
    except subprocess.TimeoutExpired:
        for proc in procs:
            proc.kill()
        logs = [proc.communicate()[0] for proc in procs]
        pytest.fail("a node hung:\n" + "\n".join(f"node {n}:\n{log[-3000:]}" for n, log in enumerate(logs)))
    for node, (proc, out) in enumerate(zip(procs, outputs)):
        assert proc.returncode == 0, f"node {node}:\n{out[-4000:]}"
    return [json.loads((cwd / "ranks" / f"rank{r}.json").read_text()) for r in range(NODES)]


def _check(ranks: list[dict], steps: int) -> None:
    assert [(r["rank"], r["node_rank"]) for r in ranks] == [(0, 0), (1, 1)]
    for r in ranks:
        assert r["num_nodes"] == NODES and r["world_size"] == NODES
        assert r["global_step"] == steps and r["batches"] == steps
    # DDP kept the replicas equal: the gradients were averaged across the nodes.
    assert ranks[0]["trainable_sum"] == pytest.approx(ranks[1]["trainable_sum"], rel=1e-6)


def test_clap_app_on_two_nodes(tiny_data, tmp_path):
    record = {"class_path": "tests.train.helpers.RecordRank", "init_args": {"folder": str(tmp_path / "ranks")}}
    overlay = write_overlay(tmp_path / "record.yaml", [record])
    args = ["clap", "fit", "-c", str(CONFIGS / "tiny.yaml"), "-c", str(overlay)]
    args += ["--data.train_shards", str(tiny_data["shards"]), "--data.val_shards", str(tiny_data["shards"])]
    args += ["--data.resampled", "true", "--data.batch_size", "2", "--trainer.max_steps", "3"]
    _check(_run_nodes(args, tmp_path), steps=3)
    assert (tmp_path / "runs/tiny/checkpoints/last.ckpt").is_file()  # written by global rank 0


def test_lalm_app_on_two_nodes(lalm_data, tmp_path):  # noqa: F811 (the fixture)
    record = {"class_path": "tests.train.helpers.RecordRank", "init_args": {"folder": str(tmp_path / "ranks")}}
    overlay = write_overlay(tmp_path / "record.yaml", [record])
    llm = _tiny_parts()["llm"]
    llm["tokenizer"] = str(lalm_data["tokenizer"])
    args = ["lalm", "fit", "-c", str(LALM_CONFIGS / "tiny_stage1.yaml"), "-c", str(overlay)]
    args += ["--trainer.default_root_dir", str(tmp_path), "--model.export_dir", str(tmp_path / "stage1")]
    args += ["--model.model.init_args.llm", json.dumps(llm), "--data.resampled", "true"]
    # One validation shard for two ranks: each validates on all of it (a split would leave rank 1 without batches).
    args += ["--data.stage1_shards", str(lalm_data["stage1"]), "--data.val_shards", str(lalm_data["stage1"])]
    _check(_run_nodes(args, tmp_path), steps=2)
    assert (tmp_path / "stage1" / "lalm_config.json").is_file()  # exported once, by global rank 0
    (metrics,) = tmp_path.glob("runs/lalm-tiny/csv/version_*/metrics.csv")
    assert "val/loss" in metrics.read_text().splitlines()[0]  # the validation at step 2 ran and was logged
