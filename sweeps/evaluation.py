"""Evaluation sets and the evaluate stage's settings (no Ray, no torch).

A set is chosen by `type:`. A `file` set (the default) names a data file, which fields hold the
prompt, completion, choices and answer, whether it is a `selection` set (model choice may read
it) or a `test` set (reported only), and its metrics. Metric names are checked here against the
catalog of known names; the metrics themselves live in `engine.evaluate.metrics`, which declares
every metric it registers into this catalog, so a user metric registered there is accepted here
too. An `lm_eval` set names tasks of EleutherAI's lm-evaluation-harness, whose metrics the
harness itself names and computes (`engine.evaluate.harness`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, ValidationError, ValidationInfo, field_validator, model_validator

from sweeps.base import DataFile, Strict, absolute

OBSERVATIONS = ("tokens", "choices", "generation")
# A model batch holds at most this many examples and this many tokens, padding counted.
BATCH_SIZE = 128
BATCH_TOKENS = 8192

# What each built-in metric needs the model to produce, by name. `engine.evaluate.metrics` holds the
# implementations; user metrics are added by `declare_metric`.
_CATALOG: dict[str, str] = {
    "loss": "tokens",
    "ppl": "tokens",
    "accuracy": "choices",
    "accuracy_norm": "choices",
    "preference_accuracy": "choices",
    "exact_match": "generation",
}
# Metrics where a lower value is better: raysoup's losses (those training reports too) and
# lm-evaluation-harness's perplexities.
LOWER_IS_BETTER = (
    "loss",
    "ppl",
    "eval_loss",
    "eval_ppl",
    "train_loss",
    "perplexity",
    "word_perplexity",
    "byte_perplexity",
    "bits_per_byte",
)
DEFAULT_METRICS = {
    "tokens": ["loss", "ppl"],
    "choices": ["accuracy", "accuracy_norm"],
    "generation": ["exact_match"],
}


def declare_metric(name: str, needs: str) -> None:
    """Make `name` a metric that configs may use; the same name with other needs is refused."""
    if needs not in OBSERVATIONS:
        raise ValueError(
            f"metric {name!r}: unknown needs {needs!r}; allowed: " + ", ".join(OBSERVATIONS)
        )
    if _CATALOG.get(name, needs) != needs:
        raise ValueError(f"metric {name!r} is already declared with needs {_CATALOG[name]!r}")
    _CATALOG[name] = needs


def known_metrics() -> list[str]:
    return sorted(_CATALOG)


def metric_needs(name: str) -> str | None:
    """What a catalogued metric needs, or None for a `module:function` user metric."""
    return _CATALOG.get(name)


def is_import_name(name: str) -> bool:
    module, _, function = name.partition(":")
    return (
        bool(module and function)
        and all(p.isidentifier() for p in module.split("."))
        and function.isidentifier()
    )


def higher_is_better(metric: str) -> bool:
    """Whether a higher value of `metric` is better (False for losses and perplexities)."""
    return metric.partition(",")[0] not in LOWER_IS_BETTER


class EvalSetConfig(Strict):
    """One evaluation set: a data file, its fields, its split and its metrics."""

    type: Literal["file"] = Field(
        "file", description="`file` (the default): a data file; `lm_eval`: harness tasks."
    )
    name: str = Field(
        ...,
        min_length=1,
        description="Name of the set in results (`eval_set` column); unique among the sets.",
    )
    path: DataFile = Field(
        ...,
        description="Data file (.jsonl, .json, .parquet or .csv). A relative "
        "path is taken from the sweep file's folder.",
    )
    format: Literal["text", "prompt_completion", "preference"] = Field(
        "prompt_completion",
        description="`text`: loss on every token of `text_field`. "
        "`prompt_completion`: loss on the completion tokens only, as in training. "
        "`preference`: pairs of a chosen and a rejected completion; loss metrics score the "
        "chosen one, `preference_accuracy` the pair.",
    )
    text_field: str = Field(
        "text",
        description="Field with the text (format `text`); it is "
        "also the prompt of choice and generation metrics in that format.",
    )
    prompt_field: str = Field(
        "prompt", description="Field with the prompt (format `prompt_completion`)."
    )
    completion_field: str = Field(
        "completion",
        description="Field with the reference completion (format `prompt_completion`).",
    )
    chosen_field: str = Field(
        "chosen", description="Field with the preferred completion (format `preference`)."
    )
    rejected_field: str = Field(
        "rejected", description="Field with the rejected completion (format `preference`)."
    )
    choices_field: str | None = Field(
        "choices",
        description="Field with the list of candidate completions (accuracy "
        "metrics); null: the set has none.",
    )
    answer_field: str | None = Field(
        "answer",
        description="Field with the right choice: an index into the choices, or the "
        "answer string; null: the set has none.",
    )
    split: Literal["selection", "test"] = Field(
        "selection",
        description="`selection`: model choice (best trial, greedy soup) may read "
        "it. `test`: reported only; selection never reads it.",
    )
    metrics: list[str] | None = Field(
        None,
        description="Metric names (`raysoup eval --help` lists them) or `module:function` "
        "user metrics. Null: loss and ppl, plus accuracy and accuracy_norm when the file has the "
        "choices and answer fields, plus exact_match for prompt/completion sets; loss, ppl and "
        "preference_accuracy for preference sets.",
    )
    max_new_tokens: Annotated[int, Field(gt=0)] = Field(
        32,
        description="Most tokens generated per example (exact_match and other generation metrics).",
    )
    limit: Annotated[int, Field(gt=0)] | None = Field(
        None, description="Evaluate only the first n rows of the file (null: all)."
    )
    seq_len: Annotated[int, Field(gt=0)] = Field(
        128,
        description="Longest sequence in tokens. Loss sequences are cut at the end, as in "
        "training; choice and generation prompts lose their start instead.",
    )

    @field_validator("metrics")
    @classmethod
    def _known_metrics(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return value
        if not value:
            raise ValueError("give at least one metric, or leave `metrics` out for the defaults")
        for name in value:
            if metric_needs(name) is None and not is_import_name(name):
                raise ValueError(
                    f"unknown metric {name!r}; known: {', '.join(known_metrics())}"
                    " (or a user metric as `module:function`)"
                )
        if len(set(value)) != len(value):
            raise ValueError(f"metrics must be distinct, got {value}")
        return value

    @model_validator(mode="after")
    def _fields_for_metrics(self):
        for name in self.metrics or []:
            missing = self.missing_fields(metric_needs(name))
            if missing:
                raise ValueError(
                    f"eval set {self.name!r}: metric {name!r} needs `{missing[0]}`, which is null"
                )
        return self

    def missing_fields(self, needs: str | None) -> list[str]:
        """Config fields a metric with `needs` requires but the set leaves null."""
        if needs == "choices" and self.format != "preference":
            return [f for f in ("choices_field", "answer_field") if getattr(self, f) is None]
        if needs == "generation" and self.format == "text" and self.answer_field is None:
            return ["answer_field"]
        return []

    def result_names(self) -> list[str]:
        """The `eval_set` values of this set's rows in the results."""
        return [self.name]

    def prompt_key(self) -> str:
        return self.text_field if self.format == "text" else self.prompt_field

    def fields_for(self, needs: str) -> list[str]:
        """The file fields that a metric with `needs` reads."""
        if self.format == "preference":
            return [self.prompt_field, self.chosen_field, self.rejected_field]
        if needs == "tokens":
            return (
                [self.text_field]
                if self.format == "text"
                else [self.prompt_field, self.completion_field]
            )
        if needs == "choices":
            return [self.prompt_key(), self.choices_field, self.answer_field]
        if self.format == "prompt_completion":
            return [self.prompt_field, self.completion_field]
        return [self.text_field, self.answer_field]

    def default_metrics(self, file_fields: list[str]) -> list[str]:
        """The metrics used when `metrics` is null, by what the file holds."""
        names = list(DEFAULT_METRICS["tokens"])
        if self.format == "preference":
            return [*names, "preference_accuracy"]
        for needs in ("choices", "generation"):
            wanted = self.fields_for(needs)
            if None not in wanted and all(f in file_fields for f in wanted):
                if needs == "choices" or self.format == "prompt_completion":
                    names += DEFAULT_METRICS[needs]
        return names


class HarnessSetConfig(Strict):
    """Tasks of EleutherAI's lm-evaluation-harness (lm-eval), scored by the evaluation pool."""

    type: Literal["lm_eval"] = Field(..., description="`lm_eval`.")
    tasks: list[str] = Field(
        ...,
        min_length=1,
        description="Task, group or tag names as lm-eval knows them (`hellaswag`, `mmlu`), or "
        "the `task:` names of YAML files under `include_path`. Each name is one set in the "
        "results; a tag, or a group lm-eval gives no aggregate, is one set per task.",
    )
    include_path: str | None = Field(
        None,
        description="Folder of task YAML files, searched before lm-eval's own tasks (a "
        "relative path is taken from the sweep file's folder).",
    )
    num_fewshot: Annotated[int, Field(ge=0)] | None = Field(
        None,
        description="Few-shot examples in each prompt (null: each task's own setting; a task "
        "that sets 0 keeps 0, as in lm-eval).",
    )
    limit: Annotated[int, Field(gt=0)] | Annotated[float, Field(gt=0, lt=1)] | None = Field(
        None,
        description="Evaluate only the first n documents of each task, or a fraction of them "
        "(null: all).",
    )
    split: Literal["selection", "test"] = Field(
        "selection",
        description="`selection`: model choice may read it. `test`: reported only.",
    )

    @field_validator("tasks")
    @classmethod
    def _distinct(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError(f"task names must be distinct, got {value}")
        return value

    def result_names(self) -> list[str]:
        """The `eval_set` values of this set's rows: its task names (see `tasks`)."""
        return list(self.tasks)


SET_TYPES = ("file", "lm_eval")
EvalSet = Annotated[EvalSetConfig | HarnessSetConfig, Field(discriminator="type")]


def _set_types(sets):
    """A set without `type` is a `file` set; an unknown type lists the known ones."""
    out = []
    for index, item in enumerate(sets if isinstance(sets, list) else []):
        if isinstance(item, dict):
            item = {"type": "file", **item}
            if item["type"] not in SET_TYPES:
                raise ValueError(
                    f"[{index}].type: unknown set type {item['type']!r}; known: "
                    + ", ".join(SET_TYPES)
                )
        out.append(item)
    return out if isinstance(sets, list) else sets


class EvaluateConfig(Strict):
    """The evaluate stage: the sets, and the actor pool that runs every candidate on them."""

    sets: list[EvalSet] = Field(
        default_factory=list,
        description="Evaluation sets, each chosen by `type`: `file` (the default) or `lm_eval` "
        "(docs/evaluation.md). In a sweep, each task's `eval` file (split selection) and "
        "`test` file (split test) are evaluated too, before these.",
    )
    rank_by: str = Field(
        "loss",
        description="The metric that ranks candidates in a sweep's "
        "leaderboard, averaged over the selection sets (loss, ppl and lm-eval's perplexities "
        "and bits_per_byte: lower is better; every other metric: higher is better). An "
        "lm-eval metric is named as lm-eval names it (`acc`, `exact_match,strict-match`). "
        "Default: loss, or preference_accuracy when a preference objective trains.",
    )
    batch_size: Annotated[int, Field(gt=0)] = Field(
        BATCH_SIZE,
        description="Most examples per model batch (examples of similar length go together).",
    )
    batch_tokens: Annotated[int, Field(gt=0)] = Field(
        BATCH_TOKENS,
        description="Most tokens per model batch, padding counted (examples x the longest); "
        "an example longer than this goes alone. Short examples fill batches of `batch_size`, "
        "long ones fewer, so memory stays bounded.",
    )
    actors: Annotated[int, Field(ge=1)] | Literal["auto"] = Field(
        "auto",
        description="Evaluation actors, each holding one model at a time; `auto`: the "
        "cluster's CPUs divided by `cpus_per_actor` (GPUs by `gpus_per_actor` when set), "
        "starting with those free and growing as resources free up.",
    )
    cpus_per_actor: Annotated[float, Field(gt=0)] = Field(
        1.0, description="CPUs reserved for each actor."
    )
    gpus_per_actor: Annotated[float, Field(ge=0)] = Field(
        0.0, description="GPUs reserved for each actor; above 0 the model runs on CUDA."
    )
    torch_threads: Annotated[int, Field(gt=0)] | None = Field(
        None,
        description="torch threads per actor on CPU; null: the cluster's CPUs shared "
        "evenly among the actors.",
    )
    precision: Literal["fp32", "bf16", "fp16"] = Field(
        "fp32", description="fp32, or bf16 / fp16 autocast (fp16 needs a GPU)."
    )
    engine: Literal["transformers", "vllm"] = Field(
        "transformers",
        description="What generates text: `transformers` (the actors), or `vllm` (GPU only: "
        "vLLM engines through Ray Data LLM, one per GPU, for every generation of every set; "
        "scoring stays on the actors).",
    )

    @field_validator("sets", mode="before")
    @classmethod
    def _known_set_types(cls, value):
        return _set_types(value)

    @field_validator("sets")
    @classmethod
    def _unique_names(cls, value: list[EvalSetConfig | HarnessSetConfig]):
        names = [name for s in value for name in s.result_names()]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"eval set names must be unique; repeated: {', '.join(repeated)}")
        return value

    @field_validator("rank_by")
    @classmethod
    def _known_rank_metric(cls, value: str, info: ValidationInfo) -> str:
        # An lm-eval metric's name is known once its tasks are loaded: preflight checks it.
        harness = any(s.type == "lm_eval" for s in info.data.get("sets", []))
        if metric_needs(value) is None and not is_import_name(value) and not harness:
            raise ValueError(f"unknown metric {value!r}; known: {', '.join(known_metrics())}")
        return value

    @model_validator(mode="after")
    def _vllm_needs_gpus(self):
        if self.engine == "vllm" and self.gpus_per_actor == 0:
            raise ValueError(
                "engine: vllm runs on GPUs only (set gpus_per_actor); on CPU use transformers"
            )
        return self

    @model_validator(mode="after")
    def _fp16_needs_gpu(self):
        if self.precision == "fp16" and self.gpus_per_actor == 0:
            raise ValueError(
                "precision fp16 needs a GPU (set gpus_per_actor); on CPU use fp32 or bf16"
            )
        return self

    def sets_for(self, splits: list[str] | None = None) -> list[EvalSetConfig | HarnessSetConfig]:
        """The sets of the given splits (all when None): selection code asks for `selection`."""
        return [s for s in self.sets if splits is None or s.split in splits]

    def resolve_paths(self, base: Path) -> EvaluateConfig:
        """Set paths made absolute against `base` (the sweep file's folder)."""
        key = {"file": "path", "lm_eval": "include_path"}
        sets = [
            s.model_copy(update={key[s.type]: absolute(getattr(s, key[s.type]), base)})
            for s in self.sets
        ]
        return self.model_copy(update={"sets": sets})


def config_for_files(
    paths: list[str],
    names: list[str] | None = None,
    metrics: list[str] | None = None,
    set_fields: dict | None = None,
    **fields,
) -> EvaluateConfig:
    """An `EvaluateConfig` with one set per file, all alike (what `raysoup eval` builds).

    Sets are named by `names`, else by file stem (with the folder's name where stems repeat).
    """
    from sweeps.errors import SweepError, format_validation_error

    if names and len(names) != len(paths):
        raise SweepError(
            f"--name: {len(names)} name(s) for {len(paths)} data file(s); give one "
            "per file, or none"
        )
    names = list(names or _file_names(paths))
    sets = [
        {"name": n, "path": p, "metrics": metrics or None, **(set_fields or {})}
        for n, p in zip(names, paths)
    ]
    try:
        return EvaluateConfig.model_validate({"sets": sets, **fields})
    except ValidationError as err:
        raise format_validation_error(err, "eval") from None


def _file_names(paths: list[str]) -> list[str]:
    stems = [Path(p).stem for p in paths]
    return [
        s if stems.count(s) == 1 else f"{Path(p).parent.name}-{s}" for s, p in zip(stems, paths)
    ]
