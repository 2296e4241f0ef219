"""Mixed precision on the CPU: bf16-mixed autocasts the forward pass; 16-mixed is refused with the way out.

The 16-mixed path itself (float16 autocast + ``torch.amp.GradScaler`` on a GPU) needs a GPU and is not run here.
"""

import json

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.plugins.precision import MixedPrecision

from tests.train.conftest import CONFIGS
from tests.train.test_cli import fast_dev_args
from train.clap import main


class AutocastSeen(pl.Callback):
    """Record, for every training forward of the audio projection, autocast's state and the output dtype."""

    def __init__(self) -> None:
        self.seen: list[tuple[bool, str, str]] = []

    def setup(self, trainer, pl_module, stage) -> None:
        def hook(module, args, out) -> None:
            if module.training:
                autocast = torch.is_autocast_enabled("cpu"), str(torch.get_autocast_dtype("cpu"))
                self.seen.append((*autocast, str(out.dtype)))

        pl_module.model.audio_projection.register_forward_hook(hook)


def test_bf16_mixed_autocasts_on_cpu(tiny_data, tmp_path, tiny_model_dir, monkeypatch):
    monkeypatch.chdir(tmp_path)
    overlay = tmp_path / "seen.json"
    overlay.write_text(json.dumps({"trainer": {"callbacks": [{"class_path": f"{__name__}.AutocastSeen"}]}}))
    args = fast_dev_args(CONFIGS / "tiny.yaml", tiny_data, tmp_path, tiny_model_dir)
    cli = main([*args, "-c", str(overlay), "--trainer.precision", "bf16-mixed"])
    plugin = cli.trainer.precision_plugin
    assert type(plugin) is MixedPrecision and plugin.device == "cpu" and plugin.scaler is None
    (seen,) = [c for c in cli.trainer.callbacks if isinstance(c, AutocastSeen)]
    assert seen.seen == [(True, "torch.bfloat16", "torch.bfloat16")]  # one training batch, under bf16 autocast
    assert cli.trainer.callback_metrics["train/loss"].isfinite()
    assert all(p.dtype == torch.float32 for p in cli.model.parameters())  # float32 master weights


@pytest.mark.parametrize("accelerator", ["cpu", "auto"])
def test_16_mixed_on_cpu_is_refused(accelerator, tiny_data, tmp_path, tiny_model_dir, monkeypatch):
    # Lightning itself would train in bf16-mixed with only a warning; the app stops before building anything.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # "auto" resolves to the CPU here
    args = fast_dev_args(CONFIGS / "tiny.yaml", tiny_data, tmp_path, tiny_model_dir)
    args += ["--trainer.accelerator", accelerator, "--trainer.precision", "16-mixed"]
    with pytest.raises(ValueError, match="16-mixed: float16 mixed precision needs a GPU.*precision: bf16-mixed"):
        main(args)
