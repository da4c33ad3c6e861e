"""Evaluation benchmark: raysoup's actor pool (1 and 2 actors) vs a plain Hugging Face loop.

Builds random Llama candidates (demo tokenizer; size set by --hidden / --layers) and scores each
on the demo's `add` and `reverse` eval sets with loss, choice accuracy and exact match
(greedy, --new tokens). The peer is the loop a user would write: one process, torch's default
threads, each candidate loaded once, batches of the same size in file order. raysoup runs
`engine.evaluate.pool.evaluate_candidates` in one local Ray session started before timing (its
start-up is reported separately); its time includes starting the actors (their imports of torch
and transformers) and loading the models. The peer's time starts after its own imports (printed,
not counted). The peer runs in its own process, so its peak RSS is its own. The last line is one
JSON object.

    python benchmarks/evaluate.py [--candidates 2] [--hidden 384] [--layers 4] [--limit 100]
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
sys.path.insert(0, str(REPO))

from benchmarks.pool_bench import agreement, peer_process, pool_figures, start_ray  # noqa: E402

SETS = ("add", "reverse")


def build_candidates(root: Path, count: int, hidden: int, layers: int) -> list[Path]:
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    from engine.demo import BASE_DIR
    from engine.demo.tiny import _TOKENIZER_FILES, _token_ids

    config = LlamaConfig(
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=8,
        num_key_value_heads=8,
        intermediate_size=hidden * 8 // 3,
        max_position_embeddings=256,
        **_token_ids(),
    )
    paths = []
    for seed in range(count):
        torch.manual_seed(seed)
        path = root / f"cand{seed}"
        AutoModelForCausalLM.from_config(config).save_pretrained(path)
        for name in _TOKENIZER_FILES:
            if (BASE_DIR / name).exists():
                (path / name).write_bytes((BASE_DIR / name).read_bytes())
        paths.append(path)
    return paths


def examples(limit: int) -> dict[str, list[dict]]:
    from engine.demo import DATA_DIR

    out = {}
    for name in SETS:
        lines = (DATA_DIR / name / "eval.jsonl").read_text().splitlines()
        out[name] = [json.loads(line) for line in lines if line.strip()][:limit]
    return out


# ---- the peer: a plain single-process Hugging Face loop --------------------------------------


def peer(paths: list[str], limit: int, batch: int, new: int) -> dict:
    importing = time.perf_counter()
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    imports = time.perf_counter() - importing
    started, data, results = time.perf_counter(), examples(limit), {}
    for path in paths:
        tok = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
        gen = GenerationConfig(
            max_new_tokens=new,
            do_sample=False,
            num_beams=1,
            pad_token_id=tok.pad_token_id,
            eos_token_id=tok.eos_token_id,
        )
        for name, rows in data.items():
            nll = count = correct = matched = 0.0
            for start in range(0, len(rows), batch):
                part = rows[start : start + batch]
                a, b = _peer_scores(
                    model, tok, [r["prompt"] for r in part], [r["completion"] for r in part]
                )
                nll, count = nll + float(a.sum()), count + float(b.sum())
                correct += _peer_correct(model, tok, part, batch)
                matched += _peer_matches(model, tok, part, gen)
            results[f"{Path(path).name}/{name}"] = {
                "loss": nll / count,
                "accuracy": correct / len(rows),
                "exact_match": matched / len(rows),
            }
    return {
        "seconds": time.perf_counter() - started,
        "results": results,
        "imports": imports,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def _peer_scores(model, tok, prompts: list[str], completions: list[str]):
    """Summed loss and token count of completion + eos after bos + prompt, per row."""
    import torch

    heads = [[tok.bos_token_id] + tok(p, add_special_tokens=False)["input_ids"] for p in prompts]
    tails = [
        tok(c, add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for c in completions
    ]
    width = max(len(h) + len(t) for h, t in zip(heads, tails))
    ids = torch.full((len(heads), width), tok.pad_token_id)
    labels = torch.full((len(heads), width), -100)
    mask = torch.zeros((len(heads), width), dtype=torch.long)
    for i, (h, t) in enumerate(zip(heads, tails)):
        ids[i, : len(h) + len(t)] = torch.tensor(h + t)
        labels[i, len(h) : len(h) + len(t)] = torch.tensor(t)
        mask[i, : len(h) + len(t)] = 1
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask).logits
    loss = torch.nn.functional.cross_entropy(
        logits[:, :-1].transpose(1, 2), labels[:, 1:], reduction="none"
    )
    return loss.sum(1), (labels[:, 1:] != -100).sum(1)


def _peer_correct(model, tok, rows: list[dict], batch: int) -> int:
    """Rows whose highest-scoring choice is the answer; choices scored `batch` at a time."""
    import torch

    pairs = [(r["prompt"], c) for r in rows for c in r["choices"]]
    nll = torch.cat(
        [
            _peer_scores(model, tok, *zip(*pairs[i : i + batch]))[0]
            for i in range(0, len(pairs), batch)
        ]
    )
    correct, start = 0, 0
    for row in rows:
        scores = -nll[start : start + len(row["choices"])]
        correct += int(int(scores.argmax()) == row["answer"])
        start += len(row["choices"])
    return correct


def _peer_matches(model, tok, rows: list[dict], gen) -> int:
    import torch

    tok.padding_side = "left"
    enc = tok(
        [tok.bos_token + r["prompt"] for r in rows],
        add_special_tokens=False,
        return_tensors="pt",
        padding=True,
    )
    with torch.no_grad():
        out = model.generate(**enc, generation_config=gen)
    texts = tok.batch_decode(out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
    return sum(t.strip() == r["completion"].strip() for t, r in zip(texts, rows))


# ---- raysoup -----------------------------------------------------------------------------------


def ours(paths: list[str], limit: int, batch: int, new: int, actors: int) -> dict:
    from engine.demo import DATA_DIR
    from engine.evaluate.pool import Candidate, evaluate_candidates
    from sweeps.evaluation import EvalSetConfig, EvaluateConfig

    sets = [
        EvalSetConfig(
            name=n,
            path=str(DATA_DIR / n / "eval.jsonl"),
            limit=limit,
            max_new_tokens=new,
            metrics=["loss", "accuracy", "exact_match"],
        )
        for n in SETS
    ]
    candidates = [Candidate(Path(p).name, "trial", p) for p in paths]
    started = time.perf_counter()
    table = evaluate_candidates(
        candidates, sets, EvaluateConfig(actors=actors, batch_size=batch, cpus_per_actor=1)
    )
    figures = pool_figures(table, time.perf_counter() - started)
    figures["peak_rss_mb"] = figures.pop("peak_actor_rss_mb")
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--candidates", type=int, default=2)
    parser.add_argument("--hidden", type=int, default=384)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--limit", type=int, default=100, help="examples per set (at most 100)")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--new", type=int, default=6, help="max new tokens (exact match)")
    parser.add_argument("--peer-only", nargs="*", help=argparse.SUPPRESS)
    parser.add_argument("--peer-threads", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.peer_only:
        if args.peer_threads:
            import torch

            torch.set_num_threads(args.peer_threads)
        print(json.dumps(peer(args.peer_only, args.limit, args.batch, args.new)))
        return
    with tempfile.TemporaryDirectory(prefix="raysoup-bench-eval-") as tmp:
        paths = [
            str(p) for p in build_candidates(Path(tmp), args.candidates, args.hidden, args.layers)
        ]
        report = run_all(paths, args)
    print(json.dumps(report))


def run_all(paths: list[str], args) -> dict:
    import ray

    n = args.candidates * sum(len(rows) for rows in examples(args.limit).values())
    load = os.getloadavg()[0]
    common = ["--limit", str(args.limit), "--batch", str(args.batch), "--new", str(args.new)]
    plain = peer_process(__file__, common, paths)
    single = peer_process(__file__, [*common, "--peer-threads", "1"], paths)
    for label, res in (("torch default threads", plain), ("1 thread", single)):
        print(
            f"plain HF loop, {label}: {res['seconds']:.1f} s, {n / res['seconds']:.1f} ex/s, "
            f"peak RSS {res['peak_rss_mb']:.0f} MB (its imports, not timed: "
            f"{res['imports']:.1f} s)",
            flush=True,
        )
    ray_start = start_ray()
    pools = {k: ours(paths, args.limit, args.batch, args.new, k) for k in (1, 2)}
    ray.shutdown()
    for k, res in pools.items():
        print(
            f"raysoup, {k} actor(s) x {res['threads']} thread(s): {res['seconds']:.1f} s, "
            f"{n / res['seconds']:.1f} ex/s ({plain['seconds'] / res['seconds']:.2f}x the "
            f"plain loop), peak actor RSS {res['peak_rss_mb']:.0f} MB; max |diff| vs plain "
            f"{agreement(plain['results'], res['results']):.2e}",
            flush=True,
        )
        print(
            f"  of which actor compute (model loads excluded, summed over actors) "
            f"{res['compute_seconds']:.1f} s; examples through prefix trees "
            f"{res['tree_share']:.0%}",
            flush=True,
        )
    print(f"Ray start-up (not in the times above): {ray_start:.1f} s")
    return {
        "bench": "evaluate",
        "examples": n,
        "model": f"llama {args.layers}x{args.hidden}",
        "ours": round(n / pools[1]["seconds"], 2),
        "ours_2_actors": round(n / pools[2]["seconds"], 2),
        "peer": round(n / plain["seconds"], 2),
        "ratio": round(plain["seconds"] / pools[1]["seconds"], 3),
        "ratio_2_actors": round(plain["seconds"] / pools[2]["seconds"], 3),
        "peer_1_thread": round(n / single["seconds"], 2),
        "seconds": {
            "peer": round(plain["seconds"], 2),
            "peer_1_thread": round(single["seconds"], 2),
            "ours_1": round(pools[1]["seconds"], 2),
            "ours_2": round(pools[2]["seconds"], 2),
            "ray_start": round(ray_start, 2),
        },
        "compute_seconds": {
            "ours_1": round(pools[1]["compute_seconds"], 2),
            "ours_2": round(pools[2]["compute_seconds"], 2),
        },
        "peer_imports_seconds": round(plain["imports"], 2),
        "peak_rss_mb": {
            "peer": round(plain["peak_rss_mb"]),
            "ours_1_actor": pools[1]["peak_rss_mb"],
            "ours_2_actors": pools[2]["peak_rss_mb"],
        },
        "max_abs_diff": max(agreement(plain["results"], r["results"]) for r in pools.values()),
        "machine": {
            "cpus": os.cpu_count(),
            "load_avg_1m_before": round(load, 2),
            "load_avg_1m_after": round(os.getloadavg()[0], 2),
        },
    }


if __name__ == "__main__":
    main()
