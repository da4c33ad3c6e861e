"""The evaluation actor pool: every candidate on every evaluation set, through Ray Data.

The driver reads the sets, sorts each set's examples by length and cuts them into work units
of a few batches, one row of a Ray Dataset per (candidate, set, unit), grouped by candidate. A
fixed pool of `EvalActor`s (`map_batches` with a callable class) turns units into per-example
observations; each actor keeps the model it holds until a unit of another candidate arrives,
so it loads each model once. The driver then reduces observations to metric values with the
metric registry and writes `evals.parquet`.
"""

from __future__ import annotations

import itertools
import json
import math
import time
import warnings
from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd
import ray
import ray.data
from ray.util.annotations import RayDeprecationWarning

from engine.core.progress import job_bar
from engine.core.rundir import write_table
from engine.core.session import quiet_ray
from engine.core.storage import shown
from engine.evaluate.sets import SetPlan, by_length, plan_file_set
from sweeps import SweepError
from sweeps.evaluation import EvalSetConfig, EvaluateConfig, HarnessSetConfig

if TYPE_CHECKING:
    from engine.evaluate.harness import HarnessPlan

KINDS = ("trial", "checkpoint_average", "soup", "task_merge", "base")
COLUMNS = [
    "candidate",
    "kind",
    "eval_set",
    "split",
    "metric",
    "value",
    "stderr",
    "low",
    "high",
    "n",
    "status",
    "error",
    "seconds",
    "path",
]
EVALS_FILE = "evals.parquet"
UNIT_EXAMPLES = 2048


@dataclass(frozen=True)
class Candidate:
    """A model to evaluate: a Hugging Face model folder or a LoRA adapter folder.

    `kind` says where it came from (one of `KINDS` in a sweep; any string is accepted).
    `base` is the adapter's base model; without it the adapter's `base_model_name_or_path`.
    """

    name: str
    kind: str
    path: str
    base: str | None = None


def evaluate_candidates(
    candidates: list[Candidate],
    sets: list[EvalSetConfig] | None = None,
    config: EvaluateConfig | None = None,
    *,
    splits: list[str] | None = None,
    out: str | Path | None = None,
    progress: bool = False,
    only: dict[str, set[str]] | None = None,
    on_result: Callable[[pd.DataFrame], None] | None = None,
) -> pd.DataFrame:
    """Evaluate every candidate on every set; one row per (candidate, set, metric).

    `sets` defaults to `config.sets`; `splits` keeps only sets of those splits (selection code
    passes `["selection"]`, and then no test set file is opened). `only` limits each candidate
    (by name) to the sets (by name) it lists: what a resumed sweep still lacks. A candidate
    that fails to load or evaluate gets rows with status `failed` and the reason; the others
    complete. `on_result` is called with the rows of each (candidate, set) as soon as that set
    is done for that candidate (at the end with `engine: vllm`), so a caller can keep them. With
    `out` (a folder), the table is also written to `out/evals.parquet` atomically. `progress`
    shows a bar of candidate-examples done. Needs Ray (started by the caller, for example with
    `engine.core.session.ray_session`).
    """
    config = config or EvaluateConfig()
    chosen = [
        s for s in (config.sets if sets is None else sets) if splits is None or s.split in splits
    ]
    _check_candidates(candidates)
    plans = [plan_set(s) for s in chosen]
    wanted = [
        {s for s, plan in enumerate(plans) if only is None or plan.config.name in only[c.name]}
        for c in candidates
    ]
    started = time.perf_counter()
    rows, pool = (
        run_pool(candidates, plans, config, progress, wanted, on_result)
        if plans and candidates
        else ([], {})
    )
    table = results_table(candidates, plans, rows, wanted)
    table.attrs.update(pool, seconds=round(time.perf_counter() - started, 3))
    if out is not None:
        write_table(table, Path(out) / EVALS_FILE)
    return table


def plan_set(eval_set: EvalSetConfig | HarnessSetConfig) -> SetPlan | HarnessPlan:
    """A set ready to run: a file set's metrics and examples (`plan_file_set`), or an `lm_eval`
    set's tasks and their requests (`engine.evaluate.harness`); bad input raises `SweepError`."""
    if eval_set.type == "lm_eval":
        # Imported here: lm-eval is optional, and importing it takes a second or more.
        from engine.evaluate import harness

        return harness.plan(eval_set)
    return plan_file_set(eval_set)


def _check_candidates(candidates: list[Candidate]) -> None:
    names = [c.name for c in candidates]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise SweepError(f"candidates: names must be unique; repeated: {', '.join(repeated)}")


def work_units(
    candidates: list[Candidate],
    plans: list[SetPlan],
    pieces: int,
    needs: list[list[str]] | None = None,
    keep: list[set[int]] | None = None,
    wanted: list[set[int]] | None = None,
) -> list[dict]:
    """Dataset rows: each candidate's examples (set by set, each set sorted by length) cut into
    `pieces` runs of about equal size; a run lists its parts, one per set it touches. `needs`
    and `keep` (per plan: what the actors compute, and of which examples) default to all;
    `wanted` (per candidate: the plans it is evaluated on) to every plan."""
    needs = needs or [plan.needs for plan in plans]
    ordered = [
        (s, example)
        for s, plan in enumerate(plans)
        for example in by_length(plan)
        if keep is None or example["i"] in keep[s]
    ]
    units = []
    for c in range(len(candidates)):
        mine = [pair for pair in ordered if wanted is None or pair[0] in wanted[c]]
        size = max(1, math.ceil(len(mine) / pieces))
        for start in range(0, len(mine), size):
            parts = [
                {"set": s, "needs": needs[s], "examples": [e for _, e in group]}
                for s, group in itertools.groupby(
                    mine[start : start + size], key=lambda pair: pair[0]
                )
            ]
            units.append({"candidate": c, "payload": json.dumps(parts)})
    return units


def unit_pieces(candidates: int, examples: int, actors: int) -> int:
    """Runs per candidate: one where there are enough candidates to keep every actor busy (each
    candidate is then loaded by one actor only), more where there are few candidates, and no
    run above `UNIT_EXAMPLES` examples (a Ray Data block's result comes back whole)."""
    return max(math.ceil(2 * actors / candidates), math.ceil(examples / UNIT_EXAMPLES), 1)


def run_pool(
    candidates: list[Candidate],
    plans: list[SetPlan],
    config: EvaluateConfig,
    progress: bool = False,
    wanted: list[set[int]] | None = None,
    on_result: Callable[[pd.DataFrame], None] | None = None,
) -> tuple[list[dict], dict]:
    """Run the work units through the actor pool (and generations through vLLM engines with
    `engine: vllm`); the rows and facts about the pool. `wanted` (per candidate, the plans it
    is evaluated on) defaults to all; `on_result` receives each finished (candidate, set)."""
    quiet_ray()
    wanted = wanted or [set(range(len(plans))) for _ in candidates]
    needs, keep = _actor_share(plans, config)
    examples = sum(len(k) for k in keep)
    total = sum(len(keep[s]) for mine in wanted for s in mine)
    actors = actor_count(config, math.ceil(total / config.batch_size))
    pieces = unit_pieces(len(candidates), examples, actors)
    units = work_units(candidates, plans, pieces, needs, keep, wanted) if total else []
    # With `engine: vllm` a set is done only once its generations are joined in, at the end.
    finished = (
        _Finished(candidates, plans, keep, wanted, on_result)
        if on_result and config.engine != "vllm"
        else None
    )
    threads = config.torch_threads or max(
        int(config.cpus_per_actor), int(ray.cluster_resources().get("CPU", 1)) // actors
    )
    settings = {
        # Locations, not paths: an actor's node keeps its copy of a run directory on object
        # storage wherever its own cache is (`storage.local`).
        "candidates": [
            {**asdict(c), "path": shown(c.path), "base": shown(c.base)} for c in candidates
        ],
        "sets": [p.spec for p in plans],
        "device": "cuda" if config.gpus_per_actor > 0 else "cpu",
        "threads": threads,
        "precision": config.precision,
        "batch_size": config.batch_size,
        "batch_tokens": config.batch_tokens,
    }
    # With `engine: vllm`, a set that only generates leaves the actors nothing to do.
    dataset = _pool_dataset(units, actors, config, settings) if units else None
    rows: list[dict] = []
    with job_bar(
        f"evaluation ({actors} actor{'s' * (actors > 1)}, candidate-examples)",
        total,
        progress,
    ) as done:
        for row in dataset.iter_rows() if dataset is not None else []:
            rows.append(row)
            done("", "ok")
            if finished is not None:
                finished.add(row)
    if config.engine == "vllm":
        rows = _with_generations(rows, candidates, plans, config)
        if on_result is not None:
            on_result(results_table(candidates, plans, rows, wanted))
    return rows, {
        "actors": actors,
        "actor_processes": len({r["actor"] for r in rows}),
        "torch_threads": threads,
        "units": len(units),
        "model_loads": _loads(candidates, rows),
        "prefix_tree_share": round(sum(r["tree"] for r in rows) / max(len(rows), 1), 4),
        "peak_actor_rss_mb": round(max((r["rss_mb"] for r in rows), default=0), 1),
    }


def _actor_share(plans: list[SetPlan], config: EvaluateConfig):
    """Per plan, what the actors compute and for which examples: everything, or with
    `engine: vllm` everything but generation."""
    if config.engine != "vllm":
        return [p.needs for p in plans], [set(range(len(p.examples))) for p in plans]
    # Imported here: the vLLM path loads tokenizers on the driver (torch, transformers).
    from engine.evaluate import vllm_generation

    vllm_generation.engine_count()  # no GPU is an error now, not actors waiting for one
    return vllm_generation.actor_share(plans)


def _with_generations(rows, candidates, plans, config: EvaluateConfig) -> list[dict]:
    """The actors' rows joined with the vLLM engines' generations, example by example."""
    from engine.evaluate import vllm_generation  # see `_actor_share`

    made = vllm_generation.generation_rows(candidates, plans, config)
    return vllm_generation.merge_rows(rows + made)


def _pool_dataset(units: list[dict], actors: int, config: EvaluateConfig, kwargs: dict):
    """The units (one per block and per call, so they reach the actors in candidate order)
    mapped by a pool of `EvalActor`s (sized by `_strategy`)."""
    # Imported here: the worker imports torch and transformers, which only the actors need.
    from engine.evaluate.worker import EvalActor

    with warnings.catch_warnings():  # Ray 2.60 has no named parameter for max_restarts yet
        warnings.simplefilter("ignore", RayDeprecationWarning)
        return ray.data.from_items(units, override_num_blocks=len(units)).map_batches(
            EvalActor,
            batch_size=1,
            batch_format="pandas",
            fn_constructor_kwargs=kwargs,
            compute=_strategy(config, actors),
            num_cpus=config.cpus_per_actor,
            num_gpus=config.gpus_per_actor or None,
            # An actor that dies (out of memory, say) would die again on restart; a failed
            # evaluation is redone by resuming instead.
            max_restarts=0,
        )


def actor_count(config: EvaluateConfig, units: int) -> int:
    """`actors`, or for `auto` what the cluster's CPUs (GPUs) allow; never more than the
    batches."""
    if config.actors != "auto":
        return max(1, min(config.actors, units))
    total = ray.cluster_resources()
    if config.gpus_per_actor > 0:
        fit = total.get("GPU", 0) // config.gpus_per_actor
    else:
        fit = total.get("CPU", 0) // config.cpus_per_actor
    return int(max(1, min(fit, units)))


def _strategy(config: EvaluateConfig, actors: int):
    """A fixed pool for a number the user chose. For `auto`, a pool that starts with the actors
    that fit now and grows to `actors` as resources free up (the trials and merges of a sweep
    may still be letting go of their CPUs when evaluation starts)."""
    if config.actors != "auto":
        return ray.data.ActorPoolStrategy(size=actors)
    return ray.data.ActorPoolStrategy(min_size=1, max_size=actors, initial_size=actors)


def _loads(candidates: list[Candidate], rows: list[dict]) -> dict[str, int]:
    loads: dict[str, int] = defaultdict(int)
    for row in rows:
        loads[candidates[row["candidate"]].name] += int(row["loads"])
    return dict(loads)


def results_table(
    candidates: list[Candidate],
    plans: list[SetPlan],
    rows: list[dict],
    wanted: list[set[int]] | None = None,
) -> pd.DataFrame:
    """Observations reduced to one row per (candidate, set, metric), for the sets each
    candidate is evaluated on (`wanted`; default all)."""
    groups: dict[tuple[int, int], list[dict]] = defaultdict(list)
    for row in rows:
        groups[(int(row["candidate"]), int(row["set"]))].append(row)
    records = []
    for c, candidate in enumerate(candidates):
        for s, plan in enumerate(plans):
            if wanted is None or s in wanted[c]:
                records += _rows(candidate, plan, sorted(groups[(c, s)], key=lambda r: r["index"]))
    return pd.DataFrame(records, columns=COLUMNS)


class _Finished:
    """Hands each (candidate, set) to `on_result` as soon as all its examples are back."""

    def __init__(self, candidates, plans, keep, wanted, on_result) -> None:
        self.candidates, self.plans, self.on_result = candidates, plans, on_result
        self.expected = {(c, s): len(keep[s]) for c, mine in enumerate(wanted) for s in mine}
        self.groups: dict[tuple[int, int], list[dict]] = defaultdict(list)

    def add(self, row: dict) -> None:
        key = (int(row["candidate"]), int(row["set"]))
        self.groups[key].append(row)
        if len(self.groups[key]) == self.expected.get(key):
            c, s = key
            group = sorted(self.groups.pop(key), key=lambda r: r["index"])
            records = _rows(self.candidates[c], self.plans[s], group)
            self.on_result(pd.DataFrame(records, columns=COLUMNS))


def _rows(candidate: Candidate, plan: SetPlan, group: list[dict]) -> list[dict]:
    error = next((r["error"] for r in group if r["error"]), None)
    if error is None and len(group) != len(plan.examples):
        error = f"{len(plan.examples) - len(group)} example(s) were not evaluated"
    observations = [json.loads(r["obs"]) for r in group]
    common = {
        "candidate": candidate.name,
        "kind": candidate.kind,
        "split": plan.config.split,
        "seconds": round(sum(r["seconds"] for r in group), 4),
        "path": candidate.path,
    }
    return [{**common, **row} for row in plan.results(observations, error)]


def candidates_from_paths(
    paths: list[str], kind: str = "model", names: list[str] | None = None
) -> list[Candidate]:
    """Candidates named by `names` (in order) or by a short label of each folder: its name, a
    checkpoint folder's with its parent's (`trial-a/checkpoint_000004`), and more of the path
    where labels repeat."""
    if names and len(names) != len(paths):
        raise SweepError(f"--name: {len(names)} name(s) for {len(paths)} model(s); give one each")
    labels = names or [_label(Path(p).resolve(), 1) for p in paths]
    for depth in range(2, 6):
        repeated = {x for x in labels if labels.count(x) > 1}
        if not repeated or names:
            break
        labels = [
            _label(Path(p).resolve(), depth) if x in repeated else x for x, p in zip(labels, paths)
        ]
    return [Candidate(label, kind, str(p)) for label, p in zip(labels, paths)]


def _label(folder: Path, depth: int) -> str:
    parts = folder.parts[-depth:]
    if parts[-1].startswith("checkpoint") and depth == 1:
        parts = folder.parts[-2:]
    return "/".join(parts)
