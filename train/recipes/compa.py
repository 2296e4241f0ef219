"""CompA (Ghosh et al., ICLR 2024): the three-stage curriculum, each stage evaluated.

1. ``vanilla`` — contrastive pre-training (InfoNCE) on every caption;
2. ``hardneg`` — from stage 1's model: compositional hard negatives (the scene's events swapped, relations and
   attribute bindings changed, the counterfactual audio) in the denominator (loss ``compa_hardneg``);
3. ``modular`` — from stage 2's model: modular multi-positive contrastive learning (paraphrase positives averaged
   in the numerator, hard negatives in the denominator; loss ``compa_modular``).

After each stage the exported model is scored on zero-shot classification, text↔audio retrieval, CompA-order and
CompA-attribute (held-out class pairs and phrasings), so the table shows what each stage adds.
"""

from __future__ import annotations

from typing import Any

from train.recipes.base import RecipeContext, clap_stage, write_results
from train.recipes.clap_data import clap_data, eval_sets

__all__ = ["STAGES", "run"]

#: The curriculum, in order; each stage starts from the previous stage's exported model.
STAGES = ("vanilla", "hardneg", "modular")


def run(ctx: RecipeContext) -> dict[str, Any]:
    """Data, then the three stages; returns ``{"data": …, <stage>: {model, config, train, eval}}``."""
    stages = ctx.config.get("stages") or {}
    unknown = sorted(set(stages) - set(STAGES))
    if unknown or not all(s in stages for s in STAGES):
        raise ValueError(f"compa: stages {sorted(stages)}; expected exactly {', '.join(STAGES)} (unknown: {unknown})")
    data = clap_data(ctx)
    out: dict[str, Any] = {"data": data}
    previous = None
    for name in STAGES:
        paths = {"data.train_shards": data["train_shards"], "data.val_shards": data.get("val_shards")}
        if previous is not None:
            paths["model.init_from"] = previous["model"]
        out[name] = previous = clap_stage(
            ctx, name, stages[name], paths=paths, eval_sets=lambda: eval_sets(data["eval"])
        )
    out["table"] = write_results(ctx)
    return out
