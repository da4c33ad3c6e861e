"""How one trial's loop runs: in its own process (`Single`), or as one worker of a data-parallel
worker group (`DDP`, `DeepSpeed`; started by `engine.train.workers`).

The loop (`engine.train.loop.train`) asks its `Parallel` for the device, wraps the model with
it, runs backward passes and optimizer steps through it, and saves and restores checkpoints
through it; everything else (data order, loss, evaluation, reports) is the same code in each.

Every rank of a worker group computes the same global batch order; rank r trains on its
contiguous share of each step's examples, and the loss is weighted so that the gradient equals
the one a single process gets from the whole batch (a sum over labelled tokens divided by the
global count; DDP's mean over ranks is undone by the world size).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

from engine.core import models
from engine.core.batches import autocast
from sweeps import Sweep

SHARD_BYTES = 2 * 1024**3  # largest safetensors shard a ZeRO-3 checkpoint writes
DEEPSPEED_STATE = "deepspeed"  # the subfolder of a checkpoint holding DeepSpeed's own state


class Single:
    """A trial in one process: what the loop did before worker groups existed."""

    rank, world = 0, 1

    def __init__(self, sweep: Sweep) -> None:
        self.sweep = sweep
        self.model = self.module = self.optimizer = self.scheduler = None
        self._device = torch.device("cpu")
        self.scaler = None  # fp16's loss scaler

    @property
    def evaluates(self) -> bool:
        """Whether this rank runs the evaluations (the reported metrics are rank 0's)."""
        return self.rank == 0

    def device(self) -> torch.device:
        res = self.sweep.resources
        gpus = res.worker_gpus() if self.sweep.uses_worker_group() else res.gpus_per_trial
        if gpus > 0 and torch.cuda.is_available():
            self._device = torch.device("cuda")
        else:
            cpus = res.worker_cpus() if self.sweep.uses_worker_group() else res.cpus_per_trial
            torch.set_num_threads(max(1, int(cpus)))
            self._device = torch.device("cpu")
        return self._device

    def make_optimizer(self, params: list, lr: float, weight_decay: float) -> torch.optim.Optimizer:
        """AdamW over `params` (on the device already): the fused kernel on a GPU."""
        fused = self._device.type == "cuda"
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=fused)

    def prepare(self, model, optimizer, scheduler):
        """Wrap the model (on its device) for training; returns what the forward pass calls."""
        self.module = self.model = model
        self.optimizer, self.scheduler = optimizer, scheduler
        if self.sweep.train.precision == "fp16":  # fp16 needs a GPU (checked at validate)
            self.scaler = torch.amp.GradScaler(self._device.type)
        return self.model

    def autocast(self, precision: str, device: torch.device):
        return autocast(precision, device)

    def total(self, *values: float) -> list[float]:
        """Each value summed over the ranks."""
        return list(values)

    def backward(self, loss: torch.Tensor) -> None:
        (loss if self.scaler is None else self.scaler.scale(loss)).backward()

    def step(self, max_grad_norm: float | None) -> None:
        """One optimizer step over the gradients the backward passes accumulated (under fp16,
        skipped by the loss scaler when they overflowed, as it lowers its scale)."""
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        if max_grad_norm:
            torch.nn.utils.clip_grad_norm_(self.module.parameters(), max_grad_norm)
        if self.scaler is None:
            self.optimizer.step()
        else:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)

    def barrier(self) -> None:
        """Wait for every rank."""

    @contextlib.contextmanager
    def staging(self, step: int):
        """An empty folder for the checkpoint of `step`, the same on every rank."""
        with tempfile.TemporaryDirectory(prefix="raysoup-ckpt-") as tmp:
            # A folder inside the temporary one: the session may move it away (to publish it).
            yield Path(tmp) / "checkpoint"

    def save(self, folder: Path, tokenizer, state: dict, info: dict) -> None:
        """Write the checkpoint: the Hugging Face folder and what resuming needs."""
        if self.rank != 0:
            return
        state = {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            **({"scaler": self.scaler.state_dict()} if self.scaler is not None else {}),
            **state,
        }
        models.save_checkpoint(self.module, tokenizer, folder, state, info)

    def restore(self, folder: Path) -> dict:
        """Load a checkpoint `save` wrote; returns its trainer state (step, tokens seen)."""
        models.load_checkpoint_weights(self.module, folder)
        state = models.load_trainer_state(folder)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler is not None and "scaler" in state:
            self.scaler.load_state_dict(state["scaler"])
        return state


class DDP(Single):
    """One worker of a DistributedDataParallel worker group (`torch.distributed` is set up by
    Ray Train: gloo on CPU, NCCL on GPU)."""

    def __init__(self, sweep: Sweep, trial_dir: Path) -> None:
        import torch.distributed as dist

        super().__init__(sweep)
        self.dist = dist
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        self.trial_dir = trial_dir
        # Rank 0's process id names the folder every rank stages a checkpoint in.
        owner = [os.getpid()]
        dist.broadcast_object_list(owner, src=0)
        self.owner = owner[0]

    def device(self) -> torch.device:
        self._device = super().device()
        if self._device.type == "cuda":
            import ray.train.torch

            self._device = ray.train.torch.get_device()  # this worker's GPU
        return self._device

    def prepare(self, model, optimizer, scheduler):
        super().prepare(model, optimizer, scheduler)
        ids = [self._device.index] if self._device.type == "cuda" else None
        self.model = torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)
        return self.model

    def total(self, *values: float) -> list[float]:
        where = self._device if self._device.type == "cuda" else "cpu"
        found = torch.tensor(values, dtype=torch.float64, device=where)
        self.dist.all_reduce(found)
        return found.tolist()

    def barrier(self) -> None:
        self.dist.barrier()

    @contextlib.contextmanager
    def staging(self, step: int):
        from engine.train.records import staging_folder

        folder = staging_folder(self.trial_dir, step, self.owner)
        if self.rank == 0:
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True)
        self.barrier()
        yield folder


class DeepSpeed(DDP):
    """One worker of a DeepSpeed ZeRO worker group.

    DeepSpeed owns precision, gradient clipping, the optimizer step and the learning-rate
    schedule (stepped at the end of each accumulation). A checkpoint holds the Hugging Face
    weights (gathered parameter by parameter under ZeRO-3, written as safetensors shards) and
    DeepSpeed's own sharded state in `deepspeed/`, which restores the trial exactly.
    """

    def __init__(self, sweep: Sweep, trial_dir: Path) -> None:
        super().__init__(sweep, trial_dir)
        self.stage = sweep.deepspeed.stage

    @property
    def evaluates(self) -> bool:
        # Under ZeRO-3 a forward pass gathers parameters from every rank.
        return self.stage == 3 or self.rank == 0

    def make_optimizer(self, params: list, lr: float, weight_decay: float) -> torch.optim.Optimizer:
        """AdamW; DeepSpeed's CPU Adam (in AdamW mode) when optimizer states are offloaded,
        as DeepSpeed requires."""
        if self.sweep.deepspeed.offload_optimizer:
            from deepspeed.ops.adam import DeepSpeedCPUAdam

            return DeepSpeedCPUAdam(params, lr=lr, weight_decay=weight_decay, adamw_mode=True)
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)

    def prepare(self, model, optimizer, scheduler):
        import deepspeed

        _without_shared_memory_all_reduce()
        self.optimizer, self.scheduler = optimizer, scheduler
        self.model, *_ = deepspeed.initialize(
            model=model,
            optimizer=optimizer,
            lr_scheduler=scheduler,
            config=deepspeed_config(self.sweep),
        )
        self.module = self.model.module
        return self.model

    def autocast(self, precision: str, device: torch.device):
        return contextlib.nullcontext()  # DeepSpeed casts the model itself

    def backward(self, loss: torch.Tensor) -> None:
        # The loss is already scaled for the accumulation; DeepSpeed steps at its boundary.
        self.model.backward(loss, scale_wrt_gas=False)
        self.model.step()

    def step(self, max_grad_norm: float | None) -> None:
        """Nothing: DeepSpeed stepped at the last micro-batch's boundary (clipping, the
        optimizer, the schedule, zeroing the gradients)."""

    def save(self, folder: Path, tokenizer, state: dict, info: dict) -> None:
        self.model.save_checkpoint(str(folder), tag=DEEPSPEED_STATE, save_latest=False)
        if self.rank == 0:  # the recovery scripts DeepSpeed copies beside its state
            for script in folder.glob("zero_to_*.py"):
                script.unlink()
        if self.stage == 3:
            gathered_safetensors(self.module, folder, self.rank)
        elif self.rank == 0:
            self.module.save_pretrained(folder, safe_serialization=True)
        if self.rank == 0:
            tokenizer.save_pretrained(folder)
            torch.save(state, folder / models.TRAINER_STATE)
            (folder / models.TRIAL_INFO).write_text(json.dumps(info, indent=2))

    def restore(self, folder: Path) -> dict:
        self.model.checkpoint_engine = _safe_checkpoint_engine(self.model.checkpoint_engine)
        loaded, _ = self.model.load_checkpoint(
            str(folder),
            tag=DEEPSPEED_STATE,
            load_optimizer_states=True,
            load_lr_scheduler_states=True,
        )
        if loaded is None:
            raise FileNotFoundError(f"{folder}: no DeepSpeed state to resume from")
        return models.load_trainer_state(folder)


SHARED_MEMORY_OP = "deepspeed_shm_comm"  # DeepSpeed's name for its CPU all-reduce op


def _without_shared_memory_all_reduce() -> None:
    """Tell DeepSpeed not to build its shared-memory all-reduce. On a CPU, DeepSpeed compiles
    that C++ op when its process group starts (52 s on 2 cores the first time on a machine, and
    a compiler is needed), for tensor-parallel inference (`inference_all_reduce`), which
    training never calls; the group's collectives go through torch.distributed either way.
    DeepSpeed reads the ops it may build from one dict, kept for the process."""
    import deepspeed.ops

    deepspeed.ops.__compatible_ops__[SHARED_MEMORY_OP] = False


def deepspeed_config(sweep: Sweep) -> dict:
    """DeepSpeed's configuration for the sweep's trials: raysoup's batch sizes, precision and
    clipping, the ZeRO fields, then the raw `deepspeed.config` over them."""
    ds, train = sweep.deepspeed, sweep.train
    zero: dict = {"stage": ds.stage}
    if ds.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
    if ds.offload_params:
        zero["offload_param"] = {"device": "cpu", "pin_memory": True}
    config = {
        "train_micro_batch_size_per_gpu": train.batch_size,
        "gradient_accumulation_steps": train.grad_accum,
        "gradient_clipping": train.max_grad_norm or 0.0,
        "zero_optimization": zero,
        "bf16": {"enabled": train.precision == "bf16"},
        "fp16": {"enabled": train.precision == "fp16"},
        # raysoup's optimizer is torch's AdamW (DeepSpeed's CPU Adam when states are offloaded)
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 2**31 - 1,
    }
    return _merged(config, ds.config if isinstance(ds.config, dict) else {})


def _merged(base: dict, over: dict) -> dict:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merged(out[key], value)
        else:
            out[key] = value
    return out


def gathered_safetensors(module, folder: Path, rank: int, shard_bytes: int = SHARD_BYTES) -> None:
    """The Hugging Face weights of a ZeRO-3 model as safetensors shards with their index.

    Every rank takes part in gathering each parameter in turn; rank 0 copies it to CPU and
    writes a shard whenever `shard_bytes` are held, so memory is bounded by one shard (plus
    the parameter being gathered). An empty tensor where the model has a non-empty one is an
    error, never a checkpoint.
    """
    import deepspeed
    from safetensors.torch import save_file

    names: dict[str, str] = {}
    shard: dict[str, torch.Tensor] = {}
    written: list[Path] = []

    def flush() -> None:
        if shard:
            path = folder / f"model-{len(written) + 1:05d}.safetensors"
            save_file(shard, path, metadata={"format": "pt"})
            names.update(dict.fromkeys(shard, path.name))
            written.append(path)
            shard.clear()

    held = 0
    for name, param in module.named_parameters():
        with deepspeed.zero.GatheredParameters([param], modifier_rank=None):
            if rank == 0:
                expected = tuple(getattr(param, "ds_shape", param.shape))
                if tuple(param.shape) != expected or param.numel() == 0:
                    raise RuntimeError(
                        f"gathering {name} gave shape {tuple(param.shape)}, expected {expected}"
                    )
                shard[name] = param.detach().to("cpu", copy=True).contiguous()
                held += shard[name].numel() * shard[name].element_size()
        if held >= shard_bytes:
            flush()
            held = 0
    if rank != 0:
        return
    for name, buffer in _persistent_buffers(module):
        shard[name] = buffer.detach().to("cpu", copy=True).contiguous()
    flush()
    # Shards named n-of-total as Hugging Face does, once the total is known.
    total = len(written)
    for i, path in enumerate(written, 1):
        final = path.with_name(f"model-{i:05d}-of-{total:05d}.safetensors")
        path.rename(final)
        names = {k: final.name if v == path.name else v for k, v in names.items()}
    size = sum(p.stat().st_size for p in folder.glob("model-*.safetensors"))
    index = {"metadata": {"total_size": size}, "weight_map": dict(sorted(names.items()))}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    module.config.save_pretrained(folder)
    if getattr(module, "generation_config", None) is not None:
        module.generation_config.save_pretrained(folder)


def _persistent_buffers(module):
    """The buffers a state dict holds (not the non-persistent ones, such as rotary tables)."""
    for prefix, sub in module.named_modules():
        for name, buffer in sub.named_buffers(recurse=False):
            if buffer is not None and name not in sub._non_persistent_buffers_set:
                yield (f"{prefix}.{name}" if prefix else name), buffer


# DeepSpeed's own state files hold these classes besides tensors; nothing else is unpickled.
def _deepspeed_globals() -> list:
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address]


def _safe_checkpoint_engine(engine):
    """DeepSpeed's checkpoint engine, loading with `torch.load(weights_only=True)` and only
    DeepSpeed's own state classes allowed (DeepSpeed itself unpickles anything)."""

    from deepspeed.runtime.checkpoint_engine import TorchCheckpointEngine

    if type(engine) is not TorchCheckpointEngine:
        raise RuntimeError(
            f"deepspeed.config: resuming needs DeepSpeed's torch checkpoint engine, not "
            f"{type(engine).__name__}"
        )

    class WeightsOnly(TorchCheckpointEngine):
        def load(self, path: str, map_location=None):
            with torch.serialization.safe_globals(_deepspeed_globals()):
                return torch.load(path, map_location=map_location, weights_only=True)

    engine.__class__ = WeightsOnly
    return engine
