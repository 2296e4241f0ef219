"""CPU kernels (``clapkit.accel``) against ``torch.compile`` of the plain torch path, same run, same work.

A kernel earns its place only if it beats what ``torch.compile`` makes of the stock code. Two comparisons:

* HTSAT-tiny audio tower (``clapkit.create_model("htsat-tiny")``, random weights), inference without grad in
  float32, log-mel included: ``clapkit.accel.htsat``'s fast forward (eager) vs ``torch.compile`` of
  transformers' own forward (``disable_fast_htsat``), with transformers' eager forward for reference.
* A float32 training step of the ``clapkit-small`` text tower (all-MiniLM-L6-v2, train mode, every parameter
  trainable): forward + backward of a batch of captions, eager with the oneDNN mode (``clapkit.accel.onednn``,
  what the tower runs) vs ``torch.compile`` of the tower with the mode off, with plain eager for reference.

``torch.compile`` uses inductor's ``mode`` (default ``"default"``) on the CPU (C++ codegen via gcc). Its first
call (tracing + code generation) is warm-up and reported separately as compile time; the other arms get one
warm-up call too. Timed calls alternate between the arms round by round, so machine noise hits them alike;
medians and ranges (min-max) over the rounds are reported, and the ratio is compiled median / kernel median
(> 1: the kernel is faster).

Run: ``HF_HUB_OFFLINE=1 python -m benchmarks.bench_accel [--clips 2] [--captions 16] [--rounds 7] [--threads 1]``.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import os
import statistics
import time
from collections.abc import Callable, Iterator

import torch
from torch._dynamo.utils import counters

import clapkit
from benchmarks.common import machine
from clapkit.accel import onednn
from clapkit.accel.htsat import disable_fast_htsat

#: Ten-word captions of the kind the demo embeds; 16 × ~14 tokens with [CLS]/[SEP].
CAPTIONS = [
    "a dog barks twice while a car passes on a wet road",
    "rain falls on a metal roof and thunder rolls far away",
    "a woman speaks softly over quiet piano music in a room",
    "birds sing at dawn and a door creaks open then shuts",
]


def _timed_rounds(arms: dict[str, Callable[[], object]], rounds: int) -> dict[str, list[float]]:
    """Wall times (s) of each arm, one call per arm per round, arms in turn."""
    times: dict[str, list[float]] = {name: [] for name in arms}
    for _ in range(rounds):
        for name, fn in arms.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return times


def _compile(fn: Callable[[], object]) -> dict[str, float]:
    """The compiled arm's first call: compile time (s), and graph breaks (0: one whole graph per pass)."""
    counters.clear()
    start = time.perf_counter()
    fn()
    return {"compile s": time.perf_counter() - start, "graph breaks": float(sum(counters["graph_break"].values()))}


@contextlib.contextmanager
def _onednn_off() -> Iterator[None]:
    """The plain ``F.linear`` path: ``onednn.available()`` reads False inside the block."""
    saved = onednn._AVAILABLE
    onednn._AVAILABLE = False
    try:
        yield
    finally:
        onednn._AVAILABLE = saved


def htsat_arms(clips: int, mode: str, seed: int) -> tuple[dict[str, Callable[[], object]], dict[str, float]]:
    """Inference arms over the same waves; returns them and the compile time / output agreement."""
    torch.manual_seed(seed)
    model = clapkit.create_model("htsat-tiny", pretrained=False).eval()
    fast = model.audio_tower
    stock = copy.deepcopy(fast)
    disable_fast_htsat(stock.model)
    compiled = torch.compile(stock, mode=mode)
    samples = model.config.audio.clip_samples
    wave = 0.1 * torch.randn(clips, samples, generator=torch.Generator().manual_seed(seed))

    def run(tower: torch.nn.Module) -> Callable[[], torch.Tensor]:
        @torch.no_grad()
        def call() -> torch.Tensor:
            return tower(wave).pooled

        return call

    arms = {"accel.htsat (eager)": run(fast), "stock, torch.compile": run(compiled), "stock eager": run(stock)}
    info = _compile(arms["stock, torch.compile"])
    ref = arms["stock eager"]()
    info["max |fast - stock|"] = float((arms["accel.htsat (eager)"]() - ref).abs().max())
    info["max |compiled - stock|"] = float((arms["stock, torch.compile"]() - ref).abs().max())
    return arms, info


def text_arms(captions: int, mode: str, seed: int) -> tuple[dict[str, Callable[[], object]], dict[str, float]]:
    """Training-step arms (forward + backward) of the MiniLM text tower on the same captions."""
    torch.manual_seed(seed)
    tower = clapkit.create_model("clapkit-small", pretrained=True).text_tower.train().requires_grad_(True)
    texts = [CAPTIONS[i % len(CAPTIONS)] for i in range(captions)]
    tokens = tower.tokenize(texts)
    ids, mask = tokens["input_ids"], tokens["attention_mask"]
    compiled = torch.compile(tower, mode=mode)

    def step(module: torch.nn.Module, use_onednn: bool) -> Callable[[], None]:
        def call() -> None:
            with contextlib.nullcontext() if use_onednn else _onednn_off():
                out = module(ids, mask)
                (out.pooled.square().mean() + out.sequence.square().mean()).backward()
            tower.zero_grad(set_to_none=True)

        return call

    arms = {
        "accel.onednn (eager)": step(tower, True),
        "plain, torch.compile": step(compiled, False),
        "plain eager": step(tower, False),
    }
    info = {**_compile(arms["plain, torch.compile"]), "tokens": float(ids.numel())}
    return arms, info


def _report(title: str, kernel: str, rival: str, arms: dict, info: dict[str, float], rounds: int) -> None:
    for fn in arms.values():
        fn()  # warm-up (the compiled arm's second call: no recompilation expected)
    times = _timed_rounds(arms, rounds)
    med = {name: statistics.median(t) for name, t in times.items()}
    print(f"\n| {title} | median s | range s | {rival} / arm |\n|---|---|---|---|")
    for name, t in times.items():
        print(f"| {name} | {med[name]:.3f} | {min(t):.3f}-{max(t):.3f} | {med[rival] / med[name]:.2f}× |")
    wins = sum(k < r for k, r in zip(times[kernel], times[rival]))
    print(f"\n{kernel} faster than {rival} in {wins} of {rounds} rounds; ", end="")
    print(", ".join(f"{k} {v:.3g}" for k, v in info.items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=2, help="10 s clips per HTSAT batch")
    parser.add_argument("--captions", type=int, default=16, help="captions per text-tower step")
    parser.add_argument("--rounds", type=int, default=7, help="timed rounds, arms alternating")
    parser.add_argument("--mode", default="default", help="torch.compile mode (default | max-autotune-no-cudagraphs)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", choices=["htsat", "text"], help="run one of the two comparisons")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"machine: {machine()}, torch threads {torch.get_num_threads()}, load average {os.getloadavg()[0]:.2f}")
    print(f"torch.compile mode={args.mode!r}, oneDNN available: {onednn.available()}")
    if args.only != "text":
        arms, info = htsat_arms(args.clips, args.mode, args.seed)
        title = f"HTSAT-tiny inference, {args.clips} × 10 s, fp32"
        _report(title, "accel.htsat (eager)", "stock, torch.compile", arms, info, args.rounds)
    if args.only != "htsat":
        arms, info = text_arms(args.captions, args.mode, args.seed)
        title = f"MiniLM text tower step (fwd + bwd), {args.captions} captions, fp32"
        _report(title, "accel.onednn (eager)", "plain, torch.compile", arms, info, args.rounds)
    print(f"\nload average at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
