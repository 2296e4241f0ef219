"""Run the benchmarks one after another: ``python -m benchmarks [NAME ...]`` (``make bench`` runs all).

Each benchmark measures clapkit against a peer in the same run and prints a markdown table for
docs/benchmarks.md. Names: core, interop, losses, reader, train, index, service, lalm, compositional, accel,
scale.
The index benchmark (1M vectors) takes ~20 minutes on 2 cores and compositional trains 10 models; accel
spends most of its time in torch.compile (minutes per model on 2 busy cores).
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time

NAMES = ["core", "interop", "losses", "reader", "train", "index", "service", "lalm", "compositional", "accel", "scale"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", metavar="NAME", help=f"benchmarks to run (default all): {', '.join(NAMES)}")
    args = parser.parse_args()
    unknown = sorted(set(args.names) - set(NAMES))
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}; valid: {', '.join(NAMES)}")
    for name in args.names or NAMES:
        print(f"\n## {name}\n", flush=True)
        start = time.perf_counter()
        module = importlib.import_module(f"benchmarks.bench_{name}")
        sys.argv = [f"benchmarks.bench_{name}"]  # each benchmark parses its own defaults
        module.main()
        print(f"\n({name}: {time.perf_counter() - start:.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
