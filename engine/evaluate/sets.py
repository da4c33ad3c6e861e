"""Evaluation sets on the driver: which sets a sweep has, what is wrong with a set's file,
and its rows as the plain examples the evaluation actors score (no Ray, no torch)."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

from engine.core.files import is_empty, missing_field, read_rows, source_fields
from engine.evaluate.metrics import Metric, get_metric
from sweeps import Sweep, SweepError
from sweeps.evaluation import EvalSetConfig

REQUESTS = "requests"  # what an lm_eval set needs: its examples are the harness's requests


@dataclass
class SetPlan:
    """One set, ready to run: its metrics and its examples."""

    config: EvalSetConfig
    metrics: dict[str, Metric]
    examples: list[dict]

    @property
    def needs(self) -> list[str]:
        return sorted({m.needs for m in self.metrics.values()})

    @property
    def spec(self) -> dict:
        """What the actors need to know of the set besides its examples."""
        return {"seq_len": self.config.seq_len, "max_new_tokens": self.config.max_new_tokens}

    def results(self, observations: list[dict], error: str | None) -> list[dict]:
        """One row per metric: the metric's value and interval, or the error."""
        return [
            {
                "eval_set": self.config.name,
                "metric": name,
                "n": len(self.examples),
                **scored(metric, observations, error),
            }
            for name, metric in self.metrics.items()
        ]


def scored(metric: Metric, observations: list[dict], error: str | None) -> dict:
    """The metric's value and 95% interval (`stderr`, `low`, `high`), or why there is none."""
    if error:
        return {"value": math.nan, "status": "failed", "error": error}
    try:
        value = float(metric.score(observations))
        spread = metric.interval(observations)
    except Exception as err:  # a user metric's bug fails its rows only
        return {
            "value": math.nan,
            "status": "failed",
            "error": f"metric {metric.name!r}: {type(err).__name__}: {err}",
        }
    return {"value": value, **asdict(spread), "status": "ok", "error": None}


def plan_file_set(eval_set: EvalSetConfig) -> SetPlan:
    """Check a set's file and metrics, then read its examples; bad input raises `SweepError`."""
    problems = set_problems(eval_set, f"eval set {eval_set.name!r}")
    if problems:
        raise SweepError("\n".join(problems))
    names = resolve_metrics(eval_set, source_fields(eval_set.path))
    metrics = {name: get_metric(name) for name in names}
    examples = read_examples(eval_set, {m.needs for m in metrics.values()})
    return SetPlan(eval_set, metrics, examples)


def by_length(plan: SetPlan) -> list[dict]:
    """The set's examples shortest first (similar lengths share a batch), each with its
    position `i` in the file."""

    def length(example: dict) -> int:
        return len(example["prompt"]) + max(
            [len(example.get("completion", ""))] + [len(c) for c in example.get("choices", [])]
        )

    order = sorted(range(len(plan.examples)), key=lambda i: length(plan.examples[i]))
    return [{**plan.examples[i], "i": i} for i in order]


def sweep_sets(sweep: Sweep) -> list[EvalSetConfig]:
    """The task files as evaluation sets (`<task>`: selection, `<task>-test`: test), then the
    sweep's own sets."""
    sets = []
    for task in sweep.task_names():
        data = sweep.task_data(task)
        shared = {
            "format": data.format,
            "text_field": data.text_field,
            "prompt_field": data.prompt_field,
            "completion_field": data.completion_field,
            "chosen_field": data.chosen_field,
            "rejected_field": data.rejected_field,
        }
        if isinstance(sweep.train.seq_len, int):
            shared["seq_len"] = sweep.train.seq_len
        if data.eval:
            sets.append(EvalSetConfig(name=task, path=data.eval, split="selection", **shared))
        if data.test:
            sets.append(EvalSetConfig(name=f"{task}-test", path=data.test, split="test", **shared))
    return sets + list(sweep.evaluate.sets)


def set_problems(eval_set: EvalSetConfig, where: str) -> list[str]:
    """What is wrong with one set's file and metrics; empty when it can be evaluated."""
    path = eval_set.path
    if "://" in path:
        return []
    if not Path(path).is_file():
        return [f"{where}.path: eval set {eval_set.name!r}: no such file: {path}"]
    if is_empty(path):
        return [f"{where}.path: eval set {eval_set.name!r}: {path}: the file is empty"]
    try:
        found = source_fields(path)
        metrics = resolve_metrics(eval_set, found)
    except (ValueError, OSError) as err:
        return [f"{where}: eval set {eval_set.name!r}: {err}"]
    problems = []
    for name, needs in metrics.items():
        fields = eval_set.fields_for(needs)
        problem = missing_field(path, fields, found)
        if problem:
            wanted = next(f for f in fields if f not in found)
            problems.append(
                f"{where}.metrics: eval set {eval_set.name!r}: metric {name!r} needs "
                f"field {wanted!r}: {problem}"
            )
    return problems


def resolve_metrics(eval_set: EvalSetConfig, file_fields: list[str]) -> dict[str, str]:
    """The set's metrics (its defaults when null), each with what it needs from the model."""
    names = eval_set.metrics or eval_set.default_metrics(file_fields)
    return {name: get_metric(name).needs for name in names}


def read_examples(eval_set: EvalSetConfig, needs: set[str]) -> list[dict]:
    """The set's first `limit` rows as examples holding what `needs` asks for.

    An example has `prompt` (the text, for format `text`), and as needed `completion`,
    `choices`, `answer` (an index into choices) and `reference` (the text exact match compares
    with). A row that breaks these rules is an error naming the set, file and row.
    """
    examples = []
    for number, row in enumerate(read_rows(eval_set.path, eval_set.limit), start=1):
        try:
            examples.append(_example(eval_set, row, needs))
        except (KeyError, ValueError, TypeError) as err:
            raise SweepError(
                f"eval set {eval_set.name!r}: {eval_set.path} row {number}: {err}"
            ) from None
    if not examples:
        raise SweepError(f"eval set {eval_set.name!r}: {eval_set.path} has no rows")
    return examples


def _example(eval_set: EvalSetConfig, row: dict, needs: set[str]) -> dict:
    if eval_set.format == "preference":
        return _pair(eval_set, row)
    text_format = eval_set.format == "text"
    example = {"prompt": str(_field(row, eval_set.prompt_key()))}
    if not text_format and needs & {"tokens", "generation"}:
        example["completion"] = str(_field(row, eval_set.completion_field))
    if "choices" in needs:
        example["choices"] = _choices(row, eval_set.choices_field)
        example["answer"] = _answer_index(row, eval_set.answer_field, example["choices"])
    if "generation" in needs:
        example["reference"] = _reference(eval_set, row) if text_format else example["completion"]
    return example


def _pair(eval_set: EvalSetConfig, row: dict) -> dict:
    """A preference pair as an example: the chosen completion is the completion (loss metrics)
    and the reference (generation metrics), and the first of two choices."""
    chosen = str(_field(row, eval_set.chosen_field))
    rejected = str(_field(row, eval_set.rejected_field))
    return {
        "prompt": str(_field(row, eval_set.prompt_field)),
        "completion": chosen,
        "reference": chosen,
        "choices": [chosen, rejected],
        "answer": 0,
    }


def _field(row: dict, field: str):
    if field not in row or row[field] is None:
        raise KeyError(f"no field {field!r}")
    return row[field]


def _choices(row: dict, field: str) -> list[str]:
    choices = _field(row, field)
    if isinstance(choices, str) and choices.startswith("["):  # CSV cells hold lists as JSON
        choices = json.loads(choices)
    if not isinstance(choices, list) or not choices:
        raise ValueError(f"field {field!r} must be a non-empty list, not {choices!r}")
    return [str(c) for c in choices]


def _reference(eval_set: EvalSetConfig, row: dict) -> str:
    """A text set's reference: the answer, or the choice it points to."""
    if eval_set.choices_field and row.get(eval_set.choices_field) is not None:
        choices = _choices(row, eval_set.choices_field)
        return choices[_answer_index(row, eval_set.answer_field, choices)]
    return str(_field(row, eval_set.answer_field))


def _answer_index(row: dict, field: str, choices: list[str]) -> int:
    answer = _field(row, field)
    if isinstance(answer, str) and answer not in choices and answer.strip().isdigit():
        answer = int(answer)  # CSV cells hold indices as text
    if isinstance(answer, bool) or not isinstance(answer, (int, str)):
        raise ValueError(f"field {field!r} must be an index or a choice, not {answer!r}")
    if isinstance(answer, int):
        if not 0 <= answer < len(choices):
            raise ValueError(
                f"field {field!r}: index {answer} is outside the {len(choices)} choices"
            )
        return answer
    if answer not in choices:
        raise ValueError(f"field {field!r}: {answer!r} is not one of the choices {choices}")
    return choices.index(answer)
