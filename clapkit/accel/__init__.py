"""Speed-ups that leave the numbers alone: CPU kernels and the autocast context the model code shares.

- ``onednn``: float32 linear layers on the CPU as oneDNN inner products (``OneDnnLinear``, ``onednn_linears``).
- ``htsat``: a faster forward for transformers' HTSAT encoder (``enable_fast_htsat``), same parameters and
  outputs.
- ``precision``: ``autocast(device, dtype)``, autocast or nothing.

Each kernel stays only while it beats ``torch.compile`` of the plain torch path on the same work
(``python -m benchmarks accel``; docs/benchmarks.md, "CPU kernels against torch.compile"). Submodules are
imported where they are used, so importing this package costs nothing.
"""
