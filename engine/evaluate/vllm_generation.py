"""Generation on vLLM engines through Ray Data LLM (`evaluate.engine: vllm`, GPUs only).

With `engine: vllm` every greedy generation of the evaluation (a file set's `generation` need,
an `lm_eval` set's `generate_until` requests) runs here; scoring (losses, choices, the
harness's log-likelihoods) stays on the actor pool, whose tree scoring is exact. The driver
tokenizes each prompt as the actors would (`engine.evaluate.answers` for the harness's
contexts, the training layout for file sets), so both engines see the same tokens. Candidates
are grouped by the model vLLM loads: a full model folder is its own group; LoRA adapters join
their base's group and run as vLLM LoRA requests (the row's `model` names the adapter folder),
never baked into full weights. Each group is one `build_processor` over
`vLLMEngineProcessorConfig`, with one engine per GPU (`concurrency`), run one group after
another. vLLM decodes greedily (temperature 0) with the same token limit and stop sequences;
its kernels differ from transformers', so a near tie between two tokens can go the other way.

This module needs a GPU and vLLM installed where the engines run; the project's own CI has
neither, so it is checked there only up to building the processors (docs/evaluation.md).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

import ray
import ray.data
from ray.data.llm import build_processor, vLLMEngineProcessorConfig
from transformers import AutoConfig

from engine.core.encode import text_encoder
from engine.core.models import adapter_base, load_tokenizer, tokenizer_folder
from engine.evaluate.answers import cut, generation_context, max_length, stop_sequences
from engine.evaluate.sets import REQUESTS
from sweeps import SweepError
from sweeps.evaluation import EvaluateConfig

# LoRA ranks vLLM accepts for `max_lora_rank`.
LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)
DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


@dataclass
class EngineGroup:
    """Candidates one vLLM engine serves: `source` is the model it loads; `adapters` maps a
    candidate to its LoRA adapter folder (absent: the candidate is `source` itself)."""

    source: str
    members: list[int] = field(default_factory=list)
    adapters: dict[int, str] = field(default_factory=dict)


def actor_share(plans) -> tuple[list[list[str]], list[set[int]]]:
    """What stays on the actors: each plan's needs and the examples they score."""
    needs, keep = [], []
    for plan in plans:
        if plan.needs == [REQUESTS]:
            needs.append(plan.needs)
            keep.append({i for i, e in enumerate(plan.examples) if e["kind"] != "generate"})
        else:
            rest = [n for n in plan.needs if n != "generation"]
            needs.append(rest)
            keep.append(set(range(len(plan.examples))) if rest else set())
    return needs, keep


def engine_groups(candidates) -> list[EngineGroup]:
    """Candidates grouped by the model vLLM loads (an adapter by its base)."""
    groups: dict[str, EngineGroup] = {}
    for index, candidate in enumerate(candidates):
        base = adapter_base(candidate.path, candidate.base)
        group = groups.setdefault(base or candidate.path, EngineGroup(base or candidate.path))
        group.members.append(index)
        if base is not None:
            group.adapters[index] = candidate.path
    return list(groups.values())


def engine_count() -> int:
    """One engine per GPU of the cluster; none is an error (before the actors wait for GPUs)."""
    engines = int(ray.cluster_resources().get("GPU", 0))
    if engines < 1:
        raise SweepError("evaluate.engine: vllm needs GPUs, and this Ray cluster has none")
    return engines


def generation_rows(candidates, plans, config: EvaluateConfig) -> list[dict]:
    """The pool's rows (one per candidate and example) for every generation, made by vLLM."""
    engines, rows = engine_count(), []
    for group in engine_groups(candidates):
        items = [item for c in group.members for item in prompts(candidates[c], c, plans)]
        if items:
            rows += _run_group(group, items, config, engines)
    return rows


def prompts(candidate, index: int, plans) -> list[dict]:
    """One item per generation of a candidate: its prompt tokens, token limit, stops, and
    where its answer goes (`set`, `i`)."""
    folder = tokenizer_folder(candidate.path, candidate.base)
    tokenizer = load_tokenizer(folder)
    config = AutoConfig.from_pretrained(
        adapter_base(candidate.path, candidate.base) or candidate.path
    )
    max_len, enc = max_length(config, tokenizer), text_encoder(folder, False, False)
    items = []
    for s, plan in enumerate(plans):
        for i, example in enumerate(plan.examples):
            if plan.needs == [REQUESTS] and example["kind"] == "generate":
                ids = generation_context(tokenizer, max_len, example)
                stops, new = stop_sequences(tokenizer, example["until"]), example["max_gen_toks"]
            elif plan.needs != [REQUESTS] and "generation" in plan.needs:
                new = plan.config.max_new_tokens
                keep = max(1, plan.config.seq_len - new)
                ids, stops = (enc.bos + enc.encode([example["prompt"]])[0])[-keep:], []
            else:
                continue
            items.append(
                {
                    "candidate": index,
                    "set": s,
                    "i": i,
                    "ids": ids,
                    "new": new,
                    "stops": stops,
                    "reference": example.get("reference"),
                }
            )
    return items


def processor_config(group: EngineGroup, config: EvaluateConfig, engines: int, adapters_rank: int):
    """One engine per GPU for the group's model, LoRA on when the group has adapters; the
    prompts arrive tokenized and the engine detokenizes, so no chat template or tokenizer
    stage runs."""
    engine_kwargs = {"dtype": DTYPES[config.precision]}
    if group.adapters:
        rank = next((r for r in LORA_RANKS if r >= adapters_rank), LORA_RANKS[-1])
        engine_kwargs.update(
            enable_lora=True, max_lora_rank=rank, max_loras=min(len(group.adapters), 4)
        )
    return vLLMEngineProcessorConfig(
        model_source=group.source,
        engine_kwargs=engine_kwargs,
        concurrency=engines,
        batch_size=config.batch_size,
        chat_template_stage=False,
        tokenize_stage=False,
        detokenize_stage=False,
    )


def build(group: EngineGroup, config: EvaluateConfig, engines: int):
    """The group's Ray Data LLM processor: item rows in, `{candidate, set, i, text}` out."""
    rank = max((_lora_rank(path) for path in group.adapters.values()), default=0)
    return build_processor(
        processor_config(group, config, engines, rank),
        preprocess=lambda row: {
            **row,
            "tokenized_prompt": row["ids"],
            "sampling_params": {
                "temperature": 0.0,
                "max_tokens": row["new"],
                "stop": list(row["stops"]),
                "skip_special_tokens": True,
            },
        },
        postprocess=lambda row: {
            "candidate": row["candidate"],
            "set": row["set"],
            "i": row["i"],
            "text": row["generated_text"],
            "stops": list(row["stops"]),
            "reference": row["reference"],
        },
    )


def _run_group(group: EngineGroup, items: list[dict], config: EvaluateConfig, engines: int):
    model = {c: group.adapters.get(c, group.source) for c in group.members}
    rows = [{**item, "model": model[item["candidate"]]} for item in items]
    started = time.perf_counter()
    try:
        found = build(group, config, engines)(ray.data.from_items(rows)).take_all()
    except Exception as err:  # the group's candidates fail; the others go on
        error = f"vllm: {type(err).__name__}: {err}".splitlines()[0][:500]
        return [_row(item, {}, error, 0.0) for item in items]
    share = (time.perf_counter() - started) / max(len(found), 1)
    return [_row(row, _observation(row), "", share) for row in found]


def _observation(row: dict) -> dict:
    text = cut(row["text"], row["stops"])
    if row["reference"] is None:  # an lm_eval generation: the answer to its request
        return {"text": text}
    return {"prediction": text, "reference": row["reference"]}


def _row(item: dict, observation: dict, error: str, seconds: float) -> dict:
    """A row in the actors' format (see `engine.evaluate.worker.EvalActor.unit`)."""
    return {
        "candidate": item["candidate"],
        "set": item["set"],
        "index": item["i"],
        "obs": json.dumps(observation),
        "error": error,
        "seconds": seconds,
        "tree": False,
        "actor": "vllm",
        "loads": 0,
        "rss_mb": 0.0,
    }


def _lora_rank(path: str) -> int:
    with open(f"{path}/adapter_config.json") as f:
        return int(json.load(f).get("r", 8))


def merge_rows(rows: list[dict]) -> list[dict]:
    """One row per (candidate, set, example): the actors' and the engines' observations of an
    example together; the first error wins, times add up."""
    merged: dict[tuple, dict] = {}
    for row in rows:
        key = (int(row["candidate"]), int(row["set"]), int(row["index"]))
        if key not in merged:
            merged[key] = dict(row)
            continue
        into = merged[key]
        into["obs"] = json.dumps({**json.loads(into["obs"]), **json.loads(row["obs"])})
        into["error"] = into["error"] or row["error"]
        into["seconds"] += row["seconds"]
        into["loads"] += row["loads"]
    return list(merged.values())
