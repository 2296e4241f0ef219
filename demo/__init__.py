"""The demo app, run from a checkout: ``python -m demo [-c configs/demo.yaml] [--fresh]`` (``make demo``).

The main job end to end on real audio: a dataset harvested from Debian packages (``demo.datasets``), training
scenes and a held-out compositional benchmark, shards, stored frozen-tower features, two trained arms, the LALM
stage on the trained encoder, evaluation side by side with chance, and an index search. Each step is run by
``clapkit.steps.StepRunner``: a fingerprint of its inputs and a ``.done.json`` marker let the next run reuse it.
"""
