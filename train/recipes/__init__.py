"""The seed systems' recipes, chained end to end: ``python -m train recipe NAME --scale tiny|demo|full``.

A recipe is a list of stages (data, then one training run per stage of the paper's procedure, each evaluated);
each stage writes its model and results to its own folder under the run's ``out_dir`` and leaves a marker when it
finishes, so a rerun (after a crash, a kill, or with a later stage changed) resumes at the first unfinished stage
— and inside a training stage, from its last checkpoint. The settings of each scale are a YAML file in
``configs/recipes/NAME/SCALE.yaml``: ``tiny`` (seconds, synthetic audio; the tests), ``demo`` (the demo's real
audio, minutes on a CPU) and ``full`` (the paper's hyper-parameters, documented in the file).
"""

from __future__ import annotations

#: Recipe name → (module with ``run(ctx) -> dict``, one-line description).
RECIPES: dict[str, tuple[str, str]] = {
    "compa": (
        "train.recipes.compa",
        "CompA's curriculum: vanilla contrastive → compositional hard negatives → modular multi-positive",
    ),
    "afclap": (
        "train.recipes.afclap",
        "AF-CLAP: LLM paraphrase positives + composition negatives, then the encoder under gated cross-attention "
        "on minutes of audio",
    ),
    "llaso": (
        "train.recipes.llaso",
        "LLaSO: projector alignment, then instruction tuning on three modality layouts, scored with abstention",
    ),
    "forgetting": (
        "train.recipes.forgetting",
        "LALM stage 2 with and without replay, LoRA scaling and model merging; text QA kept vs audio task gained",
    ),
    "desta": (
        "train.recipes.desta",
        "DeSTA2: the LLM writes its own targets from clip metadata, then the adapter alone trains; text QA unchanged",
    ),
    "fullft": (
        "train.recipes.fullft",
        "SeaLLMs-Audio: projector alignment, then encoder + projector + whole LLM fine-tuned on two-turn "
        "conversations; text QA kept",
    ),
    "salmonn": (
        "train.recipes.salmonn",
        "SALMONN: window Q-Former alignment, then Q-Former + LoRA on spoken sentences (WER) and sound questions",
    ),
}

__all__ = ["RECIPES"]
