"""The train stage's checks before any work starts: the base model (its files, or the hub),
LoRA's target modules, room to checkpoint, the precision, and a `metric` that trials compute
on their selection sets. None of them loads weights."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from engine.core.findings import Findings
from engine.core.model_files import folder_problems, hub_config, weight_files
from engine.demo import BASE_DIR
from engine.evaluate.sets import set_problems, sweep_sets
from merging.io import read_header
from sweeps import Sweep

# Module types PEFT's LoRA can adapt (by class name; transformers' GPT-2 uses `Conv1D`).
ADAPTABLE = {"Linear", "Embedding", "Conv1d", "Conv2d", "Conv3d", "Conv1D", "MultiheadAttention"}
# float32 weights, and AdamW's two moments of every trained number
BYTES_PER_TRAINED, BYTES_PER_FROZEN = 12, 4


def model_problems(sweep: Sweep) -> list[str]:
    """A local model folder that is missing or unusable (`engine.core.model_files`), or a hub
    name the hub cannot be reached for."""
    path = sweep.model.path
    if path is None:
        return []
    folder = Path(path).expanduser()
    if folder.is_dir():
        return folder_problems(folder, "model.path")
    if path.startswith((".", "/", "~")) or path.count("/") > 1:
        return [f"model.path: no such model folder: {path}"]
    found = hub_config(path)
    if isinstance(found, str):
        return [
            f"model.path: cannot reach the hub for model.path '{path}'; give a local folder "
            f"({found})"
        ]
    return []


def lora_problems(sweep: Sweep) -> list[str]:
    """Each module of `finetune.lora.target_modules` that the model lacks, or that LoRA cannot
    adapt (PEFT would fail every trial, or silently adapt fewer modules)."""
    targets = sweep.finetune.lora.target_modules
    if not _uses_lora(sweep) or targets == "all-linear":
        return []
    modules = meta_modules(sweep)
    if isinstance(modules, str):
        return [f"model: its config does not load ({modules})"]
    adaptable = sorted({n.rsplit(".", 1)[-1] for n, kind in modules.items() if kind in ADAPTABLE})
    problems = []
    for target in targets:
        kinds = {kind for n, kind in modules.items() if n == target or n.endswith(f".{target}")}
        if not kinds:
            problems.append(f"'{target}' is no module of the model")
        elif not kinds & ADAPTABLE:
            problems.append(f"'{target}' is a {', '.join(sorted(kinds))}, which LoRA cannot adapt")
    return [
        f"finetune.lora.target_modules: {p}; the model's layers LoRA can adapt: "
        f"{', '.join(adaptable)}"
        for p in problems
    ]


def _methods(sweep: Sweep) -> list[str]:
    method = sweep.finetune.method
    return method.values() if hasattr(method, "values") else [method]


def _uses_lora(sweep: Sweep) -> bool:
    return bool({"lora", "qlora"} & set(_methods(sweep)))


def qlora_problems(sweep: Sweep) -> list[str]:
    """`qlora` without bitsandbytes, the package that quantises its base."""
    if "qlora" not in _methods(sweep):
        return []
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as err:
        return [
            "finetune.method: qlora needs the bitsandbytes package (pip install "
            f"'raysoup[qlora]'); it does not import here ({err})"
        ]
    return []


def meta_modules(sweep: Sweep) -> dict[str, str] | str:
    """The base model's module names and class names, from a model built on the meta device
    (no weights); or why its config does not load."""
    # Imported here: torch and transformers take seconds, which `raysoup validate` pays only
    # for a LoRA sweep that lists its target modules.
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from engine.demo.tiny import tiny_config

    trust = sweep.model.trust_remote_code
    try:
        if sweep.model.preset == "tiny-random":
            config = tiny_config("llama")
        else:
            config = AutoConfig.from_pretrained(str(_config_source(sweep)), trust_remote_code=trust)
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config, trust_remote_code=trust)
    except Exception as err:  # any reason the config does not make a model
        return f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"
    return {name: type(module).__name__ for name, module in model.named_modules() if name}


def _config_source(sweep: Sweep) -> Path:
    if sweep.model.preset == "demo":
        return BASE_DIR
    folder = Path(sweep.model.path).expanduser()
    return folder if folder.is_dir() else Path(hub_config(sweep.model.path)).parent


def storage_findings(sweep: Sweep) -> Findings:
    """The storage folder must take files (a problem), and should have room for at least one
    checkpoint of the model (a warning with the estimate)."""
    if "://" in sweep.storage:
        return Findings()
    root = _existing(Path(sweep.storage).expanduser().resolve())
    try:
        with tempfile.NamedTemporaryFile(dir=root, prefix=".raysoup-write-check-"):
            pass
    except OSError as err:
        return Findings(problems=[f"storage: cannot write to {root} ({err.strerror})"])
    need, free = checkpoint_bytes(sweep), shutil.disk_usage(root).free
    if need is None or free >= need:
        return Findings()
    return Findings(
        warnings=[
            f"storage: {root} has {_size(free)} free, and one checkpoint of this model takes "
            f"about {_size(need)} (weights and optimizer state): trials stop when the disk is "
            "full (they continue with `raysoup resume` once there is room)"
        ]
    )


def _existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def checkpoint_bytes(sweep: Sweep) -> int | None:
    """About how large one checkpoint is, from the base model's safetensors headers: float32
    weights and AdamW's two moments of what is trained (all of it, or LoRA's adapters, whose
    checkpoint holds only the adapter); None when the weights are not on disk yet."""
    folder = BASE_DIR if sweep.model.preset == "demo" else Path(sweep.model.path or "")
    shapes = {
        name: info.shape for path in weight_files(folder) for name, (info, _) in _header(path)
    }
    if not shapes:
        return None
    numbers = sum(_numel(shape) for shape in shapes.values())
    if not _uses_lora(sweep):
        return numbers * BYTES_PER_TRAINED
    rank = max(_values(sweep.finetune.lora.r))
    targets = sweep.finetune.lora.target_modules
    adapted = [
        s
        for name, s in shapes.items()
        if len(s) == 2 and _targeted(name, targets) and "embed" not in name
    ]
    return sum(rank * (a + b) for a, b in adapted) * BYTES_PER_TRAINED


def _header(path: Path):
    try:
        return read_header(path).items()
    except (OSError, ValueError):
        return []


def _targeted(tensor: str, targets) -> bool:
    module = tensor.rsplit(".", 1)[0]
    if targets == "all-linear":
        return not module.endswith(("lm_head", "wte", "wpe"))
    return any(module == t or module.endswith(f".{t}") for t in targets)


def _values(value) -> list:
    return value.values() if hasattr(value, "values") else [value]


def _numel(shape) -> int:
    total = 1
    for dim in shape:
        total *= dim
    return total


def _size(n: int) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000:
            return f"{n:.0f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def precision_problems(sweep: Sweep) -> list[str]:
    """fp16 asked for without a GPU."""
    precision = sweep.train.precision
    values = precision.values() if hasattr(precision, "values") else [precision]
    res = sweep.resources
    gpus = res.worker_gpus() if sweep.uses_worker_group() else res.gpus_per_trial
    if "fp16" in values and gpus == 0:
        field = "gpus_per_worker" if sweep.uses_worker_group() else "gpus_per_trial"
        return [
            f"train.precision: fp16 needs a GPU (set resources.{field}); on CPU use fp32 or bf16"
        ]
    return []


def attention_problems(sweep: Sweep) -> list[str]:
    """flash-attention-2 asked for without its package or without a GPU."""
    if sweep.model.attn_implementation != "flash_attention_2":
        return []
    import importlib.util

    res = sweep.resources
    gpus = res.worker_gpus() if sweep.uses_worker_group() else res.gpus_per_trial
    if importlib.util.find_spec("flash_attn") is None:
        return ["model.attn_implementation: flash_attention_2 needs the flash-attn package"]
    if gpus == 0:
        return ["model.attn_implementation: flash_attention_2 needs a GPU; on CPU use sdpa"]
    return []


def deepspeed_problems(sweep: Sweep) -> list[str]:
    """The DeepSpeed configuration raysoup would start trials with, checked by DeepSpeed's own
    rules for its `zero_optimization` section, and the settings DeepSpeed refuses on CPU."""
    if sweep.deepspeed is None:
        return []
    try:
        from deepspeed.runtime.zero.config import DeepSpeedZeroConfig
    except ImportError as err:
        return [f"deepspeed: DeepSpeed is not installed or does not import ({err})"]
    from pydantic import ValidationError

    from engine.train.parallel import deepspeed_config

    problems = []
    config = deepspeed_config(sweep)
    try:
        DeepSpeedZeroConfig(**config.get("zero_optimization", {}))
    except ValidationError as err:
        for e in err.errors():
            where = ".".join(str(x) for x in e["loc"])
            problems.append(f"deepspeed.config.zero_optimization.{where}: {e['msg']}")
    if sweep.deepspeed.offload_optimizer and sweep.resources.worker_gpus() == 0:
        problems.append(
            "deepspeed.offload_optimizer: needs GPUs (resources.gpus_per_worker); on CPU the "
            "optimizer states are in CPU memory already"
        )
    return problems


def metric_problems(sweep: Sweep) -> list[str]:
    """An evaluation metric as `metric` needs every task's selection set (an `eval` file) with
    the fields the metric reads."""
    if not sweep.metric_is_evaluated():
        return []
    selection = {s.name: s for s in sweep_sets(sweep) if s.split == "selection"}
    missing = [task for task in sweep.task_names() if task not in selection]
    if missing:
        return [
            f"metric: {sweep.metric} is computed on each task's selection set, and task(s) "
            f"{', '.join(missing)} have no `eval` file; give one, or rank trials by eval_loss"
        ]
    sets = [selection[t].model_copy(update={"metrics": [sweep.metric]}) for t in sweep.task_names()]
    return [p for s in sets for p in set_problems(s, "metric")]
