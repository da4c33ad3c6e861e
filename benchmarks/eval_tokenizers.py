"""What an evaluation actor saves by loading a tokenizer once for the candidates that share it
(a sweep's trials and merges keep their base's tokenizer files) and encoding their examples
once: the actor's code in one process (no Ray), one torch thread, the tiny random Llama scored
on the demo's `add` selection set (100 examples: loss, choice accuracy and exact match with 32
new tokens), every candidate a copy of one model folder in a folder of its own.

Ours is the actor as it is. The peer is the same actor made to forget its tokenizers before
each candidate, as it did before they were shared: each candidate's tokenizer loaded and its
examples encoded anew (before, it even loaded the tokenizer twice per candidate). Both score
the same candidates after one warm-up candidate, in alternating rounds.

    .venv/bin/python benchmarks/eval_tokenizers.py [--candidates 8] [--rounds 3]

The last line is one JSON object with the seconds per candidate (the best round of each).
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


def per_candidate(paths: list[str], forget: bool) -> float:
    """Seconds per candidate (load and score), the actor's tokenizers kept or forgotten."""
    candidates = [Candidate(f"c{i}", "trial", p) for i, p in enumerate(paths)]
    eval_set = EvalSetConfig(
        name="add", path=str(DATA_DIR / "add" / "eval.jsonl"), split="selection", seq_len=64
    )
    plans = [plan_set(eval_set)]
    units = work_units(candidates, plans, 1)
    specs = [{"path": c.path, "base": None} for c in candidates]
    actor = EvalActor(specs, [p.spec for p in plans], "cpu", 1)
    actor(pd.DataFrame([units[0]]))  # warm-up: the first pass pays one-off costs
    started = time.perf_counter()
    for unit in units[1:]:
        if forget:
            actor.tokenizers.clear()
        actor(pd.DataFrame([unit]))
    return (time.perf_counter() - started) / (len(units) - 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--candidates", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="raysoup-tokenizers-"))
    model = save_tiny_model(work / "model", arch="llama", seed=0)
    paths = []
    for i in range(args.candidates + 1):  # one more: the warm-up
        shutil.copytree(model, work / f"c{i}")
        paths.append(str(work / f"c{i}"))
    seconds: dict[str, list[float]] = {"ours": [], "peer": []}
    for round_ in range(args.rounds):
        for name in ("ours", "peer") if round_ % 2 == 0 else ("peer", "ours"):
            seconds[name].append(per_candidate(paths, forget=name == "peer"))
            print(f"round {round_ + 1} {name}: {seconds[name][-1]:.4f} s per candidate")
    shutil.rmtree(work)
    ours, peer = min(seconds["ours"]), min(seconds["peer"])
    print(f"ours {ours:.4f} s, tokenizer anew per candidate {peer:.4f} s: ratio {ours / peer:.2f}")
    print(
        json.dumps(
            {
                "bench": "eval_tokenizers",
                "ours": round(ours, 4),
                "peer": round(peer, 4),
                "ratio": round(ours / peer, 3),
                "rounds": {k: [round(x, 4) for x in v] for k, v in seconds.items()},
                "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            }
        )
    )


if __name__ == "__main__":
    main()
