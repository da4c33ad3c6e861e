"""A sweep of two-worker DDP trials through raysoup against a hand-written Train-in-Tune script.

The hand-written sweep follows Ray's documented pattern (a Tune function trial that builds and
fits a `TorchTrainer` with `TuneReportCallback`): each of its two workers loads the model,
tokenizes the data, trains with DDP (`prepare_model`) on its half of every batch, and rank 0
evaluates, saves and reports a checkpoint at the end. raysoup's sweep trains the same random
tiny Llama on the same bundled task with the same batch, steps, trials and resources (two
workers of 0.5 CPU per trial, one group at a time on 2 CPUs); its time includes its prepare
stage (tokenization, once) and its trials' evaluations. Alternating peer, raysoup, peer,
raysoup in one Ray session.

    .venv/bin/python benchmarks/multiworker.py [--trials 4] [--steps 20] [--repeats 2]

The last line is one JSON object with the figures (ratio: raysoup's wall time over the peer's).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import ray  # noqa: E402
from ray import tune  # noqa: E402

from benchmarks import trial_overhead  # noqa: E402
from benchmarks.trial_overhead import BATCH, EVAL, TRAIN, _batch, _examples, _peak_mb  # noqa: E402
from engine.demo.tiny import save_tiny_model  # noqa: E402

WORKERS, CPUS_PER_WORKER = 2, 0.5


def peer_worker(config: dict) -> None:
    """One worker of the hand-written group."""
    import tempfile

    import torch
    from ray import train
    from ray.train.torch import prepare_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    ctx = train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.manual_seed(config["seed"])
    torch.set_num_threads(1)
    tok = AutoTokenizer.from_pretrained(config["model_path"])
    rows, evals = _examples(tok, TRAIN), _examples(tok, EVAL)
    model = prepare_model(AutoModelForCausalLM.from_pretrained(config["model_path"]))
    opt = torch.optim.AdamW(model.parameters(), lr=config["lr"])
    gen = torch.Generator().manual_seed(config["seed"])
    for _ in range(config["steps"]):
        idx = torch.randint(len(rows), (BATCH * world,), generator=gen).tolist()[rank::world]
        loss = model(**_batch([rows[i] for i in idx], tok.pad_token_id)).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    metrics = {"peak_rss_mb": _peak_mb()}
    if rank != 0:
        train.report(metrics)
        return
    module = model.module
    with torch.no_grad():
        losses = [
            module(**_batch(evals[i : i + BATCH], tok.pad_token_id)).loss.item()
            for i in range(0, len(evals), BATCH)
        ]
    metrics["eval_loss"] = sum(losses) / len(losses)
    with tempfile.TemporaryDirectory() as tmp:
        module.save_pretrained(tmp)
        train.report(metrics, checkpoint=train.Checkpoint.from_directory(tmp))


def peer_trial(config: dict, model_path: str, steps: int, storage: str) -> None:
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    TorchTrainer(
        peer_worker,
        train_loop_config={**config, "model_path": model_path, "steps": steps},
        scaling_config=ScalingConfig(
            num_workers=WORKERS, resources_per_worker={"CPU": CPUS_PER_WORKER}
        ),
        run_config=RunConfig(
            name=f"peer-lr{config['lr']}-s{config['seed']}",
            storage_path=storage,
            callbacks=[TuneReportCallback()],
        ),
    ).fit()


def run_peer(model_path: str, lrs: list[float], seeds: list[int], steps: int, storage: str):
    fn = tune.with_resources(
        tune.with_parameters(peer_trial, model_path=model_path, steps=steps, storage=storage),
        {"cpu": 0.01},
    )
    grid = tune.Tuner(
        fn,
        param_space={"lr": tune.grid_search(lrs), "seed": tune.grid_search(seeds)},
        # one group of 1 CPU at a time, or trials' own processes starve the groups
        tune_config=tune.TuneConfig(max_concurrent_trials=1),
        run_config=tune.RunConfig(storage_path=storage, name="peer", verbose=0),
    ).fit()
    return [r.metrics for r in grid]


def run_ours(model_path: str, lrs: list[float], seeds: list[int], steps: int, storage: str):
    resources = {"workers": WORKERS, "cpus_per_worker": CPUS_PER_WORKER}
    return trial_overhead.run_ours(model_path, lrs, seeds, steps, storage, resources)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    seeds = [0, 1]
    lrs = [1e-3 * (i + 1) for i in range(max(1, args.trials // len(seeds)))]
    work = Path(tempfile.mkdtemp(prefix="raysoup-multiworker-"))
    model_path = str(save_tiny_model(work / "model", arch="llama", seed=0))
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    times = {"peer": [], "ours": []}
    peaks = {"peer": [], "ours": []}
    for repeat in range(args.repeats):
        for name, fn in (("peer", run_peer), ("ours", run_ours)):
            started = time.perf_counter()
            rows = fn(model_path, lrs, seeds, args.steps, str(work / f"{name}{repeat}"))
            times[name].append(time.perf_counter() - started)
            peaks[name].append(max(r.get("peak_rss_mb") or 0 for r in rows))
            print(
                f"{name:>4} run {repeat}: {times[name][-1]:6.1f} s for {len(rows)} trials of "
                f"{WORKERS} workers, peak rank-0 RSS {peaks[name][-1]:.0f} MB"
            )
    ray.shutdown()
    ours, peer = statistics.mean(times["ours"]), statistics.mean(times["peer"])
    print(
        f"\nmean wall time: raysoup {ours:.1f} s, hand-written {peer:.1f} s, "
        f"ratio {ours / peer:.2f} (goal <= 1.10)"
    )
    print(
        json.dumps(
            {
                "bench": "multiworker",
                "trials": len(lrs) * len(seeds),
                "workers": WORKERS,
                "steps": args.steps,
                "ours": round(ours, 2),
                "peer": round(peer, 2),
                "ratio": round(ours / peer, 3),
                "peak_rank0_rss_mb": {k: round(max(v), 1) for k, v in peaks.items()},
                "runs_s": {k: [round(t, 2) for t in v] for k, v in times.items()},
            }
        )
    )


if __name__ == "__main__":
    main()
