"""A run killed with SIGKILL resumes from its last checkpoint with ``--ckpt_path last`` and ends at max_steps,
reading on from the epoch and batch where it stopped."""

import csv
import json
import signal
import time

import torch

import clapkit
from clapkit.data.reader import ShardReader
from tests.train.conftest import CONFIGS, TINY_RATE, run_train, write_overlay
from train.clap import ClapDataModule

MAX_STEPS = 10


def read_metrics(folder):
    newest = max(folder.glob("version_*"), key=lambda p: int(p.name.split("_")[1]))
    with open(newest / "metrics.csv") as f:
        return list(csv.DictReader(f))


def expected_batches(shards, epochs: int) -> list[list[str]]:
    """The sample keys of each training batch of tiny.yaml's data section, epoch after epoch."""
    data = ClapDataModule(
        train_shards=str(shards), batch_size=4, shuffle_buffer=8, shuffle_initial=4, audio={"sample_rate": TINY_RATE}
    )
    loader = ShardReader(shards, data.reader_config(train=True)).loader(num_workers=0)
    return [b["keys"] for _ in range(epochs) for b in loader]


def test_sigkill_then_resume(tiny_data, tmp_path):
    slow = {"class_path": "tests.train.helpers.Sleep", "init_args": {"seconds": 0.25}}
    record = {"class_path": "tests.train.helpers.RecordBatches", "init_args": {"path": str(tmp_path / "batches.jsonl")}}
    overlay = write_overlay(tmp_path / "slow.yaml", [slow, record])
    args = ["clap", "fit", "-c", str(CONFIGS / "tiny.yaml"), "-c", str(overlay)]
    args += ["--data.train_shards", str(tiny_data["shards"])]
    args += ["--trainer.max_steps", str(MAX_STEPS), "--trainer.enable_progress_bar", "false"]
    ckpts = tmp_path / "runs/tiny/checkpoints"

    first = run_train(args, cwd=tmp_path)
    deadline = time.monotonic() + 180
    while not list(ckpts.glob("*step=4.ckpt")):
        assert first.poll() is None, first.stdout.read()
        assert time.monotonic() < deadline, "no checkpoint at step 4"
        time.sleep(0.05)
    first.send_signal(signal.SIGKILL)
    first.wait()
    assert first.returncode == -signal.SIGKILL
    assert not (tmp_path / "runs/tiny/model").exists()  # killed before the export
    killed_at = torch.load(ckpts / "last.ckpt", weights_only=True)["global_step"]
    assert 2 <= killed_at < MAX_STEPS  # last.ckpt follows the step-4 file; the kill may land between them

    second = run_train([*args, "--ckpt_path", "last"], cwd=tmp_path)
    out, _ = second.communicate(timeout=240)
    assert second.returncode == 0, out
    assert "Restored all states from the checkpoint" in out

    final = torch.load(ckpts / "last.ckpt", weights_only=True)
    assert final["global_step"] == MAX_STEPS
    resumed = read_metrics(tmp_path / "runs/tiny/csv")  # the newest version dir is the resumed run's
    steps = sorted({int(r["step"]) for r in resumed if r["train/loss"]})
    assert steps[0] == killed_at and steps[-1] == MAX_STEPS - 1  # picks up where it stopped, no step twice
    assert any(r.get("samples/s") for r in resumed)
    assert {r["data/skipped"] for r in resumed if r.get("data/skipped")} == {"0.0"}  # the reader's skip count
    assert list((tmp_path / "runs/tiny/tensorboard").glob("version_*/events.out.tfevents.*"))
    # Both runs read the batches one uninterrupted run reads: the resumed one goes on in the epoch (12 clips =
    # 3 batches, so step 4 is in epoch 1) and at the batch where the checkpoint was taken, not at epoch 0.
    seen = [json.loads(line) for line in (tmp_path / "batches.jsonl").read_text().splitlines()]
    expected = expected_batches(tiny_data["shards"], epochs=4)
    assert expected[:3] != expected[3:6]  # epochs differ, so reading epoch 0 again would show
    resumed_steps = [r["step"] for r in seen if r["step"] >= killed_at][-(MAX_STEPS - killed_at) :]
    assert resumed_steps == list(range(killed_at, MAX_STEPS))
    for r in seen:
        assert r["keys"] == expected[r["step"]], r["step"]
        assert r["epoch"] == r["step"] // 3
    model = clapkit.load(tmp_path / "runs/tiny/model")  # exported with save_pretrained at the end
    state = {k.removeprefix("model."): v for k, v in final["state_dict"].items()}
    torch.testing.assert_close(model.state_dict()["logit_scale"], state["logit_scale"])
