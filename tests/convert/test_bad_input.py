"""Files that are not usable checkpoints: a clear ValueError naming the file, and nothing executed."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
import soundfile as sf
import torch
from torch import nn

import clapkit
from clapkit.convert import load_checkpoint


class _Payload:
    """Unpickling this runs ``open(marker, "w")``: what a malicious checkpoint would do."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_truncated_file(laion_tiny, tmp_path):
    data = laion_tiny[1].read_bytes()
    path = tmp_path / "630k-audioset-best.pt"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"630k-audioset-best\.pt: cannot read it .*truncated"):
        clapkit.load(path)


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_pickle_that_would_run_code_is_refused_unexecuted(tmp_path, zip_format):
    marker = tmp_path / "executed"
    # The payload is live: plain unpickling runs it.
    pickle.loads(pickle.dumps(_Payload(str(tmp_path / "proof")))).close()
    assert (tmp_path / "proof").exists()
    path = tmp_path / "evil.pt"
    state = {"state_dict": {"audio_projection.0.weight": torch.zeros(2)}, "hook": _Payload(str(marker))}
    torch.save(state, path, _use_new_zipfile_serialization=zip_format)
    with pytest.raises(ValueError, match=r"evil\.pt: refused to unpickle .*open"):
        load_checkpoint(path)
    assert not marker.exists()


def test_checkpoint_of_another_architecture(tmp_path):
    path = tmp_path / "resnet.pt"
    torch.save({"state_dict": nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)).state_dict()}, path)
    with pytest.raises(ValueError, match=r"resnet\.pt: not a LAION-CLAP checkpoint .*keys start with: 0\."):
        clapkit.load(path)
    pann = {"audio_branch.conv_block1.conv1.weight": torch.zeros(1), "audio_projection.0.weight": torch.zeros(1)}
    torch.save({"state_dict": pann}, tmp_path / "pann.pt")
    with pytest.raises(ValueError, match="not HTSAT"):
        clapkit.load(tmp_path / "pann.pt")


@pytest.mark.parametrize("kind", ["text", "wav", "empty", "list"])
def test_file_that_is_not_a_checkpoint(tmp_path, kind):
    path = tmp_path / f"not-a-model.{kind}"
    if kind == "text":
        path.write_text("epoch,loss\n1,0.5\n")
    elif kind == "wav":
        sf.write(path, np.zeros(1600, dtype=np.float32), 16000, format="WAV")
    elif kind == "empty":
        path.write_bytes(b"")
    else:
        torch.save([1, 2, 3], path)
    with pytest.raises(ValueError, match=rf"not-a-model\.{kind}: (cannot read it|not a) "):
        clapkit.load(path)


def test_missing_path_is_not_taken_for_a_checkpoint(tmp_path):
    with pytest.raises(ValueError, match="neither"):
        load_checkpoint(tmp_path / "nowhere.pt")
    assert not os.path.exists(tmp_path / "nowhere.pt")


def test_incomplete_laion_checkpoint(laion_tiny, tmp_path):
    state = {k: v for k, v in laion_tiny[0].state_dict().items() if not k.startswith("audio_branch.norm.")}
    torch.save({"state_dict": state}, tmp_path / "partial.pt")
    with pytest.raises(ValueError, match=r"partial\.pt: incomplete LAION-CLAP checkpoint, no audio_branch\.norm\."):
        load_checkpoint(tmp_path / "partial.pt")
