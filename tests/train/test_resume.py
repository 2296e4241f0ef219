"""A run killed with SIGKILL resumes from its last checkpoint with ``--ckpt_path last`` and ends at max_steps."""

import csv
import signal
import time

import torch

import clapkit
from tests.train.conftest import CONFIGS, run_train, write_overlay

MAX_STEPS = 10


def read_metrics(folder):
    newest = max(folder.glob("version_*"), key=lambda p: int(p.name.split("_")[1]))
    with open(newest / "metrics.csv") as f:
        return list(csv.DictReader(f))


def test_sigkill_then_resume(tiny_data, tmp_path):
    slow = {"class_path": "tests.train.helpers.Sleep", "init_args": {"seconds": 0.25}}
    overlay = write_overlay(tmp_path / "slow.yaml", [slow])
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
    model = clapkit.load(tmp_path / "runs/tiny/model")  # exported with save_pretrained at the end
    state = {k.removeprefix("model."): v for k, v in final["state_dict"].items()}
    torch.testing.assert_close(model.state_dict()["logit_scale"], state["logit_scale"])
