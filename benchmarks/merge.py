"""Merge benchmark: raysoup's streaming merge vs mergekit-yaml vs naive torch averaging.

Builds a ~134M-parameter Llama-shaped model (12 layers, hidden 768, intermediate 2048,
vocabulary 32000; random weights stored as float32 safetensors) and four "fine-tunes"
of it (base + small noise) in a temporary folder, then measures, each as its own
subprocess, whole-process wall time, CPU time (user + system) and peak resident
memory (ru_maxrss of that one child):

  (a) uniform linear average of 4 checkpoints: raysoup, mergekit-yaml, naive torch
  (b) TIES, density 0.2, 2 models over a base: raysoup, mergekit-yaml

raysoup runs as the ``raysoup merge`` console command, twice per repeat: with an empty
digest cache ("cold": it hashes every input for the model card) and then with the
cache that run filled ("warm": unchanged inputs are not hashed again). The tools run
in turn within each repeat; figures are medians over ``--repeats``. Outputs are
compared (max abs difference). The last printed line is one JSON object.

    python benchmarks/merge.py [--workdir DIR] [--keep] [--repeats N] [--cases ab]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent

# Runs one command and reports its wall time and peak RSS; as the only child, its
# RUSAGE_CHILDREN maximum is exactly that command's.
MEASURE = """
import json, resource, subprocess, sys, time
start = time.perf_counter()
code = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
wall = time.perf_counter() - start
if code.returncode:
    sys.stderr.write(code.stderr[-3000:])
usage = resource.getrusage(resource.RUSAGE_CHILDREN)
print(json.dumps({"wall_s": round(wall, 2), "cpu_s": round(usage.ru_utime + usage.ru_stime, 2),
                  "peak_rss_gb": round(usage.ru_maxrss * 1024 / 1e9, 3), "rc": code.returncode}))
"""

NAIVE = """
import sys, torch
from pathlib import Path
from safetensors.torch import load_file, save_file
out, inputs = Path(sys.argv[1]), sys.argv[2:]
states = [load_file(f"{p}/model.safetensors") for p in inputs]
avg = {k: sum(s[k] for s in states) / len(states) for k in states[0]}
out.mkdir(parents=True, exist_ok=True)
save_file(avg, out / "model.safetensors", metadata={"format": "pt"})
"""


def build_models(root: Path, count: int) -> list[Path]:
    """Base and ``count - 1`` fine-tunes (base + 0.01 noise), float32 safetensors."""
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(
        hidden_size=768,
        intermediate_size=2048,
        num_hidden_layers=12,
        num_attention_heads=12,
        num_key_value_heads=12,
        vocab_size=32000,
        tie_word_embeddings=False,
        dtype="float32",
        architectures=["LlamaForCausalLM"],
    )
    with torch.device("meta"):
        shapes = {
            k: v.shape for k, v in AutoModelForCausalLM.from_config(config).state_dict().items()
        }
    generator = torch.Generator().manual_seed(0)
    base = {k: torch.randn(s, generator=generator) * 0.02 for k, s in shapes.items()}
    folders = []
    for i in range(count):
        folder = root / f"model-{i}"
        folder.mkdir(parents=True, exist_ok=True)
        state = (
            base
            if i == 0
            else {k: v + 0.01 * torch.randn(v.shape, generator=generator) for k, v in base.items()}
        )
        save_file(state, folder / "model.safetensors", metadata={"format": "pt"})
        config.save_pretrained(folder)
        save_tokenizer(folder)
        folders.append(folder)
    params = sum(v.numel() for v in base.values()) / 1e6
    print(f"built {count} models of {params:.1f}M parameters (float32)")
    return folders


def save_tokenizer(folder: Path) -> None:
    """A small word-level tokenizer, so both tools copy tokenizer files as they would for a real
    model."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(
        models.WordLevel({f"t{i}": i for i in range(1000)} | {"[UNK]": 1000}, unk_token="[UNK]")
    )
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="[UNK]").save_pretrained(folder)


def measure(cmd: list[str], cache: Path | None = None) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    if cache:
        env["RAYSOUP_CACHE_DIR"] = str(cache)
    result = subprocess.run(
        [sys.executable, "-c", MEASURE, *cmd], capture_output=True, text=True, env=env
    )
    if result.returncode or json.loads(result.stdout)["rc"]:
        raise SystemExit(f"command failed: {' '.join(cmd)}\n{result.stderr}")
    return json.loads(result.stdout)


def compare(a: Path, b: Path) -> dict:
    """Max abs difference, and how many entries differ by more than 1e-6 (of how many)."""
    sys.path.insert(0, str(REPO))
    from merging.io import ModelFiles

    left, right = ModelFiles(a), ModelFiles(b)
    worst, differing, total = 0.0, 0, 0
    for name in left.names():
        diff = (left.load(name).float() - right.load(name).float()).abs()
        worst = max(worst, float(diff.max()))
        differing += int((diff > 1e-6).sum())
        total += diff.numel()
    return {"max_abs_diff": worst, "entries_differing": differing, "entries": total}


def write_recipe(path: Path, recipe: dict) -> Path:
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def run_case(
    work: Path, name: str, recipe: dict, naive_inputs: list[Path] | None, repeats: int
) -> dict:
    """Every tool in turn, ``repeats`` times; medians, every wall time, and agreement of outputs."""
    recipe_path = write_recipe(work / f"{name}.yaml", recipe)
    ours = [
        str(BIN / "raysoup"),
        "merge",
        str(recipe_path),
        "--out",
        str(work / f"{name}-ours"),
        "--no-progress",
    ]
    runs = {
        "ours_cold": ours,
        "peer": [
            str(BIN / "mergekit-yaml"),
            str(recipe_path),
            str(work / f"{name}-peer"),
            "--no-write-model-card",
            "--lazy-unpickle",
            "--quiet",
        ],
        "ours_warm": ours,
    }
    if naive_inputs:
        runs["naive"] = [
            sys.executable,
            "-c",
            NAIVE,
            str(work / f"{name}-naive"),
            *map(str, naive_inputs),
        ]
    samples: dict[str, list[dict]] = {who: [] for who in runs}
    load = [round(os.getloadavg()[0], 2)]
    for repeat in range(repeats):
        cache = (
            work / f"cache-{name}-{repeat}"
        )  # empty for the cold run, filled by it for the warm one
        shutil.rmtree(
            cache, ignore_errors=True
        )  # a reused work folder keeps the last run's digests
        for who, cmd in runs.items():
            shutil.rmtree(work / f"{name}-{who.split('_')[0]}", ignore_errors=True)
            samples[who].append(measure(cmd, cache if who.startswith("ours") else None))
        load.append(round(os.getloadavg()[0], 2))
    figures = {who: median(runs_) for who, runs_ in samples.items()}
    figures["load_avg_1m"] = load
    figures["vs_peer"] = compare(work / f"{name}-ours", work / f"{name}-peer")
    if naive_inputs:
        figures["vs_naive"] = compare(work / f"{name}-ours", work / f"{name}-naive")
    return figures


def median(samples: list[dict]) -> dict:
    """Median of each figure over repeats, plus every wall time."""
    keys = ("wall_s", "cpu_s", "peak_rss_gb")
    return {
        **{k: round(statistics.median(x[k] for x in samples), 3) for k in keys},
        "walls": [x["wall_s"] for x in samples],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--keep", action="store_true", help="keep the models and outputs")
    parser.add_argument(
        "--repeats", type=int, default=3, help="runs of every tool per case (medians reported)"
    )
    parser.add_argument("--cases", default="ab", help="which cases to run: a, b or ab")
    args = parser.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="raysoup-bench-merge-"))
    models = (
        sorted(work.glob("model-*")) if len(list(work.glob("model-*/*.safetensors"))) == 5 else None
    )
    models = models or build_models(work, 5)
    linear = {
        "merge_method": "linear",
        "dtype": "float32",
        "models": [{"model": str(m), "parameters": {"weight": 1.0}} for m in models[1:]],
    }
    ties = {
        "merge_method": "ties",
        "base_model": str(models[0]),
        "dtype": "float32",
        "models": [
            {"model": str(m), "parameters": {"weight": 0.5, "density": 0.2}} for m in models[1:3]
        ],
    }
    results = {}
    if "a" in args.cases:
        results["a_linear4"] = run_case(work, "linear", linear, models[1:], args.repeats)
    if "b" in args.cases:
        results["b_ties"] = run_case(work, "ties", ties, None, args.repeats)
    report(results, {"cpus": os.cpu_count(), "repeats": args.repeats})
    if not args.keep and not args.workdir:
        shutil.rmtree(work, ignore_errors=True)


TOOLS = ("ours_cold", "ours_warm", "peer", "naive")


def report(results: dict, machine: dict) -> None:
    print(f"\n{'case':<10} {'tool':<10} {'wall s':>8} {'cpu s':>7} {'peak GB':>8}  every wall s")
    for case, figures in results.items():
        for who in (w for w in TOOLS if w in figures):
            f = figures[who]
            print(
                f"{case:<10} {who:<10} {f['wall_s']:>8.2f} {f['cpu_s']:>7.2f} "
                f"{f['peak_rss_gb']:>8.3f}  {f['walls']}"
            )
        print(
            f"{case:<10} 1-minute load average before and after each repeat: "
            f"{figures['load_avg_1m']}"
        )
    ratio = {case: _ratios(f) for case, f in results.items()}
    for case, r in ratio.items():
        agree = results[case]["vs_peer"]
        print(
            f"{case}: time vs mergekit-yaml {r['time_cold_over_peer']} (cold cache), "
            f"{r['time_warm_over_peer']} (warm); memory {r['mem_ours_over_peer']}; "
            f"vs mergekit: max abs diff {agree['max_abs_diff']:.2e}, "
            f"{agree['entries_differing']} of {agree['entries']} entries differ"
        )
    summary = {
        "bench": "merge",
        "model": "llama 12x768, 134M params, float32, random",
        "machine": machine,
        **{who: {c: f[who] for c, f in results.items() if who in f} for who in TOOLS},
        "load_avg_1m": {c: f["load_avg_1m"] for c, f in results.items()},
        "agreement": {
            c: {k: v for k, v in f.items() if k.startswith("vs_")} for c, f in results.items()
        },
        "ratio": ratio,
    }
    print(json.dumps(summary))


def _ratios(f: dict) -> dict:
    peer = f["peer"]
    return {
        "time_cold_over_peer": round(f["ours_cold"]["wall_s"] / peer["wall_s"], 3),
        "time_warm_over_peer": round(f["ours_warm"]["wall_s"] / peer["wall_s"], 3),
        "cpu_cold_over_peer": round(f["ours_cold"]["cpu_s"] / peer["cpu_s"], 3),
        "cpu_warm_over_peer": round(f["ours_warm"]["cpu_s"] / peer["cpu_s"], 3),
        "mem_ours_over_peer": round(
            max(f["ours_cold"]["peak_rss_gb"], f["ours_warm"]["peak_rss_gb"]) / peer["peak_rss_gb"],
            3,
        ),
        "speedup_cold_vs_peer": round(peer["wall_s"] / f["ours_cold"]["wall_s"], 2),
    }


if __name__ == "__main__":
    main()
