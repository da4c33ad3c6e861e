"""The evaluate stage's checks before any work starts: the sweep's own sets (a file set's file
and fields; an `lm_eval` set's tasks, their files and datasets), the generation engine, and
that some selection set reports the metric the leaderboard ranks by."""

from __future__ import annotations

from importlib.util import find_spec

from engine.core.files import source_fields
from engine.evaluate.sets import resolve_metrics, set_problems, sweep_sets
from sweeps import Sweep
from sweeps.evaluation import EvaluateConfig, HarnessSetConfig


def evaluate_problems(sweep: Sweep) -> list[str]:
    """The sweep's own eval sets, the engine, and that some selection set reports
    `evaluate.rank_by`."""
    problems, harness_metrics = engine_problems(sweep.evaluate), {}
    for index, eval_set in enumerate(sweep.evaluate.sets):
        where = f"evaluate.sets[{index}]"
        if eval_set.type == "lm_eval":
            found, harness_metrics[index] = harness_problems(eval_set, where)
            problems += found
        else:
            problems += set_problems(eval_set, where)
    sets = sweep_sets(sweep)
    selection = [s for s in sets if s.split == "selection"]
    if sets and not selection:
        problems.append(
            "evaluate: no selection set, so no candidate can be ranked; give each "
            "task an `eval` file, or add an evaluate set with `split: selection`"
        )
    if problems or not selection:
        return problems
    rank_by = sweep.evaluate.rank_by
    reported = [
        m for i, m in harness_metrics.items() if sweep.evaluate.sets[i].split == "selection"
    ]
    if not any(rank_by in m for m in reported) and not _ranked_files(sweep, selection):
        problems.append(
            f"evaluate.rank_by: no selection set reports {rank_by!r}; sets: "
            + ", ".join(name for s in selection for name in s.result_names())
        )
    return problems


def _ranked_files(sweep: Sweep, selection: list) -> list:
    return [
        s
        for s in selection
        if s.type == "file"
        and ("://" in s.path or sweep.evaluate.rank_by in resolve_metrics(s, source_fields(s.path)))
    ]


def harness_problems(eval_set: HarnessSetConfig, where: str) -> tuple[list[str], set[str]]:
    """An `lm_eval` set's problems (its tasks, their files and datasets) and the metric names
    it reports; lm-eval must be installed."""
    if find_spec("lm_eval") is None:
        return [
            f"{where}.type: an lm_eval set needs lm-evaluation-harness, which is not "
            "installed: pip install 'raysoup[lm-eval]'"
        ], set()
    # Imported here: lm-eval takes a second or more to import, and only lm_eval sets need it.
    from engine.evaluate.harness_tasks import check_tasks

    return check_tasks(eval_set, where)


def engine_problems(config: EvaluateConfig) -> list[str]:
    """`engine: vllm` where vLLM is not installed (its GPU need is checked with the config)."""
    if config.engine == "vllm" and find_spec("vllm") is None:
        return [
            "evaluate.engine: vllm is not installed here; install vllm where the GPU "
            "actors run (pip install vllm), or use engine: transformers"
        ]
    return []
