"""The demo's LALM step: the trained ``clapkit-small`` as the frozen audio front end of SmolLM2-135M-Instruct.

After the CLAP arms are trained, ``run_lalm`` (called by ``demo.pipeline.Demo.run`` when ``lalm.enabled``) builds
an audio-language model — the ``lalm.encoder`` arm's saved model (frozen) → ``mlp2x_gelu`` → SmolLM2 — and trains
it with the training app's ``train.lalm.LalmModule`` in LLaSO's two stages:

1. **lalm stage1** (alignment, projector only): captions of training clips and scenes.
2. **lalm stage2** (instruction tuning, projector + LoRA on the LLM): the label and order questions
   (``demo.lalm_qa``), with a ``replay`` fraction of stage-1 conversations mixed back in.
3. **lalm eval** on held-out data: the label question on every held-out clip and the order question on the
   held-out CompA-order scenes, each beside its chance level.

The frozen towers' outputs are in the demo's feature store (``clapkit.cache``), so the aisfx CNN never
runs: the encoder's ``audio_sequence`` is its head over the stored frames (``audio_sequence_from_tower``), handed
to the model as ``audio_features``. Stage 1 checks that path against the live one (waveform → aisfx → head →
projector) on a few held-out clips.

Each stage is a reusable demo step (``clapkit.steps.StepRunner.step``: a fingerprint and a ``.done.json`` under
``out_dir/lalm``). :class:`LalmRunner` holds the stages over plain in-memory data (``demo.lalm_qa.LalmData``), so
they run on any encoder and LLM (the tests use a tiny encoder and a random Llama).
"""

from __future__ import annotations

import csv
import io
import json
import random
import warnings
from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.loggers import CSVLogger
from torch.utils.data import DataLoader

import clapkit
from clapkit.audio import load_audio
from clapkit.cache import FeatureStore
from clapkit.io import atomic_write_text
from clapkit.lalm import AudioLanguageModel, audio_sequence_from_tower
from clapkit.lalm import load as load_lalm
from clapkit.lalm.data import LengthGroupedBatchSampler
from clapkit.lalm.evaluate import predict
from clapkit.model import ClapModel
from clapkit.steps import StepRunner, fingerprint
from demo.config import LalmSection, LalmStageSection
from demo.data import Workspace
from demo.lalm_qa import (
    LalmData,
    OrderRow,
    QADataset,
    QAItem,
    TrainClip,
    TrainScene,
    class_aliases,
    eval_samples,
    item_lengths,
    score_predictions,
    stage1_items,
    stage2_items,
)
from train.callbacks import progress_bars_for_logs
from train.lalm import LalmModule, build_lalm
from train.optim import OptimConfig

__all__ = ["LalmRunner", "check_stored_features", "demo_data", "run_lalm", "stored_sequences"]

_PEFT_DEPRECATION = ".*is_gradient_checkpointing.* is deprecated"  # warned inside peft's LoRA set-up


# ---------------------------------------------------------------------------------------------------- stages
class LalmRunner:
    """The LALM stages over :class:`LalmData`, trained with ``train.lalm.LalmModule`` and a Lightning ``Trainer``.

    Args:
        config: The ``lalm`` section.
        data: Clips, scenes, held-out sets and their encoder features.
        parts: ``LalmModule`` arguments naming the encoder (``encoder``, ``encoder_overrides``,
            ``encoder_pretrained``) and, to override ``config.llm``, ``llm``.
        seed: Seed of the random parts, the shuffling and the draws.
        progress: Progress bars.
        log: Where progress lines go.
    """

    def __init__(
        self,
        config: LalmSection,
        data: LalmData,
        parts: dict[str, Any],
        *,
        seed: int = 0,
        progress: bool = False,
        log: Callable[[str], None] = print,
    ) -> None:
        self.config, self.data, self.parts, self.seed = config, data, parts, seed
        self.progress, self.log = progress, log

    def _fit(self, module: LalmModule, items: list[QAItem], steps: int, folder: Path) -> dict[str, Any]:
        cfg = self.config
        if len(items) < cfg.batch_size:
            raise ValueError(f"lalm: {len(items)} conversations is less than one batch of {cfg.batch_size}")
        pl.seed_everything(self.seed, workers=True, verbose=False)
        dataset = QADataset(items, self.data.features, self.seed)
        generator = torch.Generator().manual_seed(self.seed)
        if cfg.group_by_length:
            lengths = item_lengths(dataset, module.model.sequence_length)
            batches = LengthGroupedBatchSampler(lengths, cfg.batch_size, generator=generator)
            loader = DataLoader(dataset, batch_sampler=batches, collate_fn=module.model.collator())
        else:
            loader = DataLoader(
                dataset,
                batch_size=cfg.batch_size,
                shuffle=True,
                drop_last=True,
                collate_fn=module.model.collator(),
                generator=generator,
            )
        trainer = pl.Trainer(
            accelerator="cpu",
            devices=1,
            max_steps=steps,
            max_epochs=-1,
            precision=cfg.precision,
            gradient_clip_val=1.0,
            logger=CSVLogger(str(folder), name="logs", version=""),
            log_every_n_steps=max(1, min(25, steps // 10)),
            enable_checkpointing=False,
            enable_model_summary=False,
            enable_progress_bar=self.progress,
            callbacks=progress_bars_for_logs(enable_progress_bar=self.progress),
            num_sanity_val_steps=0,
            default_root_dir=str(folder),
        )
        with warnings.catch_warnings():
            for message in (
                r"Found \d+ module\(s\) in eval mode",  # the frozen encoder stays in eval mode on purpose
                "You have overridden `transfer_batch_to_device`",
                "The number of training batches .* is smaller than the logging interval",
                "You defined a `validation_step` but have no `val_dataloader`",
                _PEFT_DEPRECATION,
                ".*isinstance.treespec, LeafSpec.*",
            ):
                warnings.filterwarnings("ignore", message=message)
            trainer.fit(module, train_dataloaders=loader)
        losses = _logged_losses(folder / "logs" / "metrics.csv")
        kinds: dict[str, int] = {}
        for it in items:
            kinds[it.kind] = kinds.get(it.kind, 0) + 1
        return {
            "adapter": str(module.export_dir),
            "steps": steps,
            "conversations": kinds,
            "trainable": module.counts,
            "loss_first": losses[0] if losses else None,
            "loss_last": losses[-1] if losses else None,
        }

    def _settings(self) -> dict[str, Any]:
        cfg = self.config
        return {
            "system_prompt": cfg.system_prompt,
            "max_new_tokens": cfg.max_new_tokens,
            "max_length": 512,
            "attn_implementation": cfg.attn_implementation,
        }

    def stage1(self, folder: Path, check: Mapping[str, str] | None = None) -> dict[str, Any]:
        """Projector only, on captions; the adapter goes to ``folder/adapter``.

        Args:
            folder: Output folder.
            check: Feature key → audio file of a few held-out clips: the stored-feature path is compared with the
                live one (``encode_audio`` on the waveform) on them first; a mismatch raises.
        """
        cfg = self.config
        model = build_lalm(
            llm=self.parts.get("llm", cfg.llm),
            projector=cfg.projector,
            projector_params=cfg.projector_params,
            seed=self.seed,
            **self._settings(),
            **{k: v for k, v in self.parts.items() if k != "llm"},
        )
        module = LalmModule(model, stage=1, optimizer=_optim(cfg.stage1), export_dir=str(folder / "adapter"))
        result: dict[str, Any] = {}
        if check:
            diff = check_stored_features(module.model, self.data.features, check)
            self.log(
                f"        stored features vs live audio (tower → head → projector): max |difference| {diff:.2e} "
                "of the largest |value|"
            )
            # A tower under bf16 / fp16 autocast rounds to ~3 significant digits; batches of other sizes round apart.
            tolerance = 1e-3 if module.model.encoder.config.audio_tower.autocast is None else 1e-2
            if diff > tolerance:
                raise RuntimeError(
                    f"stored features disagree with the encoder's live output (max relative diff {diff:.2e} > "
                    f"{tolerance:g})"
                )
            result["stored_vs_live_max_diff"] = diff
        items = stage1_items(self.data, cfg.clip_repeats, cfg.scenes)
        result.update(self._fit(module, items, cfg.stage1.steps, folder))
        self.log(_loss_line(result))
        return result

    def stage2(self, stage1_adapter: str | Path, folder: Path) -> dict[str, Any]:
        """Projector + LoRA, on label and order questions with stage-1 replay; adapter to ``folder/adapter``."""
        cfg = self.config
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=_PEFT_DEPRECATION)  # peft's LoRA set-up, not ours
            module = LalmModule(
                load_lalm(str(stage1_adapter)),
                stage=2,
                lora={"r": cfg.lora_rank, "lora_alpha": cfg.lora_alpha, "lora_dropout": 0.0},
                optimizer=_optim(cfg.stage2),
                export_dir=str(folder / "adapter"),
            )
        items = stage2_items(self.data, cfg.clip_repeats, cfg.scenes)
        if cfg.replay > 0:
            if not 0 <= cfg.replay < 1:
                raise ValueError(f"lalm.replay={cfg.replay}: a fraction in [0, 1)")
            replay = stage1_items(self.data, cfg.clip_repeats, cfg.scenes)
            count = min(len(replay), round(len(items) * cfg.replay / (1 - cfg.replay)))
            items += random.Random(self.seed).sample(replay, count)
        result = self._fit(module, items, cfg.stage2.steps, folder)
        self.log(_loss_line(result))
        return result

    def evaluate(self, adapter: str | Path | AudioLanguageModel, folder: Path) -> dict[str, Any]:
        """Held-out label and order questions; ``predictions.jsonl`` in ``folder``; metrics with chance levels."""
        cfg = self.config
        if isinstance(adapter, AudioLanguageModel):
            model = adapter
        else:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=_PEFT_DEPRECATION)
                model = load_lalm(adapter, merge_lora=True)
        autocast = cfg.precision.startswith("bf16")
        if autocast and not isinstance(adapter, AudioLanguageModel):  # a model of our own: cast it in place
            model.cast_frozen_linears(torch.bfloat16)  # the same products, without autocast's cast at every step
        samples = eval_samples(self.data, cfg.order_rows)
        with torch.autocast("cpu", dtype=torch.bfloat16) if autocast else nullcontext():
            records = predict(
                model,
                samples,
                batch_size=cfg.eval_batch_size,
                progress=self.progress,
                max_new_tokens=cfg.max_new_tokens,
            )
        for record, sample in zip(records, samples):
            if "row" in sample.meta:
                record["row"] = sample.meta["row"]
        atomic_write_text(folder / "predictions.jsonl", "".join(json.dumps(r) + "\n" for r in records))
        aliases = class_aliases(self.data.phrases, self.data.classes)
        metrics = score_predictions(records, self.data.classes, aliases)
        for kind in ("label", "mc"):
            for r in [r for r in records if r["kind"] == kind][:3]:
                self.log(f"        {r['key'].split('/', 1)[0]} e.g.: {r['prediction']!r} (answer: {r['answer']!r})")
        return metrics


def check_stored_features(
    model: AudioLanguageModel, features: Mapping[str, torch.Tensor], files: Mapping[str, str]
) -> float:
    """Largest |difference| between audio tokens from stored features and from the waveforms (``encode_audio``),
    relative to the largest |value| of the live tokens.

    Relative because the tokens are the projector's outputs, whose scale follows the training: under a bf16
    tower (``audio_tower.autocast``) the stored batch and the live one round differently, ~1e-4 of the scale.
    """
    keys = list(files)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            waves = [load_audio(files[k], model.sample_rate, name=files[k]) for k in keys]
            lengths = torch.tensor([len(w) for w in waves])
            audio = torch.nn.utils.rnn.pad_sequence(waves, batch_first=True)
            live, live_mask = model.encode_audio(audio, lengths)
            feats = torch.nn.utils.rnn.pad_sequence([features[k] for k in keys], batch_first=True)
            mask = torch.arange(feats.shape[1])[None] < torch.tensor([len(features[k]) for k in keys])[:, None]
            stored, stored_mask = model.project_audio(feats, mask)
    finally:
        model.train(was_training)
    width = min(live.shape[1], stored.shape[1])
    if not torch.equal(live_mask[:, :width], stored_mask[:, :width]) or live_mask[:, width:].any():
        return float("inf")
    real = live_mask[:, :width]
    live, stored = live[:, :width][real].float(), stored[:, :width][real].float()
    return float((live - stored).abs().max() / live.abs().max().clamp_min(1e-12))


def _optim(stage: LalmStageSection) -> OptimConfig:
    warmup = min(stage.warmup_steps, max(0, stage.steps - 1))  # a short run (a smoke test) warms up less
    return OptimConfig(lr=stage.lr, weight_decay=0.0, warmup_steps=warmup, min_lr_ratio=stage.min_lr_ratio)


def _logged_losses(path: Path) -> list[float]:
    if not path.is_file():
        return []
    rows = csv.DictReader(io.StringIO(path.read_text()))
    return [round(float(r["train/loss"]), 4) for r in rows if r.get("train/loss")]


def _loss_line(result: dict[str, Any]) -> str:
    return (
        f"        {result['steps']} steps on {result['conversations']} conversations, trainable {result['trainable']}; "
        f"train loss {result['loss_first']} → {result['loss_last']}"
    )


# ---------------------------------------------------------------------------------------------------- the demo
@torch.no_grad()
def stored_sequences(
    encoder: ClapModel, store: FeatureStore, keys: Sequence[str], batch_size: int = 256
) -> dict[str, torch.Tensor]:
    """Key → the encoder's ``audio_sequence`` [T, D] (real frames only), from stored audio-tower outputs."""
    was_training = encoder.training
    encoder.eval()
    out = {}
    try:
        keys = list(dict.fromkeys(keys))
        for start in range(0, len(keys), batch_size):
            chunk = keys[start : start + batch_size]
            feats, mask = audio_sequence_from_tower(encoder, store.batch(chunk, encoder.device))
            for key, f, m in zip(chunk, feats, mask):
                out[key] = f[m].float().cpu()
    finally:
        encoder.train(was_training)
    return out


def demo_data(work: Workspace, encoder: ClapModel) -> LalmData:
    """The demo's training clips and scenes (as stored in its shards) and held-out sets, with encoder features."""
    listing = work.out / "scenes" / "train_listing.jsonl"
    lines = [json.loads(line) for line in listing.read_text().splitlines() if line.strip()]
    train = {str(work.dataset_dir / r["audio"]): r for r in work.records("train")}
    events = {r["scene"]: [e["label"] for e in r.get("events", [])] for r in lines if r.get("role") == "scene"}
    clips, scenes = [], []
    for index, line in enumerate(lines):
        key = f"train/{index:09d}"  # the shard key of listing line `index` (clapkit.data.writer.shard_key)
        if line.get("kind") == "clip":
            record = train.get(line["audio"])
            if record is not None:
                clips.append(TrainClip(key, record["class"], list(record["captions"])))
            continue
        captions = [*line.get("captions", []), *line.get("positives", [])]
        scenes.append(TrainScene(key, captions, _scene_order(line, events.get(line.get("scene"), []))))
    if not clips:
        raise ValueError("lalm: no training clips in the shards; set scenes.single_clips: true")
    test = [TrainClip(str(work.dataset_dir / r["audio"]), r["class"], r["captions"]) for r in work.records("test")]
    order = _order_rows(work)
    store = work.stores()[0]
    keys = [c.key for c in clips] + [s.key for s in scenes] + [c.key for c in test]
    keys += [k for row in order for k in (row.key, row.reversed_key)]
    missing = store.missing(keys)
    if missing:
        raise KeyError(f"lalm: the feature store lacks {len(missing)} clips, e.g. {missing[0]!r}; redo the features")
    classes = sorted({c.label for c in clips} | {c.label for c in test})
    return LalmData(work.config.phrases, classes, clips, scenes, test, order, stored_sequences(encoder, store, keys))


def _scene_order(line: dict[str, Any], labels: list[str]) -> tuple[str, str] | None:
    """The two events of a training scene in playing order, or ``None`` when they overlap or are not two.

    The composer lists events in playing order for ``sequence``, ``attribute`` and ``rate`` scenes; their
    counterfactuals are the reversal (``sequence``) or the same order with the attributes swapped; an ``overlap``
    scene plays both at once, its counterfactual one after the other in the listed order.
    """
    if len(labels) != 2 or labels[0] == labels[1]:
        return None
    kind, counterfactual = line.get("kind"), line.get("role") == "counterfactual"
    if kind == "sequence":
        return (labels[1], labels[0]) if counterfactual else (labels[0], labels[1])
    if kind in ("attribute", "rate") or (kind == "overlap" and counterfactual):
        return labels[0], labels[1]
    return None


def _order_rows(work: Workspace) -> list[OrderRow]:
    """The held-out CompA-order rows with the classes of each scene in playing order (benchmark ``items.jsonl``)."""
    items = work.eval_sets().compositional.get("compa_order", [])
    path = work.out / "benchmark" / "items.jsonl"
    meta = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    meta = sorted((m for m in meta if m.get("benchmark") == "compa_order"), key=lambda m: m["row"])
    if len(meta) != len(items):
        raise ValueError(f"{path}: {len(meta)} compa_order rows but the CSV has {len(items)}")
    rows = []
    for item, m in zip(items, meta):
        first, second = (e["label"] for e in m["events"])
        rows.append(OrderRow(item.audio[0], item.audio[1], first, second))
    return rows


def run_lalm(work: Workspace, runner: StepRunner, trained: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The LALM steps of the demo (stage 1, stage 2, evaluation), each reused when unchanged.

    Args:
        work: The demo's workspace (``lalm`` config, phrases, seed, shards listing, feature store, held-out sets).
        runner: The demo's step runner; the stages depend on the fingerprints of the encoder's training, the
            features and the benchmark it recorded.
        trained: Arm → ``{"model": folder}`` of the trained arms.

    Returns:
        ``{arm: {"lalm": metrics}}`` for the demo's table (``LALM_METRICS``).
    """
    cfg = work.config.lalm
    if cfg.encoder not in trained:
        raise KeyError(f"lalm.encoder={cfg.encoder!r}: not a trained arm; arms: {', '.join(trained)}")
    encoder_dir = Path(trained[cfg.encoder]["model"])
    seed = work.config.seed if cfg.seed is None else cfg.seed
    folder = work.out / "lalm"
    state: dict[str, Any] = {}

    def stages() -> LalmRunner:
        if "runner" not in state:
            data = demo_data(work, clapkit.load(encoder_dir))
            parts = {"encoder": str(encoder_dir)}
            state["runner"] = LalmRunner(cfg, data, parts, seed=seed, progress=work.progress, log=runner.log)
        return state["runner"]

    fp1, fp2, fp3 = _stage_fingerprints(cfg, runner.fingerprints, work.config.phrases, seed)

    def stage1() -> dict[str, Any]:
        run = stages()
        check = {c.key: c.key for c in run.data.test_clips[:4]}  # test clips: key = the file
        return run.stage1(folder / "stage1", check=check)

    def stage2() -> dict[str, Any]:
        return stages().stage2(s1["adapter"], folder / "stage2")

    def evaluate() -> dict[str, Any]:
        return stages().evaluate(s2["adapter"], folder / "eval")

    s1 = runner.step("lalm stage1", fp1, folder / "stage1", stage1)
    s2 = runner.step("lalm stage2", fp2, folder / "stage2", stage2)
    metrics = runner.step("lalm eval", fp3, folder / "eval", evaluate)
    spent = [runner.timings[n] for n in ("lalm stage1", "lalm stage2", "lalm eval")]
    wall, cpu = sum(t["wall_s"] for t in spent), sum(t["cpu_s"] for t in spent)
    label, chance, order = (100 * metrics[k] for k in ("label_accuracy", "label_chance", "order_accuracy"))
    runner.log(
        f"[lalm] {wall:.0f} s wall, {cpu:.0f} s CPU in all; held-out label accuracy {label:.1f} % (chance "
        f"{chance:.1f}), order MC accuracy {order:.1f} % (chance 50.0)"
    )
    return {cfg.encoder: {"lalm": metrics}}


def _stage_fingerprints(
    cfg: LalmSection, fingerprints: Mapping[str, str], phrases: dict[str, Any], seed: int
) -> tuple[str, str, str]:
    """Fingerprints of stage 1, stage 2 and the evaluation: each adds the settings only it reads to the last."""
    common = {k: v for k, v in vars(cfg).items() if k not in ("stage2", "lora_rank", "lora_alpha", "replay")}
    common = {k: v for k, v in common.items() if k not in ("order_rows", "max_new_tokens", "eval_batch_size")}
    data_fp = [fingerprints[f"train {cfg.encoder}"], fingerprints["features"], fingerprints["benchmark"], phrases]
    fp1 = fingerprint(*data_fp, common, seed)
    fp2 = fingerprint(fp1, cfg.stage2, cfg.lora_rank, cfg.lora_alpha, cfg.replay)
    fp3 = fingerprint(fp2, cfg.order_rows, cfg.max_new_tokens, cfg.eval_batch_size)
    return fp1, fp2, fp3
