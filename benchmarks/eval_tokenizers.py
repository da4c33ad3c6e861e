"""What an evaluation actor saves by loading a tokenizer once for the candidates that share it
(a sweep's trials and merges keep their base's tokenizer files) and encoding their examples
once: the actor's code in one process (no Ray), one torch thread, the tiny random Llama scored
on the demo's `add` selection set (100 examples: loss, choice accuracy and exact match with 32
new tokens), every candidate a copy of one model folder in a folder of its own.

The demo tokenizer has 512 tokens and loads in about 2 ms, which no real model's does: the
model here gets a byte-level BPE tokenizer of `--vocab` tokens (default 32,000, Llama 2's
size; 128,000 is Llama 3's), the demo's widened with merges of its own tokens drawn at random,
and its embeddings resized to match. Loading it costs what loading a real one of that size
costs (a `tokenizer.json` of the same size to parse and the same merges to build).

Ours is the actor as it is. The peer is the same actor made to forget its tokenizers before
each candidate, as it did before they were shared: each candidate's tokenizer loaded and its
examples encoded anew (before, it even loaded the tokenizer twice per candidate). Both score
the same candidates after one warm-up candidate, in alternating rounds.

    .venv/bin/python benchmarks/eval_tokenizers.py [--candidates 8] [--rounds 3] [--vocab 32000]

The last line is one JSON object with the seconds per candidate (the best round of each).
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import shutil
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.eval_batching import model_copies, per_candidate  # noqa: E402
from engine.demo.tiny import save_tiny_model  # noqa: E402


def widened(model: Path, vocab: int, seed: int = 0) -> Path:
    """`model` with its tokenizer widened to `vocab` tokens (each new one the merge of two
    shorter ones, drawn with `seed`) and its embeddings resized to match."""
    import torch
    from transformers import AutoModelForCausalLM

    path = model / "tokenizer.json"
    spec = json.loads(path.read_text(encoding="utf-8"))
    bpe, rng = spec["model"], random.Random(seed)
    special = {token["content"] for token in spec["added_tokens"]}
    pieces = [token for token in bpe["vocab"] if token not in special]
    while len(bpe["vocab"]) < vocab:
        left, right = rng.choice(pieces), rng.choice(pieces)
        if len(left) + len(right) > 12 or left + right in bpe["vocab"]:
            continue
        bpe["vocab"][left + right] = len(bpe["vocab"])
        bpe["merges"].append([left, right])
        pieces.append(left + right)
    path.write_text(json.dumps(spec), encoding="utf-8")
    weights = AutoModelForCausalLM.from_pretrained(model)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        weights.resize_token_embeddings(vocab)
    weights.save_pretrained(model)
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--candidates", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--vocab", type=int, default=32_000)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="raysoup-tokenizers-"))
    model = widened(save_tiny_model(work / "model", arch="llama", seed=0), args.vocab)
    paths = model_copies(work, args.candidates, model)
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
                "vocab": args.vocab,
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
