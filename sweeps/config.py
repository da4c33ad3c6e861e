"""The sweep definition: what a user writes, validated before any work starts.

Every field carries a description; `docs/sweeps.md` is generated from these models
(`python -m sweeps.reference`) and a test checks it is current.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from sweeps.base import DataFile, Strict, absolute
from sweeps.errors import describe, field_path
from sweeps.evaluation import (
    EvaluateConfig,
    higher_is_better,
    is_import_name,
    known_metrics,
    metric_needs,
)
from sweeps.objectives import (
    PREFERENCE_METRICS,
    Objective,
    PreferenceConfig,
    is_preference,
    needs_reference,
    objectives_of,
)
from sweeps.plans import MergePlan
from sweeps.scale import DataScale, ScalingConfig
from sweeps.schedulers import (
    Fifo,
    Population,
    Scheduler,
    check_grace,
    check_hyperband,
    check_pbt,
    check_scheduler_type,
)
from sweeps.searchers import Grid, Search, check_search_type, check_searcher
from sweeps.selection import Stage, check_stage_types
from sweeps.space import SPACES, Space, grid_size, searchable
from sweeps.space import Grid as GridSpace
from sweeps.tracking import TrackingConfig

PositiveFloat = Annotated[float, Field(gt=0)]
NonNegFloat = Annotated[float, Field(ge=0)]
PositiveInt = Annotated[int, Field(gt=0)]
NonNegInt = Annotated[int, Field(ge=0)]
Fraction = Annotated[float, Field(ge=0, lt=1)]
OpenFraction = Annotated[float, Field(gt=0, lt=1)]
Method = Literal["full", "lora", "qlora", "hft"]
Schedule = Literal["constant", "linear", "cosine"]
Precision = Literal["fp32", "bf16", "fp16"]

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
TRAIN_METRICS = ("eval_loss", "eval_ppl", "train_loss")  # what training reports by itself
DEFAULT_TASK = "default"


class ModelConfig(Strict):
    """The base model every trial fine-tunes. Give exactly one of `preset` or `path`."""

    preset: Literal["demo", "tiny-random"] | None = Field(
        None,
        description="A built-in model: `demo` (a small pretrained Llama shipped with raysoup) "
        "or `tiny-random` (a randomly initialised 2-layer Llama, for tests).",
    )
    path: str | None = Field(None, description="A local model folder or a Hugging Face hub name.")
    trust_remote_code: bool = Field(
        False,
        description="Allow the model's own Python code to run. Off by default: only turn it "
        "on for repositories you trust.",
    )
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2"] = Field(
        "sdpa",
        description="Attention kernel trials train with: `sdpa` (PyTorch's fused attention), "
        "`eager`, or `flash_attention_2` (needs the flash-attn package and a GPU).",
    )

    @model_validator(mode="after")
    def _one_source(self):
        if (self.preset is None) == (self.path is None):
            raise ValueError(
                "give exactly one of `model.preset` (demo, tiny-random) or `model.path`"
            )
        return self


class LoraConfig(Strict):
    """Low-rank adapter settings, used when `finetune.method` is `lora` or `qlora`."""

    r: searchable(PositiveInt, "int") = Field(8, description="Adapter rank.")
    alpha: searchable(PositiveFloat) = Field(
        16.0, description="Scale numerator: updates are scaled by alpha / r."
    )
    dropout: searchable(Fraction) = Field(0.0, description="Dropout on the adapter input.")
    target_modules: Literal["all-linear"] | list[str] = Field(
        "all-linear",
        description="Module names to adapt (for example [q_proj, v_proj]), or "
        "`all-linear` for every linear layer but the output head.",
    )


class QloraConfig(Strict):
    """The quantised base of `finetune.method: qlora` (the adapters are `finetune.lora`)."""

    quant_type: Literal["nf4", "fp4"] = Field(
        "nf4", description="4-bit data type of the base's weights: NormalFloat4 or FP4."
    )
    double_quant: bool = Field(
        True, description="Quantise the quantisation constants too (about 0.4 bits a weight less)."
    )
    compute_dtype: Literal["bf16", "fp16", "fp32"] = Field(
        "bf16", description="Type the 4-bit weights are dequantised to for each matrix product."
    )


class HftConfig(Strict):
    """Half fine-tuning, used when `finetune.method` is `hft` (see docs/methods.md)."""

    fraction: searchable(OpenFraction) = Field(
        0.5, description="Share of each transformer block's parameters trained in a round."
    )
    strategy: Literal["matrices", "layers"] = Field(
        "matrices",
        description="`matrices`: in every block, a random set of its weight tensors holding "
        "about `fraction` of its parameters trains; `layers`: a random `fraction` of the blocks "
        "trains whole. Everything outside the blocks (embeddings, final norm, output head) is "
        "frozen.",
    )
    rounds: PositiveInt = Field(
        1,
        description="Times the trained half is drawn afresh over the trial, at evenly spaced "
        "steps (1: one draw for the whole trial).",
    )


class FinetuneConfig(Strict):
    """How the base model is fine-tuned."""

    method: searchable(Method, "categorical") = Field(
        "full",
        description="`full` (every weight), `lora` (low-rank adapters; checkpoints hold "
        "only the adapter), `qlora` (LoRA over a base quantised to 4 bits) or `hft` (half "
        "fine-tuning: part of the weights frozen each round).",
    )
    lora: LoraConfig = Field(
        default_factory=LoraConfig, description="Adapter settings for `lora` and `qlora`."
    )
    qlora: QloraConfig = Field(
        default_factory=QloraConfig, description="The quantised base for `qlora`."
    )
    hft: HftConfig = Field(default_factory=HftConfig, description="Settings for `hft`.")
    objective: searchable(Objective, "categorical") = Field(
        "sft",
        description="What the trial minimises: `sft` (the causal-LM loss of the completion, "
        "or of the chosen completion of preference data), or a preference objective over "
        "pairs of a chosen and a rejected completion (`data.format: preference`): `dpo`, "
        "`ipo`, `kto` (against the base model as reference), `simpo`, `orpo` "
        "(reference-free). See docs/methods.md.",
    )
    preference: PreferenceConfig = Field(
        default_factory=PreferenceConfig,
        description="Settings of the preference objectives (beta and each one's own).",
    )


class DataConfig(Strict):
    """Fine-tuning data: files, their fields, and how text becomes training examples."""

    train: DataFile | None = Field(
        None,
        description="Training file (.jsonl, .json, .parquet or .csv). A relative path is "
        "taken from the sweep file's folder. Required unless `tasks` gives each task's files.",
    )
    eval: DataFile | None = Field(
        None,
        description="Evaluation file: the selection set (training "
        "reports its loss; soups and rankings read it). If absent, "
        "`eval_fraction` of the training file is held out (never trained "
        "on).",
    )
    test: DataFile | None = Field(
        None,
        description="Test file: evaluated for every candidate but "
        "never read by any selection (greedy soups, choosing the best).",
    )
    eval_fraction: Annotated[float, Field(gt=0, lt=1)] = Field(
        0.1, description="Share of the training file held out for evaluation when `eval` is absent."
    )
    format: Literal["text", "prompt_completion", "preference"] = Field(
        "text",
        description="`text`: causal-LM loss on every token of `text_field`. "
        "`prompt_completion`: loss on the completion tokens only. `preference`: pairs of a "
        "chosen and a rejected completion of one prompt (`prompt_field`, `chosen_field`, "
        "`rejected_field`), for the preference objectives of `finetune.objective`.",
    )
    text_field: str = Field("text", description="Field with the text (format `text`).")
    prompt_field: str = Field(
        "prompt", description="Field with the prompt (formats `prompt_completion`, `preference`)."
    )
    completion_field: str = Field(
        "completion", description="Field with the completion (format `prompt_completion`)."
    )
    chosen_field: str = Field(
        "chosen", description="Field with the preferred completion (format `preference`)."
    )
    rejected_field: str = Field(
        "rejected", description="Field with the rejected completion (format `preference`)."
    )
    seed: NonNegInt = Field(
        0,
        description="Seed of the one shuffle of the data; data-scale subsets "
        "are prefixes of that order, so smaller subsets lie inside larger ones.",
    )
    select: list[Stage] = Field(
        [],
        description="Selection stages run on the training file, in "
        "order, before tokenizing: exact_dedup, near_dedup, filter, "
        "importance_resample, random (see docs/data.md).",
    )
    on_bad_line: Literal["error", "skip"] = Field(
        "error",
        description="A malformed JSONL line (not JSON, not an object, or missing a "
        "field): `error` stops and names the file and line; `skip` drops it and records the "
        "count in the data manifest.",
    )

    @field_validator("select", mode="before")
    @classmethod
    def _known_stages(cls, value):
        return check_stage_types(value)

    def fields(self) -> list[str]:
        """The fields each example must have."""
        if self.format == "text":
            return [self.text_field]
        if self.format == "preference":
            return [self.prompt_field, self.chosen_field, self.rejected_field]
        return [self.prompt_field, self.completion_field]


class TaskConfig(Strict):
    """One task of the `task` axis: its own files; every other data setting comes from `data`."""

    train: DataFile = Field(..., description="The task's training file.")
    eval: DataFile | None = Field(None, description="The task's selection set (see `data.eval`).")
    test: DataFile | None = Field(None, description="The task's test set (see `data.test`).")


class TrainConfig(Strict):
    """The optimisation of one trial (AdamW)."""

    lr: searchable(PositiveFloat) = Field(3e-4, description="Peak learning rate.")
    schedule: searchable(Schedule, "categorical") = Field(
        "linear", description="Decay after warm-up: constant, linear (to 0) or cosine (to 0)."
    )
    warmup_steps: searchable(NonNegInt, "int") = Field(0, description="Steps of linear warm-up.")
    epochs: searchable(PositiveFloat) = Field(
        1.0, description="Passes over the trial's data subset (ignored when max_steps is set)."
    )
    max_steps: searchable(PositiveInt, "int") | None = Field(
        None, description="Optimizer steps to take; overrides `epochs`."
    )
    batch_size: searchable(PositiveInt, "int") = Field(8, description="Examples per micro-batch.")
    grad_accum: searchable(PositiveInt, "int") = Field(
        1, description="Micro-batches per optimizer step."
    )
    seq_len: searchable(PositiveInt, "int") = Field(
        128,
        description="Longest example in tokens; what happens to longer ones is `truncation`.",
    )
    truncation: Literal["error", "warn", "left"] = Field(
        "error",
        description="Examples longer than `seq_len`: `error` refuses the sweep when more than "
        "`max_truncated` of them would lose tokens they are trained on (a warning below that), "
        "and always when no example keeps one; `warn` cuts them at the end and says how many; "
        "`left` cuts them at the start, so the completion is kept.",
    )
    max_truncated: Annotated[float, Field(ge=0, le=1)] = Field(
        0.01,
        description="Share of examples that may lose trained tokens before `truncation: error` "
        "refuses the sweep.",
    )
    weight_decay: searchable(NonNegFloat) = Field(0.0, description="AdamW weight decay.")
    max_grad_norm: PositiveFloat | None = Field(
        1.0, description="Gradient clipping norm (null: no clipping)."
    )
    precision: searchable(Precision, "categorical") = Field(
        "fp32", description="fp32, bf16 (autocast) or fp16 (autocast with loss scaling; GPU only)."
    )
    eval_every: PositiveInt = Field(
        50, description="Evaluate (and report) every N optimizer steps, and at the end."
    )
    gradient_checkpointing: bool = Field(
        False,
        description="Recompute each layer's activations in the backward pass instead of "
        "keeping them: much less activation memory for one more forward pass.",
    )


class CheckpointConfig(Strict):
    """When trials save checkpoints (safetensors) and how many they keep."""

    every: PositiveInt = Field(100, description="Save every N optimizer steps (and at the end).")
    keep: PositiveInt | None = Field(
        2, description="Keep the last K checkpoints of each trial (null: keep all)."
    )


SECRET_NAME = re.compile(r"TOKEN|KEY|SECRET|PASSWORD|CREDENTIAL", re.IGNORECASE)
"""Names of environment variables that hold secrets."""


class SubmitConfig(Strict):
    """The runtime environment of a job from `raysoup submit` (its command-line options add
    to it)."""

    pip: list[str] = Field(
        default_factory=list, description="Packages the job pip-installs on the cluster."
    )
    image: str | None = Field(
        None, description="Container image the job runs in (Ray's `image_uri`)."
    )
    env_vars: dict[str, str] = Field(
        default_factory=dict,
        description="Environment variables of the job. No secrets: Ray shows a job's runtime "
        "environment on its dashboard, so a name that looks like one (TOKEN, KEY, SECRET, "
        "PASSWORD, CREDENTIAL) is refused; set those on the cluster's nodes.",
    )

    @field_validator("env_vars")
    @classmethod
    def _no_secrets(cls, value: dict[str, str]) -> dict[str, str]:
        secret = [name for name in value if SECRET_NAME.search(name)]
        if secret:
            raise ValueError(
                f"{', '.join(secret)}: looks like a secret, and Ray shows a job's runtime "
                "environment on its dashboard; set it in the environment of the cluster's nodes"
            )
        return value


class ResourcesConfig(Strict):
    """What each trial needs, and how many run at once."""

    cpus_per_trial: PositiveFloat = Field(1.0, description="CPUs reserved for each trial.")
    gpus_per_trial: NonNegFloat = Field(0.0, description="GPUs reserved for each trial.")
    max_concurrent: PositiveInt | None = Field(
        None, description="Most trials at once (null: as many as resources allow)."
    )
    max_failures: NonNegInt = Field(
        2,
        description="How many times a failed trial is started again (its process died, its "
        "node was lost, it raised), each time from its newest complete checkpoint; 0: never.",
    )
    workers: PositiveInt = Field(
        1,
        description="Training processes per trial. 1: the trial trains in its own process; "
        "more (or a `deepspeed` section): the trial starts a Ray Train worker group, data "
        "parallel (DDP, or DeepSpeed ZeRO), each worker taking its share of every batch.",
    )
    cpus_per_worker: PositiveFloat | None = Field(
        None, description="CPUs of each worker of a worker group (null: `cpus_per_trial`)."
    )
    gpus_per_worker: NonNegFloat | None = Field(
        None, description="GPUs of each worker of a worker group (null: `gpus_per_trial`)."
    )
    placement: Literal["pack", "spread"] = Field(
        "pack",
        description="Where a worker group's workers go: `pack` on as few nodes as possible, "
        "`spread` over as many.",
    )

    def worker_cpus(self) -> float:
        return self.cpus_per_trial if self.cpus_per_worker is None else self.cpus_per_worker

    def worker_gpus(self) -> float:
        return self.gpus_per_trial if self.gpus_per_worker is None else self.gpus_per_worker


class DeepSpeedConfig(Strict):
    """DeepSpeed ZeRO inside each trial's worker group (`resources.workers` workers).

    Precision is `train.precision` and gradient clipping `train.max_grad_norm`; `config`
    adds or overrides any other key of DeepSpeed's own configuration.
    """

    stage: Literal[0, 1, 2, 3] = Field(
        2,
        description="ZeRO stage: 1 shards optimizer states, 2 also gradients, 3 also the "
        "parameters (gathered one by one when a checkpoint is saved).",
    )
    offload_optimizer: bool = Field(
        False, description="Keep optimizer states in CPU memory (DeepSpeed's CPU Adam)."
    )
    offload_params: bool = Field(False, description="Keep parameters in CPU memory (stage 3).")
    config: dict[str, Any] | str | None = Field(
        None,
        description="Raw DeepSpeed configuration (a dict, or the path of a JSON file) merged "
        "over the one these fields make; the batch sizes are raysoup's (`train.batch_size`, "
        "`train.grad_accum`) and may not differ.",
    )

    @model_validator(mode="after")
    def _offload_params_needs_stage_3(self):
        if self.offload_params and self.stage != 3:
            raise ValueError(
                f"offload_params needs stage 3 (it is {self.stage}): only ZeRO-3 partitions "
                "parameters"
            )
        return self

    def inlined(self, base: Path) -> DeepSpeedConfig:
        """`config` read from its JSON file (relative to `base`) into a dict, so the sweep a
        run saves is complete on any node."""
        if not isinstance(self.config, str):
            return self
        path = Path(self.config).expanduser()
        path = path if path.is_absolute() else base / path
        try:
            raw = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            raise ValueError(f"deepspeed.config: cannot read {path} as JSON ({err})") from err
        if not isinstance(raw, dict):
            raise ValueError(
                f"deepspeed.config: {path} holds a JSON {type(raw).__name__}, not an object"
            )
        return self.model_copy(update={"config": raw})


class Sweep(Strict):
    """One sweep: a base model, data, a search space, and how trials run.

    Any numeric or categorical field may hold a search space instead of a value:
    `{grid: [...]}`, `{choice: [...]}`, `{uniform: [a, b]}`, `{loguniform: [a, b]}`,
    `{randint: [a, b]}`.
    """

    name: str = Field(..., description="Sweep name; the run directory is `<storage>/<name>`.")
    model: ModelConfig = Field(..., description="The base model.")
    finetune: FinetuneConfig = Field(
        default_factory=FinetuneConfig, description="Full fine-tuning or LoRA."
    )
    data: DataConfig = Field(
        ..., description="Fine-tuning data (with `tasks`: the settings every task shares)."
    )
    tasks: dict[str, TaskConfig] | None = Field(
        None,
        description="Task axis: several tasks, each with its own files, trained from the "
        "same base model (so task models can be merged). Keys are task names.",
    )
    train: TrainConfig = Field(default_factory=TrainConfig, description="Optimisation.")
    data_scale: DataScale | None = Field(
        None,
        description="Data-scale axis: example counts ([500, 2000]), fractions of the "
        "prepared training set ([0.25, 1.0]), or a log-spaced range of either "
        "({log_range: [100, 10000], points: 5}). Null: the whole set.",
    )
    seeds: list[NonNegInt] = Field(
        [0],
        min_length=1,
        description="Seed axis: every setting is trained "
        "once per seed (model init of adapters, batch order, dropout).",
    )
    num_samples: PositiveInt = Field(
        1,
        description="Draws from the sampled spaces (choice, uniform, ...) for each grid point, "
        "or with a learning searcher (`search.type` optuna, hyperopt, bohb) the configurations it "
        "suggests; each is trained on every task, data size and seed.",
    )
    branches: list[dict[str, Any]] | None = Field(
        None,
        description="Conditional spaces: alternative settings of `finetune` and `train`, each a "
        "partial sweep laid over this one with its own values and spaces (full fine-tuning "
        "with one range of `lr`, LoRA with its rank and another range). Grid and random "
        "search try every branch (`num_samples` draws each); Optuna and HyperOpt suggest a "
        "branch, then its values (`num_samples` points in all). Null: none.",
    )
    search: Search = Field(
        default_factory=lambda: Grid(type="grid"),
        description="How configurations are chosen: `grid` (drawn before training), `random`, "
        "or a searcher that learns from finished trials, `optuna`, `hyperopt` or `bohb` (see "
        "docs/search.md).",
    )
    metric: str = Field(
        "eval_loss",
        description="Metric that ranks trials and that `top_k` and greedy soups choose by: one "
        "training reports (" + ", ".join(TRAIN_METRICS) + ") or any evaluation metric of the "
        "selection sets (accuracy, exact_match, loss, a user metric), which each trial then "
        "computes on its task's selection set at every report. Preference data: trials report "
        "preference_accuracy themselves, and it is the default when `finetune.objective` can "
        "be a preference objective.",
    )
    mode: Literal["min", "max"] | None = Field(
        None,
        description="Whether lower or higher `metric` wins; null: lower for losses and "
        "perplexities, higher for every other metric.",
    )
    scheduler: Scheduler = Field(
        default_factory=lambda: Fifo(type="fifo"),
        description="Early stopping of trials that fall behind by `metric`: `fifo` (none), "
        "`asha`, `median`, `hyperband` (with search.type bohb), or population-based training, "
        "`pbt` and `pb2` (see docs/search.md).",
    )
    checkpoint: CheckpointConfig = Field(
        default_factory=CheckpointConfig, description="Checkpoint schedule."
    )
    resources: ResourcesConfig = Field(
        default_factory=ResourcesConfig, description="Trial resources."
    )
    deepspeed: DeepSpeedConfig | None = Field(
        None,
        description="DeepSpeed ZeRO for each trial (runs the trial as a Ray Train worker "
        "group; null: plain PyTorch, DDP when `resources.workers` > 1).",
    )
    scaling: ScalingConfig = Field(
        default_factory=ScalingConfig, description="Scaling-law fit over the data-scale axis."
    )
    storage: str = Field(
        "runs",
        description="Folder that holds run directories: a local one (relative to the working "
        "directory) or object storage, `s3://bucket/prefix` or `gs://bucket/prefix` "
        "(docs/storage.md).",
    )
    submit: SubmitConfig | None = Field(
        None,
        description="Runtime environment of the job when the sweep is sent with "
        "`raysoup submit` (see clusters/README.md).",
    )
    tracking: TrackingConfig = Field(
        default_factory=TrackingConfig,
        description="Experiment tracking besides the run directory: Weights & Biases "
        "(docs/wandb.md).",
    )
    evaluate: EvaluateConfig = Field(
        default_factory=EvaluateConfig,
        description="The evaluate stage: every candidate (base "
        "model, trials, merges) on every set (see docs/evaluation.md).",
    )
    merge: list[MergePlan] = Field(
        default_factory=list,
        description="Merge plans, each producing candidates: "
        "`checkpoint_average`, `soup`, `task_merge` (see docs/pipeline.md).",
    )

    @field_validator("name")
    @classmethod
    def _safe_name(cls, value: str) -> str:
        if not NAME_PATTERN.match(value):
            raise ValueError(
                f"{value!r} is not a usable folder name; use letters, digits, '.', '_' and '-'"
            )
        return value

    @field_validator("metric")
    @classmethod
    def _known_metric(cls, value: str) -> str:
        if value not in TRAIN_METRICS and metric_needs(value) is None and not is_import_name(value):
            known = [*TRAIN_METRICS, *known_metrics()]
            raise ValueError(
                f"unknown metric '{value}'; known: {', '.join(known)} (or a user metric as "
                "`module:function`)"
            )
        return value

    @field_validator("scheduler", mode="before")
    @classmethod
    def _known_scheduler(cls, value):
        return check_scheduler_type(value)

    @field_validator("search", mode="before")
    @classmethod
    def _known_search(cls, value):
        return check_search_type(value)

    @field_validator("seeds")
    @classmethod
    def _distinct_seeds(cls, value: list[int]) -> list[int]:
        if len(set(value)) != len(value):
            raise ValueError(f"seeds must be distinct, got {value}")
        return value

    @model_validator(mode="after")
    def _task_files(self):
        if self.tasks is None and self.data.train is None:
            raise ValueError("give `data.train`, or a `tasks` section with each task's files")
        if self.tasks is not None:
            if not self.tasks:
                raise ValueError("`tasks` needs at least one task")
            bad = [name for name in self.tasks if not NAME_PATTERN.match(name)]
            if bad:
                raise ValueError(
                    f"task name {bad[0]!r} is not a usable folder name; use letters, "
                    "digits, '.', '_' and '-'"
                )
        return self

    @model_validator(mode="after")
    def _branches_apply(self):
        if self.branches is None:
            return self
        if not self.branches:
            raise ValueError("branches: give at least one branch, or leave `branches` out")
        if isinstance(self.scheduler, Population):
            raise ValueError(
                f"branches: scheduler.type {self.scheduler.type} perturbs one space; a sweep "
                "with branches has one per branch"
            )
        branches = self.branch_sweeps()  # each branch validated here, its errors named
        for i, branch in enumerate(branches if self.search.learns() else []):
            grids = [path for path, space in branch.search_space().items() if space.key == "grid"]
            if grids:
                raise ValueError(
                    f"branches[{i}].{grids[0]}: search.type {self.search.type} suggests every "
                    "value itself; give it a `choice` of the same values"
                )
        return self

    @model_validator(mode="after")
    def _worker_group_fits(self):
        method = self.finetune.method
        methods = method.values() if isinstance(method, Space) else [method]
        if self.uses_worker_group() and "hft" in methods:
            raise ValueError(
                "finetune.method: hft trains in one process; with resources.workers > 1 or "
                "deepspeed, each round's frozen half would have to be set on every rank "
                "(not supported yet)"
            )
        if self.uses_worker_group() and "qlora" in methods:
            raise ValueError(
                "finetune.method: qlora trains in one process; 4-bit bases on worker groups "
                "(resources.workers > 1 or deepspeed) are not supported yet"
            )
        if self.deepspeed is None:
            return self
        if self.deepspeed.stage == 3 and "lora" in methods:
            raise ValueError(
                "deepspeed.stage: 3 with finetune.method lora is not supported: ZeRO-3 shards "
                "the frozen base too; use stage 2 (LoRA's optimizer states are small)"
            )
        if isinstance(self.deepspeed.config, dict):
            for key, ours in (
                ("train_micro_batch_size_per_gpu", self.train.batch_size),
                ("gradient_accumulation_steps", self.train.grad_accum),
            ):
                theirs = self.deepspeed.config.get(key)
                if theirs is not None and (isinstance(ours, Space) or theirs != ours):
                    raise ValueError(
                        f"deepspeed.config.{key}: {theirs} differs from the train section's "
                        f"{ours}; set batch sizes in `train` (batch_size, grad_accum)"
                    )
        return self

    @model_validator(mode="after")
    def _scheduler_fits(self):
        check_grace(self)
        check_pbt(self)
        check_hyperband(self)
        return self

    @model_validator(mode="after")
    def _search_fits(self):
        check_searcher(self)
        return self

    def uses_worker_group(self) -> bool:
        """Trials run as a Ray Train worker group (several workers, or DeepSpeed)."""
        return self.resources.workers > 1 or self.deepspeed is not None

    @model_validator(mode="after")
    def _objective_fits(self):
        objective, data_format = self.finetune.objective, self.data.format
        if is_preference(objective) and data_format != "preference":
            named = ", ".join(o for o in objectives_of(objective) if o != "sft")
            raise ValueError(
                f"finetune.objective: {named} trains on pairs of a chosen and a rejected "
                "completion; set data.format: preference (fields prompt, chosen, rejected), "
                f"not {data_format!r}"
            )
        if data_format == "preference" and self.uses_worker_group():
            raise ValueError(
                "data.format: preference trains in one process; preference objectives on "
                "worker groups (resources.workers > 1 or deepspeed) are not supported yet"
            )
        seq_len = self.train.seq_len
        if needs_reference(objective) and isinstance(seq_len, Space) and not seq_len.values():
            raise ValueError(
                "train.seq_len: the reference model's log-probabilities are computed once per "
                "sequence length in prepare; give seq_len a value, a grid or a choice"
            )
        if is_preference(objective):  # what the objectives optimise ranks, unless told
            if "metric" not in self.model_fields_set:
                self.metric = "preference_accuracy"
            if "rank_by" not in self.evaluate.model_fields_set:  # a copy: never the caller's
                rank_by = {"rank_by": "preference_accuracy"}
                self.evaluate = self.evaluate.model_copy(update=rank_by)
        return self

    @model_validator(mode="after")
    def _mode_fits_metric(self):
        known = self.metric in TRAIN_METRICS or metric_needs(self.metric) is not None
        if known and self.mode is not None and self.mode != self._natural_mode():
            raise ValueError(
                f"mode: '{self.mode}' ranks {self.metric} backwards ({self._natural_mode()} is "
                "better); leave mode out or set it to " + repr(self._natural_mode())
            )
        return self

    def _natural_mode(self) -> str:
        return "max" if higher_is_better(self.metric) else "min"

    def direction(self) -> str:
        """`min` or `max`: whether lower or higher `metric` wins (`mode`, or the metric's own)."""
        return self.mode or self._natural_mode()

    def metric_is_evaluated(self) -> bool:
        """Whether `metric` is an evaluation metric that trials compute on their selection set
        (not one training reports by itself)."""
        reported = self.data.format == "preference" and self.metric in PREFERENCE_METRICS
        return self.metric not in TRAIN_METRICS and not reported

    def task_names(self) -> list[str]:
        """The task axis: the names in `tasks`, or the one task `default`."""
        return list(self.tasks) if self.tasks else [DEFAULT_TASK]

    def task_data(self, task: str) -> DataConfig:
        """The data settings of one task: `data` with the task's files."""
        if not self.tasks:
            return self.data
        return self.data.model_copy(update=self.tasks[task].model_dump())

    def search_space(self) -> dict[str, Space]:
        """Every search space in the definition, by dotted field path (`train.lr`). With
        `branches`, every field a branch searches or sets, as one space: the first sampled
        space a branch gives it, else a grid of the values the branches give it (the columns
        and grid axes of the sweep's trials)."""
        if not self.branches:
            return dict(_find_spaces(self, ""))
        given: dict[str, list] = {}
        for branch, fixed in zip(self.branch_sweeps(), self.branch_values()):
            for path, space in branch.search_space().items():
                given.setdefault(path, []).append(space)
            for path, value in fixed.items():
                given.setdefault(path, []).append(value)
        order = sorted(given, key=lambda path: _field_rank(Sweep, path))
        return {path: _one_space(given[path]) for path in order}

    def branch_sweeps(self) -> list[Sweep]:
        """Each of `branches` laid over this sweep (without its branches), validated; a
        problem is named by the branch and the field (`branches[1].train.lr`)."""
        base = self.model_dump(mode="json", exclude={"branches"})
        base["search"] = {"type": "grid"}  # the sweep's own searcher chooses among branches
        if self.scheduler.type == "hyperband":  # BOHB's, which goes with its searcher
            base["scheduler"] = {"type": "fifo"}
        found = []
        for i, branch in enumerate(self.branches or []):
            other = [key for key in branch if key not in BRANCH_SECTIONS]
            if other:
                raise ValueError(
                    f"branches[{i}].{other[0]}: a branch sets only {' and '.join(BRANCH_SECTIONS)}"
                )
            try:
                found.append(Sweep.model_validate(_laid_over(base, branch)))
            except ValidationError as err:
                problems = [
                    f"branches[{i}].{field_path(e['loc'])}: {describe(e, Sweep)}"
                    if e["loc"]
                    else f"branches[{i}]: {describe(e, Sweep)}"
                    for e in err.errors()
                ]
                raise ValueError("; ".join(problems)) from None
        return found

    def branch_values(self) -> list[dict[str, Any]]:
        """The values (not spaces) each branch sets, by dotted path: part of every
        configuration of that branch."""
        return [dict(_fixed_leaves(branch, "")) for branch in self.branches or []]

    def trial_count(self) -> int:
        """How many trials the sweep runs: each grid point and sample, on every task, data
        size and seed (with `branches`, those of every branch)."""
        if self.branches and not self.search.learns():  # a searcher's points: num_samples
            return sum(branch.trial_count() for branch in self.branch_sweeps())
        spaces = {} if self.search.learns() else self.search_space()  # learning: no grid
        grids = math.prod(grid_size(s) for s in spaces.values())
        return (
            grids
            * self.num_samples
            * len(self.data_scale or [None])
            * len(self.seeds)
            * len(self.task_names())
        )

    def for_trial(self, params: dict[str, Any]) -> Sweep:
        """This sweep with each search space replaced by the trial's value, re-validated (with
        nothing left to search, as a grid: a learning searcher refuses a sweep without
        spaces; without population-based training, whose mutations need spaces; and without
        BOHB's HyperBand, which goes with its searcher)."""
        data = self.model_dump(mode="json")
        data["search"] = {"type": "grid"}
        data["branches"] = None  # the trial's values hold what its branch set
        if isinstance(self.scheduler, Population) or self.scheduler.type == "hyperband":
            data["scheduler"] = {"type": "fifo"}
        for path, value in params.items():
            _set_path(data, path, value)
        return Sweep.model_validate(data)

    def resolve_paths(self, base: Path) -> Sweep:
        """Data file paths made absolute against `base` (the sweep file's folder)."""
        files = ("train", "eval", "test")
        updates = {k: absolute(getattr(self.data, k), base) for k in files}
        updates["select"] = [
            s.model_copy(update={"target": absolute(s.target, base)}) if hasattr(s, "target") else s
            for s in self.data.select
        ]
        tasks = self.tasks and {
            name: task.model_copy(update={k: absolute(getattr(task, k), base) for k in files})
            for name, task in self.tasks.items()
        }
        evaluate = self.evaluate.resolve_paths(base)
        model = self.model
        if model.path is not None and (base / model.path).exists():
            model = model.model_copy(update={"path": str((base / model.path).resolve())})
        return self.model_copy(
            update={
                "data": self.data.model_copy(update=updates),
                "tasks": tasks,
                "model": model,
                "evaluate": evaluate,
                "deepspeed": self.deepspeed and self.deepspeed.inlined(base),
            }
        )


def _find_spaces(node: Any, prefix: str):
    if isinstance(node, Space):
        yield prefix, node
    elif isinstance(node, BaseModel):
        for name in type(node).model_fields:
            yield from _find_spaces(getattr(node, name), f"{prefix}.{name}" if prefix else name)


BRANCH_SECTIONS = ("finetune", "train")


def _laid_over(base: dict, branch: dict) -> dict:
    """`base` with `branch`'s values in place, section by section (a space replaces whatever
    stood there)."""
    merged = dict(base)
    for key, value in branch.items():
        inner = merged.get(key)
        section = isinstance(value, dict) and isinstance(inner, dict) and not _is_space(value)
        merged[key] = _laid_over(inner, value) if section else value
    return merged


def _is_space(value: Any) -> bool:
    return isinstance(value, dict) and len(value) == 1 and next(iter(value)) in SPACES


def _fixed_leaves(branch: dict, prefix: str):
    for key, value in branch.items():
        if _is_space(value):
            continue
        if isinstance(value, dict):
            yield from _fixed_leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def _field_rank(model: type[BaseModel] | None, path: str) -> tuple[int, ...]:
    """Where a dotted field stands in the definition's order (`finetune.lora.r` before
    `train.lr`), so that the fields of several branches keep the order of one sweep."""
    rank = []
    for name in path.split("."):
        fields = model.model_fields if model is not None else {}
        rank.append(list(fields).index(name) if name in fields else len(fields))
        inner = fields[name].annotation if name in fields else None
        model = inner if isinstance(inner, type) and issubclass(inner, BaseModel) else None
    return tuple(rank)


def _one_space(items: list) -> Space:
    """One space for a field that several branches search or set (see `search_space`)."""
    sampled = [s for s in items if isinstance(s, Space) and s.key != "grid"]
    if sampled:
        return sampled[0]
    values: list = []
    for item in items:
        for value in item.values() if isinstance(item, Space) else [item]:
            if value not in values:
                values.append(value)
    return GridSpace(grid=values)


def _set_path(data: dict, path: str, value: Any) -> None:
    *parents, leaf = path.split(".")
    for key in parents:
        if data.get(key) is None:  # a section a branch sets that the base leaves out
            data[key] = {}
        data = data[key]
    data[leaf] = value
