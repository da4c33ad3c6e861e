"""Tokens per second of raysoup's one-process trial loop against a plain PyTorch loop.

Both train the same small random Llama (built here, with the demo tokenizer) on the same
prepared examples, in the same batch order, with AdamW, gradient clipping at 1.0 and the same
linear schedule, in fp32 on the same number of threads. Each run is a fresh process (so peak
memory is its own), alternating plain, raysoup, plain, raysoup. Throughput counts real (non-
padding) tokens over the time spent in training steps: raysoup's `tokens_per_s` metric, and the
same clock around the plain loop's steps. raysoup's loop also evaluates and saves a checkpoint
once, at the end, outside the timed steps.

    .venv/bin/python benchmarks/train_throughput.py [--steps 40] [--batch 8] [--repeats 2]

The last line is one JSON object with the figures (ratio: raysoup over plain, higher is better).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import resource
import shutil
import statistics
import tempfile
import time
from pathlib import Path

SEQ_LEN, LR, THREADS = 64, 1e-3, 2


def build(work: Path, hidden: int, layers: int) -> tuple[str, Path]:
    """A random Llama of `hidden` width and `layers` layers, and the demo task prepared."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import torch
    from transformers import AutoModelForCausalLM

    from engine.demo import DATA_DIR
    from engine.demo.tiny import save_tiny_model, tiny_config
    from engine.prepare.stage import tokenize_batch

    model_dir = save_tiny_model(work / "model", arch="llama", seed=0)
    config = tiny_config("llama")
    config.update(
        {
            "hidden_size": hidden,
            "intermediate_size": 4 * hidden,
            "num_hidden_layers": layers,
            "num_attention_heads": max(1, hidden // 64),
            "num_key_value_heads": max(1, hidden // 64),
        }
    )
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(model_dir)
    sweep = _sweep(str(model_dir), steps=1, batch=1)
    data = work / "data"
    for split in ("train", "eval"):
        rows = [
            json.loads(x)
            for x in (DATA_DIR / "add" / f"{split}.jsonl").read_text().split("\n")
            if x
        ]
        table = pa.Table.from_pylist([{k: r[k] for k in ("prompt", "completion")} for r in rows])
        (data / split).mkdir(parents=True)
        pq.write_table(
            tokenize_batch(table, sweep.data, str(model_dir), False), data / split / "p.parquet"
        )
    return str(model_dir), data


def _sweep(model_path: str, steps: int, batch: int, method: str = "full"):
    from engine.demo import DATA_DIR
    from sweeps import parse_sweep

    return parse_sweep(
        {
            "name": "throughput",
            "model": {"path": model_path},
            "finetune": {"method": method},
            "data": {"train": str(DATA_DIR / "add" / "train.jsonl"), "format": "prompt_completion"},
            "train": {
                "lr": LR,
                "max_steps": steps,
                "batch_size": batch,
                "seq_len": SEQ_LEN,
                "eval_every": steps,
                "truncation": "warn",
            },
            "checkpoint": {"every": steps},
            "resources": {"cpus_per_trial": THREADS},
        }
    )


class _Discard:
    def report(self, metrics: dict, checkpoint: Path | None = None) -> None:
        pass

    def restore_dir(self) -> None:
        return None


def ours(model_path: str, data: str, steps: int, batch: int, method: str = "full") -> dict:
    return run_loop(_sweep(model_path, steps, batch, method), model_path, data)


def run_loop(sweep, model_path: str, data: str) -> dict:
    """One trial of raysoup's loop (no Ray): its tokens per second and tokens."""
    from engine.train.loop import TrialSpec, train

    spec = TrialSpec(
        sweep=sweep, model_path=model_path, data_dir=Path(data), data_size=None, seed=0
    )
    last = train(spec, _Discard())
    return {"tokens_per_s": last["tokens_per_s"], "tokens": last["tokens_seen"]}


def plain(model_path: str, data: str, steps: int, batch: int) -> dict:
    """The peer: a plain PyTorch loop over the same examples in the same order."""
    import pyarrow.parquet as pq
    import torch
    from transformers import AutoModelForCausalLM

    from engine.train.loop import _batch_order  # the same batch order, by construction

    torch.set_num_threads(THREADS)
    torch.manual_seed(0)
    rows = pq.read_table(Path(data) / "train").sort_by("key").to_pydict()  # the prepared order
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: max(0.0, 1 - s / steps))
    order = _batch_order(len(rows["input_ids"]), batch, 0)
    pad = 0
    timed, tokens = 0.0, 0
    model.train()
    for step in range(steps):
        tick = time.perf_counter()
        idx = order(step)
        ids = [rows["input_ids"][i][:SEQ_LEN] for i in idx]
        labels = [rows["labels"][i][:SEQ_LEN] for i in idx]
        width = max(map(len, ids))
        x = torch.full((len(ids), width), pad)
        y = torch.full((len(ids), width), -100)
        mask = torch.zeros((len(ids), width), dtype=torch.long)
        for r, (a, b) in enumerate(zip(ids, labels)):
            x[r, : len(a)], y[r, : len(b)], mask[r, : len(a)] = torch.tensor(a), torch.tensor(b), 1
        loss = model(input_ids=x, attention_mask=mask, labels=y).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        loss.item()
        timed += time.perf_counter() - tick
        tokens += int(mask.sum())
    return {"tokens_per_s": tokens / timed, "tokens": tokens}


def _child(name, args: tuple, out) -> None:
    result = (name if callable(name) else {"ours": ours, "plain": plain}[name])(*args)
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out.put(result)


def measure(name, *args) -> dict:
    """Run `name` (ours, plain, or a module-level function) with `args` in a fresh process;
    its result with the process's peak RSS."""
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    proc = ctx.Process(target=_child, args=(name, args, out))
    proc.start()
    result = out.get()
    proc.join()
    return result


def arguments(doc: str) -> argparse.Namespace:
    """The options of the trial-loop benchmarks (this one and `methods.py`)."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2)
    return parser.parse_args()


def main() -> None:
    args = arguments(__doc__)
    work = Path(tempfile.mkdtemp(prefix="raysoup-throughput-"))
    try:
        model_path, data = build(work, args.hidden, args.layers)
        runs = {"plain": [], "ours": []}
        for repeat in range(args.repeats):
            for name in ("plain", "ours"):
                r = measure(name, model_path, str(data), args.steps, args.batch)
                runs[name].append(r)
                print(
                    f"{name:>5} run {repeat}: {r['tokens_per_s']:8.0f} tokens/s "
                    f"({r['tokens']} tokens), peak RSS {r['peak_rss_mb']:.0f} MB"
                )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    best = {k: max(r["tokens_per_s"] for r in v) for k, v in runs.items()}
    tokens = {k: {r["tokens"] for r in v} for k, v in runs.items()}
    assert tokens["ours"] == tokens["plain"], f"the loops trained on different tokens: {tokens}"
    print(
        json.dumps(
            {
                "bench": "train_throughput",
                "unit": "tokens/s (best of repeats)",
                "ours": round(best["ours"], 1),
                "peer": round(best["plain"], 1),
                "ratio": round(best["ours"] / best["plain"], 3),
                "ours_median": round(statistics.median(r["tokens_per_s"] for r in runs["ours"]), 1),
                "peer_median": round(
                    statistics.median(r["tokens_per_s"] for r in runs["plain"]), 1
                ),
                "ours_peak_rss_mb": round(max(r["peak_rss_mb"] for r in runs["ours"])),
                "peer_peak_rss_mb": round(max(r["peak_rss_mb"] for r in runs["plain"])),
                "model": f"llama hidden {args.hidden}, {args.layers} layers",
                "steps": args.steps,
                "batch": args.batch,
                "threads": THREADS,
            }
        )
    )


if __name__ == "__main__":
    main()
