"""ASHA against the full grid: the compute each spends, and whether ASHA still finds the best.

Both sweeps train the bundled demo model on the demo's addition task over the same grid of 27
configurations (learning rate x warm-up x batch size), in one Ray session: first every trial to
its end (`fifo`), then with `scheduler: asha`. Compute is optimizer steps summed over trials (a
stopped trial counts the steps it ran). The goal: ASHA reaches within 1% of the grid's best
selection loss with at most a third of the grid's compute.

    .venv/bin/python benchmarks/search.py [--steps 160] [--eval-every 10]

The last line is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import ray

import engine
from engine.demo import DATA_DIR
from sweeps import parse_sweep


def sweep(name: str, steps: int, eval_every: int, scheduler: dict) -> dict:
    return {
        "name": name,
        "model": {"preset": "demo"},
        "finetune": {"method": "full"},
        "data": {
            "train": str(DATA_DIR / "add" / "train.jsonl"),
            "eval": str(DATA_DIR / "add" / "eval.jsonl"),
            "format": "prompt_completion",
        },
        "train": {
            "lr": {"grid": [3e-4, 1e-3, 3e-3]},
            "warmup_steps": {"grid": [0, 10, 40]},
            "batch_size": {"grid": [8, 16, 32]},
            "max_steps": steps,
            "seq_len": 24,
            "eval_every": eval_every,
        },
        "checkpoint": {"every": eval_every, "keep": 1},
        "scheduler": scheduler,
    }


def compute(trials) -> int:
    """Optimizer steps run, summed over trials: a stopped trial ran up to its stop."""
    ran = trials["stopped_at"].where(trials["status"] == "stopped", trials["steps"])
    return int(ran.sum())


def run(name: str, storage: str, steps: int, eval_every: int, scheduler: dict):
    started = time.perf_counter()
    result = engine.run(
        parse_sweep(sweep(name, steps, eval_every, scheduler)), storage=storage, progress=False
    )
    trials = result.trials
    failed = trials[~trials["status"].isin(["done", "stopped"])]
    assert failed.empty, failed[["name", "status", "error"]]
    return trials, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=160)
    parser.add_argument("--eval-every", type=int, default=10)
    parser.add_argument("--reduction-factor", type=float, default=3.0)
    parser.add_argument("--grace", type=int, default=None, help="default: --eval-every")
    args = parser.parse_args()
    ray.init(include_dashboard=False, log_to_driver=False, logging_level="WARNING")
    asha = {
        "type": "asha",
        "grace_period": args.grace or args.eval_every,
        "reduction_factor": args.reduction_factor,
    }
    with tempfile.TemporaryDirectory() as storage:
        grid, grid_s = run("grid", storage, args.steps, args.eval_every, {"type": "fifo"})
        early, early_s = run("asha", storage, args.steps, args.eval_every, asha)
    best_grid, best_asha = grid["eval_loss"].min(), early["eval_loss"].min()
    winner = grid.loc[grid["eval_loss"].idxmin(), "name"]
    fate = early.set_index("name").loc[winner]
    print(f"the grid's best trial {winner}: under asha {fate['status']} at step {fate['steps']}")
    ours, peer = compute(early), compute(grid)
    within = bool(best_asha <= best_grid * 1.01)
    stopped = int((early["status"] == "stopped").sum())
    print(f"grid: {len(grid)} trials, {peer} steps, best eval_loss {best_grid:.4f}, {grid_s:.1f} s")
    print(
        f"asha: {len(early)} trials ({stopped} stopped early), {ours} steps, best eval_loss "
        f"{best_asha:.4f} ({'within' if within else 'NOT within'} 1% of the grid's), "
        f"{early_s:.1f} s"
    )
    print(f"compute ratio asha/grid: {ours / peer:.3f} (goal <= 0.333)")
    figures = {
        "bench": "search_asha_vs_grid",
        "ours": ours,
        "peer": peer,
        "ratio": round(ours / peer, 4),
        "unit": "optimizer steps",
        "best_eval_loss": {"asha": round(best_asha, 5), "grid": round(best_grid, 5)},
        "within_1pct": within,
        "stopped": stopped,
        "grace_period": asha["grace_period"],
        "reduction_factor": asha["reduction_factor"],
        "trials": len(grid),
        "seconds": {"asha": round(early_s, 1), "grid": round(grid_s, 1)},
    }
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
