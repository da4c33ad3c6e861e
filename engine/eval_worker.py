"""The evaluation actor: holds one model at a time and turns work units into observations.

A work unit is one candidate, one set and a batch of that set's examples of similar length.
The actor loads the unit's candidate unless it already holds it (units arrive grouped by
candidate, so each actor loads each model once), runs the forward passes or generations the
set's metrics need, and returns one row per example with its observation as JSON. A candidate
that fails to load or evaluate gives rows with an error instead; the actor carries on.
"""

from __future__ import annotations

import json
import os
import resource
import time
from dataclasses import dataclass

import pandas as pd
import torch

from engine.encode import TextEncoder, text_encoder, training_layout
from engine.metrics.loss import token_nll
from engine.models import load_for_eval, load_tokenizer
from engine.train_loop import _autocast, _collate


class LoadError(Exception):
    """The candidate of a unit could not be loaded; the message says why."""


@dataclass
class Loaded:
    """A candidate ready to score: the model on its device, and its tokenizer."""

    model: object
    tokenizer: object
    enc: TextEncoder


class EvalActor:
    """The callable class of the Ray Data actor pool (`map_batches`)."""

    def __init__(self, candidates: list[dict], sets: list[dict], device: str, threads: int,
                 precision: str = "fp32", batch_size: int = 16):
        self.candidates, self.sets = candidates, sets
        self.device = torch.device(device)
        self.precision, self.batch_size = precision, batch_size
        if self.device.type == "cpu":
            torch.set_num_threads(threads)
        self.held: tuple[int, Loaded | str] | None = None
        self.actor = f"{os.uname().nodename}:{os.getpid()}"

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        rows = []
        for candidate, set_index, payload in zip(batch["candidate"], batch["set"],
                                                 batch["payload"]):
            rows += self.unit(int(candidate), int(set_index), json.loads(payload))
        return pd.DataFrame(rows)

    def unit(self, candidate: int, set_index: int, payload: dict) -> list[dict]:
        """One row per example of the unit: its observation, or the error."""
        examples, loads = payload["examples"], self._hold(candidate)
        started, error, observations = time.perf_counter(), "", [{} for _ in examples]
        try:
            loaded = self._loaded()
            spec = self.sets[set_index]
            for needs in payload["needs"]:
                for obs, found in zip(observations, OBSERVE[needs](self, loaded, examples, spec)):
                    obs.update(found)
        except LoadError as err:
            error = str(err)
        except Exception as err:  # a bad candidate must not stop the others
            error = f"{type(err).__name__}: {err}".splitlines()[0][:500]
        share = (time.perf_counter() - started) / len(examples)
        return [{"candidate": candidate, "set": set_index, "index": ex["i"],
                 "obs": json.dumps(obs), "error": error, "seconds": share,
                 "actor": self.actor, "loads": loads if n == 0 else 0,
                 "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
                for n, (ex, obs) in enumerate(zip(examples, observations))]

    def _hold(self, candidate: int) -> int:
        """Make `candidate` the held model; 1 if it was loaded (or tried) now, else 0."""
        if self.held is not None and self.held[0] == candidate:
            return 0
        self.held = None  # free the old model before loading the next
        spec = self.candidates[candidate]
        try:
            model, tokenizer_path = load_for_eval(spec["path"], spec.get("base"))
            if self.device.type == "cuda" and not torch.cuda.is_available():
                raise RuntimeError("gpus_per_actor is set but this actor sees no CUDA device")
            model.to(self.device).eval()
            self.held = (candidate, Loaded(model, load_tokenizer(tokenizer_path),
                                           text_encoder(tokenizer_path, False, False)))
        except Exception as err:
            reason = f"{type(err).__name__}: {err}".splitlines()[0][:500]
            self.held = (candidate, f"cannot load {spec['path']}: {reason}")
        return 1

    def _loaded(self) -> Loaded:
        if isinstance(self.held[1], str):
            raise LoadError(self.held[1])
        return self.held[1]

    @torch.no_grad()
    def _losses(self, loaded: Loaded, ids: list[list[int]], labels: list[list[int]],
                seq_len: int) -> list[tuple[float, int]]:
        """Summed loss and labelled-token count of each sequence, in chunks of batch_size."""
        pad, out = loaded.tokenizer.pad_token_id, []
        data = {"input_ids": ids, "labels": labels}
        for start in range(0, len(ids), self.batch_size):
            idx = range(start, min(start + self.batch_size, len(ids)))
            batch = _collate(data, idx, seq_len, pad, self.device)
            with _autocast(self.precision, self.device):
                logits = loaded.model(input_ids=batch["input_ids"],
                                      attention_mask=batch["attention_mask"]).logits
            nll, count = token_nll(logits, batch["labels"])
            out += [(float(a), int(b)) for a, b in zip(nll.tolist(), count.tolist())]
        return out

    def tokens(self, loaded: Loaded, examples: list[dict], spec: dict) -> list[dict]:
        completions = [e["completion"] for e in examples] if "completion" in examples[0] else None
        ids, labels = training_layout(loaded.enc, [e["prompt"] for e in examples], completions)
        return [{"nll": nll, "tokens": count}
                for nll, count in self._losses(loaded, ids, labels, spec["seq_len"])]

    def choices(self, loaded: Loaded, examples: list[dict], spec: dict) -> list[dict]:
        prompts = [e["prompt"] for e in examples for _ in e["choices"]]
        ids, labels = training_layout(loaded.enc, prompts, [c for e in examples
                                                            for c in e["choices"]])
        ids, labels = zip(*(_keep_end(i, l, spec["seq_len"]) for i, l in zip(ids, labels)))
        scores, out = iter(self._losses(loaded, list(ids), list(labels), spec["seq_len"])), []
        for example in examples:
            picked = [next(scores) for _ in example["choices"]]
            out.append({"logprobs": [-nll for nll, _ in picked],
                        "lengths": [count for _, count in picked], "answer": example["answer"]})
        return out

    @torch.no_grad()
    def generation(self, loaded: Loaded, examples: list[dict], spec: dict) -> list[dict]:
        new = spec["max_new_tokens"]
        keep = max(1, spec["seq_len"] - new)
        prompts = [(loaded.enc.bos + p)[-keep:]
                   for p in loaded.enc.encode([e["prompt"] for e in examples])]
        out = []
        for start in range(0, len(prompts), self.batch_size):
            out += self._generate(loaded, prompts[start:start + self.batch_size], new)
        return [{"prediction": p, "reference": e["reference"]} for p, e in zip(out, examples)]

    def _generate(self, loaded: Loaded, prompts: list[list[int]], new: int) -> list[str]:
        """Greedy continuations of left-padded prompts, cut at eos, decoded."""
        from transformers import GenerationConfig

        tok = loaded.tokenizer
        width = max(len(p) for p in prompts)
        ids = torch.tensor([[tok.pad_token_id] * (width - len(p)) + p for p in prompts])
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
        config = GenerationConfig(max_new_tokens=new, do_sample=False, num_beams=1,
                                  pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
        with _autocast(self.precision, self.device):
            result = loaded.model.generate(input_ids=ids.to(self.device),
                                           attention_mask=mask.to(self.device),
                                           generation_config=config)
        return [tok.decode(_until_eos(row[width:].tolist(), tok.eos_token_id),
                           skip_special_tokens=True) for row in result]


OBSERVE = {"tokens": EvalActor.tokens, "choices": EvalActor.choices,
           "generation": EvalActor.generation}


def _keep_end(ids: list[int], labels: list[int], seq_len: int) -> tuple[list[int], list[int]]:
    """Drop the prompt's start so the scored tail fits in seq_len tokens."""
    return (ids[-seq_len:], labels[-seq_len:]) if len(ids) > seq_len else (ids, labels)


def _until_eos(ids: list[int], eos: int | None) -> list[int]:
    return ids[:ids.index(eos)] if eos in ids else ids
