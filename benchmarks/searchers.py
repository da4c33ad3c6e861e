"""Optuna's TPE against random search: trials needed to come within 1% of the grid's best.

The space is `benchmarks/search.py`'s 27 configurations of the demo's addition task (learning
rate x warm-up x batch size), each a `choice` here. The full grid runs first (every trial to its
end) and gives the best selection loss. Then, for each of 3 searcher seeds, `search: optuna`
(5 random points first, two trials at a time) and `search: random` each train up to `--budget`
points; a search's figure is the number of trials, in the order they finished, until one came
within 1% of the grid's best (budget + 1 when none did). The goal: Optuna's median below
random's. Everything runs in one Ray session.

    .venv/bin/python benchmarks/searchers.py [--budget 18] [--steps 160]

The last line is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import ray

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import engine  # noqa: E402
from benchmarks.search import sweep as grid_sweep  # noqa: E402
from sweeps import parse_sweep  # noqa: E402

SEEDS = (0, 1, 2)


def searched(name: str, steps: int, search: dict, budget: int) -> dict:
    """The grid's sweep with every grid turned into a `choice` of the same values."""
    definition = grid_sweep(name, steps, 10, {"type": "fifo"})
    train = definition["train"]
    for field in ("lr", "warmup_steps", "batch_size"):
        train[field] = {"choice": train[field]["grid"]}
    return {**definition, "search": search, "num_samples": budget}


def run(definition: dict, storage: str):
    started = time.perf_counter()
    trials = engine.run(parse_sweep(definition), storage=storage, progress=False).trials
    failed = trials[trials["status"] != "done"]
    assert failed.empty, failed[["name", "status", "error"]]
    return trials.sort_values("finished_at"), time.perf_counter() - started


def needed(trials, target: float, budget: int) -> int:
    """Trials, in the order they finished, until one reached `target` (budget + 1: none)."""
    reached = (trials["eval_loss"] <= target).to_numpy().nonzero()[0]
    return int(reached[0]) + 1 if len(reached) else budget + 1


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--budget", type=int, default=18, help="points each search trains")
    parser.add_argument("--steps", type=int, default=160)
    args = parser.parse_args()
    ray.init(include_dashboard=False, log_to_driver=False, logging_level="WARNING")
    found: dict[str, list[int]] = {"optuna": [], "random": []}
    seconds: dict[str, float] = {"optuna": 0.0, "random": 0.0}
    with tempfile.TemporaryDirectory() as storage:
        grid, grid_s = run(grid_sweep("grid", args.steps, 10, {"type": "fifo"}), storage)
        best = grid["eval_loss"].min()
        target = best * 1.01
        print(f"grid: {len(grid)} trials, best eval_loss {best:.4f}, {grid_s:.1f} s")
        for seed in SEEDS:
            for kind, search in (
                (
                    "optuna",
                    {"type": "optuna", "seed": seed, "startup_trials": 5, "max_concurrent": 2},
                ),
                ("random", {"type": "random", "seed": seed}),
            ):
                definition = searched(f"{kind}{seed}", args.steps, search, args.budget)
                trials, took = run(definition, storage)
                found[kind].append(needed(trials, target, args.budget))
                seconds[kind] += took
                print(
                    f"{kind} seed {seed}: within 1% after {found[kind][-1]} trial(s) "
                    f"(best {trials['eval_loss'].min():.4f}, {took:.1f} s)"
                )
    ours, peer = statistics.median(found["optuna"]), statistics.median(found["random"])
    print(f"median trials to within 1% of the grid's best: optuna {ours}, random {peer}")
    figures = {
        "bench": "search_optuna_vs_random",
        "ours": ours,
        "peer": peer,
        "ratio": round(ours / peer, 4),
        "unit": f"trials to within 1% of the grid's best (median of {len(SEEDS)} seeds)",
        "trials_needed": found,
        "budget": args.budget,
        "grid_best_eval_loss": round(float(best), 5),
        "seconds": {"grid": round(grid_s, 1), **{k: round(v, 1) for k, v in seconds.items()}},
    }
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
