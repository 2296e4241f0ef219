"""What gets indexed: inputs expanded into files and shards, shard clips, tar member reads."""

from __future__ import annotations

import pytest
import soundfile as sf

from clapkit.index.sources import expand_inputs, iter_shard, read_member
from tests.conftest import TINY_RATE, tone
from tests.index.conftest import make_shard


def test_inputs_are_expanded_and_checked(tmp_path):
    (tmp_path / "a").mkdir()
    sf.write(tmp_path / "a" / "x.flac", tone(440, 0.1, TINY_RATE), TINY_RATE)
    make_shard(tmp_path / "a" / "s.tar", [("k", 440, "tone")])
    (tmp_path / "notes.txt").write_text("hi")
    files, shards = expand_inputs([tmp_path / "a", tmp_path / "a" / "x.flac"])
    assert files == [str(tmp_path / "a" / "x.flac")] and shards == [str(tmp_path / "a" / "s.tar")]
    with pytest.raises(ValueError, match="notes.txt: not an audio file"):
        expand_inputs([tmp_path / "notes.txt"])
    with pytest.raises(ValueError, match="no such file or folder"):
        expand_inputs([tmp_path / "missing"])
    clips = list(iter_shard(tmp_path / "a" / "s.tar"))
    assert [c.member for c in clips] == ["k.flac"] and clips[0].entry()["captions"] == ["tone"]
    assert read_member(tmp_path / "a" / "s.tar", "k.flac") == clips[0].data
    with pytest.raises(ValueError, match="no member"):
        read_member(tmp_path / "a" / "s.tar", "nope.flac")


def test_folders_named_like_files_are_searched_not_indexed(tmp_path):
    sf.write(tmp_path / "x.wav", tone(440, 0.1, TINY_RATE), TINY_RATE)
    (tmp_path / "clips.wav").mkdir()  # a folder, not audio
    (tmp_path / "clips.wav" / "inner.flac").write_bytes((tmp_path / "x.wav").read_bytes())
    (tmp_path / "old.tar").mkdir()  # a folder, not a shard
    files, shards = expand_inputs([tmp_path])
    assert files == [str(tmp_path / "clips.wav" / "inner.flac"), str(tmp_path / "x.wav")] and shards == []
