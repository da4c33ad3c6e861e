"""Data selection: raysoup's `importance_resample` against the reference DSIR implementation.

    PYTHONPATH=$PWD .venv/bin/python benchmarks/selection.py [--max-docs N] [--cpus C]

Needs the `bench` extra (`pip install -e ".[bench]"`: the `data-selection` package). Both sides
select the same number of documents from the same pool toward the same target sample, in one
run; raysoup runs on a local Ray cluster of `--cpus` CPUs (already started, as in a sweep), the
reference on as many processes. The corpus is the Python standard library: the pool is every
docstring and every blank-line-separated paragraph of source, the target is half of the
docstrings of the mail and web packages (the other half stays in the pool).

Printed: documents per second for each and the ratio, how far each selection moved the pool's
hashed n-gram distribution toward the target (KL divergence, target against pool and against
selection), near-dedup documents per second, and the peak memory of each side's process tree.
The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import collections
import functools
import hashlib
import json
import random
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil

TARGET_PACKAGES = ("email", "http", "urllib", "mailbox", "smtplib", "imaplib", "poplib")
KL_BUCKETS = 1 << 14


def corpus(max_docs: int, seed: int = 0) -> tuple[list[str], list[str]]:
    """(pool, target): stdlib docstrings and source paragraphs, and a distinct target sample."""
    from engine.demo.corpus import _stdlib_files, stdlib_docstrings_by_module

    pool, target = [], []
    for index, (module, doc) in enumerate(stdlib_docstrings_by_module()):
        on_topic = module.split(".")[0] in TARGET_PACKAGES
        (target if on_topic and index % 2 else pool).append(doc)
    for path in _stdlib_files():
        text = path.read_text(encoding="utf-8", errors="replace")
        pool += [p.strip() for p in text.split("\n\n") if len(p.strip()) >= 80]
    random.Random(seed).shuffle(pool)
    return pool[:max_docs], target


class PeakMemory:
    """Peak resident memory of this process and all its descendants, sampled every 0.2 s."""

    def __enter__(self):
        self.peak, self._stop = 0, threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        me = psutil.Process()
        while not self._stop.wait(0.2):
            total = 0
            for proc in [me, *me.children(recursive=True)]:
                try:
                    total += proc.memory_info().rss
                except psutil.Error:
                    pass
            self.peak = max(self.peak, total)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    @property
    def mb(self) -> int:
        return round(self.peak / 2**20)


def write_jsonl(path: Path, texts: list[str]) -> str:
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    return str(path)


def run_ours(pool_path: str, target_path: str, stage: dict) -> tuple[list[str], float, int]:
    """(selected texts, seconds, peak MB) of one selection stage on Ray Data."""
    from engine.prepare.selection import apply_selection
    from engine.prepare.stage import read_records, read_texts
    from sweeps import parse_sweep

    data = parse_sweep(
        {"name": "b", "model": {"preset": "demo"}, "data": {"train": pool_path, "select": [stage]}}
    ).data
    with PeakMemory() as memory:
        started = time.perf_counter()
        out, _ = apply_selection(
            read_records(pool_path, ["text"])[0], data.select, data, read_texts
        )
        texts = [row["text"] for row in out.take_all()]
        seconds = time.perf_counter() - started
    return texts, seconds, memory.mb


def run_peer(
    pool_path: str, target_path: str, keep: int, cpus: int, work: Path
) -> tuple[list[str], float, int]:
    """(selected texts, seconds, peak MB) of the reference HashedNgramDSIR, same settings."""
    from data_selection import HashedNgramDSIR

    with PeakMemory() as memory:
        started = time.perf_counter()
        dsir = HashedNgramDSIR(
            [pool_path],
            [target_path],
            cache_dir=str(work / "cache"),
            num_proc=cpus,
            ngrams=2,
            num_buckets=10_000,
            min_example_length=0,
        )
        dsir.fit_importance_estimator(num_tokens_to_fit="all")
        dsir.compute_importance_weights()
        dsir.resample(
            out_dir=str(work / "out"), num_to_sample=keep, cache_dir=str(work / "resample")
        )
        seconds = time.perf_counter() - started
    texts = [
        json.loads(line)["text"]
        for part in sorted((work / "out").glob("*.jsonl"))
        for line in part.read_text().splitlines()
        if line.strip()
    ]
    return texts, seconds, memory.mb


def ngram_distribution(texts: list[str]) -> np.ndarray:
    """Word 1- and 2-gram frequencies in MD5 buckets: a hash neither side selects with."""
    from engine.prepare.selection.features import words

    counts: collections.Counter = collections.Counter()
    for text in texts:
        tokens = words(text)
        counts.update(tokens)
        counts.update(a + " " + b for a, b in zip(tokens, tokens[1:]))
    out = np.zeros(KL_BUCKETS)
    for gram, n in counts.items():
        out[int.from_bytes(hashlib.md5(gram.encode()).digest()[:4], "little") % KL_BUCKETS] += n
    return out


def kl(target: np.ndarray, other: np.ndarray) -> float:
    """KL(target || other) of bucket counts, each smoothed by half a count per bucket."""
    p, q = (target + 0.5) / (target + 0.5).sum(), (other + 0.5) / (other + 0.5).sum()
    return float(np.sum(p * np.log(p / q)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-docs", type=int, default=100_000, help="most pool documents")
    parser.add_argument("--keep", type=float, default=0.1, help="share of the pool selected")
    parser.add_argument("--cpus", type=int, default=2, help="Ray CPUs and reference processes")
    args = parser.parse_args()
    import ray

    pool, target = corpus(args.max_docs)
    keep = round(args.keep * len(pool))
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        pool_path, target_path = (
            write_jsonl(work / "pool.jsonl", pool),
            write_jsonl(work / "target.jsonl", target),
        )
        ray.init(
            num_cpus=args.cpus, include_dashboard=False, log_to_driver=False, logging_level="ERROR"
        )
        from engine.core.session import quiet_ray

        quiet_ray()
        stage = {"type": "importance_resample", "target": target_path, "keep": keep}
        ours = functools.partial(run_ours, pool_path, target_path)
        ours({**stage, "keep": 10})  # start Ray's workers, as a running sweep has them
        selected, seconds, memory = ours(stage)
        near = ours({"type": "near_dedup"})
        ray.shutdown()  # so the reference's memory is its own
        peer, peer_seconds, peer_memory = run_peer(pool_path, target_path, keep, args.cpus, work)
    report(
        args,
        pool,
        target,
        keep,
        (selected, seconds, memory),
        (peer, peer_seconds, peer_memory),
        near,
    )


def report(args, pool, target, keep, ours, peer, near) -> None:
    target_dist = ngram_distribution(target)
    base = kl(target_dist, ngram_distribution(pool))
    moves = {
        name: base - kl(target_dist, ngram_distribution(texts))
        for name, (texts, _, _) in (("ours", ours), ("peer", peer))
    }
    rate = {name: len(pool) / seconds for name, (_, seconds, _) in (("ours", ours), ("peer", peer))}
    print(
        f"pool {len(pool)} documents ({sum(map(len, pool)) / 1e6:.1f} MB), target "
        f"{len(target)}, keep {keep}, {args.cpus} CPUs"
    )
    for name in ("ours", "peer"):
        texts, seconds, memory = ours if name == "ours" else peer
        print(
            f"{name}: {seconds:.2f} s, {rate[name]:.0f} docs/s, KL(target||selection) "
            f"{base - moves[name]:.4f} (pool {base:.4f}, moved {moves[name]:.4f}), "
            f"peak RSS {memory} MB, {len(texts)} selected"
        )
    near_rate = len(pool) / near[1]
    print(
        f"near_dedup: {near[1]:.2f} s, {near_rate:.0f} docs/s, kept {len(near[0])}, "
        f"peak RSS {near[2]} MB"
    )
    print(
        json.dumps(
            {
                "bench": "selection",
                "pool_docs": len(pool),
                "keep": keep,
                "cpus": args.cpus,
                "ours": round(rate["ours"]),
                "peer": round(rate["peer"]),
                "ratio": round(rate["ours"] / rate["peer"], 2),
                "ours_seconds": round(ours[1], 2),
                "peer_seconds": round(peer[1], 2),
                "kl_pool": round(base, 4),
                "kl_ours": round(base - moves["ours"], 4),
                "kl_peer": round(base - moves["peer"], 4),
                "moved_ours": round(moves["ours"], 4),
                "moved_peer": round(moves["peer"], 4),
                "near_dedup_docs_per_s": round(near_rate),
                "peak_mb_ours": ours[2],
                "peak_mb_peer": peer[2],
                "peak_mb_near_dedup": near[2],
            }
        )
    )


if __name__ == "__main__":
    main()
