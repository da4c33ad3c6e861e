"""The same small sweep with its run directory in a local folder and on S3 (moto's S3 server on
loopback, started here), in one Ray session: wall time, and the bytes written to storage by part.

The sweep: tiny-random Llama, 4 full fine-tunes (2 learning rates x 2 seeds), checkpoints
every 10 of 40 steps (the newest kept), a uniform soup per learning rate, and evaluation of
every candidate. A first local run warms the Ray session up (worker processes, imports) and is
not counted; then runs alternate local, S3, local, S3, each from an empty run directory (and,
for S3, an empty cache, as on a fresh machine).

    .venv/bin/python benchmarks/storage.py [--repeats 2] [--steps 40]

Needs the dev extra (moto's server). The last line is one JSON object with the figures (ratio:
S3's wall time over the local folder's; goal <= 1.3).
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.s3_server import s3_server  # noqa: E402

BUCKET = "bench"


def sweep(name: str, steps: int) -> dict:
    data = REPO / "engine" / "demo" / "data" / "add"
    return {
        "name": name,
        "model": {"preset": "tiny-random"},
        "data": {
            "train": str(data / "train.jsonl"),
            "eval": str(data / "eval.jsonl"),
            "format": "prompt_completion",
        },
        "train": {
            "lr": {"grid": [1e-3, 3e-3]},
            "max_steps": steps,
            "batch_size": 8,
            "seq_len": 24,
            "eval_every": steps // 4,
        },
        "seeds": [0, 1],
        "checkpoint": {"every": steps // 4, "keep": 1},
        "resources": {"cpus_per_trial": 1, "max_failures": 0},
        "merge": [{"type": "soup", "method": "uniform", "across": ["seed"]}],
        "evaluate": {"batch_size": 16},
    }


def part(rel: str) -> str:
    if "/checkpoint_" in rel:
        return "optimizer state" if rel.endswith("trainer_state.pt") else "checkpoints (rest)"
    if rel.startswith("merges/"):
        return "merges"
    if rel.startswith("data/"):
        return "data"
    return "other"


def stored_bytes(prefix: str) -> dict[str, int]:
    import boto3

    sizes: dict[str, int] = {}
    pages = boto3.client("s3").get_paginator("list_objects_v2")
    for page in pages.paginate(Bucket=BUCKET, Prefix=prefix):
        for item in page.get("Contents", []):
            name = part(item["Key"].removeprefix(prefix))
            sizes[name] = sizes.get(name, 0) + item["Size"]
    return sizes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--steps", type=int, default=40)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="raysoup-storage-"))
    with s3_server(BUCKET, "bench", work / "cache"):
        times, written = runs(work, args.repeats, args.steps)
    s3, local = statistics.mean(times["s3"]), statistics.mean(times["local"])
    total = sum(written.values())
    print(f"\nmean wall time: S3 {s3:.1f} s, local folder {local:.1f} s, ratio {s3 / local:.2f}")
    print(f"left on S3 by the last run: {total:,} bytes")
    for name, size in sorted(written.items(), key=lambda kv: -kv[1]):
        print(f"  {name:<20} {size:>12,}  {size / total:6.1%}")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"driver peak RSS {peak:.0f} MB")
    print(
        json.dumps(
            {
                "bench": "storage",
                "ours": round(s3, 2),
                "peer": round(local, 2),
                "ratio": round(s3 / local, 3),
                "unit": "seconds (S3 on loopback vs a local folder)",
                "runs": times,
                "bytes_written": written,
                "driver_peak_rss_mb": round(peak),
            }
        )
    )


def runs(work: Path, repeats: int, steps: int) -> tuple[dict[str, list[float]], dict[str, int]]:
    """Wall times of the local and S3 runs, and what the last S3 run left on storage."""
    import ray

    import engine
    from sweeps import parse_sweep

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    times: dict[str, list[float]] = {"local": [], "s3": []}
    written: dict[str, int] = {}
    try:
        engine.run(parse_sweep(sweep("warmup", steps)), str(work / "runs"), progress=False)
        for repeat in range(repeats):
            for where in ("local", "s3"):
                name = f"{where}{repeat}"
                storage = str(work / "runs") if where == "local" else f"s3://{BUCKET}/runs"
                shutil.rmtree(work / "cache", ignore_errors=True)
                started = time.perf_counter()
                result = engine.run(parse_sweep(sweep(name, steps)), storage, progress=False)
                times[where].append(time.perf_counter() - started)
                failed = result.failures()
                if failed:
                    raise SystemExit(f"{name}: {failed}")
                if where == "s3":
                    written = stored_bytes(f"runs/{name}/")
                print(f"{where:>5} run {repeat}: {times[where][-1]:6.1f} s", flush=True)
    finally:
        ray.shutdown()
    return times, written


if __name__ == "__main__":
    main()
