"""clapkit.checkpoint: safetensors and weights-only pickles round trip; bad files name themselves; no code runs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from clapkit.checkpoint import load_state, read_safetensors, read_torch_state, weights_sha256, write_safetensors


class _Payload:
    """Unpickling this runs ``open(marker, "w")``: what a malicious checkpoint would do."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 3), nn.LayerNorm(3))


def test_safetensors_round_trip(tmp_path):
    net = _net()
    path = write_safetensors(net.state_dict(), tmp_path / "w.safetensors")
    state = read_safetensors(path)
    assert state.keys() == net.state_dict().keys()
    assert all(torch.equal(state[k], v) for k, v in net.state_dict().items())
    fresh = _net(seed=1)
    load_state(fresh, state, str(path))
    assert weights_sha256(fresh) == weights_sha256(net)


@pytest.mark.parametrize("layout", ["bare", "laion", "ddp"])
def test_torch_round_trip_in_every_layout(tmp_path, layout):
    state = _net().state_dict()
    saved = {
        "bare": state,
        "laion": {"epoch": 3, "state_dict": state, "metric": np.float64(0.9)},  # a numpy scalar is plain data
        "ddp": {f"module.{k}": v for k, v in state.items()},
    }[layout]
    torch.save(saved, tmp_path / "w.pt")
    loaded = read_torch_state(tmp_path / "w.pt")
    assert loaded.keys() == state.keys() and all(torch.equal(loaded[k], v) for k, v in state.items())


def test_corrupt_files_name_themselves(tmp_path):
    (tmp_path / "broken.safetensors").write_bytes(b"\x00" * 20)
    with pytest.raises(ValueError, match=r"broken\.safetensors: cannot read safetensors weights"):
        read_safetensors(tmp_path / "broken.safetensors")
    torch.save(_net().state_dict(), tmp_path / "cut.pt")
    data = (tmp_path / "cut.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"cut\.pt: cannot read it as a PyTorch checkpoint .*truncated"):
        read_torch_state(tmp_path / "cut.pt")
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(ValueError, match=r"list\.pt: not a model checkpoint: .*found list"):
        read_torch_state(tmp_path / "list.pt")


def test_pickle_that_needs_arbitrary_objects_is_refused_unexecuted(tmp_path):
    marker = tmp_path / "executed"
    torch.save({"state_dict": _net().state_dict(), "hook": _Payload(str(marker))}, tmp_path / "evil.pt")
    with pytest.raises(ValueError, match=r"evil\.pt: refused to unpickle .*open"):
        read_torch_state(tmp_path / "evil.pt")
    assert not marker.exists()


def test_load_state_reports_every_kind_of_mismatch():
    net = _net()
    state = dict(net.state_dict())
    state["0.weight"] = torch.zeros(2, 2)
    del state["1.bias"]
    state["extra"] = torch.zeros(1)
    with pytest.raises(ValueError) as err:
        load_state(net, state, "w.safetensors")
    text = str(err.value)
    assert text.startswith("w.safetensors: weights do not match")
    assert "missing keys: 1.bias" in text and "unexpected keys: extra" in text and "shape mismatch 0.weight" in text


def test_weights_hash_follows_in_place_changes():
    net = _net()
    before = weights_sha256(net)
    assert weights_sha256(net) == before
    with torch.no_grad():
        net[0].weight.add_(1.0)
    assert weights_sha256(net) != before
