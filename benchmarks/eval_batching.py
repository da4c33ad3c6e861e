"""How evaluation's batching changes the cost of one candidate: the evaluation actor's code in
one process (no Ray), one torch thread, on the tiny random Llama scored on the demo's `add`
selection set (100 examples: loss, choice accuracy and exact match with 32 new tokens).

The peer is the batching evaluation had before `evaluate.batch_tokens` (16 examples a batch);
ours is the default now (`evaluate.batch_size` 128, `evaluate.batch_tokens` 8192); 32 and 64
examples are timed too. Each setting scores the same candidates (copies of one model folder,
each loaded as the pool loads a candidate), after one warm-up candidate.

    .venv/bin/python benchmarks/eval_batching.py [--candidates 6]

The last line is one JSON object with the seconds per candidate.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from engine.demo import DATA_DIR  # noqa: E402
from engine.demo.tiny import save_tiny_model  # noqa: E402
from engine.evaluate.pool import Candidate, plan_set, work_units  # noqa: E402
from engine.evaluate.sets import EvalSetConfig  # noqa: E402
from engine.evaluate.worker import EvalActor  # noqa: E402
from sweeps.evaluation import BATCH_SIZE, BATCH_TOKENS  # noqa: E402

SETTINGS = {  # name: (examples, tokens) at most per batch
    "16": (16, BATCH_TOKENS),
    "32": (32, BATCH_TOKENS),
    "64": (64, BATCH_TOKENS),
    "ours": (BATCH_SIZE, BATCH_TOKENS),
}


def per_candidate(
    paths: list[str], size: int = BATCH_SIZE, tokens: int = BATCH_TOKENS, forget: bool = False
) -> float:
    """Seconds per candidate (load and score) with batches of `size` examples and `tokens`;
    `forget`: the actor drops its tokenizers before each candidate."""
    candidates = [Candidate(f"c{i}", "trial", p) for i, p in enumerate(paths)]
    eval_set = EvalSetConfig(
        name="add", path=str(DATA_DIR / "add" / "eval.jsonl"), split="selection", seq_len=64
    )
    plans = [plan_set(eval_set)]
    units = work_units(candidates, plans, 1)
    specs = [{"path": c.path, "base": None} for c in candidates]
    actor = EvalActor(
        specs, [p.spec for p in plans], "cpu", 1, batch_size=size, batch_tokens=tokens
    )
    actor(pd.DataFrame([units[0]]))  # warm-up: the first pass pays one-off costs
    started = time.perf_counter()
    for unit in units[1:]:
        if forget:
            actor.tokenizers.clear()
        actor(pd.DataFrame([unit]))
    return (time.perf_counter() - started) / (len(units) - 1)


def model_copies(work: Path, candidates: int, model: Path | None = None) -> list[str]:
    """`model` (default: the tiny random Llama), copied into one folder per candidate, and one
    more: the warm-up."""
    model = model or save_tiny_model(work / "model", arch="llama", seed=0)
    paths = []
    for i in range(candidates + 1):
        shutil.copytree(model, work / f"c{i}")
        paths.append(str(work / f"c{i}"))
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--candidates", type=int, default=6)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="raysoup-batching-"))
    paths = model_copies(work, args.candidates)
    seconds = {}
    for name, (size, tokens) in SETTINGS.items():
        seconds[name] = round(per_candidate(paths, size, tokens), 4)
        print(
            f"at most {size} examples, {tokens} tokens a batch: {seconds[name]:.3f} s per candidate"
        )
    shutil.rmtree(work)
    ours, peer = seconds["ours"], seconds["16"]
    print(f"ours {ours:.3f} s, batches of 16 {peer:.3f} s: ratio {ours / peer:.2f}")
    print(
        json.dumps(
            {
                "bench": "eval_batching",
                "ours": ours,
                "peer": peer,
                "ratio": round(ours / peer, 3),
                "seconds_per_candidate": seconds,
                "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            }
        )
    )


if __name__ == "__main__":
    main()
