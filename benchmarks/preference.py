"""Tokens per second and peak memory of a DPO trial of raysoup's trial loop against TRL's
DPOTrainer, on the same model, pairs and settings.

Both fine-tune every weight of the same small random Llama (built here, with the demo tokenizer)
with DPO (beta 0.1, the sigmoid loss) on the bundled `add` pairs (`pairs_train.jsonl`): batches
of 8 pairs, AdamW at lr 1e-3 with linear decay and no warm-up, clipping at 1.0, fp32 on 2
threads. Both compute the reference model's log-probabilities before training, outside the
timed steps (raysoup in its prepare stage, TRL with `precompute_ref_log_probs`). Each run is a
fresh process, alternating TRL and raysoup. Throughput counts the real (non-padding) tokens of
both sequences of every pair over the time spent in training steps: raysoup's `tokens_per_s`
metric, and TRL's own token count over a clock around each of its steps (a callback; TRL's data
loader collates a batch before its step begins, so that work is outside TRL's clock).

    .venv/bin/python benchmarks/preference.py [--steps 40] [--batch 8] [--repeats 2]

The last line is one JSON object: ours and peer in tokens/s (best of the repeats), ratio =
ours / peer (higher is better), and each side's peak RSS.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.train_throughput import (  # noqa: E402
    LR,
    SEQ_LEN,
    THREADS,
    arguments,
    build,
    measure,
    run_loop,
)

BETA = 0.1


def _sweep(model_path: str, steps: int, batch: int):
    from engine.demo import DATA_DIR
    from sweeps import parse_sweep

    return parse_sweep(
        {
            "name": "preference",
            "model": {"path": model_path},
            "finetune": {"objective": "dpo", "preference": {"beta": BETA}},
            "data": {"train": str(DATA_DIR / "add" / "pairs_train.jsonl"), "format": "preference"},
            "train": {
                "lr": LR,
                "max_steps": steps,
                "batch_size": batch,
                "seq_len": SEQ_LEN,
                "eval_every": steps,
            },
            "checkpoint": {"every": steps},
            "resources": {"cpus_per_trial": THREADS},
        }
    )


def pairs(path: str) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line]


def prepare(work: Path, model_path: str) -> Path:
    """The pairs prepared as raysoup's prepare stage writes them, with the reference."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from engine.demo import DATA_DIR
    from engine.prepare.reference import score_task, settings
    from engine.prepare.stage import tokenize_batch

    sweep = _sweep(model_path, 1, 8)
    data = work / "pairs"
    for split in ("train", "eval"):
        table = pa.Table.from_pylist(pairs(str(DATA_DIR / "add" / f"pairs_{split}.jsonl")))
        (data / split).mkdir(parents=True)
        pq.write_table(
            tokenize_batch(table, sweep.data, model_path, False), data / split / "p.parquet"
        )
    score_task(str(data), model_path, settings(sweep), False)
    return data


def ours(model_path: str, data: str, steps: int, batch: int) -> dict:
    return run_loop(_sweep(model_path, steps, batch), model_path, data)


def trl_dpo(model_path: str, data: str, steps: int, batch: int) -> dict:
    """The peer: TRL's DPOTrainer on the same pairs (its own tokenization)."""
    import datasets
    import torch
    import trl
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback

    from engine.demo import DATA_DIR

    torch.set_num_threads(THREADS)
    torch.manual_seed(0)

    class Clock(TrainerCallback):
        def __init__(self) -> None:
            self.timed, self.tick = 0.0, 0.0

        def on_step_begin(self, *args, **kwargs):
            self.tick = time.perf_counter()

        def on_step_end(self, *args, **kwargs):
            self.timed += time.perf_counter() - self.tick

    clock = Clock()
    trainer = trl.DPOTrainer(
        model=AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32),
        args=trl.DPOConfig(
            output_dir=str(Path(data).parent / "trl"),
            loss_type=["sigmoid"],
            beta=BETA,
            learning_rate=LR,
            lr_scheduler_type="linear",
            warmup_steps=0,
            weight_decay=0.0,
            max_grad_norm=1.0,
            per_device_train_batch_size=batch,
            max_steps=steps,
            max_length=SEQ_LEN,
            precompute_ref_log_probs=True,
            save_strategy="no",
            logging_steps=steps,
            report_to=[],
            use_cpu=True,
            dataloader_num_workers=0,
            disable_tqdm=True,
        ),
        train_dataset=datasets.Dataset.from_list(
            pairs(str(DATA_DIR / "add" / "pairs_train.jsonl"))
        ),
        processing_class=AutoTokenizer.from_pretrained(model_path),
        callbacks=[clock],
    )
    trainer.train()
    tokens = int(trainer._total_train_tokens)
    return {"tokens_per_s": tokens / clock.timed, "tokens": tokens}


def main() -> None:
    args = arguments(__doc__)
    work = Path(tempfile.mkdtemp(prefix="raysoup-preference-"))
    runs: dict[str, list[dict]] = {"trl": [], "ours": []}
    try:
        model_path, _ = build(work, args.hidden, args.layers)
        data = prepare(work, model_path)
        for repeat in range(args.repeats):
            for name, fn in (("trl", trl_dpo), ("ours", ours)):
                r = measure(fn, model_path, str(data), args.steps, args.batch)
                runs[name].append(r)
                print(
                    f"{name:>4} run {repeat}: {r['tokens_per_s']:8.0f} tokens/s "
                    f"({r['tokens']} tokens), peak RSS {r['peak_rss_mb']:.0f} MB"
                )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    best = {k: max(r["tokens_per_s"] for r in v) for k, v in runs.items()}
    print(
        json.dumps(
            {
                "bench": "preference",
                "unit": "tokens/s (best of repeats)",
                "ours": round(best["ours"], 1),
                "peer": round(best["trl"], 1),
                "ratio": round(best["ours"] / best["trl"], 3),
                "peak_rss_mb": {
                    k: round(max(r["peak_rss_mb"] for r in v)) for k, v in runs.items()
                },
                "tokens": {k: v[0]["tokens"] for k, v in runs.items()},
                "model": f"llama hidden {args.hidden}, {args.layers} layers",
                "steps": args.steps,
                "batch": args.batch,
            }
        )
    )


if __name__ == "__main__":
    main()
