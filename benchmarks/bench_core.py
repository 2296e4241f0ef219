"""Core library benchmarks (issue: core encoder library).

1. Front end: clapkit's LAION preset (torchaudio, batched) vs transformers' ClapFeatureExtractor on the same
   64 ten-second 48 kHz clips. Target ≥ 3×.
2. Audio embedding end to end, decode-free, batch 16 of 10 s clips, HTSAT-tiny with the SAME weights:
   clapkit ``encode_audio`` vs transformers ``ClapFeatureExtractor`` + ``ClapModel.get_audio_features``.
   Targets: fp32 ≥ 1.2×; bf16 autocast ≥ 15 clips/s with cosine ≥ 0.999 to fp32.

The weights are random (seeded), with the parts a fresh model leaves trivial made trained-like: the input
BatchNorm gets per-mel-bin statistics of the clips' log-mel (perturbed) and a random affine, and the
relative-position bias tables (zeros at init) get N(0, 1) entries, so attention is not uniform.

Run: ``python -m benchmarks.bench_core [--clips 64] [--repeats 3] [--threads 1] [--seed 0]``; prints markdown.
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch
from transformers import ClapConfig, ClapFeatureExtractor, ClapModel

import clapkit
from benchmarks.common import interleaved, machine
from clapkit.features import LAION_PRESET, LogMel

RATE = 48000  # Hz
SECONDS = 10


def clips(n: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    return (0.1 * rng.standard_normal((n, RATE * SECONDS))).astype(np.float32)


def hf_twin(model: clapkit.ClapModel) -> tuple[ClapModel, ClapFeatureExtractor]:
    """A transformers ClapModel carrying the same HTSAT and audio projection weights as ``model``."""
    audio_cfg = model.audio_tower.hf_config.to_dict()
    config = ClapConfig(audio_config=audio_cfg, projection_dim=model.embed_dim)
    hf = ClapModel(config).eval()
    hf.audio_model.load_state_dict(model.audio_tower.model.state_dict())
    proj = model.audio_projection
    hf.audio_projection.linear1.load_state_dict(proj[0].state_dict())
    hf.audio_projection.linear2.load_state_dict(proj[2].state_dict())
    fe = ClapFeatureExtractor(frequency_min=50, frequency_max=14000, truncation="rand_trunc", padding="repeatpad")
    return hf, fe


def randomize(model: clapkit.ClapModel, wave: torch.Tensor, seed: int) -> None:
    """Give the HTSAT tower trained-like BatchNorm statistics and relative-position biases (in place)."""
    tower = model.audio_tower
    encoder = tower.model.audio_encoder
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        mel = tower.frontend(wave)  # [B, frames, n_mels]
        norm, bins = encoder.batch_norm, mel.shape[-1]
        norm.running_mean.copy_(mel.mean(dim=(0, 1)) + 2.0 * torch.randn(bins, generator=generator))
        norm.running_var.copy_(mel.var(dim=(0, 1)) * torch.empty(bins).uniform_(0.5, 2.0, generator=generator))
        norm.weight.copy_(1.0 + 0.2 * torch.randn(bins, generator=generator))
        norm.bias.copy_(0.2 * torch.randn(bins, generator=generator))
        for name, param in tower.named_parameters():
            if "relative_position_bias_table" in name:
                param.copy_(torch.randn(param.shape, generator=generator))


def bench_front_end(x: np.ndarray, repeats: int) -> dict[str, float]:
    fe = ClapFeatureExtractor(frequency_min=50, frequency_max=14000, truncation="rand_trunc", padding="repeatpad")
    mel = LogMel(LAION_PRESET)
    wave = torch.from_numpy(x)

    def ours():
        with torch.inference_mode():
            for i in range(0, len(wave), 16):
                mel(wave[i : i + 16])

    def theirs():
        fe(list(x), sampling_rate=RATE, return_tensors="pt")

    return interleaved({"clapkit": ours, "transformers": theirs}, repeats=repeats)


def bench_embedding(x: np.ndarray, repeats: int, batch: int = 16, seed: int = 0) -> dict[str, float]:
    torch.manual_seed(seed)
    model = clapkit.create_model("htsat-tiny", pretrained=False).eval()
    wave = torch.from_numpy(x[:batch])
    randomize(model, wave, seed)
    hf, fe = hf_twin(model)

    @torch.inference_mode()
    def ours(dtype=None):
        with torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None):
            return model.encode_audio(wave).float()

    @torch.inference_mode()
    def theirs(dtype=None):
        inputs = fe(list(x[:batch]), sampling_rate=RATE, return_tensors="pt")
        with torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None):
            out = hf.get_audio_features(**inputs)
        return torch.nn.functional.normalize(out.pooler_output.float(), dim=-1)

    ref, hf_emb, bf16, hf_bf16 = ours(), theirs(), ours(torch.bfloat16), theirs(torch.bfloat16)
    times = interleaved(
        {"clapkit fp32": ours, "transformers fp32": theirs, "clapkit bf16": lambda: ours(torch.bfloat16)},
        repeats=repeats,
    )
    # Plain dot products, as users compare embeddings: a cosine only while encode_audio's output is unit-norm.
    times["cos(clapkit, transformers)"] = float((ref * hf_emb).sum(-1).min())
    times["min cos(bf16, fp32)"] = float((ref * bf16).sum(-1).min())
    times["mean cos(bf16, fp32)"] = float((ref * bf16).sum(-1).mean())
    times["max |norm - 1| bf16"] = float((bf16.norm(dim=-1) - 1).abs().max())
    times["min cos(transformers bf16, fp32)"] = float((hf_emb * hf_bf16).sum(-1).min())
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=64, help="clips for the front-end benchmark")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats (median reported)")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: all cores; use 1 on a shared machine)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the random HTSAT-tiny weights")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    x = clips(args.clips)
    print(f"machine: {machine()}, threads {torch.get_num_threads()}")
    fe = bench_front_end(x, args.repeats)
    print("\n| front end, 64 × 10 s @ 48 kHz | seconds | ratio |\n|---|---|---|")
    print(f"| transformers ClapFeatureExtractor | {fe['transformers']:.2f} | 1.00 |")
    print(f"| clapkit LogMel (LAION preset) | {fe['clapkit']:.2f} | {fe['transformers'] / fe['clapkit']:.2f}× |")
    emb = bench_embedding(x, args.repeats, seed=args.seed)
    base = emb["transformers fp32"]
    print("\n| HTSAT-tiny, batch 16 × 10 s, decode-free | clips/s | ratio |\n|---|---|---|")
    for name in ("transformers fp32", "clapkit fp32", "clapkit bf16"):
        print(f"| {name} | {16 / emb[name]:.1f} | {base / emb[name]:.2f}× |")
    print(f"\nmin cosine clapkit vs transformers (fp32): {emb['cos(clapkit, transformers)']:.6f}")
    print(
        f"clapkit bf16 vs fp32: min cosine {emb['min cos(bf16, fp32)']:.6f}, mean {emb['mean cos(bf16, fp32)']:.6f}"
        f" (max |norm - 1| of the bf16 embeddings {emb['max |norm - 1| bf16']:.1e})"
    )
    print(f"transformers bf16 vs fp32 (normalised in fp32): min cosine {emb['min cos(transformers bf16, fp32)']:.6f}")


if __name__ == "__main__":
    main()
