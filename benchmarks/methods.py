"""Tokens per second and peak memory of full, LoRA, QLoRA, half fine-tuning (HFT) and DPO trials
of raysoup's trial loop on the same model and data; HFT's training time against full
fine-tuning.

Same set-up as `benchmarks/train_throughput.py` (a small random Llama built here, the bundled
`add` task, fp32 on 2 threads, each run a fresh process, time inside training steps only),
alternating full, LoRA, QLoRA, HFT in each repeat (QLoRA on bitsandbytes' CPU backend). HFT
trains half of each block (`fraction: 0.5`, `strategy: matrices`, one round). DPO fine-tunes
every weight on the task's preference pairs (`pairs_train.jsonl`, beta 0.1, reference computed
beforehand as prepare does, `benchmarks/preference.py`); its tokens are both sequences of a pair.

    .venv/bin/python benchmarks/methods.py [--steps 40] [--batch 8] [--repeats 2]

The last line is one JSON object: ours = HFT tokens/s, peer = full fine-tuning's, ratio = HFT's
speed-up (the HFT paper reports about 30% less training time, a ratio near 1.4).
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks import preference  # noqa: E402
from benchmarks.train_throughput import arguments, build, measure  # noqa: E402

METHODS = ("full", "lora", "qlora", "hft", "dpo")


def main() -> None:
    args = arguments(__doc__)
    work = Path(tempfile.mkdtemp(prefix="raysoup-methods-"))
    runs: dict[str, list[dict]] = {m: [] for m in METHODS}
    try:
        model_path, data = build(work, args.hidden, args.layers)
        pairs = preference.prepare(work, model_path)
        for repeat in range(args.repeats):
            for method in METHODS:
                if method == "dpo":  # full fine-tuning with DPO on the task's pairs
                    r = measure(preference.ours, model_path, str(pairs), args.steps, args.batch)
                else:
                    r = measure("ours", model_path, str(data), args.steps, args.batch, method)
                runs[method].append(r)
                print(
                    f"{method:>4} run {repeat}: {r['tokens_per_s']:8.0f} tokens/s, "
                    f"peak RSS {r['peak_rss_mb']:.0f} MB"
                )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    best = {m: max(r["tokens_per_s"] for r in v) for m, v in runs.items()}
    peak = {m: round(max(r["peak_rss_mb"] for r in v)) for m, v in runs.items()}
    print(
        json.dumps(
            {
                "bench": "methods",
                "unit": "tokens/s (best of repeats)",
                "ours": round(best["hft"], 1),
                "peer": round(best["full"], 1),
                "ratio": round(best["hft"] / best["full"], 3),
                "tokens_per_s": {m: round(v, 1) for m, v in best.items()},
                "peak_rss_mb": peak,
                "model": f"llama hidden {args.hidden}, {args.layers} layers",
                "steps": args.steps,
                "batch": args.batch,
            }
        )
    )


if __name__ == "__main__":
    main()
