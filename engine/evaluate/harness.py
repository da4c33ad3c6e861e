"""Tasks of EleutherAI's lm-evaluation-harness on the evaluation pool: the driver's side.

The driver loads the tasks with lm-eval's own machinery (a `TaskManager` over `include_path` and
lm-eval's tasks), sets their few-shot count and seeds as `simple_evaluate` does, and builds
every request once (`Task.build_all_requests`). The requests become the examples of one pool
set: the log-likelihood requests of one context together (one prefix tree on the actor), each
rolling text, each generation (`engine.evaluate.answers` answers them). After the pool, each
candidate's answers go back to lm-eval, which filters, scores (`process_results`) and
aggregates them with standard errors, as `lm_eval.evaluator.evaluate` does for any model: a
`ReplayLM` answers its calls from the pool's table. Nothing here runs a model.

This module imports lm-eval (about a second, and datasets with it); the pool and the checks
import it only for an `lm_eval` set.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field

from lm_eval.api.model import LM
from lm_eval.defaults import DEFAULT_MAX_GEN_TOKS
from lm_eval.evaluator import evaluate
from lm_eval.evaluator_utils import get_sample_size

from engine.evaluate.harness_tasks import (
    expected_sets,
    load,
    seeded,
    task_manager,
    task_members,
)
from engine.evaluate.sets import REQUESTS
from sweeps import SweepError
from sweeps.evaluation import HarnessSetConfig
from sweeps.intervals import Z95

BOOTSTRAP_ITERS = 100_000  # simple_evaluate's default, for metrics without a closed-form error

logging.getLogger("lm_eval").setLevel(logging.WARNING)


@dataclass
class HarnessPlan:
    """An `lm_eval` set, ready to run: its loaded tasks and their requests as pool examples;
    `keys[i]` are the request keys example i answers."""

    config: HarnessSetConfig
    loaded: dict
    members: dict[str, list[str]]
    examples: list[dict]
    keys: list[list[tuple]]

    spec: dict = field(default_factory=dict)  # the actors need nothing more than the examples

    @property
    def needs(self) -> list[str]:
        return [REQUESTS]

    def results(self, observations: list[dict], error: str | None) -> list[dict]:
        """One row per (set, metric) of this set: lm-eval's values and standard errors from
        the candidate's answers, or failed rows naming the error."""
        if error:
            return self._failed(error)
        answers = {}
        for keys, found in zip(self.keys, observations):
            answers.update(zip(keys, _responses(found)))
        try:
            return results_rows(self, _replay(self, answers))
        except Exception as err:  # a task's metric code that raises fails this set only
            return self._failed(f"lm-eval: {type(err).__name__}: {err}".splitlines()[0][:500])

    def _failed(self, error: str) -> list[dict]:
        return [
            {
                "eval_set": name,
                "metric": metric,
                "value": float("nan"),
                "stderr": math.nan,
                "n": n,
                "status": "failed",
                "error": error,
            }
            for name, (metrics, n) in self.expected().items()
            for metric in metrics
        ]

    def expected(self) -> dict[str, tuple[list[str], int]]:
        """The sets this plan reports, each with its metric names and document count."""
        return expected_sets(self.loaded, self.members, self.config.limit)


def plan(config: HarnessSetConfig) -> HarnessPlan:
    """Load the set's tasks and build their requests (once, for every candidate)."""
    manager = task_manager(config.include_path, config.tasks)
    unknown = [name for name in config.tasks if name not in manager.all_tasks]
    if unknown:
        raise SweepError(f"lm_eval set: unknown task(s): {', '.join(unknown)}")
    with seeded():
        loaded = load(manager, config)
        for task in loaded["tasks"].values():
            task.build_all_requests(limit=get_sample_size(task, config.limit), rank=0, world_size=1)
    examples, keys = request_examples(loaded["tasks"])
    members = {name: task_members(manager, loaded, name) for name in config.tasks}
    return HarnessPlan(config, loaded, members, examples, keys)


def request_examples(tasks: dict) -> tuple[list[dict], list[list[tuple]]]:
    """Every distinct request as pool examples: the log-likelihood requests of one context in
    one example, each rolling text and each generation in its own."""
    examples: dict[tuple, dict] = {}
    keys: dict[tuple, list[tuple]] = {}
    for task in tasks.values():
        for instance in task.instances:
            group, example, key = _example(task, instance)
            if group not in examples:
                examples[group], keys[group] = example, []
            if key not in keys[group]:
                keys[group].append(key)
                if example["kind"] == "loglikelihood":
                    examples[group]["choices"].append(instance.args[1])
    return list(examples.values()), list(keys.values())


def _example(task, instance) -> tuple[tuple, dict, tuple]:
    kind, args = instance.request_type, instance.args
    if kind == "loglikelihood":
        return ("ll", args[0]), {"kind": kind, "prompt": args[0], "choices": []}, (kind, *args)
    if kind == "loglikelihood_rolling":
        return ("rolling", args[0]), {"kind": "rolling", "prompt": args[0]}, (kind, args[0])
    context, kwargs = args
    key = (kind, context, _kwargs_key(kwargs))
    return key, _generation(task, instance, context, kwargs), key


def _generation(task, instance, context: str, kwargs: dict) -> dict:
    until = kwargs.get("until") or []
    target = task.doc_to_target(instance.doc)
    draft = task.config.target_delimiter + target if isinstance(target, str) else None
    return {
        "kind": "generate",
        "prompt": context,
        "until": [until] if isinstance(until, str) else list(until),
        "max_gen_toks": int(_max_gen_toks(kwargs)),
        "draft": draft,
    }


def _max_gen_toks(kwargs: dict) -> int:
    """lm-eval's `normalize_gen_kwargs`: the first of its names for the token limit."""
    for name in ("max_gen_toks", "max_new_tokens", "max_tokens", "max_completion_tokens"):
        if kwargs.get(name) is not None:
            return kwargs[name]
    return DEFAULT_MAX_GEN_TOKS


def _kwargs_key(kwargs: dict) -> str:
    return json.dumps(kwargs, sort_keys=True, default=str)


def _responses(found: dict) -> list:
    """An observation as the responses lm-eval expects, one per request key of its example."""
    if "logprobs" in found:
        return [(lp, g) for lp, g in zip(found["logprobs"], found["greedy"])]
    return [found["logprob"] if "logprob" in found else found["text"]]


class ReplayLM(LM):
    """An lm-eval model that answers from a table of answers the actors computed."""

    def __init__(self, answers: dict):
        super().__init__()
        self.answers = answers

    def loglikelihood(self, requests, disable_tqdm: bool = False):
        return [self.answers[("loglikelihood", *r.args)] for r in requests]

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
        return [self.answers[("loglikelihood_rolling", r.args[0])] for r in requests]

    def generate_until(self, requests, disable_tqdm: bool = False):
        return [
            self.answers[("generate_until", r.args[0], _kwargs_key(r.args[1]))] for r in requests
        ]


def _replay(plan: HarnessPlan, answers: dict) -> dict:
    """lm-eval's results for one candidate, from its answers to the requests built once."""
    tasks = plan.loaded["tasks"].values()
    built = {task: task.instances for task in tasks}
    for task in tasks:
        # evaluate() builds the requests again; they are the ones the actors answered.
        task.build_all_requests = _keep(task, built[task])
    try:
        return evaluate(
            lm=ReplayLM(answers),
            task_dict=plan.loaded,
            limit=plan.config.limit,
            bootstrap_iters=BOOTSTRAP_ITERS,
            log_samples=False,
        )
    finally:
        for task in tasks:
            del task.build_all_requests


def _keep(task, instances: list):
    def build_all_requests(**_) -> None:
        for instance in instances:
            instance.resps, instance.filtered_resps = [], {}
        task._instances = instances

    return build_all_requests


def results_rows(plan: HarnessPlan, results: dict) -> list[dict]:
    """lm-eval's results as rows: one per (set, metric), the metric named as lm-eval names it
    (`acc`, or `exact_match,strict-match` for a filter other than `none`)."""
    table, rows = results["results"], []
    for name, (_, n) in plan.expected().items():
        for key, value in table[name].items():
            metric, _, where = key.partition(",")
            if not where or metric.endswith("_stderr"):
                continue
            error = table[name].get(f"{metric}_stderr,{where}")
            stderr = float(error) if isinstance(error, (int, float)) else math.nan
            rows.append(
                {
                    "eval_set": name,
                    "metric": metric if where == "none" else key,
                    "value": float(value),
                    # lm-eval's standard error, and the normal 95% interval it gives
                    "stderr": stderr,
                    "low": float(value) - Z95 * stderr,
                    "high": float(value) + Z95 * stderr,
                    "n": n,
                    "status": "ok",
                    "error": None,
                }
            )
    return rows
