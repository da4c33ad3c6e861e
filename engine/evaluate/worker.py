"""The evaluation actor: holds one model at a time and turns work units into observations.

A work unit is one candidate and a run of examples, in parts of one set each, sorted by length.
The actor loads the unit's candidate unless it already holds it (units arrive grouped by
candidate, so each actor loads each model once), runs the forward passes or generations the
sets' metrics need, and returns one row per example with its observation as JSON. A candidate
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

from engine.core import storage
from engine.core.batches import Batching, autocast, collate, token_nll
from engine.core.encode import (
    IGNORE,
    TextEncoder,
    remembering,
    tokenizer_encoder,
    training_layout,
)
from engine.core.models import load_for_eval, load_tokenizer, tokenizer_digest
from engine.evaluate import answers, example_trees, prefix_tree
from engine.evaluate.sets import REQUESTS
from sweeps.evaluation import BATCH_SIZE, BATCH_TOKENS

KEEP_TOKENIZERS = 4  # tokenizers an actor keeps; a sweep's candidates mostly share one


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

    def __init__(
        self,
        candidates: list[dict],
        sets: list[dict],
        device: str,
        threads: int,
        precision: str = "fp32",
        batch_size: int = BATCH_SIZE,
        batch_tokens: int = BATCH_TOKENS,
    ):
        self.candidates, self.sets = candidates, sets
        self.device = torch.device(device)
        self.precision, self.batching = precision, Batching(batch_size, batch_tokens)
        if self.device.type == "cpu":
            torch.set_num_threads(threads)
        self.held: tuple[int, Loaded | str] | None = None
        self.tokenizers: dict[str, tuple[object, TextEncoder]] = {}  # by `tokenizer_digest`
        self.tree_checked: dict[str, bool] = {}
        self.actor = f"{os.uname().nodename}:{os.getpid()}"

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        rows = []
        for candidate, payload in zip(batch["candidate"], batch["payload"]):
            for part in json.loads(payload):
                rows += self.unit(int(candidate), part["set"], part)
        return pd.DataFrame(rows)

    def unit(self, candidate: int, set_index: int, payload: dict) -> list[dict]:
        """One row per example of one set's part of a unit: its observation, or the error."""
        examples, loads = payload["examples"], self._hold(candidate)
        started, error = time.perf_counter(), ""
        observations, shared = [{} for _ in examples], [False] * len(examples)
        try:
            observations, shared = self.observe(
                self._loaded(), examples, payload["needs"], self.sets[set_index]
            )
        except LoadError as err:
            error = str(err)
        except Exception as err:  # a bad candidate must not stop the others
            error = f"{type(err).__name__}: {err}".splitlines()[0][:500]
        share = (time.perf_counter() - started) / len(examples)
        return [
            {
                "candidate": candidate,
                "set": set_index,
                "index": ex["i"],
                "obs": json.dumps(obs),
                "error": error,
                "seconds": share,
                "tree": tree,
                "actor": self.actor,
                "loads": loads if n == 0 else 0,
                "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            }
            for n, (ex, obs, tree) in enumerate(zip(examples, observations, shared))
        ]

    def _hold(self, candidate: int) -> int:
        """Make `candidate` the held model; 1 if it was loaded (or tried) now, else 0."""
        if self.held is not None and self.held[0] == candidate:
            return 0
        self.held = None  # free the old model before loading the next
        spec = self.candidates[candidate]
        try:
            path = storage.local(spec["path"])
            base = storage.local(spec["base"]) if spec.get("base") else None
            with storage.fetched(path, base):  # on object storage: to this actor's node
                model, tokenizer_path = load_for_eval(path, base)
            if self.device.type == "cuda" and not torch.cuda.is_available():
                raise RuntimeError("gpus_per_actor is set but this actor sees no CUDA device")
            model.to(self.device).eval()
            self.held = (candidate, Loaded(model, *self._tokenizer(tokenizer_path)))
        except Exception as err:
            reason = f"{type(err).__name__}: {err}".splitlines()[0][:500]
            self.held = (candidate, f"cannot load {spec['path']}: {reason}")
        return 1

    def _tokenizer(self, folder: str) -> tuple[object, TextEncoder]:
        """A model folder's tokenizer and its encoder, which keeps the ids of the texts it
        encoded: loaded once for every candidate whose folder holds the same tokenizer files
        (a sweep's trials and merges share their base's), so the examples are encoded once."""
        key = tokenizer_digest(folder)
        if key not in self.tokenizers:
            if len(self.tokenizers) >= KEEP_TOKENIZERS:
                del self.tokenizers[next(iter(self.tokenizers))]  # the oldest
            tokenizer = load_tokenizer(folder)
            self.tokenizers[key] = (tokenizer, remembering(tokenizer_encoder(tokenizer)))
        return self.tokenizers[key]

    def _loaded(self) -> Loaded:
        if isinstance(self.held[1], str):
            raise LoadError(self.held[1])
        return self.held[1]

    def observe(
        self, loaded: Loaded, examples: list[dict], needs: list[str], spec: dict
    ) -> tuple[list[dict], list[bool]]:
        """Each example's observations for `needs`: from one pass over its prefix tree where
        the model and the example allow it, else from separate sequences; and whether a tree
        answered the example. An lm-evaluation-harness set needs `requests`: its examples are
        the harness's requests (`engine.evaluate.answers`)."""
        if needs == [REQUESTS]:
            trees = self._shares(loaded)
            scorer = answers.Scorer(
                loaded.model, loaded.tokenizer, self.device, self.precision, self.batching, trees
            )
            return answers.answer(scorer, examples)
        observations = [{} for _ in examples]
        shared = example_trees.shared_needs(needs, examples) if self._shares(loaded) else []
        trees = (
            example_trees.build(
                loaded.enc,
                examples,
                shared,
                spec["seq_len"],
                spec["max_new_tokens"],
                prefix_tree.window(loaded.model),
            )
            if shared
            else [None] * len(examples)
        )
        fitted = [i for i, tree in enumerate(trees) if tree is not None]
        found = self._from_trees(
            loaded, [trees[i] for i in fitted], [examples[i] for i in fitted], spec
        )
        for i, obs in zip(fitted, found):
            observations[i].update(obs)
        for need in needs:
            rest = [i for i, tree in enumerate(trees) if need not in shared or tree is None]
            if rest:
                found = OBSERVE[need](self, loaded, [examples[i] for i in rest], spec)
                for i, obs in zip(rest, found):
                    observations[i].update(obs)
        return observations, [tree is not None for tree in trees]

    def _shares(self, loaded: Loaded) -> bool:
        """Whether prefix trees give this model's numbers: checked once per model class
        against separate sequences (a class whose forward rejects the tree's inputs fails the
        check)."""
        if not prefix_tree.supported(loaded.model):
            return False
        key = type(loaded.model).__name__
        if key not in self.tree_checked:
            try:
                self.tree_checked[key] = self._tree_agrees(loaded)
            except Exception:
                self.tree_checked[key] = False
        return self.tree_checked[key]

    @torch.no_grad()
    def _tree_agrees(self, loaded: Loaded) -> bool:
        """Score a probe prompt's continuations (two share their first tokens) both ways."""
        enc = loaded.enc
        prompt = enc.bos + enc.encode([PROBE[0]])[0]
        tails = [t + enc.eos for t in enc.encode(list(PROBE[1:]))]
        tree = prefix_tree.Tree.of(prompt)
        for tail in tails:
            tree.add(tail)
        shared = prefix_tree.score(loaded.model, [tree], loaded.tokenizer.pad_token_id)
        alone = self._losses(
            loaded,
            [prompt + t for t in tails],
            [[IGNORE] * len(prompt) + t for t in tails],
            10**6,
            "fp32",
        )
        return all(
            abs(logprob + nll) <= 1e-4 * max(1.0, nll)
            for logprob, (nll, _) in zip(shared.logprobs[0], alone)
        )

    @torch.no_grad()
    def _from_trees(
        self,
        loaded: Loaded,
        trees: list[example_trees.ExampleTree],
        examples: list[dict],
        spec: dict,
    ) -> list[dict]:
        tok = loaded.tokenizer
        pad, eos, decode = tok.pad_token_id, (loaded.enc.eos or [None])[0], _decoder(tok)
        out = []
        for span in self.batching.spans([len(t.tree.tokens) for t in trees]):
            chunk, start = trees[span.start : span.stop], span.start
            plain = [t.tree for t in chunk]
            drafts = [t.draft for t in chunk] if chunk[0].draft is not None else None
            with autocast(self.precision, self.device):
                scored = prefix_tree.score(loaded.model, plain, pad, drafts)
                generated = (
                    prefix_tree.generate(
                        loaded.model, plain, pad, eos, spec["max_new_tokens"], scored
                    )
                    if drafts is not None
                    else [None] * len(chunk)
                )
            for item, logprobs, tokens, example in zip(
                chunk, scored.logprobs, generated, examples[start:]
            ):
                out.append(item.observation(logprobs, tokens, example, decode, eos))
        return out

    @torch.no_grad()
    def _losses(
        self,
        loaded: Loaded,
        ids: list[list[int]],
        labels: list[list[int]],
        seq_len: int,
        precision: str | None = None,
    ) -> list[tuple[float, int]]:
        """Summed loss and labelled-token count of each sequence, batched by `batching`."""
        pad, out = loaded.tokenizer.pad_token_id, []
        data = {"input_ids": ids, "labels": labels}
        for idx in self.batching.spans([min(len(x), seq_len) for x in ids]):
            batch = collate(data, idx, seq_len, pad, self.device)
            with autocast(precision or self.precision, self.device):
                logits = loaded.model(
                    input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
                ).logits
            nll, count = token_nll(logits, batch["labels"])
            out += [(float(a), int(b)) for a, b in zip(nll.tolist(), count.tolist())]
        return out

    def tokens(self, loaded: Loaded, examples: list[dict], spec: dict) -> list[dict]:
        completions = [e["completion"] for e in examples] if "completion" in examples[0] else None
        ids, labels = training_layout(loaded.enc, [e["prompt"] for e in examples], completions)
        return [
            {"nll": nll, "tokens": count}
            for nll, count in self._losses(loaded, ids, labels, spec["seq_len"])
        ]

    def choices(self, loaded: Loaded, examples: list[dict], spec: dict) -> list[dict]:
        prompts = [e["prompt"] for e in examples for _ in e["choices"]]
        ids, labels = training_layout(
            loaded.enc, prompts, [c for e in examples for c in e["choices"]]
        )
        ids, labels = zip(*(_keep_end(i, y, spec["seq_len"]) for i, y in zip(ids, labels)))
        scores, out = iter(self._losses(loaded, list(ids), list(labels), spec["seq_len"])), []
        for example in examples:
            picked = [next(scores) for _ in example["choices"]]
            out.append(
                {
                    "logprobs": [-nll for nll, _ in picked],
                    "lengths": [count for _, count in picked],
                    "answer": example["answer"],
                }
            )
        return out

    @torch.no_grad()
    def generation(self, loaded: Loaded, examples: list[dict], spec: dict) -> list[dict]:
        new = spec["max_new_tokens"]
        keep = max(1, spec["seq_len"] - new)
        prompts = [
            (loaded.enc.bos + p)[-keep:] for p in loaded.enc.encode([e["prompt"] for e in examples])
        ]
        out = []
        for span in self.batching.spans([len(p) + new for p in prompts]):
            out += self._generate(loaded, prompts[span.start : span.stop], new)
        return [{"prediction": p, "reference": e["reference"]} for p, e in zip(out, examples)]

    def _generate(self, loaded: Loaded, prompts: list[list[int]], new: int) -> list[str]:
        """Greedy continuations of left-padded prompts, cut at eos, decoded."""
        from transformers import GenerationConfig

        tok = loaded.tokenizer
        width = max(len(p) for p in prompts)
        ids = torch.tensor([[tok.pad_token_id] * (width - len(p)) + p for p in prompts])
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
        config = GenerationConfig(
            max_new_tokens=new,
            do_sample=False,
            num_beams=1,
            pad_token_id=tok.pad_token_id,
            eos_token_id=tok.eos_token_id,
        )
        with autocast(self.precision, self.device):
            result = loaded.model.generate(
                input_ids=ids.to(self.device),
                attention_mask=mask.to(self.device),
                generation_config=config,
            )
        return [
            tok.decode(
                prefix_tree.until_eos(row[width:].tolist(), tok.eos_token_id),
                skip_special_tokens=True,
            )
            for row in result
        ]


# A prompt and three continuations, two of them sharing their first tokens.
PROBE = ("The capital of France is", " Paris, of course", " Paris.", " Lyon")

OBSERVE = {
    "tokens": EvalActor.tokens,
    "choices": EvalActor.choices,
    "generation": EvalActor.generation,
}


def _keep_end(ids: list[int], labels: list[int], seq_len: int) -> tuple[list[int], list[int]]:
    """Drop the prompt's start so the scored tail fits in seq_len tokens."""
    return (ids[-seq_len:], labels[-seq_len:]) if len(ids) > seq_len else (ids, labels)


def _decoder(tokenizer):
    return lambda ids: tokenizer.decode(ids, skip_special_tokens=True)
