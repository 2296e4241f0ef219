"""Side-by-side speed benchmarks against peers, measured in the same run (ratios, not absolute targets)."""
