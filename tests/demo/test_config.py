"""The demo config through jsonargparse: the shipped file parses, unknown keys and bad values are refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from demo.__main__ import main, parser
from demo.config import ArmSection, DemoConfig, LalmStage2Section, load_config

ROOT = Path(__file__).resolve().parents[2]


def test_shipped_config_parses_into_the_dataclass_tree():
    config = load_config(ROOT / "configs" / "demo.yaml")
    assert isinstance(config, DemoConfig)
    assert set(config.train.arms) == {"infonce", "compa_hardneg"}
    assert all(isinstance(arm, ArmSection) for arm in config.train.arms.values())
    assert isinstance(config.lalm.stage2, LalmStage2Section) and config.lalm.enabled


def test_mapping_gets_the_class_defaults_only():
    config = load_config({"train": {"arms": {"a": {"loss": "infonce"}}}})
    assert config.out_dir == "runs/demo" and config.phrases == {} and not config.lalm.enabled


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        ({"bogus": 1}, "'bogus' is not accepted"),
        ({"train": {"arms": {"a": {"los": "infonce"}}}}, "'los' is not accepted"),
        ({"train": {"arms": {"a": {"loss": "infonce"}}, "caption_source": "some"}}, "caption_source"),
        ({"seed": "zero", "train": {"arms": {"a": {"loss": "infonce"}}}}, "seed"),
        ({}, "train.arms is empty"),
    ],
)
def test_bad_configs_are_refused(raw, match):
    with pytest.raises(ValueError, match=match):
        load_config(raw)


def test_missing_file_names_the_default(tmp_path):
    with pytest.raises(ValueError, match="configs/demo.yaml"):
        load_config(tmp_path / "nope.yaml")


def test_unknown_key_in_a_file_is_refused_by_the_cli(tmp_path, capsys):
    path = tmp_path / "demo.yaml"
    path.write_text((ROOT / "configs" / "demo.yaml").read_text() + "\nextra_key: 1\n")
    with pytest.raises(SystemExit) as exc:
        main(["-c", str(path)])
    assert exc.value.code != 0
    assert "extra_key" in capsys.readouterr().err


def test_command_line_keys_override_the_file():
    p = parser()
    parsed = p.parse_args(["-c", str(ROOT / "configs" / "demo.yaml"), "--train.steps", "7", "--fresh"])
    assert parsed.train.steps == 7 and parsed.fresh


def test_print_config_shows_the_resolved_config(capsys, monkeypatch):
    monkeypatch.chdir(ROOT)  # the default config is relative to the working directory, as for `make demo`
    with pytest.raises(SystemExit) as exc:
        main(["--print_config", "--seed", "3"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "seed: 3" in out and "compa_hardneg:" in out
