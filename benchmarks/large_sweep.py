"""The cost of a large sweep: 256 trials of one optimizer step through raysoup against a bare
Ray Tune script (`reuse_actors=True`) running the same loop on the same data.

Each side runs in its own process with its own local Ray of 2 CPUs (Ray's start is not timed),
so each reports its driver's peak memory. raysoup's fixed costs are reported apart: the time
before its first trial started (prepare: tokenizing once, checks) and after its last trial
ended (evaluating 257 candidates on the selection set, the report), read from the trials'
folders. The bare trials are `benchmarks/trial_overhead.py`'s (they tokenize their own data).

    .venv/bin/python benchmarks/large_sweep.py [--trials 256] [--steps 1]

The last line is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import ray

sys.path.insert(0, str(Path(__file__).resolve().parent))
from trial_overhead import LR, run_bare, run_ours  # noqa: E402

from engine.demo.tiny import save_tiny_model  # noqa: E402
from engine.train import records  # noqa: E402

SEEDS = [0, 1]


def trial_span(tune_dir: Path) -> tuple[float, float]:
    """When raysoup's first trial started and its last one ended (from the trials' folders)."""
    starts, ends = [], []
    for folder in tune_dir.iterdir():
        if folder.is_dir():
            starts += [a["started_at"] for a in records.read_attempts(folder)]
            ends += [
                (records.marker(c) or {}).get("saved_at", 0) for c in folder.glob("checkpoint_*")
            ]
    return min(starts), max(ends)


def one_side(side: str, trials: int, steps: int) -> dict:
    work = Path(tempfile.mkdtemp(prefix=f"raysoup-large-{side}-"))
    model_path = str(save_tiny_model(work / "model", arch="llama", seed=0))
    lrs = [LR * (1 + i / trials) for i in range(trials // len(SEEDS))]
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    started = time.time()
    run = run_bare if side == "bare" else run_ours
    rows = run(model_path, lrs, SEEDS, steps, str(work / "runs"))
    ended = time.time()
    out = {
        "side": side,
        "trials": len(rows),
        "seconds": round(ended - started, 2),
        "driver_peak_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    if side == "ours":
        first, last = trial_span(work / "runs" / "ours" / "tune")
        out["before_first_trial_s"] = round(first - started, 2)
        out["after_last_trial_s"] = round(ended - last, 2)
    ray.shutdown()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=256)
    parser.add_argument("--steps", type=int, default=1)
    parser.add_argument("--side", choices=["bare", "ours"])
    args = parser.parse_args()
    if args.side:
        print(json.dumps(one_side(args.side, args.trials, args.steps)))
        return
    found = {}
    for side in ("bare", "ours"):
        command = [sys.executable, __file__, "--side", side, "--trials", str(args.trials)]
        done = subprocess.run(
            command + ["--steps", str(args.steps)], capture_output=True, text=True
        )
        if done.returncode != 0:
            sys.exit(f"{side} failed:\n{done.stderr[-3000:]}")
        found[side] = json.loads(done.stdout.strip().splitlines()[-1])
        print(f"{side}: {found[side]}")
    ours, bare = found["ours"]["seconds"], found["bare"]["seconds"]
    fixed = found["ours"]["before_first_trial_s"] + found["ours"]["after_last_trial_s"]
    print(
        f"{args.trials} trials of {args.steps} step(s): raysoup {ours:.1f} s (of which "
        f"{fixed:.1f} s before the first trial and after the last), bare Tune {bare:.1f} s; "
        f"ratio {ours / bare:.2f}, trials alone {(ours - fixed) / bare:.2f} (goal <= 1.10)"
    )
    print(
        json.dumps(
            {
                "bench": "large_sweep",
                "trials": args.trials,
                "steps": args.steps,
                "ours": ours,
                "peer": bare,
                "ratio": round(ours / bare, 3),
                "ratio_trials_only": round((ours - fixed) / bare, 3),
                "ours_before_first_trial_s": found["ours"]["before_first_trial_s"],
                "ours_after_last_trial_s": found["ours"]["after_last_trial_s"],
                "driver_peak_mb": {s: found[s]["driver_peak_mb"] for s in found},
            }
        )
    )


if __name__ == "__main__":
    main()
