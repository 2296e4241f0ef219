"""A fast_dev_run of every config in configs/clap/ on tiny shards, in process."""

import json

import pytest
import yaml
from lightning.pytorch.callbacks import TQDMProgressBar

from clapkit.losses import LOSSES
from tests.conftest import TINY_OVERRIDES
from tests.train.conftest import CONFIGS
from train.__main__ import main as train_main
from train.callbacks import LogProgressBar
from train.clap import main

CONFIG_FILES = sorted(CONFIGS.glob("*.yaml"))


def fast_dev_args(config, data, tmp_path, tiny_model_dir) -> list[str]:
    """Keep the config's loss, optimizer and data options; swap hardware, data paths and the model size."""
    model = yaml.safe_load(config.read_text())["model"]
    args = ["fit", "-c", str(config), "--trainer.fast_dev_run", "true", "--trainer.accelerator", "cpu"]
    args += ["--trainer.devices", "1", "--trainer.num_nodes", "1", "--trainer.strategy", "auto"]
    args += ["--trainer.precision", "32-true", "--trainer.enable_progress_bar", "false"]
    args += ["--trainer.default_root_dir", str(tmp_path), "--checkpoint.dirpath", str(tmp_path / "ckpt")]
    args += ["--data.train_shards", str(data["shards"]), "--data.val_shards", str(data["shards"])]
    args += ["--data.batch_size", "4", "--data.num_workers", "0", "--model.export_dir", str(tmp_path / "model")]
    if model.get("init_from"):
        args += ["--model.init_from", str(tiny_model_dir)]
    elif model["model_name"] == "htsat-tiny":
        args += ["--model.pretrained", "false", "--model.model_overrides", json.dumps(TINY_OVERRIDES)]
    else:  # the real architecture, random weights, 1 s clips
        overrides = {"audio": {"clip_seconds": 1.0, "hop_seconds": 0.5}}
        args += ["--model.pretrained", "false", "--model.model_overrides", json.dumps(overrides)]
    return args


@pytest.mark.parametrize("config", CONFIG_FILES, ids=[c.stem for c in CONFIG_FILES])
def test_fast_dev_run_every_config(config, tiny_data, tmp_path, tiny_model_dir, monkeypatch):
    monkeypatch.chdir(tmp_path)  # relative paths of the config (runs/…) land here
    cli = main(fast_dev_args(config, tiny_data, tmp_path, tiny_model_dir))
    metrics = cli.trainer.callback_metrics
    assert cli.trainer.global_step == 1
    assert {"train/loss", "val/loss"} <= set(metrics) and metrics["train/loss"].isfinite()
    assert type(cli.model.loss_fn) is LOSSES.get(yaml.safe_load(config.read_text())["model"]["loss"])
    # Losses that take audio negatives get the shards' counterfactual audio; the others leave it unread.
    read = cli.datamodule.train_reader.stats.as_dict()["counterfactuals"]
    assert (read > 0) == ("audio_negatives" in cli.model.loss_fn.inputs)
    # data.augment (compa.yaml) reaches the training reader, and only it.
    augment = yaml.safe_load(config.read_text())["data"].get("augment")
    assert (cli.datamodule.train_reader.augmenter is not None) == (augment is not None)
    assert cli.datamodule.val_reader.augmenter is None
    assert not (tmp_path / "model").exists()  # a dry run exports nothing


def test_eval_suite_and_bf16_on_tiny(tiny_data, tmp_path, tiny_model_dir, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = fast_dev_args(CONFIGS / "tiny.yaml", tiny_data, tmp_path, tiny_model_dir)
    args += ["--trainer.precision", "bf16-mixed", "--eval.zeroshot", str(tiny_data["clips"])]
    args += ["--eval.retrieval", str(tiny_data["retrieval"]), "--eval.compositional", str(tiny_data["compa"])]
    metrics = main(args).trainer.callback_metrics
    for key in ("eval/zeroshot/top1", "eval/retrieval/text_to_audio_R@1", "eval/compositional/group_score"):
        assert key in metrics and 0.0 <= float(metrics[key]) <= 1.0
    assert float(metrics["eval/compositional/random_group_score"]) == pytest.approx(1 / 6)


def test_bad_config_values_are_named(tiny_data, tmp_path, tiny_model_dir, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = fast_dev_args(CONFIGS / "tiny.yaml", tiny_data, tmp_path, tiny_model_dir)
    with pytest.raises(KeyError, match="valid names: afclap, compa_hardneg"):
        main([*args, "--model.loss", "nope"])
    with pytest.raises(ValueError, match="no such retrieval file"):
        main([*args, "--eval.retrieval", str(tmp_path / "missing.csv")])


def test_dispatcher(capsys):
    assert train_main(["--help"]) == 0 and "clap" in capsys.readouterr().out
    assert train_main(["nope"]) == 2 and "valid apps" in capsys.readouterr().err


def test_progress_goes_to_logs_as_lines(tiny_data, tmp_path, tiny_model_dir, monkeypatch):
    """Under pytest stderr is captured, not a terminal: the app's trainer writes plain progress lines."""
    monkeypatch.chdir(tmp_path)
    args = fast_dev_args(CONFIGS / "tiny.yaml", tiny_data, tmp_path, tiny_model_dir)
    cli = main([*args, "--trainer.enable_progress_bar", "true"])
    assert type(cli.trainer.progress_bar_callback) is LogProgressBar
    cli = main([*args, "--trainer.enable_progress_bar", "true", "--trainer.callbacks+=TQDMProgressBar"])
    assert type(cli.trainer.progress_bar_callback) is TQDMProgressBar  # a bar the config names wins
