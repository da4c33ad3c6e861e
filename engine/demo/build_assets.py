"""Build the demo's committed assets: tokenizer, pretrained base model, task data.

Run ``python -m engine.demo.build_assets [--out DIR]``. Everything is derived
from fixed seeds and the local Python standard library, so no download is
needed. On 2 CPU cores the build takes two to four minutes, more when the
cores are busy with other work; ``--data-only`` rewrites the task data alone
(train, eval, test and the noisy training pool) in about a second.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import tokenizers
import torch
import transformers
from transformers import GenerationConfig, PreTrainedTokenizerFast

from engine.demo.corpus import pretraining_documents
from engine.demo.paths import PACKAGE_DIR
from engine.demo.pool import PLANTED, plant_noise
from engine.demo.pretrain import PretrainConfig, PretrainResult, pretrain
from engine.demo.tasks import TASKS, make_task, preference_pairs
from engine.demo.tokenizer import train_tokenizer

SEED = 0
N_TRAIN, N_EVAL, N_TEST = 2000, 100, 100
# About 1.3% of pretraining tokens: enough for the base to learn the prompt
# formats, far too little for it to get good at them.
PRETRAIN_EXAMPLES_PER_TASK = 500
VOCAB_SIZE = 512


def main(argv: list[str] | None = None) -> None:
    """Parse arguments and build every asset into ``--out``."""
    parser = argparse.ArgumentParser(prog="python -m engine.demo.build_assets", description=__doc__)
    parser.add_argument(
        "--out", type=Path, default=PACKAGE_DIR, help="folder to write base/ and data/ into"
    )
    parser.add_argument(
        "--steps", type=int, default=PretrainConfig.steps, help="pretraining optimizer steps"
    )
    parser.add_argument(
        "--data-only", action="store_true", help="write data/ alone, leaving base/ as it is"
    )
    args = parser.parse_args(argv)
    if args.data_only:
        write_task_data(args.out / "data")
    else:
        build(args.out, PretrainConfig(steps=args.steps, seed=SEED))


def build(out: Path, cfg: PretrainConfig) -> None:
    """Write ``out/data/<task>/{train,eval,test}.jsonl`` and ``out/base/``."""
    start = time.perf_counter()
    write_task_data(out / "data")
    print("[build] reading stdlib docstrings", flush=True)
    docs = pretraining_documents(PRETRAIN_EXAMPLES_PER_TASK, SEED, skip=N_EVAL + N_TEST + N_TRAIN)
    print(
        f"[build] {len(docs)} documents, {sum(map(len, docs)):,} characters; training tokenizer",
        flush=True,
    )
    tokenizer = train_tokenizer(docs, vocab_size=VOCAB_SIZE, max_length=cfg.max_positions)
    result = pretrain(docs, tokenizer, cfg)
    save_base(out / "base", tokenizer, result, cfg, len(docs))
    print(f"[build] done in {time.perf_counter() - start:.0f} s", flush=True)


def write_task_data(data_dir: Path) -> None:
    """Write disjoint train, eval (selection) and test splits of every task as JSONL, and the
    training pool: the train split with planted copies and junk (`engine.demo.pool`)."""
    for name in TASKS:
        # One stream per task: eval is its head, test the next stretch and train the rest, so
        # no prompt is in two splits (make_task never repeats a prompt).
        examples = make_task(name, N_EVAL + N_TEST + N_TRAIN, SEED)
        _write_jsonl(data_dir / name / "eval.jsonl", examples[:N_EVAL])
        _write_jsonl(data_dir / name / "test.jsonl", examples[N_EVAL : N_EVAL + N_TEST])
        train = examples[N_EVAL + N_TEST :]
        _write_jsonl(data_dir / name / "train.jsonl", train)
        _write_jsonl(data_dir / name / "pool.jsonl", plant_noise(train, SEED))
        for split in ("train", "eval", "test"):
            rows = [json.loads(line) for line in (data_dir / name / f"{split}.jsonl").open()]
            _write_jsonl(data_dir / name / f"pairs_{split}.jsonl", preference_pairs(rows))
        planted = ", ".join(f"{n} {kind}" for kind, n in PLANTED.items())
        print(
            f"[build] data/{name}: {N_TRAIN} train ({planted} planted in pool), "
            f"{N_EVAL} eval, {N_TEST} test",
            flush=True,
        )


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")


def save_base(
    base_dir: Path,
    tokenizer: PreTrainedTokenizerFast,
    result: PretrainResult,
    cfg: PretrainConfig,
    n_docs: int,
) -> None:
    """Save model (float32 safetensors), tokenizer, generation config and README."""
    base_dir.mkdir(parents=True, exist_ok=True)
    result.model.to(torch.float32).save_pretrained(base_dir)
    tokenizer.save_pretrained(base_dir)
    generation = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        do_sample=False,
        max_new_tokens=16,
    )
    generation.save_pretrained(base_dir)
    (base_dir / "README.md").write_text(_readme(result, cfg, n_docs), encoding="utf-8")
    print(f"[build] saved base model to {base_dir}", flush=True)


def _readme(result: PretrainResult, cfg: PretrainConfig, n_docs: int) -> str:
    params = sum(p.numel() for p in result.model.parameters())
    return f"""# raysoup demo base model

A tiny `LlamaForCausalLM` pretrained from scratch on CPU for the raysoup demo
and tests. It writes rough English and knows the prompt formats of the demo
tasks ({", ".join(TASKS)}), but is poor at them: fine-tuning has room to help.

Made with:

    python -m engine.demo.build_assets --steps {cfg.steps}

## Model

- {params:,} parameters: {cfg.num_layers} layers, hidden {cfg.hidden_size}, {cfg.num_heads} heads
  ({cfg.num_kv_heads} KV heads), intermediate {cfg.intermediate_size}, max positions
  {cfg.max_positions}, untied embeddings; float32 safetensors.
- Tokenizer: byte-level BPE, {VOCAB_SIZE} tokens, digits split one per token. Special tokens
  `<unk>`, `<s>`, `</s>`, `<pad>`. It adds no special tokens by itself: end a
  training sequence with `</s>` (pretraining put one after every document).

## Pretraining

- Corpus: {n_docs:,} documents, {result.tokens:,} tokens. Docstrings of the Python
  {platform.python_version()} standard library (modules, classes, functions; test suites
  skipped), plus {PRETRAIN_EXAMPLES_PER_TASK} examples of each task (about 1.3% of tokens),
  drawn from the task streams after the examples in `data/`, so no bundled prompt was seen.
- {cfg.steps} AdamW steps, batch {cfg.batch_size} x {cfg.seq_len} tokens, peak lr {cfg.lr},
  {cfg.warmup_steps} warmup steps then cosine decay to a tenth, weight decay {cfg.weight_decay},
  seed {cfg.seed}.
- Final training loss (mean of the last {cfg.log_every} steps): {result.final_train_loss:.3f}
- Held-out loss ({cfg.heldout_fraction:.0%} of packed rows): {result.heldout_loss:.3f}
- Took {result.seconds:.0f} s on {torch.get_num_threads()} CPU threads
  (torch {torch.__version__}, transformers {transformers.__version__},
  tokenizers {tokenizers.__version__}).

A rebuild on the same Python and library versions gives the same data and
tokenizer; model weights match up to CPU floating-point nondeterminism.
"""


if __name__ == "__main__":
    main(sys.argv[1:])
