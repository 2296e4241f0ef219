"""``clapkit.lalm.load_llm``: the packaged SmolLM2 GGUF, and its loading bar."""

from __future__ import annotations

import io

import pytest
import torch
import transformers.modeling_gguf_pytorch_utils as gguf_utils
from transformers.utils import logging as hf_logging

from clapkit.lalm import load_llm
from clapkit.lalm.io import _gguf_progress

GGUF_BAR = "Converting and de-quantizing GGUF tensors"


@pytest.fixture
def progress_bars_on():
    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.enable_progress_bar()
    yield
    if not enabled:
        hf_logging.disable_progress_bar()


@pytest.mark.parametrize("progress", [False, None])
def test_gguf_bar_follows_progress_and_is_restored(progress, progress_bars_on):
    bar = gguf_utils.tqdm
    if progress is None:
        hf_logging.disable_progress_bar()  # None follows transformers' own switch
    with _gguf_progress(progress):
        assert gguf_utils.tqdm(range(2)).disable
    assert gguf_utils.tqdm is bar


def test_gguf_bar_is_ours_so_a_log_gets_lines(progress_bars_on):
    log = io.StringIO()
    with _gguf_progress(True):
        for _ in gguf_utils.tqdm(range(3), desc=GGUF_BAR, file=log):
            pass
    assert "\r" not in log.getvalue() and log.getvalue().splitlines()[-1].startswith(GGUF_BAR)


def test_smollm2_loads_offline_without_a_bar_when_asked(capfd, tmp_path):
    llm, tokenizer = load_llm("smollm2", progress=False)
    err = capfd.readouterr().err
    assert GGUF_BAR not in err
    assert llm.config.name_or_path == "smollm2"
    ids = tokenizer("What sound is this?", return_tensors="pt").input_ids
    with torch.inference_mode():
        logits = llm(ids).logits
    assert logits.shape[:2] == ids.shape and torch.isfinite(logits).all()
    # GGUF weights are dequantized on load: the model saves like any other (a fully fine-tuned LLM must).
    assert not llm.is_quantized
    llm.save_pretrained(tmp_path / "llm")
    from transformers import AutoModelForCausalLM

    back = AutoModelForCausalLM.from_pretrained(tmp_path / "llm")
    state = llm.state_dict()
    assert all(torch.equal(state[k], v) for k, v in back.state_dict().items())
