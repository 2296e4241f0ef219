import json

import pytest

from clapkit.cli import build_parser, main
from tests.data.conftest import make_records


def test_write_then_info_verify(tmp_path, capsys):
    records = make_records(tmp_path / "clips", 5)
    listing = tmp_path / "list.csv"
    rows = [f"{r.audio},{r.fields['captions'][0]}|{r.fields['captions'][1]},{r.fields['labels'][0]}" for r in records]
    listing.write_text("path,caption,label\n" + "\n".join(rows) + "\nclips/missing.wav,gone,x\n")
    out = tmp_path / "shards"
    argv = ["shards", "write", "--from", str(listing), "--out", str(out), "--sample-rate", "16000"]
    assert main([*argv, "--max-count", "2", "--workers", "0", "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "5 samples in 3 shards from 6 inputs" in printed and "skipped 1 inputs" in printed

    assert main(["shards", "info", str(out), "--verify", "--workers", "0", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["samples"] == 5 and info["shards"] == 3 and info["skipped_inputs"] == 1 and info["complete"]
    assert info["verify"]["samples"] == 5 and info["verify"]["shard_errors"] == 0

    (out / "shard-000001.tar").write_bytes((out / "shard-000001.tar").read_bytes()[:1000])
    assert main(["shards", "info", str(out), "--verify", "--workers", "0"]) == 1  # a damaged shard is reported
    assert "shard_errors=1" in capsys.readouterr().out


def test_errors_and_help(tmp_path, capsys):
    assert main(["shards", "info", str(tmp_path)]) == 2
    assert "no shard manifest" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        build_parser().parse_args(["shards", "write", "--from", "x", "--out", "y", "--sample-rate", "fast"])
    with pytest.raises(SystemExit):
        build_parser().parse_args(["shards", "write", "--help"])
    assert "ShardWriter" in capsys.readouterr().out
