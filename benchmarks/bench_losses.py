"""Step-time overhead of ``compa_hardneg`` (K = 3 hard-negative captions) over ``infonce`` at the same batch.

One training step = tokenize + text tower + audio tower forward, the loss, and backward (the optimizer
step is the same for both losses and left out). Rows, interleaved in one run:

* ``infonce``: B clips, B captions.
* ``compa_hardneg K=3``: the same B clips; B captions + 3·B hard negatives (rule-based, from
  ``clapkit.compose.hard_negatives``) encoded in ONE text-tower call, then split.
* ``compa_hardneg K=3, negatives without grad``: the negatives' text pass under ``torch.no_grad`` (a
  second, forward-only text call): the loss still pushes the audio away from them, but the text tower learns
  nothing from them — a cheaper, weaker variant a training loop could choose.
* ``compa_hardneg K=3 + counterfactual audio``: also one counterfactual clip per sample (Ka = 1) through the
  audio tower — the audio-side negatives option; informational, it is not what the target is about.

Models: ``htsat-tiny`` (everything trainable: HTSAT + 12-layer CLIP text) and ``clapkit-small`` (frozen
pretrained towers, trainable heads). The CLIP text tower runs only up to the longest caption of the call
(``clapkit.towers.clip_text``), so its ``context_length`` no longer changes the cost; ``--short-context``
still measures a CLIP-text model again with a shorter context.

Then the parts of a step, to tell the inherent cost from waste: the text tower (forward + backward) on B and
on B·(1 + K) captions, and the audio tower on the B clips. The K·B extra captions cost
``text(B·(1+K)) − text(B)``; over ``text(B) + audio(B)`` that is the overhead any implementation that trains
the text tower on the negatives pays.

Besides wall time, CPU seconds per step are reported: on a shared machine the wall clock depends on what
else runs, the CPU cost much less. Target: compa_hardneg ≤ 1.15 x infonce. Run:
``HF_HUB_OFFLINE=1 python -m benchmarks.bench_losses [--models htsat-tiny clapkit-small] [--batch 4] [--repeats 3]``
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

import clapkit
from benchmarks.common import machine
from clapkit.compose import hard_negatives
from clapkit.losses import LOSSES

K = 3  # hard negatives per caption
CAPTIONS = [
    "A dog barks followed by a car horn honking.",
    "A baby cries while a woman laughs loudly.",
    "A bell rings before a door slams shut.",
    "Rain falls as thunder rumbles in the distance.",
    "First a man speaks, then a phone rings, then a dog barks.",
    "A train passes slowly as birds chirp nearby.",
    "A cat meows after a door creaks open.",
    "A car engine revs loudly, then a siren wails softly.",
]


def batch_texts(batch: int) -> tuple[list[str], list[str]]:
    """B captions and their K hard negatives each (flattened, caption-major)."""
    captions = [CAPTIONS[i % len(CAPTIONS)] for i in range(batch)]
    negatives = []
    for i, caption in enumerate(captions):
        found = hard_negatives(caption, seed=i, max_negatives=K)
        if len(found) < K:
            raise ValueError(f"benchmark caption {caption!r}: only {len(found)} rule-based negatives, need {K}")
        negatives += found
    return captions, negatives


def make_step(
    model: clapkit.ClapModel,
    wave: torch.Tensor,
    captions: list[str],
    negatives: list[str] | None,
    counterfactual: torch.Tensor | None,
    negatives_grad: bool = True,
) -> Callable[[], float]:
    batch = len(captions)
    loss_fn = LOSSES.get("compa_hardneg" if negatives else "infonce")()

    def step() -> float:
        model.zero_grad(set_to_none=True)
        if negatives and not negatives_grad:
            with torch.no_grad():
                frozen = model.encode_text(model.tokenize(negatives))  # [B·K, D]
            text = torch.cat([model.encode_text(model.tokenize(captions)), frozen])
        else:
            text = model.encode_text(model.tokenize(captions + (negatives or [])))  # [B (+ B·K), D]
        audio = model.encode_audio(wave if counterfactual is None else torch.cat([wave, counterfactual]))
        extra = {}
        if negatives:
            extra["negative_embeds"] = text[batch:].view(batch, K, -1)
        if counterfactual is not None:
            extra["audio_negative_embeds"] = audio[batch:, None]
        out = loss_fn(audio[:batch], text[:batch], model.scale(), **extra)
        out["loss"].backward()
        return out["loss"].item()

    return step


def timed(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, tuple[float, float]]:
    """Median (wall s, CPU s) per callable, run in turn after one warm-up round."""
    for fn in fns.values():
        fn()
    wall: dict[str, list[float]] = {k: [] for k in fns}
    cpu: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            w, c = time.perf_counter(), time.process_time()
            fn()
            wall[name].append(time.perf_counter() - w)
            cpu[name].append(time.process_time() - c)
    return {k: (statistics.median(wall[k]), statistics.median(cpu[k])) for k in fns}


def bench_model(
    name: str, batch: int, repeats: int, context: int | None = None
) -> list[tuple[str, float, float, float, float]]:
    torch.manual_seed(0)
    overrides = {"text_tower": {"params": {"context_length": context}}} if context else {}
    model = clapkit.create_model(name, pretrained=name == "clapkit-small", **overrides).train()
    if context:
        name = f"{name}, text context {context}"
    wave = 0.1 * torch.randn(batch, model.config.audio.clip_samples)
    counterfactual = wave.flip(1)
    captions, negatives = batch_texts(batch)
    fns = {
        "infonce": make_step(model, wave, captions, None, None),
        f"compa_hardneg K={K}": make_step(model, wave, captions, negatives, None),
        f"compa_hardneg K={K}, negatives without grad": make_step(model, wave, captions, negatives, None, False),
        f"compa_hardneg K={K} + counterfactual audio": make_step(model, wave, captions, negatives, counterfactual),
    }
    times = timed(fns, repeats)
    base_wall, base_cpu = times["infonce"]
    return [(f"{name}: {label}", wall, cpu, cpu / base_cpu, wall / base_wall) for label, (wall, cpu) in times.items()]


def bench_parts(name: str, batch: int, repeats: int) -> dict[str, float]:
    """CPU s (forward + backward) of the text tower on B and on B·(1+K) captions, and of the audio tower on B clips."""
    torch.manual_seed(0)
    model = clapkit.create_model(name, pretrained=name == "clapkit-small").train()
    wave = 0.1 * torch.randn(batch, model.config.audio.clip_samples)
    captions, negatives = batch_texts(batch)

    def backward(embeds: torch.Tensor) -> None:
        model.zero_grad(set_to_none=True)
        if embeds.requires_grad:  # frozen towers with frozen heads have nothing to train
            embeds.sum().backward()

    fns = {
        "text B": lambda: backward(model.encode_text(model.tokenize(captions))),
        "text B(1+K)": lambda: backward(model.encode_text(model.tokenize(captions + negatives))),
        "audio B": lambda: backward(model.encode_audio(wave)),
    }
    return {k: cpu for k, (_, cpu) in timed(fns, repeats).items()}


def bench_loss_only(batch: int, dim: int = 512, repeats: int = 50) -> dict[str, float]:
    """Forward + backward of the losses alone on precomputed embeddings (µs)."""
    g = torch.Generator().manual_seed(0)

    def unit(*shape):
        return torch.nn.functional.normalize(torch.randn(*shape, dim, generator=g), dim=-1).requires_grad_()

    audio, text, negs = unit(batch), unit(batch), unit(batch, K)
    scale = torch.tensor(10.0)
    infonce, hardneg = LOSSES.get("infonce")(), LOSSES.get("compa_hardneg")()
    fns = {
        "infonce": lambda: infonce(audio, text, scale)["loss"].backward(),
        f"compa_hardneg K={K}": lambda: hardneg(audio, text, scale, negative_embeds=negs)["loss"].backward(),
    }
    return {k: v[1] * 1e6 for k, v in timed(fns, repeats).items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["htsat-tiny", "clapkit-small"], help="registered model names")
    parser.add_argument("--batch", type=int, default=4, help="clips (and captions) per step")
    parser.add_argument("--repeats", type=int, default=3, help="timed steps per row (after one warm-up)")
    parser.add_argument(
        "--short-context", type=int, default=0, help="also run CLIP-text models with this context (0 = don't)"
    )
    args = parser.parse_args()
    print(f"machine: {machine()}; batch {args.batch}, K={K}, medians of {args.repeats}\n")
    print("| step | wall s | CPU s | CPU vs infonce | wall vs infonce |\n| --- | --- | --- | --- | --- |")
    runs = []
    for name in args.models:
        runs.append((name, None))
        if args.short_context and clapkit.get_model_config(name).text_tower.name == "clip":
            runs.append((name, args.short_context))
    for name, context in runs:
        for label, wall, cpu, cpu_ratio, wall_ratio in bench_model(name, args.batch, args.repeats, context):
            print(f"| {label} | {wall:.2f} | {cpu:.2f} | {cpu_ratio:.2f}x | {wall_ratio:.2f}x |", flush=True)
    print(f"\nparts of a step, forward + backward, CPU s (batch {args.batch}, K={K}):\n")
    print("| model | text, B captions | text, B·(1+K) captions | audio, B clips | extra captions / (text + audio) |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name in args.models:
        parts = bench_parts(name, args.batch, args.repeats)
        text, more, audio = parts["text B"], parts["text B(1+K)"], parts["audio B"]
        share = (more - text) / (text + audio)
        print(f"| {name} | {text:.3f} | {more:.3f} | {audio:.3f} | +{100 * share:.0f} % |", flush=True)
    loss_only = bench_loss_only(args.batch * 16)
    print(
        f"\nloss alone, batch {args.batch * 16}, D=512, fwd+bwd CPU µs: "
        + ", ".join(f"{k} {v:.0f}" for k, v in loss_only.items())
    )


if __name__ == "__main__":
    main()
