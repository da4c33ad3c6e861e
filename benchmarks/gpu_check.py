"""Training throughput on a GPU through raysoup's own trial loop: a bf16 full fine-tune of a
random-init Llama of about 1B parameters (tokens/s and model FLOPs utilisation against the GPU's
dense bf16 peak), LoRA and QLoRA (NF4) on the same model (their peak GPU memory side by side),
a DPO full fine-tune on preference pairs of the same text (its reference computed first, as
prepare does), and DeepSpeed ZeRO-2 on one GPU as a worker group.

    .venv/bin/python benchmarks/gpu_check.py [--steps 20] [--peak-tflops 989]
    .venv/bin/python benchmarks/gpu_check.py --smoke     # a tiny model on CPU: checks the script

The model is built here (no download): Llama, hidden 2048, 16 layers, 16 heads, the demo
tokenizer's vocabulary; data are long synthetic texts cut to `--seq` tokens, so every step is
`batch x seq` tokens. FLOPs per token: 6 x non-embedding parameters + 12 x layers x hidden x seq
(forward and backward, attention included). `--peak-tflops` is the GPU's dense bf16 peak
(989 for an H100 or H200 SXM). The last line is one JSON object: ours = achieved TFLOPS of the
full fine-tune, peer = the peak, ratio = MFU.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.train_throughput import _Discard  # noqa: E402


def build(work: Path, hidden: int, layers: int, seq: int, rows: int) -> tuple[str, Path]:
    """The model and the prepared synthetic text data."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import torch
    from transformers import AutoModelForCausalLM

    from engine.demo.tiny import save_tiny_model, tiny_config
    from engine.prepare.stage import tokenize_batch

    model_dir = save_tiny_model(work / "model", arch="llama", seed=0)
    config = tiny_config("llama")
    heads = max(1, hidden // 128)
    config.update(
        {
            "hidden_size": hidden,
            "intermediate_size": 256 * round(hidden * 8 / 3 / 256) or 4 * hidden,
            "num_hidden_layers": layers,
            "num_attention_heads": heads,
            "num_key_value_heads": heads,
            "max_position_embeddings": max(seq, 256),
        }
    )
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(model_dir)
    words = ["apple", "river", "stone", "seven", "blue", "42", "open", "north", "tree", "sum"]
    rng = random.Random(0)
    texts = [" ".join(rng.choices(words, k=seq)) for _ in range(rows)]  # longer than seq tokens
    data = work / "data"
    sweep = trial_sweep(str(model_dir), "full", seq, 1, 1, None)
    for split, n in (("train", rows), ("eval", 8)):
        (data / split).mkdir(parents=True)
        table = pa.Table.from_pylist([{"text": t} for t in texts[:n]])
        pq.write_table(
            tokenize_batch(table, sweep.data, str(model_dir), False), data / split / "p.parquet"
        )
    return str(model_dir), data


def build_pairs(work: Path, model_path: str, seq: int, rows: int, device) -> Path:
    """Preference pairs of the same synthetic text: a prompt of half a sequence and two
    continuations of half a sequence each, prepared with the base model's reference."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from engine.prepare.reference import score_task, settings
    from engine.prepare.stage import tokenize_batch

    words = ["apple", "river", "stone", "seven", "blue", "42", "open", "north", "tree", "sum"]
    rng = random.Random(1)
    half = seq // 4  # a word is about two tokens: prompt and each completion ~ seq / 2 tokens
    rows_ = [
        {k: " ".join(rng.choices(words, k=half)) for k in ("prompt", "chosen", "rejected")}
        for _ in range(rows)
    ]
    sweep = dpo_sweep(model_path, seq, 1, 1, device)
    data = work / "pairs"
    for split, n in (("train", rows), ("eval", 8)):
        (data / split).mkdir(parents=True)
        table = tokenize_batch(pa.Table.from_pylist(rows_[:n]), sweep.data, model_path, False)
        pq.write_table(table, data / split / "p.parquet")
    score_task(str(data), model_path, settings(sweep), False)
    return data


def dpo_sweep(model_path: str, seq: int, batch: int, steps: int, device):
    """A bf16 full fine-tune with DPO (beta 0.1) on the pairs of `build_pairs`."""
    sweep = trial_sweep(model_path, "full", seq, batch, steps, device)
    return sweep.model_copy(
        update={
            "data": sweep.data.model_copy(
                update={
                    "train": str(REPO / "engine/demo/data/add/pairs_train.jsonl"),
                    "format": "preference",
                }
            ),
            "finetune": sweep.finetune.model_copy(update={"objective": "dpo"}),
        }
    )


def dpo(model_path: str, work: Path, args, device) -> dict:
    """A DPO trial: batches of half as many pairs as the others' sequences, so a step trains on
    as many tokens."""
    from engine.train.loop import TrialSpec, train

    pairs_batch = max(1, args.batch // 2)
    data = build_pairs(work, model_path, args.seq, pairs_batch * args.steps, device)
    sweep = dpo_sweep(model_path, args.seq, pairs_batch, args.steps, device)
    spec = TrialSpec(sweep=sweep, model_path=model_path, data_dir=data, data_size=None, seed=0)
    return train(spec, _Discard())


def trial_sweep(model_path: str, method: str, seq: int, batch: int, steps: int, device, **extra):
    from sweeps import parse_sweep

    gpu = device == "cuda"
    return parse_sweep(
        {
            "name": "gpu-check",
            "model": {"path": model_path},
            # the data are prepared here; the sweep names a file only because one is required
            "data": {"train": str(REPO / "engine/demo/data/add/train.jsonl"), "format": "text"},
            "finetune": {"method": method, "lora": {"r": 16, "alpha": 32}},
            "train": {
                "lr": 1e-4,
                "max_steps": steps,
                "batch_size": batch,
                "seq_len": seq,
                "eval_every": steps,
                "truncation": "warn",
                "precision": "bf16" if gpu else "fp32",
            },
            "checkpoint": {"every": steps},
            "resources": {"gpus_per_trial": 1 if gpu else 0, "cpus_per_trial": 2},
            **extra,
        }
    )


def one_process(model_path: str, data: Path, method: str, args, device) -> dict:
    from engine.train.loop import TrialSpec, train

    sweep = trial_sweep(model_path, method, args.seq, args.batch, args.steps, device)
    spec = TrialSpec(sweep=sweep, model_path=model_path, data_dir=data, data_size=None, seed=0)
    return train(spec, _Discard())


def zero2(model_path: str, data: Path, args, device, work: Path) -> dict:
    import ray

    from engine.train import records
    from engine.train.loop import TrialSpec
    from engine.train.workers import run_workers

    gpus = 1 if device == "cuda" else 0
    sweep = trial_sweep(
        model_path,
        "full",
        args.seq,
        args.batch,
        args.steps,
        device,
        deepspeed={"stage": 2},
        resources={"gpus_per_worker": gpus, "cpus_per_worker": 1},
    )
    spec = TrialSpec(sweep=sweep, model_path=model_path, data_dir=data, data_size=None, seed=0)
    ray.init(include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    try:
        run_workers(spec, work / "zero2", 1, None, work / "groups", in_tune=False)
    finally:
        ray.shutdown()
    return records.checkpoint_info(records.complete_checkpoints([work / "zero2"])[-1])


def flops_per_token(model_path: str, seq: int) -> tuple[float, int]:
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(model_path)
    model = AutoModelForCausalLM.from_config(config)
    params = sum(p.numel() for p in model.parameters())
    embed = model.get_input_embeddings().weight.numel()
    head = 0 if config.tie_word_embeddings else model.get_output_embeddings().weight.numel()
    dense = params - embed - head
    return 6 * dense + 12 * config.num_hidden_layers * config.hidden_size * seq, params


def main() -> None:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=2048)
    parser.add_argument("--layers", type=int, default=16)
    parser.add_argument("--seq", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--peak-tflops", type=float, default=989.0)
    parser.add_argument("--smoke", action="store_true", help="a tiny model on CPU")
    args = parser.parse_args()
    if args.smoke:
        args.hidden, args.layers, args.seq, args.batch, args.steps = 128, 2, 64, 2, 3
    device = "cuda" if torch.cuda.is_available() and not args.smoke else "cpu"
    if device == "cpu" and not args.smoke:
        sys.exit("gpu_check: no CUDA device (a CUDA build of torch?); --smoke runs on CPU")
    work = Path(tempfile.mkdtemp(prefix="raysoup-gpu-check-"))
    model_path, data = build(work, args.hidden, args.layers, args.seq, rows=args.batch * args.steps)
    per_token, params = flops_per_token(model_path, args.seq)
    figures = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu"}
    figures["params_m"] = round(params / 1e6, 1)
    for name, run in (
        ("full_bf16", lambda: one_process(model_path, data, "full", args, device)),
        ("lora_bf16", lambda: one_process(model_path, data, "lora", args, device)),
        ("qlora_nf4", lambda: one_process(model_path, data, "qlora", args, device)),
        ("dpo_full_bf16", lambda: dpo(model_path, work, args, device)),
        ("zero2_1gpu", lambda: zero2(model_path, data, args, device, work)),
    ):
        last = run()
        figures[name] = {
            "tokens_per_s": last["tokens_per_s"],
            "gpu_peak_mb": last.get("gpu_peak_mb"),
            "eval_loss": round(last["eval_loss"], 4),
        }
        print(f"{name}: {figures[name]}", flush=True)
    achieved = figures["full_bf16"]["tokens_per_s"] * per_token / 1e12
    print(
        json.dumps(
            {
                "bench": "gpu_check",
                "unit": "TFLOPS (full fine-tune, bf16)",
                "ours": round(achieved, 2),
                "peer": args.peak_tflops,
                "ratio": round(achieved / args.peak_tflops, 4),
                **figures,
                "seq": args.seq,
                "batch": args.batch,
                "steps": args.steps,
            }
        )
    )


if __name__ == "__main__":
    main()
