"""lm-evaluation-harness benchmark: raysoup's pool (2 actors) vs lm-eval's `simple_evaluate`.

Builds random Llama candidates (demo tokenizer; size set by --hidden / --layers) and two local
lm-eval tasks over the demo's eval files: multiple choice on `add` (acc, acc_norm; 4 choices)
and generation on `reverse` (exact_match; greedy, until a newline, --new tokens at most). The
peer is what a user of lm-eval would run: `simple_evaluate` with its Hugging Face backend once
per candidate, in one process, one `TaskManager` over the task folder made once (its time
counted), batch --batch on the CPU. raysoup runs one `evaluate_candidates` call over every
candidate with an `lm_eval` set, 2 actors, in a local Ray session started before timing (its
start-up is printed, not counted); its time includes loading the tasks, building the requests,
starting the actors and loading the models. Both sides' numbers are compared. The peer runs in
its own process, so its peak RSS is its own. The last line is one JSON object; `ratio` is the
peer's seconds over raysoup's (how many times faster raysoup is).

    python benchmarks/lm_eval.py [--candidates 8] [--hidden 256] [--layers 4] [--limit 100]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# Run as a script, this file's folder comes first on sys.path, and this file would stand in for
# the lm_eval package: the repository takes that place.
if sys.path and Path(sys.path[0] or ".").resolve() == REPO / "benchmarks":
    sys.path.pop(0)
sys.path.insert(0, str(REPO))

from benchmarks.pool_bench import agreement, peer_process, pool_figures, start_ray  # noqa: E402

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

TASKS = ("bench_add_mc", "bench_reverse_gen")


def write_tasks(root: Path, limit: int, new: int) -> Path:
    """The two task YAMLs, over the first `limit` rows of the demo's eval files."""
    from engine.demo import DATA_DIR

    bodies = {
        "bench_add_mc": (
            "add",
            'output_type: multiple_choice\ndoc_to_text: "{{prompt}}"\n'
            'doc_to_choice: "{{choices}}"\ndoc_to_target: answer\ntarget_delimiter: ""\n'
            "metric_list:\n  - metric: acc\n  - metric: acc_norm\n",
        ),
        "bench_reverse_gen": (
            "reverse",
            'output_type: generate_until\ndoc_to_text: "{{prompt}}"\n'
            'doc_to_target: "{{completion}}"\ntarget_delimiter: ""\n'
            f'generation_kwargs:\n  until: ["\\n"]\n  max_gen_toks: {new}\n'
            "metric_list:\n  - metric: exact_match\n",
        ),
    }
    folder = root / "tasks"
    folder.mkdir()
    for task, (source, body) in bodies.items():
        rows = (DATA_DIR / source / "eval.jsonl").read_text().splitlines()[:limit]
        data = folder / f"{task}.jsonl"
        data.write_text("\n".join(rows) + "\n")
        (folder / f"{task}.yaml").write_text(
            f"task: {task}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
            f"    test: {data}\ntest_split: test\n{body}"
        )
    return folder


# ---- the peer: lm-eval's simple_evaluate, once per candidate ---------------------------------


def peer(paths: list[str], tasks: str, batch: int) -> dict:
    importing = time.perf_counter()
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    imports = time.perf_counter() - importing
    started = time.perf_counter()
    manager = TaskManager(include_path=tasks, include_defaults=False)
    results = {}
    for path in paths:
        out = simple_evaluate(
            model="hf",
            model_args={"pretrained": path},
            tasks=list(TASKS),
            task_manager=manager,
            batch_size=batch,
            device="cpu",
        )
        for task in TASKS:
            results[f"{Path(path).name}/{task}"] = {
                k.split(",")[0]: float(v)
                for k, v in out["results"][task].items()
                if k.endswith(",none") and "_stderr" not in k
            }
    return {
        "seconds": time.perf_counter() - started,
        "imports": imports,
        "results": results,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


# ---- raysoup: one pool call over every candidate ---------------------------------------------


def ours(paths: list[str], tasks: str, batch: int, actors: int) -> dict:
    from engine.evaluate.pool import Candidate, evaluate_candidates
    from sweeps.evaluation import EvaluateConfig

    config = EvaluateConfig.model_validate(
        {
            "sets": [{"type": "lm_eval", "tasks": list(TASKS), "include_path": tasks}],
            "actors": actors,
            "batch_size": batch,
        }
    )
    candidates = [Candidate(Path(p).name, "trial", p) for p in paths]
    started = time.perf_counter()
    table = evaluate_candidates(candidates, config=config)
    figures = pool_figures(table, time.perf_counter() - started)
    figures["driver_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return figures


def spread(results: dict) -> dict:
    """Each task's metric over the candidates: [lowest, highest]."""
    out: dict[str, list[float]] = {}
    for key, metrics in results.items():
        for metric, value in metrics.items():
            name = f"{key.split('/')[1]}/{metric}"
            low, high = out.get(name, [value, value])
            out[name] = [min(low, value), max(high, value)]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--candidates", type=int, default=8)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--limit", type=int, default=100, help="documents per task (at most 100)")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--new", type=int, default=16, help="max_gen_toks of the generation task")
    parser.add_argument("--actors", type=int, default=2)
    parser.add_argument("--peer-only", nargs="*", help=argparse.SUPPRESS)
    parser.add_argument("--tasks", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.peer_only:
        print(json.dumps(peer(args.peer_only, args.tasks, args.batch)))
        return
    from benchmarks.evaluate import build_candidates  # the evaluation benchmark's candidates

    with tempfile.TemporaryDirectory(prefix="raysoup-bench-lm-eval-") as tmp:
        root = Path(tmp)
        paths = [str(p) for p in build_candidates(root, args.candidates, args.hidden, args.layers)]
        report = run_all(paths, str(write_tasks(root, args.limit, args.new)), args)
    print(json.dumps(report))


def run_all(paths: list[str], tasks: str, args) -> dict:
    import ray

    load_before = os.getloadavg()[0]
    theirs = peer_process(__file__, ["--batch", str(args.batch), "--tasks", tasks], paths)
    print(
        f"lm-eval simple_evaluate x {len(paths)}: {theirs['seconds']:.1f} s, peak RSS "
        f"{theirs['peak_rss_mb']:.0f} MB (its imports, not timed: {theirs['imports']:.1f} s)",
        flush=True,
    )
    ray_start = start_ray()
    mine = ours(paths, tasks, args.batch, args.actors)
    ray.shutdown()
    gap = agreement(theirs["results"], mine["results"])
    ratio = theirs["seconds"] / mine["seconds"]
    print(
        f"raysoup, {args.actors} actors x {mine['threads']} thread(s): {mine['seconds']:.1f} s "
        f"({ratio:.2f}x faster), peak actor RSS {mine['peak_actor_rss_mb']:.0f} MB, driver "
        f"{mine['driver_rss_mb']:.0f} MB; actor compute {mine['compute_seconds']:.1f} s; "
        f"requests through prefix trees {mine['tree_share']:.0%}; max |diff| vs lm-eval "
        f"{gap:.2e}",
        flush=True,
    )
    print(f"Ray start-up (not in the times above): {ray_start:.1f} s")
    assert gap < 1e-4, f"raysoup and lm-eval disagree by {gap}"
    return {
        "bench": "lm_eval",
        "candidates": len(paths),
        "documents": 2 * args.limit,
        "model": f"llama {args.layers}x{args.hidden}, random",
        "ours": round(mine["seconds"], 2),
        "peer": round(theirs["seconds"], 2),
        "ratio": round(ratio, 3),
        "actors": args.actors,
        "ray_start_seconds": round(ray_start, 2),
        "compute_seconds": round(mine["compute_seconds"], 2),
        "peer_imports_seconds": round(theirs["imports"], 2),
        "peak_rss_mb": {
            "peer": round(theirs["peak_rss_mb"], 1),
            "ours_actor": mine["peak_actor_rss_mb"],
            "ours_driver": round(mine["driver_rss_mb"], 1),
        },
        "max_abs_diff": gap,
        "values": spread(mine["results"]),
        "machine": {
            "cpus": os.cpu_count(),
            "load_avg_1m_before": round(load_before, 2),
            "load_avg_1m_after": round(os.getloadavg()[0], 2),
        },
    }


if __name__ == "__main__":
    main()
