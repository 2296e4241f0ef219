"""Tiny shards, held-out evaluation sets and a saved tiny model for the training-app tests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import soundfile as sf

from clapkit.data.inputs import InputRecord
from clapkit.data.writer import WriterConfig, write_shards
from tests.conftest import TINY_OVERRIDES, TINY_RATE, tone

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "configs" / "clap"


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> dict[str, Path]:
    """12 tone clips in 3 shards (captions, a positive, two negatives each; counterfactual audio for 8 of them) and
    held-out sets built on them."""
    root = tmp_path_factory.mktemp("tiny_data")
    clips = root / "clips"
    (root / "counterfactuals").mkdir()
    records = []
    for i in range(12):
        cls = "high_tone" if i % 2 else "low_tone"
        (clips / cls).mkdir(parents=True, exist_ok=True)
        path = clips / cls / f"c{i}.wav"
        sf.write(path, tone(200 + 150 * i, 0.75 + 0.25 * (i % 3), TINY_RATE), TINY_RATE)
        fields = {
            "captions": [f"a tone number {i}", f"a {cls.replace('_', ' ')}"],
            "positives": [f"tone {i}"],
            "negatives": [f"silence {i}", f"noise {i}"][: 1 + i % 2],  # 1 or 2: padded per batch
        }
        if i % 3:  # audio negatives for the losses that take them; some samples have none
            counterfactual = root / "counterfactuals" / f"c{i}.wav"
            sf.write(counterfactual, tone(2000 - 100 * i, 0.5, TINY_RATE), TINY_RATE)
            fields["counterfactual_audio"] = str(counterfactual)
        records.append(InputRecord(str(path), fields))
    write_shards(records, root / "shards", WriterConfig(sample_rate=TINY_RATE, max_count=4), progress=False)
    rows = ["path,caption"] + [f"{r.audio},{c}" for r in records[:6] for c in r.fields["captions"]]
    (root / "retrieval.csv").write_text("\n".join(rows) + "\n")
    head = "pair_caption,reversed_pair_caption,triplet_caption,pair_file,reversed_pair_file,triplet_file\n"
    rows = [f"tone {i} then more,more then tone {i},-,{records[i].audio},{records[i + 1].audio},-" for i in (0, 2, 4)]
    compa = head + "\n".join(rows) + "\n"
    (root / "compa.csv").write_text(compa)
    return {"shards": root / "shards", "clips": clips, "retrieval": root / "retrieval.csv", "compa": root / "compa.csv"}


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tiny_model) -> Path:
    return tiny_model.save_pretrained(tmp_path_factory.mktemp("init") / "tiny")


def tiny_overrides() -> str:
    return json.dumps(TINY_OVERRIDES)


def run_train(args: list[str], cwd: Path) -> subprocess.Popen:
    """Start ``python -m train …`` from the checkout root (so ``train`` and ``tests`` import), cwd ``cwd``."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    env.pop("CUDA_VISIBLE_DEVICES", None)
    command = [sys.executable, "-m", "train", *args]
    return subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def write_overlay(path: Path, callbacks: list[dict]) -> Path:
    """A YAML overlay (JSON is YAML) that adds callbacks to ``trainer.callbacks``."""
    path.write_text(json.dumps({"trainer": {"callbacks": callbacks}}))
    return path


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 300.0) -> None:
    """Poll until ``path`` exists while ``proc`` (a recipe or training run) works towards it; fail, with the run's
    output, if it ends first, and kill it if ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(
                f"the recipe ended (exit {proc.returncode}) before {path} appeared:\n{proc.stdout.read()}"
            )
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"{path} did not appear in {timeout:.0f} s")
        time.sleep(0.05)


@pytest.fixture(scope="session")
def smollm2_folder(tmp_path_factory) -> Path:
    """SmolLM2-135M-Instruct from the packaged GGUF, saved once as a transformers folder: the same weights as
    ``llm: smollm2``, but each load in a recipe takes a second instead of the GGUF conversion's ~15 s."""
    from clapkit.lalm.io import load_llm

    folder = tmp_path_factory.mktemp("smollm2")
    llm, tokenizer = load_llm("smollm2", progress=False)
    llm.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
