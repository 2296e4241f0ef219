"""Training apps, run from a checkout: ``python -m train clap fit -c configs/clap/<name>.yaml``.

Thin Lightning apps over ``clapkit``: LightningModules, LightningDataModules over the WebDataset shard
reader, and a LightningCLI per app, configured by the YAML files under ``configs/``.
"""
