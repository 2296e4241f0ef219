"""Interop benchmark: one set of HTSAT-tiny weights embedded by clapkit, laion-clap and transformers, in one run.

A random laion-clap CLAP (HTSAT-tiny audio) is saved in LAION's checkpoint format and loaded by
``clapkit.load``; a transformers ``ClapModel`` receives the converted weights. Each side embeds the same batch of
16 ten-second 48 kHz clips in float32, decode-free, its own way:

- clapkit: ``ClapModel.encode_audio`` (torch log-mel front end + transformers' ``ClapAudioModel``),
- laion-clap: ``CLAP.get_audio_embedding`` (torchlibrosa front end + LAION's HTSAT),
- transformers: ``ClapFeatureExtractor`` (numpy, ``truncation="rand_trunc"``) + ``ClapModel.get_audio_features``.

The embeddings are compared (max abs difference) and the clips/s reported with ratios. Target: clapkit ≥ 1.5× the
faster of the two. ``--profile`` adds the top operators of clapkit's forward.

Run: ``python -m benchmarks.bench_interop [--repeats 3] [--batch 16] [--profile]``; prints markdown.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import sys
import tempfile
import types
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # importing laion-clap code otherwise hangs in HTTP retries

import numpy as np
import torch
from torch.nn import functional as F
from transformers import ClapConfig, ClapFeatureExtractor, ClapModel

import clapkit
from benchmarks.common import interleaved, machine

RATE = 48000  # Hz
SECONDS = 10
#: laion-clap's HTSAT-tiny config (``clap_module/model_configs/HTSAT-tiny.json``) with a one-layer text branch.
LAION_AUDIO = {
    "audio_length": 1024,
    "clip_samples": RATE * SECONDS,
    "mel_bins": 64,
    "sample_rate": RATE,
    "window_size": 1024,
    "hop_size": 480,
    "fmin": 50,
    "fmax": 14000,
    "class_num": 527,
    "model_type": "HTSAT",
    "model_name": "tiny",
}
LAION_TEXT = {
    "context_length": 77,
    "vocab_size": 49408,
    "width": 64,
    "heads": 1,
    "layers": 1,
    "model_type": "transformer",
}


def laion_clap_model_module() -> types.ModuleType:
    """``laion_clap.clap_module.model`` without ``laion_clap/__init__.py`` (its training pipeline needs pandas)."""
    spec = importlib.util.find_spec("laion_clap")
    if spec is None:
        raise SystemExit("bench_interop: laion-clap is not installed (pip install --no-deps laion-clap==1.1.7)")
    saved = sys.modules.get("laion_clap")
    package = types.ModuleType("laion_clap")
    package.__path__ = list(spec.submodule_search_locations)
    sys.modules["laion_clap"] = package
    try:
        return importlib.import_module("laion_clap.clap_module.model")
    finally:
        if saved is None:
            sys.modules.pop("laion_clap", None)
        else:
            sys.modules["laion_clap"] = saved


def laion_model(seed: int = 0) -> torch.nn.Module:
    """A laion-clap HTSAT-tiny CLAP with random weights and BatchNorm statistics (not LAION's init defaults)."""
    torch.manual_seed(seed)
    model = laion_clap_model_module().CLAP(embed_dim=768, audio_cfg=LAION_AUDIO, text_cfg=LAION_TEXT)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "extractor" not in name:  # STFT / mel kernels stay as laion-clap computed them
                param.add_(torch.randn(param.shape, generator=gen) * 0.02)
        bn = model.audio_branch.bn0
        bn.running_mean.normal_(0.0, 1.0, generator=gen)
        bn.running_var.uniform_(0.5, 2.0, generator=gen)
    return model.eval()


def transformers_twin(model: clapkit.ClapModel) -> tuple[ClapModel, ClapFeatureExtractor]:
    """A transformers ClapModel with the converted HTSAT + audio projection, and its feature extractor."""
    config = ClapConfig(audio_config=model.audio_tower.hf_config.to_dict(), projection_dim=model.embed_dim)
    twin = ClapModel(config).eval()
    twin.audio_model.load_state_dict(model.audio_tower.model.state_dict())
    twin.audio_projection.linear1.load_state_dict(model.audio_projection[0].state_dict())
    twin.audio_projection.linear2.load_state_dict(model.audio_projection[2].state_dict())
    mel = model.config.frontend
    extractor = ClapFeatureExtractor(
        frequency_min=mel.f_min, frequency_max=mel.f_max, truncation="rand_trunc", padding="repeatpad"
    )
    return twin, extractor


def clips(n: int) -> np.ndarray:
    """``n`` 10 s clips: noise plus a tone each [n, 480000]."""
    rng = np.random.default_rng(0)
    t = np.arange(RATE * SECONDS) / RATE
    tones = 0.2 * np.sin(2 * np.pi * np.linspace(200, 4000, n)[:, None] * t)
    return (tones + 0.05 * rng.standard_normal((n, RATE * SECONDS))).astype(np.float32)


def profile(fn, rows: int = 12) -> str:
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=16, help="clips per forward pass")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats (median reported)")
    parser.add_argument("--profile", action="store_true", help="also print the top operators of clapkit's forward")
    args = parser.parse_args()

    reference = laion_model()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "htsat-tiny.pt"
        torch.save({"epoch": 1, "name": "bench", "state_dict": reference.state_dict(), "optimizer": {}}, path)
        ours = clapkit.load(path)
    twin, extractor = transformers_twin(ours)
    x = clips(args.batch)
    wave = torch.from_numpy(x)

    @torch.inference_mode()
    def run_clapkit() -> torch.Tensor:
        return ours.encode_audio(wave)

    @torch.inference_mode()
    def run_laion() -> torch.Tensor:
        return reference.get_audio_embedding([{"waveform": w} for w in wave])

    @torch.inference_mode()
    def run_transformers() -> torch.Tensor:
        inputs = extractor(list(x), sampling_rate=RATE, return_tensors="pt")
        return F.normalize(twin.get_audio_features(**inputs).pooler_output, dim=-1)

    runs = {"clapkit": run_clapkit, "laion-clap": run_laion, "transformers": run_transformers}
    emb = {name: fn() for name, fn in runs.items()}
    times = interleaved(runs, repeats=args.repeats)
    fastest_peer = min(times["laion-clap"], times["transformers"])

    print(f"machine: {machine()}, threads {torch.get_num_threads()}; fp32, batch {args.batch} × {SECONDS} s")
    print("\n| HTSAT-tiny, same weights | clips/s | clapkit speed-up | max abs diff vs clapkit |\n|---|---|---|---|")
    for name in runs:
        diff = float((emb[name] - emb["clapkit"]).abs().max())
        print(f"| {name} | {args.batch / times[name]:.2f} | {times[name] / times['clapkit']:.2f}× | {diff:.1e} |")
    ratio = fastest_peer / times["clapkit"]
    print(f"\nclapkit vs the faster peer: {ratio:.2f}× (target ≥ 1.5×: {'met' if ratio >= 1.5 else 'NOT met'})")
    if args.profile:
        print("\nclapkit forward, top operators by self CPU time:\n")
        print(profile(run_clapkit))


if __name__ == "__main__":
    main()
