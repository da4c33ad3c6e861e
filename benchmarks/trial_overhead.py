"""What raysoup adds over a bare Ray Tune sweep of the same tiny training loop.

Both sweeps train the same tiny Llama on the same bundled data, the same number of trials and
steps, in the same Ray session, alternating (bare, raysoup, bare, raysoup) so neither gets the
warm workers alone. raysoup's time includes its prepare stage (Ray Data tokenization, once);
the bare trials tokenize their own data, as a plain Tune script would. Both reuse trial
processes (`reuse_actors=True`), as raysoup does.

    .venv/bin/python benchmarks/trial_overhead.py [--trials 8] [--steps 30] [--repeats 2]

The last line is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import statistics
import tempfile
import time
from pathlib import Path

import ray
from ray import tune

import engine
from engine.demo import DATA_DIR
from engine.demo.tiny import save_tiny_model
from sweeps import parse_sweep

BATCH, SEQ_LEN, LR = 8, 32, 1e-3
TRAIN, EVAL = DATA_DIR / "add" / "train.jsonl", DATA_DIR / "add" / "eval.jsonl"


def bare_trial(config: dict, model_path: str, steps: int) -> None:
    """A plain Tune function trial: tokenize, train with AdamW, evaluate, save, report."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(config["seed"])
    torch.set_num_threads(1)
    tok = AutoTokenizer.from_pretrained(model_path)
    train, evals = _examples(tok, TRAIN), _examples(tok, EVAL)
    model = AutoModelForCausalLM.from_pretrained(model_path)
    opt = torch.optim.AdamW(model.parameters(), lr=config["lr"])
    gen = torch.Generator().manual_seed(config["seed"])
    for _ in range(steps):
        idx = torch.randint(len(train), (BATCH,), generator=gen).tolist()
        loss = model(**_batch([train[i] for i in idx], tok.pad_token_id)).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    with torch.no_grad():
        eval_loss = sum(
            model(**_batch(evals[i : i + BATCH], tok.pad_token_id)).loss.item()
            for i in range(0, len(evals), BATCH)
        ) / math.ceil(len(evals) / BATCH)
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        tune.report(
            {"eval_loss": eval_loss, "peak_rss_mb": _peak_mb()},
            checkpoint=tune.Checkpoint.from_directory(tmp),
        )


def _examples(tok, path: Path) -> list[tuple[list[int], list[int]]]:
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    out = []
    for row in rows:
        prompt = [tok.bos_token_id] + tok(row["prompt"], add_special_tokens=False)["input_ids"]
        answer = tok(row["completion"], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        out.append((prompt + answer, [-100] * len(prompt) + answer))
    return out


def _batch(rows, pad: int) -> dict:
    import torch

    width = min(SEQ_LEN, max(len(ids) for ids, _ in rows))
    ids = torch.full((len(rows), width), pad)
    labels = torch.full((len(rows), width), -100)
    for i, (x, y) in enumerate(rows):
        ids[i, : len(x[:width])] = torch.tensor(x[:width])
        labels[i, : len(y[:width])] = torch.tensor(y[:width])
    return {"input_ids": ids, "labels": labels, "attention_mask": (ids != pad).long()}


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_bare(model_path: str, lrs: list[float], seeds: list[int], steps: int, storage: str):
    fn = tune.with_resources(
        tune.with_parameters(bare_trial, model_path=model_path, steps=steps), {"cpu": 1}
    )
    grid = tune.Tuner(
        fn,
        param_space={"lr": tune.grid_search(lrs), "seed": tune.grid_search(seeds)},
        # like raysoup: a finished trial's process takes the next trial
        tune_config=tune.TuneConfig(reuse_actors=True),
        run_config=tune.RunConfig(storage_path=storage, name="bare", verbose=0),
    ).fit()
    return [r.metrics for r in grid]


def run_ours(
    model_path: str,
    lrs: list[float],
    seeds: list[int],
    steps: int,
    storage: str,
    resources: dict | None = None,
):
    """raysoup's sweep of the same trials (`resources`: the sweep's resources section)."""
    sweep = parse_sweep(
        {
            "name": "ours",
            "model": {"path": model_path},
            "data": {"train": str(TRAIN), "eval": str(EVAL), "format": "prompt_completion"},
            "train": {
                "lr": {"grid": lrs},
                "max_steps": steps,
                "batch_size": BATCH,
                "seq_len": SEQ_LEN,
                "eval_every": steps,
                "schedule": "constant",
            },
            "seeds": seeds,
            "checkpoint": {"every": steps, "keep": 1},
            **({"resources": resources} if resources else {}),
        }
    )
    result = engine.run(sweep, storage=storage, progress=False)
    failed = result.trials[result.trials["status"] != "done"]
    assert failed.empty, failed["error"].tolist()
    return result.trials.to_dict("records")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    seeds = [0, 1]
    lrs = [LR * (i + 1) for i in range(args.trials // len(seeds))]
    work = Path(tempfile.mkdtemp(prefix="raysoup-bench-"))
    model_path = str(save_tiny_model(work / "model", arch="llama", seed=0))
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    times = {"bare": [], "ours": []}
    peaks = {"bare": [], "ours": []}
    for repeat in range(args.repeats):
        for name, fn in (("bare", run_bare), ("ours", run_ours)):
            started = time.perf_counter()
            rows = fn(model_path, lrs, seeds, args.steps, str(work / f"{name}{repeat}"))
            times[name].append(time.perf_counter() - started)
            peaks[name].append(max(r.get("peak_rss_mb") or 0 for r in rows))
            print(
                f"{name:>4} run {repeat}: {times[name][-1]:6.1f} s for {len(rows)} trials, "
                f"peak trial RSS {peaks[name][-1]:.0f} MB"
            )
    ray.shutdown()
    ours, bare = statistics.mean(times["ours"]), statistics.mean(times["bare"])
    print(
        f"\nmean wall time: raysoup {ours:.1f} s, bare Tune {bare:.1f} s, "
        f"ratio {ours / bare:.2f} (goal <= 1.20)"
    )
    print(
        json.dumps(
            {
                "bench": "trial_overhead",
                "trials": len(lrs) * len(seeds),
                "steps": args.steps,
                "ours": round(ours, 2),
                "peer": round(bare, 2),
                "ratio": round(ours / bare, 3),
                "peak_trial_rss_mb": {k: round(max(v), 1) for k, v in peaks.items()},
                "runs_s": {k: [round(t, 2) for t in v] for k, v in times.items()},
            }
        )
    )


if __name__ == "__main__":
    main()
