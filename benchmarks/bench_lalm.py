"""Stage-2 LoRA training throughput: the Lightning app (``train.lalm``) vs transformers' Trainer + peft, same run.

One model — clapkit-small (frozen, pretrained) → mlp2x_gelu → SmolLM2-135M-Instruct (the packaged GGUF,
dequantized to float32; ``--llm random`` uses a randomly initialised Llama of the same shape instead) with
peft LoRA (r 8, all linear layers), eager attention (``--attn``) — built once by ``train.lalm.build_lalm``,
wrapped in ``train.lalm.LalmModule`` and trained in turn by:

* clapkit: ``lightning.Trainer.fit`` of that ``LalmModule`` (its ``training_step``: the loss only, the LM head at
  answer positions; fused AdamW + warmup/cosine from ``train.optim``; gradient clipping 1.0; no logger or
  checkpoints).
* transformers: ``transformers.Trainer`` on the same ``AudioLanguageModel`` — its ``forward`` returns the LLM's
  output with full logits, as any transformers model does (``Trainer``); and, to isolate the loops, the same
  ``Trainer`` asking the model for the loss only (``return_logits=False``, the clapkit step's forward)
  (``Trainer, loss-only forward``). Both with Trainer's default fused AdamW, a linear schedule, gradient
  clipping 1.0, no logging or saving.

All get the same pre-collated batch of B conversations (a ``--seconds`` clip + a question and an answer each)
every step. A step's time is the gap between the starts of two consecutive steps (wall and CPU); the first step
of each round is warmup. Rounds alternate between the sides so machine noise hits all alike; medians are
reported. Tokens are the batch's text tokens (attention mask), the same for all.

Run: ``HF_HUB_OFFLINE=1 python -m benchmarks.bench_lalm [--llm smollm2|random] [--batch 4] [--steps 5] [--rounds 3]
[--threads 1]``.
"""

from __future__ import annotations

import argparse
import itertools
import logging
import os
import statistics
import tempfile
import time
import warnings

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from benchmarks.common import machine
from clapkit.lalm import BATCH_KEYS, ConversationSample
from train.lalm import LalmModule, build_lalm
from train.optim import OptimConfig

#: SmolLM2-135M's shape, for ``--llm random``.
SMOLLM2_SHAPE = {
    "model_type": "llama",
    "hidden_size": 576,
    "intermediate_size": 1536,
    "num_hidden_layers": 30,
    "num_attention_heads": 9,
    "num_key_value_heads": 3,
    "max_position_embeddings": 8192,
    "rope_theta": 100000.0,
    "tie_word_embeddings": True,
}
OURS, HF, HF_LOSS = "clapkit (Lightning)", "transformers Trainer + peft", "Trainer, loss-only forward"


class _Repeat(Dataset):
    """The same batch ``n`` times (one dataset item is one batch)."""

    def __init__(self, batch: dict, n: int) -> None:
        self.batch, self.n = batch, n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        return self.batch


def _now() -> tuple[float, float]:
    """(wall clock, CPU time of this process over all its threads)."""
    return time.perf_counter(), time.process_time()


class _StepClock(pl.Callback):
    def __init__(self) -> None:
        self.starts: list[tuple[float, float]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.starts.append(_now())

    def on_train_end(self, trainer, pl_module) -> None:
        self.starts.append(_now())


def _gaps(starts: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """(wall, CPU) seconds between consecutive step starts, without the first (warmup) step."""
    return [(b[0] - a[0], b[1] - a[1]) for a, b in itertools.pairwise(starts[1:])]


def run_lightning(module: LalmModule, batch: dict, steps: int) -> list[tuple[float, float]]:
    clock = _StepClock()
    trainer = pl.Trainer(
        accelerator="cpu", devices=1, precision="32-true", max_steps=steps, gradient_clip_val=1.0, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, callbacks=[clock],
        num_sanity_val_steps=0, default_root_dir=tempfile.mkdtemp(prefix="clapkit-bench-lalm-"),
    )  # fmt: skip
    loader = DataLoader(_Repeat(batch, steps), batch_size=None, shuffle=False)
    trainer.fit(module, train_dataloaders=loader)
    return _gaps(clock.starts)


def run_hf(module: LalmModule, batch: dict, steps: int, lr: float, loss_only: bool) -> list[tuple[float, float]]:
    from transformers import Trainer, TrainerCallback, TrainingArguments

    class Clock(TrainerCallback):
        def __init__(self) -> None:
            self.starts: list[tuple[float, float]] = []

        def on_step_begin(self, args, state, control, **kwargs):
            self.starts.append(_now())

        def on_train_end(self, args, state, control, **kwargs):
            self.starts.append(_now())

    clock = Clock()
    inputs = {k: batch[k] for k in BATCH_KEYS if k in batch}
    if loss_only:
        inputs["return_logits"] = False
    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(
            output_dir=out, per_device_train_batch_size=1, max_steps=steps, learning_rate=lr, weight_decay=0.0,
            max_grad_norm=1.0, logging_strategy="no", save_strategy="no", report_to=[], use_cpu=True,
            dataloader_num_workers=0, remove_unused_columns=False, disable_tqdm=True,
        )  # fmt: skip
        trainer = Trainer(
            model=module.model,
            args=args,
            train_dataset=_Repeat(inputs, steps),
            data_collator=lambda items: items[0],
            callbacks=[clock],
        )
        trainer.train()
    return _gaps(clock.starts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--llm", choices=["smollm2", "random"], default="smollm2", help="the real SmolLM2 or its shape")
    parser.add_argument("--batch", type=int, default=4, help="conversations per step")
    parser.add_argument("--seconds", type=float, default=5.0, help="clip length (s)")
    parser.add_argument("--steps", type=int, default=5, help="steps per round (the first is warmup)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per side, alternating")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default: %(default)s)")
    parser.add_argument("--attn", default="eager", help="the LLM's attention kernel (eager | sdpa)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    for name in ("lightning", "lightning.pytorch", "transformers"):
        logging.getLogger(name).setLevel(logging.ERROR)
    torch.manual_seed(0)

    llm = "smollm2" if args.llm == "smollm2" else {"config": SMOLLM2_SHAPE, "tokenizer": "smollm2"}
    lr = 2e-4
    start = time.perf_counter()
    model = build_lalm(
        encoder="clapkit-small", llm=llm, projector="mlp2x_gelu", projector_params={"downsample": 2},
        max_length=512, attn_implementation=args.attn,
    )  # fmt: skip
    module = LalmModule(
        model, stage=2, lora={"r": 8, "lora_alpha": 16, "lora_dropout": 0.0},
        optimizer=OptimConfig(lr=lr, weight_decay=0.0),
    )  # fmt: skip
    built = time.perf_counter() - start
    model = module.model
    rate = model.sample_rate
    rng = np.random.default_rng(0)
    samples = [
        ConversationSample(
            f"c{i}",
            [{"role": "user", "content": "<Audio>\nWhat sound is this, and what happens in the clip?"},
             {"role": "assistant", "content": "A dog barks twice in a yard while rain falls on a metal roof."}],
            [torch.from_numpy(rng.standard_normal(int(args.seconds * rate)).astype(np.float32) * 0.1)],
        )
        for i in range(args.batch)
    ]  # fmt: skip
    batch = model.collator()(samples)
    tokens = int(batch["attention_mask"].sum())
    counts = module.counts

    sides = {
        OURS: lambda: run_lightning(module, batch, args.steps),
        HF: lambda: run_hf(module, batch, args.steps, lr, loss_only=False),
        HF_LOSS: lambda: run_hf(module, batch, args.steps, lr, loss_only=True),
    }
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in sides}
    for _ in range(args.rounds):
        for name, run in sides.items():
            times[name] += run()

    print(f"machine: {machine()}, torch threads {torch.get_num_threads()}, load average {os.getloadavg()[0]:.2f}")
    name = "SmolLM2-135M-Instruct (GGUF → fp32)" if args.llm == "smollm2" else "random Llama of SmolLM2-135M's shape"
    print(
        f"model: clapkit-small (frozen) → mlp2x_gelu → {name} + LoRA r 8, {args.attn} attention; "
        f"trainable {counts}; built in {built:.0f} s"
    )
    print(f"batch: {args.batch} conversations × {args.seconds:g} s clip, {tokens} text tokens per step")
    walls = {k: statistics.median(w for w, _ in v) for k, v in times.items()}
    cpus = {k: statistics.median(c for _, c in v) for k, v in times.items()}
    print("| trainer | steps | wall ms/step (quartiles) | tokens/s | CPU ms/step | clapkit speed-up (wall) | (CPU) |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for side in sides:
        low, _, high = statistics.quantiles([w * 1000 for w, _ in times[side]], n=4)
        print(
            f"| {side} | {len(times[side])} | {walls[side] * 1000:.0f} ({low:.0f}–{high:.0f}) | "
            f"{tokens / walls[side]:.1f} | {cpus[side] * 1000:.0f} | {walls[side] / walls[OURS]:.2f}× | "
            f"{cpus[side] / cpus[OURS]:.2f}× |"
        )


if __name__ == "__main__":
    main()
