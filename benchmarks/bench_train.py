"""Training throughput: the Lightning app (``train.clap``) vs laion-clap's own training step, same run.

One model (laion-clap's HTSAT-tiny + its CLIP-style "transformer" text branch, random weights, converted
to clapkit with ``clapkit.load``, so both sides hold the same weights), one batch of B ten-second 48 kHz
clips with captions, the same loss (InfoNCE / CLIP loss) and the same AdamW settings. Two steppers:

* clapkit: ``lightning.Trainer.fit`` of ``train.clap.ClapModule`` (float32, no logger or checkpoints),
  batches in the shard reader's format; the step tokenizes the captions itself.
* laion-clap: ``laion_clap.training.train.train_one_epoch`` — its loop, autocast policy, ``ClipLoss``,
  backward, optimizer step and logit-scale clamp — over the same batches, captions tokenized beforehand
  as its data pipeline does (so the tokenizer's time is counted on clapkit's side only).

A step's time is the gap between the starts of two consecutive steps (everything in the loop counts:
data hand-over, forward, loss, backward, optimizer, bookkeeping). The first step of each round is warmup.
Rounds alternate between the steppers so machine noise hits both alike; medians are reported.

Run: ``HF_HUB_OFFLINE=1 python -m benchmarks.bench_train [--batch 4] [--steps 4] [--rounds 3]``.
"""

from __future__ import annotations

import argparse
import itertools
import logging
import os
import statistics
import tempfile
import time
import types
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # importing laion-clap code otherwise hangs in HTTP retries

import lightning.pytorch as pl
import numpy as np
import torch

import clapkit
from benchmarks.common import machine
from train.clap import ClapModule
from train.optim import OptimConfig

RATE = 48000  # Hz
SECONDS = 10
LR, WD, BETAS, EPS = 1e-4, 0.1, (0.9, 0.99), 1e-9
#: laion-clap's HTSAT-tiny (clap_module/model_configs/HTSAT-tiny.json) with its 12-layer, 512-wide text branch.
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
    "width": 512,
    "heads": 8,
    "layers": 12,
    "model_type": "transformer",
}
CAPTIONS = [
    "A dog barks followed by a car horn honking.",
    "A baby cries while a woman laughs loudly.",
    "Rain falls as thunder rumbles in the distance.",
    "A train passes slowly as birds chirp nearby.",
]


def laion_modules():
    """laion-clap's model class, training step and tokenizer (its package puts ``clap_module`` on sys.path)."""
    import laion_clap  # noqa: F401  (adds laion_clap/ to sys.path, as its training scripts expect)
    from clap_module import CLAP, tokenize
    from laion_clap.training.train import train_one_epoch

    return CLAP, tokenize, train_one_epoch


def make_batches(n: int, batch: int) -> list[tuple[torch.Tensor, list[str]]]:
    rng = np.random.default_rng(0)
    t = np.arange(RATE * SECONDS) / RATE
    out = []
    for i in range(n):
        freqs = rng.uniform(200, 4000, size=(batch, 1))
        wave = 0.2 * np.sin(2 * np.pi * freqs * t) + 0.05 * rng.standard_normal((batch, RATE * SECONDS))
        out.append(
            (torch.from_numpy(wave.astype(np.float32)), [CAPTIONS[(i + j) % len(CAPTIONS)] for j in range(batch)])
        )
    return out


def now() -> tuple[float, float]:
    """(wall clock, CPU time of this process over all its threads)."""
    return time.perf_counter(), time.process_time()


class StepClock(pl.Callback):
    """Start time of every training step."""

    def __init__(self) -> None:
        self.starts: list[tuple[float, float]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.starts.append(now())

    def on_train_end(self, trainer, pl_module) -> None:
        self.starts.append(now())


def step_times(starts: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """(wall, CPU) seconds between consecutive step starts, without the first (warmup) step."""
    return [(y[0] - x[0], y[1] - x[1]) for x, y in itertools.pairwise(starts[1:])]


def run_clapkit(model: clapkit.ClapModel, batches) -> list[tuple[float, float]]:
    data = [{"audio": w, "lengths": torch.full((len(c),), w.shape[1]), "captions": c} for w, c in batches]
    optim = OptimConfig(lr=LR, weight_decay=WD, betas=BETAS, eps=EPS, warmup_steps=0, total_steps=10**6)
    module = ClapModule(model=model, loss="infonce", optimizer=optim)
    clock = StepClock()
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        precision="32-true",
        max_steps=len(data),
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[clock],
        default_root_dir=tempfile.mkdtemp(prefix="clapkit-bench-train-"),  # the end-of-fit export goes here
    )
    loader = torch.utils.data.DataLoader(data, batch_size=None, shuffle=False)
    trainer.fit(module, train_dataloaders=loader)
    return step_times(clock.starts)


class _Loader(list):
    num_batches: int
    num_samples: int


def run_laion(model: torch.nn.Module, batches, train_one_epoch, tokenize) -> list[tuple[float, float]]:
    data = [{"waveform": w, "longer": torch.zeros(len(c), dtype=torch.bool), "text": tokenize(c)} for w, c in batches]
    loader = _Loader(data)  # what train_one_epoch reads of a dataloader: iteration, num_batches, num_samples
    loader.num_batches, loader.num_samples = len(data), len(data) * len(batches[0][1])
    starts: list[tuple[float, float]] = []

    # laion-clap's optimizer grouping (training/main.py): no weight decay on gains, biases and logit scales.
    exclude = lambda n, p: p.ndim < 2 or "bn" in n or "ln" in n or "bias" in n or "logit_scale" in n  # noqa: E731
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        [
            {"params": [p for n, p in named if exclude(n, p)], "weight_decay": 0.0},
            {"params": [p for n, p in named if not exclude(n, p)], "weight_decay": WD},
        ],
        lr=LR,
        betas=BETAS,
        eps=EPS,
    )
    args = argparse.Namespace(
        device="cpu",
        precision="fp32",
        local_loss=False,
        gather_with_grad=False,
        rank=0,
        world_size=1,
        horovod=False,
        clap_mlploss=False,
        kappa=0,
        distributed=False,
        dataset_type="webdataset",
        wandb=False,
    )
    data_obj = {"train": types.SimpleNamespace(dataloader=loader, sampler=None)}
    # Its scheduler is called first thing in every step: the step clock.
    train_one_epoch(model, data_obj, 0, optimizer, None, lambda step: starts.append(now()), args)
    starts.append(now())
    return step_times(starts)


@torch.no_grad()
def same_loss(ours: clapkit.ClapModel, theirs: torch.nn.Module, batch, tokenize) -> tuple[float, float]:
    """Eval-mode InfoNCE of the first batch on both sides (dropout and SpecAugment off)."""
    from clapkit.losses import LOSSES

    wave, captions = batch
    ours.eval()
    theirs.eval()
    module = ClapModule(model=ours, loss="infonce")
    mine = LOSSES.get("infonce")()(
        **module.embed_batch({"audio": wave, "captions": captions}), logit_scale=ours.scale()
    )
    out = theirs({"waveform": wave, "longer": torch.zeros(len(captions), dtype=torch.bool)}, tokenize(captions), "cpu")
    audio, text, scale = out[0], out[1], out[4]
    logits = scale * audio @ text.T
    labels = torch.arange(len(captions))
    ref = (torch.nn.functional.cross_entropy(logits, labels) + torch.nn.functional.cross_entropy(logits.T, labels)) / 2
    ours.train()
    theirs.train()
    return float(mine["loss"]), float(ref)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=4, help="clips per step")
    parser.add_argument("--steps", type=int, default=4, help="timed steps per round (plus one warmup step)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds per stepper")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    logging.getLogger().setLevel(logging.ERROR)

    CLAP, tokenize, train_one_epoch = laion_modules()
    torch.manual_seed(0)
    theirs = CLAP(embed_dim=768, audio_cfg=LAION_AUDIO, text_cfg=LAION_TEXT)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "htsat-tiny.pt"
        torch.save({"epoch": 1, "state_dict": theirs.state_dict()}, path)
        ours = clapkit.load(path).train()
    batches = make_batches(args.steps + 1, args.batch)
    loss_ours, loss_theirs = same_loss(ours, theirs, batches[0], tokenize)

    times: dict[str, list[tuple[float, float]]] = {"clapkit (Lightning app)": [], "laion-clap train_one_epoch": []}
    for _ in range(args.rounds):
        times["clapkit (Lightning app)"] += run_clapkit(ours, batches)
        times["laion-clap train_one_epoch"] += run_laion(theirs, batches, train_one_epoch, tokenize)

    med = {k: (statistics.median(w for w, _ in v), statistics.median(c for _, c in v)) for k, v in times.items()}
    base = med["laion-clap train_one_epoch"]
    print(f"\nMachine: {machine()}; load average {os.getloadavg()[0]:.1f}")
    print(
        f"HTSAT-tiny + 12-layer text, {args.batch} × {SECONDS} s clips at {RATE} Hz per step, float32, "
        f"{args.rounds} rounds × {args.steps} timed steps; first-batch eval loss: clapkit {loss_ours:.5f}, "
        f"laion-clap {loss_theirs:.5f}\n"
    )
    print("| stepper | wall s / step | samples/s | speed-up (wall) | CPU s / step | speed-up (CPU) |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for name, (wall, cpu) in med.items():
        rate = args.batch / wall
        print(f"| {name} | {wall:.2f} | {rate:.3f} | {base[0] / wall:.2f}× | {cpu:.2f} | {base[1] / cpu:.2f}× |")


if __name__ == "__main__":
    main()
