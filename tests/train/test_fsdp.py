"""The FSDP path of the CLAP app with 2 CPU processes (gloo).

Neither Lightning nor torch's FSDP is meant to run on a CPU, in four places; :class:`CpuFSDPStrategy` and
:class:`CpuFSDPPrecision` change exactly those, so everything the app does under FSDP (the logit scale made
shardable, optimizer groups over flattened parameters, frozen towers, clipping, autocast, checkpoints, resume, the
export) runs here as it does on GPUs:

- Lightning refuses ``strategy: fsdp`` without a GPU (``lightning/pytorch/trainer/connectors/accelerator_connector.py``,
  ``_check_strategy_and_fallback``: "requires a GPU accelerator"); a subclass of ``FSDPStrategy`` is not checked.
- ``FullyShardedDataParallel`` raises "FSDP needs a non-CPU accelerator device" unless ``device_id`` names the CPU
  (``torch/distributed/fsdp/_init_utils.py``, ``_init_device_handle``); Lightning passes ``root_device.index``:
  ``None``.
- Lightning gathers full state dicts with ``offload_to_cpu=True`` (``lightning/fabric/strategies/fsdp.py``,
  ``_get_full_state_dict_context``). From CPU parameters torch's ``FlatParamHandle.to_cpu`` "copies" in place and then
  frees the storage, and the state dict's clone segfaults (``torch/distributed/fsdp/_flat_param.py``).
- Lightning's ``FSDPPrecision.forward_context`` autocasts on ``"cuda"`` only (``plugins/precision/fsdp.py``).
"""

from __future__ import annotations

import csv
import json
import math
import types
from contextlib import contextmanager, nullcontext
from pathlib import Path
from unittest import mock

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.plugins.precision import FSDPPrecision
from lightning.pytorch.strategies import FSDPStrategy
from lightning.pytorch.trainer.states import TrainerFn
from safetensors.torch import load_file, save_file
from torch.distributed.fsdp import FullStateDictConfig, FullyShardedDataParallel, StateDictType
from torch.distributed.fsdp.api import FullOptimStateDictConfig

import clapkit
from tests.conftest import build_tiny_model
from tests.train.conftest import CONFIGS, run_train
from tests.train.test_cli import fast_dev_args
from train.clap import ClapModule, _shardable_scalars, _unshardable_scalars, main
from train.optim import OptimConfig, build_optimizer, clean_name, param_ndims


def _full_state_dict_on_cpu(module, world_size: int, rank0_only: bool = True):
    return FullyShardedDataParallel.state_dict_type(
        module,
        StateDictType.FULL_STATE_DICT,
        FullStateDictConfig(offload_to_cpu=False, rank0_only=rank0_only),
        FullOptimStateDictConfig(offload_to_cpu=False, rank0_only=rank0_only),
    )


@contextmanager
def _no_offload():
    with mock.patch("lightning.pytorch.strategies.fsdp._get_full_state_dict_context", _full_state_dict_on_cpu):
        yield


class CpuFSDPStrategy(FSDPStrategy):
    """``FSDPStrategy`` that wraps with ``device_id=cpu`` and gathers full state dicts without offloading."""

    def _setup_model(self, model: torch.nn.Module) -> torch.nn.Module:
        if not any(isinstance(m, FullyShardedDataParallel) for m in model.modules()):
            model = FullyShardedDataParallel(
                module=model,
                cpu_offload=self.cpu_offload,
                mixed_precision=self.mixed_precision_config,
                sharding_strategy=self.sharding_strategy,
                device_id=self.root_device,
                **self.kwargs,
            )
        return super()._setup_model(model)

    def lightning_module_state_dict(self):
        with _no_offload():
            return super().lightning_module_state_dict()

    def optimizer_state(self, optimizer):
        with _no_offload():
            return super().optimizer_state(optimizer)

    def load_checkpoint(self, checkpoint_path, weights_only=None):
        with _no_offload():
            return super().load_checkpoint(checkpoint_path, weights_only)


class CpuFSDPPrecision(FSDPPrecision):
    """``FSDPPrecision`` whose mixed modes autocast on the CPU (Lightning's always names ``"cuda"``)."""

    def forward_context(self):
        if "mixed" in self.precision:
            return torch.autocast("cpu", dtype=torch.bfloat16 if self.precision == "bf16-mixed" else torch.float16)
        return super().forward_context()


class RecordFSDP(pl.Callback):
    """Write, per rank, what training saw to ``<folder>/rank<N>.json``, and tensors as safetensors (rank 0).

    - ``initial.safetensors``: the LightningModule's parameters before the strategy wrapped it.
    - ``gathered.safetensors``: the ClapModel's parameters at the end, gathered with ``summon_full_params``.
    - ``optimizer``: clean parameter name → [lr, weight_decay] of its optimizer group.
    - ``losses``; ``fsdp_casts``: FSDP's (param_dtype, buffer_dtype); ``scaler``: the precision plugin's
      gradient scaler; ``projection_dtypes``: dtypes the audio projection returned in training (autocast).
    """

    def __init__(self, folder: str) -> None:
        self.folder = Path(folder)
        self.losses: list[float] = []
        self.projection_dtypes: set[str] = set()
        self.val_batches: list[int | str] = []

    def setup(self, trainer, pl_module, stage) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        if trainer.is_global_zero:
            initial = {n: p.detach().clone() for n, p in pl_module.named_parameters()}
            save_file(initial, self.folder / "initial.safetensors")

        def seen(module, args, out) -> None:
            if module.training:
                self.projection_dtypes.add(str(out.dtype))

        pl_module.model.audio_projection.register_forward_hook(seen)

    def on_train_start(self, trainer, pl_module) -> None:
        names = {id(p): clean_name(n) for n, p in pl_module.named_parameters()}
        groups = trainer.optimizers[0].param_groups
        self.groups = {names[id(p)]: [g["initial_lr"], g["weight_decay"]] for g in groups for p in g["params"]}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.losses.append(float(outputs["loss"]))

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self.val_batches.append("padding" if batch.get("padding") else len(batch["captions"]))

    def on_train_end(self, trainer, pl_module) -> None:
        fsdp = isinstance(trainer.strategy, FSDPStrategy)
        with FullyShardedDataParallel.summon_full_params(trainer.strategy.model) if fsdp else nullcontext():
            gathered = {clean_name(n): p.detach().clone() for n, p in pl_module.model.named_parameters()}
        config = trainer.strategy.mixed_precision_config if fsdp else None
        record = {
            "world_size": trainer.world_size,
            "global_step": trainer.global_step,
            "wrapped": type(trainer.strategy.model).__name__,
            "losses": self.losses,
            "optimizer": self.groups,
            "fsdp_casts": None if config is None else [str(config.param_dtype), str(config.buffer_dtype)],
            "scaler": type(getattr(trainer.precision_plugin, "scaler", None)).__name__,
            "projection_dtypes": sorted(self.projection_dtypes),
            "val_batches": self.val_batches,
        }
        if trainer.is_global_zero:
            save_file({n: t.contiguous() for n, t in gathered.items()}, self.folder / "gathered.safetensors")
        (self.folder / f"rank{trainer.global_rank}.json").write_text(json.dumps(record))


AUDIO_LR, BASE_LR, DECAY = 5e-4, 1e-3, 0.1


#: FSDP units: each tower (its forward is what ClapModel calls), and the rest (heads, projections) in the root.
WRAP = ["clapkit.towers.htsat.HTSATTower", "clapkit.towers.clip_text.ClipTextTower"]


def fsdp_overlay(path: Path, state_dict_type: str, record: Path) -> Path:
    """2 CPU processes under :class:`CpuFSDPStrategy`, bf16 autocast, clipping, and per-tower learning rates."""
    options = {"state_dict_type": state_dict_type, "auto_wrap_policy": WRAP}
    strategy = {"class_path": f"{__name__}.CpuFSDPStrategy", "init_args": options}
    precision = {"class_path": f"{__name__}.CpuFSDPPrecision", "init_args": {"precision": "bf16-mixed"}}
    callback = {"class_path": f"{__name__}.RecordFSDP", "init_args": {"folder": str(record)}}
    groups = [{"prefix": "model.audio_tower", "lr": AUDIO_LR}, {"prefix": "model.text_tower", "lr": 0}]
    trainer = {"devices": 2, "strategy": strategy, "precision": None, "plugins": [precision], "callbacks": [callback]}
    trainer |= {"gradient_clip_val": 0.05, "enable_progress_bar": False}
    checkpoint = {"dirpath": str(path.parent / f"ckpt_{state_dict_type}")}
    config = {"trainer": trainer, "model": {"optimizer": {"param_groups": groups}}, "checkpoint": checkpoint}
    path.write_text(json.dumps(config))
    return path


def read_records(folder: Path) -> list[dict]:
    return [json.loads((folder / f"rank{r}.json").read_text()) for r in (0, 1)]


def test_fsdp_trains_checkpoints_resumes_and_exports(tiny_data, tmp_path):
    data = ["--data.train_shards", str(tiny_data["shards"]), "--data.resampled", "true", "--data.batch_size", "2"]
    data += ["--data.val_shards", str(tiny_data["shards"])]  # validation after steps 3 and 6

    def fit(state_dict_type: str, record: str, steps: int, *extra: str) -> str:
        overlay = fsdp_overlay(tmp_path / f"{record}.json", state_dict_type, tmp_path / record)
        args = ["clap", "fit", "-c", str(CONFIGS / "tiny.yaml"), "-c", str(overlay), *data]
        proc = run_train([*args, "--trainer.max_steps", str(steps), *extra], tmp_path)
        out, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, out
        return out

    # Each format in its own folder: Lightning's FSDP save replaces a checkpoint of the other format on every
    # rank at once, and the ranks race to delete the same files.
    fit("sharded", "a", 2)  # sharded checkpoints: a folder of shards per checkpoint
    assert (tmp_path / "ckpt_sharded/last.ckpt/meta.pt").is_file()
    assert "Restored all states" in fit("full", "b", 4, "--ckpt_path", str(tmp_path / "ckpt_sharded/last.ckpt"))
    assert "Restored all states" in fit("full", "c", 6, "--ckpt_path", "last")  # a full checkpoint file

    records = {run: read_records(tmp_path / run) for run in "abc"}
    for run, ranks in records.items():
        for r in ranks:
            assert r["world_size"] == 2 and r["wrapped"] == "FullyShardedDataParallel"
            assert r["global_step"] == {"a": 2, "b": 4, "c": 6}[run]
            assert len(r["losses"]) == 2 and all(math.isfinite(x) for x in r["losses"])
            # bf16-mixed under FSDP is autocast over float32 parameters and buffers (no FSDP casts), as under DDP.
            assert r["projection_dtypes"] == ["torch.bfloat16"] and r["fsdp_casts"] == ["None", "None"]
            assert r["scaler"] == "NoneType"  # bf16 needs no gradient scaler
    # Validation: 3 shards of 4 clips, batches of 2 — rank 0 reads 2 shards (4 batches), rank 1 one shard and
    # pads with 2 silent batches, so both run 4 forward passes (FSDP gathers parameters in each).
    for run in "bc":
        assert records[run][0]["val_batches"] == [2, 2, 2, 2]
        assert records[run][1]["val_batches"] == [2, 2, "padding", "padding"]
    ranks = records["c"]
    logs = (tmp_path / "runs/tiny/csv").glob("version_*/metrics.csv")
    rows = [row for path in logs for row in csv.DictReader(path.open())]
    val = [r for r in rows if r.get("val/loss")]
    assert len(val) == 2  # one row per validation: runs b and c
    for row in val:  # over all 12 clips (gathered from both ranks, padding left out)
        assert 1 / 12 <= float(row["val/text_to_audio_R@10"]) <= 1 and math.isfinite(float(row["val/loss"]))

    final = torch.load(tmp_path / "ckpt_full/last.ckpt", weights_only=True)  # no FSDP needed to read it
    assert final["global_step"] == 6 and final["optimizer_layout"] == "fsdp"
    assert {float(s["step"]) for s in final["optimizer_states"][0]["state"].values()} == {6.0}  # state resumed
    weights = {k.removeprefix("model."): v for k, v in final["state_dict"].items()}
    assert weights["logit_scale"].shape == ()  # saved as unsharded runs save it

    exported = clapkit.load(tmp_path / "runs/tiny/model").state_dict()
    gathered = load_file(tmp_path / "c" / "gathered.safetensors")
    assert exported.keys() == weights.keys() and gathered.keys() < exported.keys()  # the export adds buffers
    for name, value in exported.items():
        assert torch.equal(value, weights[name]), name
        if name in gathered:
            assert torch.equal(value, gathered[name].reshape(value.shape)), name

    initial = load_file(tmp_path / "a" / "initial.safetensors")
    frozen = [n for n in gathered if n.startswith("text_tower.")]
    assert frozen and all(torch.equal(exported[n], initial[f"model.{n}"]) for n in frozen)
    assert not torch.equal(exported["logit_scale"], initial["model.logit_scale"].reshape(()))
    changed = [n for n in gathered if n.startswith("audio_") and not torch.equal(exported[n], initial[f"model.{n}"])]
    assert len(changed) > 10

    # Groups by name through FSDP's flattening: frozen tower out, the audio tower's own lr, decay on matrices.
    expected = {
        f"model.{n}": [AUDIO_LR if n.startswith("audio_tower.") else BASE_LR, DECAY if exported[n].ndim >= 2 else 0.0]
        for n in gathered
        if not n.startswith("text_tower.")
    }
    expected["model.logit_scale"][1] = 0.0
    assert ranks[0]["optimizer"] == ranks[1]["optimizer"] == expected


def test_fsdp_without_gpu_fails_before_launching(tiny_data, tmp_path, tiny_model_dir, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = fast_dev_args(CONFIGS / "tiny.yaml", tiny_data, tmp_path, tiny_model_dir)
    with pytest.raises(ValueError, match="strategy `fsdp` requires a GPU accelerator"):
        main([*args, "--trainer.strategy", "fsdp", "--trainer.devices", "2"])


def test_scalars_made_shardable_round_trip():
    model = build_tiny_model()
    reference = {k: v.clone() for k, v in model.state_dict().items()}
    names = _shardable_scalars(model)
    assert names == ["logit_scale"] and model.logit_scale.shape == (1,) and model.logit_scale.requires_grad
    model.load_state_dict(reference)  # 0-d in a state dict still loads
    saved = _unshardable_scalars(model.state_dict(), names)
    plain = build_tiny_model(seed=1)
    plain.load_state_dict(saved)  # and what it saves loads into an unsharded model
    assert all(torch.equal(plain.state_dict()[k], reference[k]) for k in reference)


def test_weight_decay_follows_shapes_taken_before_flattening():
    model = torch.nn.Sequential(torch.nn.Linear(4, 3))
    ndims = param_ndims(model)
    for name, param in list(model[0].named_parameters()):  # as FSDP's use_orig_params views: 1-D
        setattr(model[0], name, torch.nn.Parameter(param.detach().flatten()))
    decay = {len(g["params"][0]): g["weight_decay"] for g in build_optimizer(model, OptimConfig(), ndims).param_groups}
    assert decay == {12: 0.1, 3: 0.0}
    assert {g["weight_decay"] for g in build_optimizer(model, OptimConfig()).param_groups} == {0.0}  # the bug


def test_resuming_under_another_strategy_is_refused():
    module = ClapModule(model=build_tiny_model())
    module.trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False)
    module.trainer.state.fn = TrainerFn.FITTING
    with pytest.raises(ValueError, match="holds fsdp optimizer states, this run uses standard"):
        module.on_load_checkpoint({"optimizer_layout": "fsdp", "optimizer_states": [{}]})
    module.on_load_checkpoint({"optimizer_layout": "standard", "optimizer_states": [{}]})
    module.trainer.state.fn = TrainerFn.VALIDATING  # weights only: any strategy
    module.on_load_checkpoint({"optimizer_layout": "fsdp", "optimizer_states": [{}]})


def test_fsdp_validation_needs_equal_batches_per_rank():
    # Unequal validation batches deadlock FSDP (each forward gathers from every rank): refused unless capped.
    datamodule = types.SimpleNamespace(hparams=types.SimpleNamespace(val_shards="val/"))
    trainer = types.SimpleNamespace(strategy=CpuFSDPStrategy(), world_size=2, datamodule=datamodule)
    module = ClapModule(model=build_tiny_model())
    module.trainer = trainer
    for limit in (1.0, 0.5):
        trainer.limit_val_batches = limit
        with pytest.raises(ValueError, match="set trainer.limit_val_batches to a count"):
            module.setup("fit")
    trainer.limit_val_batches = 4
    module.setup("fit")
    assert module.model.logit_scale.shape == (1,)  # and the FSDP preparation ran
    # Shards with a manifest: the data module knows each rank's batches and pads the shorter shares.
    trainer.limit_val_batches = 1.0
    datamodule.val_batches_per_rank = lambda: [2, 1]
    module = ClapModule(model=build_tiny_model())
    module.trainer = trainer
    module.setup("fit")
