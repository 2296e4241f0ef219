"""``configs/demo.yaml`` as typed dataclasses, read through jsonargparse (the same way as the Lightning apps).

The dataclass tree is the schema: ``python -m demo --help`` lists every key, ``--print_config`` shows the resolved
config, and unknown keys or values of the wrong type are refused with the key's path. The steps' fingerprints hash
these sections (their ``repr``), so a class's name and its fields' values are part of every fingerprint.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from jsonargparse import ActionConfigFile, ArgumentError, ArgumentParser, Namespace

import clapkit

__all__ = [
    "DEFAULT_CONFIG",
    "ArmSection",
    "BenchmarkSection",
    "DataSection",
    "DemoConfig",
    "EvaluateSection",
    "FeaturesSection",
    "LalmSection",
    "LalmStage2Section",
    "LalmStageSection",
    "ModelSection",
    "ScenesSection",
    "SearchSection",
    "ShardsSection",
    "TrainSection",
    "add_config_arguments",
    "config_from_namespace",
    "load_config",
]

#: The config ``python -m demo`` reads when no ``-c`` is given (relative to the working directory).
DEFAULT_CONFIG = "configs/demo.yaml"


@dataclass
class DataSection:
    dataset: str = "debian-sounds"  # a demo.datasets builder
    dataset_dir: str | None = None  # a built folder (train.jsonl, test.jsonl [, cross.jsonl]) instead of a build


@dataclass
class ModelSection:
    name: str = "clapkit-small"
    pretrained: bool = True
    overrides: dict[str, Any] = field(default_factory=dict)


@dataclass
class ScenesSection:
    count: int = 1200  # training scenes kept
    held_out_pair_fraction: float = 0.2  # of all class pairs, combined by the benchmark only
    single_clips: bool = True  # the training clips join the training shards
    counterfactual_samples: bool = True  # each counterfactual is a training sample too (compose.training_records)
    composer: dict[str, Any] = field(default_factory=dict)  # ComposerConfig fields (sample_rate: the model's)


@dataclass
class BenchmarkSection:
    compa_order: int = 500  # rows
    compa_attribute: int = 300  # rows


@dataclass
class ShardsSection:
    shard_size: str = "256MB"
    workers: int = 2
    bits: int = 24  # the scene FLACs are 24-bit: training audio and counterfactuals quantised alike


@dataclass
class FeaturesSection:
    batch_size: int = 16  # windows per audio-tower pass
    channels_last: bool = True
    text_batch_size: int = 256
    clip_views: int = 1  # stored views per training clip: view 0 clean, views 1.. augmented (clapkit.augment)
    augment: dict[str, Any] = field(default_factory=dict)  # AugmentConfig fields of the augmented views


@dataclass
class TowerSection:
    """The audio tower adapted to the training clips before the features are stored (``clapkit.adapt``)."""

    steps: int = 0  # 0: the pretrained tower as it is
    batch_size: int = 32  # crops per step
    seconds: float = 3.0  # crop length
    train: list[str] = field(default_factory=lambda: ["net.conv_block2.", "net.conv_block3.", "net.conv_block4."])
    lr: float = 1.0e-3  # classifier peak rate; the tower's is tower_lr_ratio of it
    tower_lr_ratio: float = 0.1
    augment: dict[str, Any] = field(default_factory=dict)  # AugmentConfig fields of the crops' views


@dataclass
class ArmSection:
    loss: str  # clapkit.losses.LOSSES name
    negatives: bool = False  # hard-negative captions
    audio_negatives: bool = False  # counterfactual audio
    positives: bool = False  # paraphrase positives as a loss input (losses that take them)
    loss_args: dict[str, Any] = field(default_factory=dict)


@dataclass
class TrainSection:
    steps: int = 1500
    batch_size: int = 128
    max_negatives: int = 4
    caption_source: Literal["all", "first"] = "all"  # "all": caption + paraphrase positives; "first": composed only
    clip_repeats: int = 1  # single-clip samples (no counterfactual) appear this many times per epoch
    precision: str = "bf16-mixed"  # Lightning precision; bf16 autocast runs the heads ~3x faster on AVX512-BF16 CPUs
    optimizer: dict[str, Any] = field(default_factory=dict)  # train.optim.OptimConfig fields
    arms: dict[str, ArmSection] = field(default_factory=dict)


@dataclass
class EvaluateSection:
    zeroshot_templates: list[str] = field(default_factory=lambda: list(clapkit.zeroshot.DEFAULT_TEMPLATES))


@dataclass
class SearchSection:
    model: str = "compa_hardneg"  # the arm whose model the index uses
    text_queries: list[str] = field(default_factory=list)
    audio_query_class: str | None = None  # a training clip of this class queries the index of held-out clips
    k: int = 5


@dataclass
class LalmStageSection:
    steps: int = 100  # optimizer steps of lalm.batch_size conversations
    lr: float = 1.0e-3  # peak, after linear warmup; cosine decay to min_lr_ratio × lr
    warmup_steps: int = 15
    min_lr_ratio: float = 0.1


@dataclass
class LalmStage2Section(LalmStageSection):
    """Stage 2's defaults (a class of its own: the demo config fills a section from its class's defaults)."""

    steps: int = 450
    lr: float = 5.0e-4
    warmup_steps: int = 20


@dataclass
class LalmSection:
    """``lalm:`` in ``configs/demo.yaml``; see the comments there for each value and the time arithmetic."""

    enabled: bool = False  # configs/demo.yaml turns it on; a config without a lalm section skips the step
    encoder: str = "compa_hardneg"  # the trained arm whose model is the frozen encoder
    llm: str = "smollm2"  # packaged SmolLM2-135M-Instruct (GGUF), or a transformers folder / hub id in the cache
    projector: str = "mlp2x_gelu"
    projector_params: dict[str, Any] = field(default_factory=lambda: {"downsample": 2})
    system_prompt: str = "You hear sound clips and answer questions about them."
    attn_implementation: str | None = "eager"  # faster than SDPA for short sequences on CPU
    batch_size: int = 16  # conversations per step
    group_by_length: bool = True  # batches of similar-length conversations (less padding), in random order
    precision: str = "bf16-mixed"  # Lightning precision (bf16 autocast over the float32 LLM)
    stage1: LalmStageSection = field(default_factory=LalmStageSection)
    stage2: LalmStage2Section = field(default_factory=LalmStage2Section)
    lora_rank: int = 8
    lora_alpha: int = 16
    replay: float = 0.15  # fraction of stage-2 conversations drawn from stage-1 data
    clip_repeats: int = 3  # each training clip counts this many times per epoch (scenes once)
    scenes: bool = True  # training scenes join stage 1 (captions) and stage 2 (order questions)
    order_rows: int | None = None  # held-out CompA-order rows asked (2 questions each); None: all
    max_new_tokens: int = 16
    eval_batch_size: int = 32
    seed: int | None = None  # None: the demo's seed


@dataclass
class DemoConfig:
    """``configs/demo.yaml``; see the comments there for each value and the time arithmetic."""

    out_dir: str = "runs/demo"
    seed: int = 0
    threads: int = 2
    data: DataSection = field(default_factory=DataSection)
    model: ModelSection = field(default_factory=ModelSection)
    phrases: dict[str, list[list[str]]] = field(default_factory=dict)
    scenes: ScenesSection = field(default_factory=ScenesSection)
    benchmark: BenchmarkSection = field(default_factory=BenchmarkSection)
    shards: ShardsSection = field(default_factory=ShardsSection)
    tower: TowerSection = field(default_factory=TowerSection)
    features: FeaturesSection = field(default_factory=FeaturesSection)
    train: TrainSection = field(default_factory=TrainSection)
    evaluate: EvaluateSection = field(default_factory=EvaluateSection)
    search: SearchSection = field(default_factory=SearchSection)
    lalm: LalmSection = field(default_factory=LalmSection)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def add_config_arguments(parser: ArgumentParser) -> None:
    """Add ``-c/--config`` and every ``DemoConfig`` key (``--seed``, ``--train.steps``, …) at the top level."""
    parser.add_argument("-c", "--config", action=ActionConfigFile, help=f"demo config (default: {DEFAULT_CONFIG})")
    parser.add_class_arguments(DemoConfig, None, fail_untyped=True)


def config_from_namespace(parser: ArgumentParser, parsed: Namespace) -> DemoConfig:
    """The ``DemoConfig`` of a parsed namespace (its nested sections built as dataclasses), checked.

    Raises:
        ValueError: ``train.arms`` is empty.
    """
    built = parser.instantiate(parsed)
    config = DemoConfig(**{f.name: built[f.name] for f in dataclasses.fields(DemoConfig)})
    if not config.train.arms:
        raise ValueError("demo config: train.arms is empty; give at least one arm (name: {loss: ...})")
    return config


def load_config(source: str | Path | Mapping[str, Any]) -> DemoConfig:
    """A ``DemoConfig`` from a YAML file or a mapping of the same keys, with the CLI's checks.

    Raises:
        ValueError: No such file, an unknown key, a value of the wrong type, or no training arm.
    """
    parser = ArgumentParser(exit_on_error=False)
    add_config_arguments(parser)
    if isinstance(source, Mapping):
        where, read = "demo config", lambda: parser.parse_object(dict(source))
    else:
        path = Path(source)
        if not path.is_file():
            raise ValueError(f"{path}: no such demo config; the default is {DEFAULT_CONFIG}")
        where, read = str(path), lambda: parser.parse_args(["--config", str(path)])
    try:
        parsed = read()
    except ArgumentError as err:
        raise ValueError(f"{where}: {err}") from None
    return config_from_namespace(parser, parsed)
