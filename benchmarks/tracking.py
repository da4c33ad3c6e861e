"""The same small sweep with W&B tracking off and offline, in one Ray session: wall time, and
whether every report of every trial is in the W&B run files.

The sweep: tiny-random Llama, 4 full fine-tunes (2 learning rates x 2 seeds) of 40 steps that
report every 2 (20 reports a trial), a uniform soup per learning rate, and evaluation of every
candidate; with tracking, 4 trial runs, 2 merge runs and a results run. A first run warms the
Ray session up and is not counted; then runs alternate off, offline, off, offline.

    .venv/bin/python benchmarks/tracking.py [--repeats 2] [--steps 40]

The last line is one JSON object with the figures (ratio: offline W&B's wall time over no
tracking's; goal <= 1.05; missing_steps: reports absent from the run files, goal 0).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.storage import sweep as storage_sweep  # noqa: E402
from tests.wandb_files import read_runs  # noqa: E402


def sweep(name: str, steps: int, tracked: bool) -> dict:
    """The storage benchmark's sweep, reporting every 2 steps, with or without W&B."""
    definition = storage_sweep(name, steps)
    definition["train"]["eval_every"] = 2
    return definition | {"tracking": {"wandb": {"project": "bench"}} if tracked else {}}


def missing_steps(run_dir: Path) -> tuple[int, int]:
    """Reports in the trials' Tune results that the trial's W&B run lacks, and reports in all."""
    from engine.train import records

    missing = total = 0
    for run in read_runs(run_dir):
        if run.job_type != "train":
            continue
        steps = set()
        for folder in records.trial_folders(run_dir / "tune", run.name):
            lines = (folder / "result.json").read_text().splitlines()
            steps |= {json.loads(line)["step"] for line in lines}
        missing += len(steps - set(run.history))
        total += len(steps)
    return missing, total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--steps", type=int, default=40)
    args = parser.parse_args()
    import ray

    import engine
    from sweeps import parse_sweep

    work = Path(tempfile.mkdtemp(prefix="raysoup-tracking-"))
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    times: dict[str, list[float]] = {"off": [], "offline": []}
    missing = total = 0
    try:
        engine.run(parse_sweep(sweep("warmup", args.steps, False)), str(work), progress=False)
        for repeat in range(args.repeats):
            for mode in ("off", "offline"):
                name = f"{mode}{repeat}"
                started = time.perf_counter()
                definition = parse_sweep(sweep(name, args.steps, mode == "offline"))
                result = engine.run(definition, str(work), progress=False)
                times[mode].append(time.perf_counter() - started)
                if result.failures():
                    raise SystemExit(f"{name}: {result.failures()}")
                if mode == "offline":
                    gone, reports = missing_steps(Path(result.run_dir))
                    missing, total = missing + gone, total + reports
                print(f"{mode:>8} run {repeat}: {times[mode][-1]:6.1f} s", flush=True)
    finally:
        ray.shutdown()
    tracked, plain = statistics.mean(times["offline"]), statistics.mean(times["off"])
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"\nmean wall time: offline W&B {tracked:.1f} s, no tracking {plain:.1f} s")
    print(f"ratio {tracked / plain:.3f}; reports missing from the run files: {missing} of {total}")
    print(f"driver peak RSS {peak:.0f} MB")
    print(
        json.dumps(
            {
                "bench": "tracking",
                "ours": round(tracked, 2),
                "peer": round(plain, 2),
                "ratio": round(tracked / plain, 3),
                "unit": "seconds (offline W&B vs no tracking)",
                "runs": times,
                "missing_steps": missing,
                "reported_steps": total,
                "driver_peak_rss_mb": round(peak),
            }
        )
    )


if __name__ == "__main__":
    main()
