"""ASHA against the full grid: the compute each spends, and whether ASHA still finds the best.

Both sweeps train the bundled demo model on the demo's addition task over the same grid of 27
configurations (learning rate x warm-up x batch size), in one Ray session: first every trial to
its end (`fifo`), then with `scheduler: asha`, once for each `--order-seeds` seed of the
configurations' shuffled start order (`search.order: shuffled`; `--order given` runs ASHA once,
in the grid's own order). Compute is optimizer steps summed over trials (a stopped trial counts
the steps it ran). The goal: ASHA reaches within 1% of the grid's best selection loss with at
most a third of the grid's compute; the figure is the median over the orders.

    .venv/bin/python benchmarks/search.py [--steps 160] [--eval-every 10] [--grace 15]
        [--reduction-factor 4] [--order shuffled] [--order-seeds 0 1 2]

The last line is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time

import ray

import engine
from engine.demo import DATA_DIR
from sweeps import parse_sweep


def sweep(
    name: str, steps: int, eval_every: int, scheduler: dict, search: dict | None = None
) -> dict:
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
        "search": search or {"type": "grid"},
    }


def compute(trials) -> int:
    """Optimizer steps run, summed over trials: a stopped trial ran up to its stop."""
    ran = trials["stopped_at"].where(trials["status"] == "stopped", trials["steps"])
    return int(ran.sum())


def run(name: str, storage: str, steps: int, eval_every: int, scheduler: dict, search: dict):
    started = time.perf_counter()
    result = engine.run(
        parse_sweep(sweep(name, steps, eval_every, scheduler, search)),
        storage=storage,
        progress=False,
    )
    trials = result.trials
    failed = trials[~trials["status"].isin(["done", "stopped"])]
    assert failed.empty, failed[["name", "status", "error"]]
    return trials, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=160)
    parser.add_argument("--eval-every", type=int, default=10)
    parser.add_argument("--reduction-factor", type=float, default=4.0)
    parser.add_argument("--grace", type=int, default=15)
    parser.add_argument("--order", choices=["given", "shuffled"], default="shuffled")
    parser.add_argument("--order-seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    ray.init(include_dashboard=False, log_to_driver=False, logging_level="WARNING")
    asha = {"type": "asha", "grace_period": args.grace, "reduction_factor": args.reduction_factor}
    seeds = args.order_seeds if args.order == "shuffled" else [0]
    with tempfile.TemporaryDirectory() as storage:
        grid, grid_s = run(
            "grid", storage, args.steps, args.eval_every, {"type": "fifo"}, {"type": "grid"}
        )
        best_grid, peer = grid["eval_loss"].min(), compute(grid)
        winner = grid.loc[grid["eval_loss"].idxmin(), "name"]
        print(f"grid: {len(grid)} trials, {peer} steps, best eval_loss {best_grid:.4f} ({winner}), "
              f"{grid_s:.1f} s")  # fmt: skip
        runs = []
        for seed in seeds:
            search = {"type": "grid", "order": args.order, "order_seed": seed}
            early, early_s = run(f"asha{seed}", storage, args.steps, args.eval_every, asha, search)
            best, fate = early["eval_loss"].min(), early.set_index("name").loc[winner]
            runs.append(
                {
                    "order_seed": seed,
                    "steps": compute(early),
                    "ratio": round(compute(early) / peer, 4),
                    "best_eval_loss": round(best, 5),
                    "within_1pct": bool(best <= best_grid * 1.01),
                    "stopped": int((early["status"] == "stopped").sum()),
                    "seconds": round(early_s, 1),
                }
            )
            print(
                f"asha, order {args.order} (seed {seed}): {runs[-1]['stopped']} of {len(early)} "
                f"stopped early, {runs[-1]['steps']} steps (ratio {runs[-1]['ratio']:.3f}), best "
                f"eval_loss {best:.4f} ({'within' if runs[-1]['within_1pct'] else 'NOT within'} "
                f"1% of the grid's); the grid's best trial {fate['status']} at step "
                f"{fate['steps']}; {early_s:.1f} s"
            )
    ours = int(statistics.median(r["steps"] for r in runs))
    print(f"compute ratio asha/grid, median over orders: {ours / peer:.3f} (goal <= 0.333)")
    figures = {
        "bench": "search_asha_vs_grid",
        "ours": ours,
        "peer": peer,
        "ratio": round(ours / peer, 4),
        "unit": "optimizer steps (median over orders)",
        "within_1pct": all(r["within_1pct"] for r in runs),
        "grid_best_eval_loss": round(best_grid, 5),
        "grace_period": args.grace,
        "reduction_factor": args.reduction_factor,
        "order": args.order,
        "runs": runs,
        "trials": len(grid),
        "grid_seconds": round(grid_s, 1),
    }
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
