"""The LALM training app: stage 1 and stage 2 (LoRA, replay) on a tiny Llama through ``python -m train lalm``,
resume from a checkpoint, and the exported adapter loaded back with ``clapkit.lalm.load``."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import ClassVar

import lightning.pytorch as pl
import pytest
import soundfile as sf
import torch
import webdataset as wds
import yaml

import clapkit.lalm
from tests.conftest import TINY_RATE, tone
from tests.lalm.conftest import make_tokenizer
from train.__main__ import main as train_main
from train.lalm import main

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "configs" / "lalm"


class RecordChanges(pl.Callback):
    """Which parameters changed between the start and the end of training (kept on the class)."""

    changed: ClassVar[list[str]] = []
    trainable: ClassVar[list[str]] = []
    before: ClassVar[dict[str, torch.Tensor]] = {}

    def on_train_start(self, trainer, pl_module) -> None:
        type(self).before = {n: p.detach().clone() for n, p in pl_module.model.named_parameters()}

    def on_train_end(self, trainer, pl_module) -> None:
        params = dict(pl_module.model.named_parameters())
        type(self).changed = sorted(n for n, p in params.items() if not torch.equal(p.detach(), self.before[n]))
        type(self).trainable = sorted(n for n, p in params.items() if p.requires_grad)


def _flac(seconds: float, freq: float) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, tone(freq, seconds, TINY_RATE), TINY_RATE, format="FLAC")
    return buf.getvalue()


def _write(path: Path, rows: list[tuple[str, list[bytes], list[dict[str, str]]]]) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    with wds.TarWriter(str(path / "conv-000000.tar")) as tar:
        for key, clips, turns in rows:
            sample = {"__key__": key, "json": json.dumps({"conversation": turns}).encode()}
            sample.update({"flac" if i == 0 else f"{i}.flac": c for i, c in enumerate(clips)})
            tar.write(sample)
    return path


@pytest.fixture(scope="module")
def lalm_data(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("lalm_data")
    names = ["low tone", "high tone"]
    captions = [
        (f"c{i}", [_flac(0.5 + 0.25 * (i % 3), 200 + 300 * (i % 2))],
         [{"role": "user", "content": "<Audio>\nDescribe the sound."},
          {"role": "assistant", "content": f"A {names[i % 2]}."}])
        for i in range(6)
    ]  # fmt: skip
    qa = [
        (f"q{i}", [_flac(0.5, 200 + 300 * (i % 2)), _flac(1.5, 500)],
         [{"role": "user", "content": "<Audio> and <Audio>: what sound is this?"},
          {"role": "assistant", "content": f"First a {names[i % 2]}."}])
        for i in range(6)
    ]  # fmt: skip
    text = [
        (f"t{i}", [], [{"role": "user", "content": f"Say {i}."}, {"role": "assistant", "content": f"{i}."}])
        for i in range(4)
    ]
    tok = root / "tokenizer"
    make_tokenizer().save_pretrained(tok)
    return {
        "stage1": _write(root / "stage1", captions),
        "stage2": _write(root / "stage2", qa),
        "text": _write(root / "text", text),
        "tokenizer": tok,
    }


def _common(tmp_path: Path) -> list[str]:
    overlay = tmp_path / "overlay.yaml"
    callbacks = [{"class_path": "tests.train.test_lalm.RecordChanges"}]
    overlay.write_text(json.dumps({"trainer": {"callbacks": callbacks, "enable_progress_bar": False}}))
    return ["-c", str(overlay), "--trainer.default_root_dir", str(tmp_path)]


def _tiny_parts() -> dict:
    """The build_lalm arguments of tiny_stage1.yaml."""
    model = yaml.safe_load((CONFIGS / "tiny_stage1.yaml").read_text())["model"]["model"]
    assert model["class_path"] == "train.lalm.LalmFromParts"
    return model["init_args"]


def _stage1_args(data: dict[str, Path], tmp_path: Path) -> list[str]:
    llm = _tiny_parts()["llm"]
    llm["tokenizer"] = str(data["tokenizer"])
    args = ["fit", "-c", str(CONFIGS / "tiny_stage1.yaml"), *_common(tmp_path)]
    args += ["--model.model.init_args.llm", json.dumps(llm), "--model.export_dir", str(tmp_path / "stage1")]
    return [*args, "--data.stage1_shards", str(data["stage1"]), "--data.val_shards", str(data["stage1"])]


def test_stage1_then_stage2_lora_then_load(lalm_data, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    # Stage 1 through the real entry point: only the projector moves.
    train_main(["lalm", *_stage1_args(lalm_data, tmp_path)])
    assert RecordChanges.changed and all(n.startswith("projector.") for n in RecordChanges.changed)
    assert all(n.startswith("projector.") for n in RecordChanges.trainable)
    assert set(RecordChanges.changed) == set(RecordChanges.trainable)
    stage1 = tmp_path / "stage1"
    assert (stage1 / "lalm_config.json").is_file() and not (stage1 / "lora").exists()
    assert (tmp_path / "checkpoints" / "stage1" / "last.ckpt").is_file()  # one checkpoint folder per stage

    # Stage 2 from the stage-1 adapter: LoRA + projector, with stage-1 and text-only replay.
    args = ["fit", "-c", str(CONFIGS / "tiny_stage2.yaml"), *_common(tmp_path)]
    args += ["--model.model.init_args.directory", str(stage1), "--model.export_dir", str(tmp_path / "stage2")]
    args += ["--data.stage2_shards", str(lalm_data["stage2"]), "--data.stage1_shards", str(lalm_data["stage1"])]
    args += ["--data.text_shards", str(lalm_data["text"])]
    cli = main(args)
    assert cli.trainer.global_step == 2 and cli.trainer.callback_metrics["train/loss"].isfinite()
    changed = RecordChanges.changed
    assert any("lora_B" in n for n in changed) and any(n.startswith("projector.") for n in changed)
    assert all("lora_" in n or n.startswith("projector.") for n in changed)  # base LLM and encoder frozen

    # The exported adapter loads and generates; its LoRA weights are the trained ones.
    model = clapkit.lalm.load(tmp_path / "stage2")
    trained = dict(cli.model.model.named_parameters())
    loaded = dict(model.named_parameters())
    lora_b = [n for n in trained if "lora_B" in n]
    assert lora_b and all(torch.equal(trained[n].detach(), loaded[n].detach()) for n in lora_b)
    clip = (tone(440, 1.0, TINY_RATE), TINY_RATE)
    reply = model.generate(clip, "What sound is this?", max_new_tokens=4)
    assert isinstance(reply, str)
    assert cli.model.model.generate(clip, "What sound is this?", max_new_tokens=4) == reply  # same greedy answer


def test_resume_stage1_from_a_checkpoint(lalm_data, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    main(_stage1_args(lalm_data, tmp_path))
    ckpts = tmp_path / "checkpoints" / "stage1"
    step1 = torch.load(ckpts / "epoch=0-step=1.ckpt", weights_only=True)
    # Checkpoints hold the trainable parameters only (the frozen encoder and LLM come back from the config).
    assert step1["state_dict"] and all(k.startswith("model.projector.") for k in step1["state_dict"])
    resumed = main([*_stage1_args(lalm_data, tmp_path), "--ckpt_path", str(ckpts / "epoch=0-step=1.ckpt")])
    assert resumed.trainer.global_step == 2
    restored = {f"model.{n}": p for n, p in RecordChanges.before.items() if n.startswith("projector.")}
    assert restored.keys() == step1["state_dict"].keys()
    assert all(torch.equal(p, step1["state_dict"][n]) for n, p in restored.items())
    assert RecordChanges.changed  # the second step trained the restored projector


def test_stage2_requires_lora_or_full_llm(lalm_data, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = [*_stage1_args(lalm_data, tmp_path), "--model.stage", "2"]
    with pytest.raises(ValueError, match="set model.lora"):
        main(args)


def test_model_arguments_are_checked_before_anything_is_built(lalm_data, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit):
        main([*_stage1_args(lalm_data, tmp_path), "--model.model.init_args.max_lenght", "64"])
    assert "max_lenght" in capsys.readouterr().err


RECIPES = ["llaso", "salmonn", "afcross"]


@pytest.mark.parametrize("recipe", RECIPES)
def test_recipes_stage2_dry_run(recipe, lalm_data, tmp_path, monkeypatch):
    """Each recipe's projector, stage-2 LoRA / full-LLM and replay settings, on the tiny encoder and a tiny Llama."""
    stage = 2
    monkeypatch.chdir(tmp_path)
    tiny = _tiny_parts()
    llm = {**tiny["llm"], "tokenizer": str(lalm_data["tokenizer"])}
    llm["config"] = {**llm["config"], "hidden_size": 36, "num_attention_heads": 2}  # 36 = 9 xattn heads × 4
    args = ["fit", "-c", str(CONFIGS / f"{recipe}.yaml"), *_common(tmp_path), "--trainer.fast_dev_run", "true"]
    args += ["--trainer.accelerator", "cpu", "--trainer.devices", "1", "--trainer.precision", "32-true"]
    args += ["--trainer.logger", "false", "--model.stage", str(stage), "--model.model.init_args.llm", json.dumps(llm)]
    args += ["--model.model.init_args.encoder", "htsat-tiny", "--model.model.init_args.encoder_pretrained", "false"]
    args += ["--model.model.init_args.encoder_overrides", json.dumps(tiny["encoder_overrides"])]
    args += ["--data.batch_size", "2", "--data.num_workers", "0", "--data.resampled", "false"]
    for name in ("stage1", "stage2", "text"):
        args += [f"--data.{name}_shards", str(lalm_data[name])]
    args += ["--data.val_shards", str(lalm_data["stage1"])]
    cli = main(args)
    assert cli.trainer.global_step == 1 and cli.trainer.callback_metrics["train/loss"].isfinite()
    counts = cli.model.counts
    assert counts["projector"] > 0 and (counts["llm"] > 0) == (stage == 2) and counts["encoder"] == 0
