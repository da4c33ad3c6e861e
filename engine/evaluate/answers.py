"""An evaluation actor's answers to lm-evaluation-harness requests (see `engine.evaluate.harness`).

The harness asks three things of a model: the log-likelihood of a continuation after a context
(and whether every one of its tokens is the greedy pick), the log-likelihood of a whole text in
rolling windows, and greedy generation until a stop sequence. Each answer is what lm-eval's
Hugging Face backend (`HFLM`, lm-eval 0.4.13) computes: the same tokenization (special tokens as
the tokenizer adds them, a context's trailing spaces moved to its continuation, an empty context
replaced by the prefix token), the same left truncation to the model's length, the same windows
and the same cut at stop sequences. Only the batching differs: the continuations of one context
are scored in one pass over a prefix tree (`engine.evaluate.prefix_tree`) where the model allows
it, and generation goes on from that pass's cache.

An example is `{"kind": "loglikelihood", "prompt": context, "choices": [continuation, ...]}`,
`{"kind": "rolling", "prompt": text}` or `{"kind": "generate", "prompt": context, "until": [...],
"max_gen_toks": n, "draft": text or null}` (the draft, the task's target, is only a guess that
saves decoding steps when the model agrees with it). The observations are `{"logprobs": [...],
"greedy": [...]}` (one per continuation), `{"logprob": x}` and `{"text": generated}`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import GenerationConfig

from engine.core.batches import Batching, autocast
from engine.evaluate import prefix_tree
from engine.evaluate.prefix_tree import Tree

DEFAULT_MAX_LENGTH = 2048  # lm-eval's, for a model whose config names no length
TOKENIZER_INFINITY = 1000000000000000019884624838656  # transformers' "no model_max_length"


@dataclass
class Scorer:
    """A loaded model and how to run it; `trees`: whether prefix trees give its numbers."""

    model: object
    tokenizer: object
    device: torch.device
    precision: str = "fp32"
    batching: Batching = Batching()
    trees: bool = True

    def __post_init__(self):
        tok = self.tokenizer
        self.max_len = max_length(self.model.config, tok)
        self.prefix = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
        self.prefix_text = tok.decode(self.prefix)
        stops = self.model.generation_config.eos_token_id
        self.eos_ids = set(stops if isinstance(stops, list) else [stops]) - {None}


def answer(scorer: Scorer, examples: list[dict]) -> tuple[list[dict], list[bool]]:
    """Each example's observation (see the module's docstring), and whether prefix trees
    answered it."""
    out: list[dict] = [{} for _ in examples]
    shared = [False] * len(examples)
    for kind, respond in ANSWERS.items():
        chosen = [i for i, e in enumerate(examples) if e["kind"] == kind]
        if chosen:
            found, trees = respond(scorer, [examples[i] for i in chosen])
            for i, obs, tree in zip(chosen, found, trees):
                out[i], shared[i] = obs, tree
    return out, shared


def max_length(config, tokenizer) -> int:
    """The model's length as lm-eval resolves it: the config's, else the tokenizer's."""
    config = getattr(config, "text_config", None) or config
    for name in ("n_positions", "max_position_embeddings", "n_ctx"):
        if getattr(config, name, None) is not None:
            return int(getattr(config, name))
    limit = getattr(tokenizer, "model_max_length", None)
    return int(limit) if limit is not None and limit != TOKENIZER_INFINITY else DEFAULT_MAX_LENGTH


def encode(scorer: Scorer, text: str) -> list[int]:
    """lm-eval's `tok_encode`: the tokenizer's own special tokens, unless the text already
    starts with the prefix token's text."""
    special = {"add_special_tokens": False} if text.startswith(scorer.prefix_text) else {}
    return scorer.tokenizer.encode(text, **special)


def pair(scorer: Scorer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """Context and continuation tokens as lm-eval's `loglikelihood` makes them."""
    if context == "":
        cont = scorer.tokenizer.encode(continuation, add_special_tokens=False)
        return ([scorer.prefix], cont) if cont[:1] != [scorer.prefix] else (cont[:1], cont[1:])
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    whole, head = encode(scorer, context + continuation), encode(scorer, context)
    return head, whole[len(head) :]


def loglikelihoods(scorer: Scorer, examples: list[dict]) -> tuple[list[dict], list[bool]]:
    """One item per distinct context tokens of an example: the same context text always gives
    the same tokens, except that an empty context becomes a continuation's own first token
    when that is the prefix token."""
    items, owners = [], []
    for e, example in enumerate(examples):
        heads: dict[tuple, list[int]] = {}
        pairs = [pair(scorer, example["prompt"], c) for c in example["choices"]]
        for j, (head, _) in enumerate(pairs):
            heads.setdefault(tuple(head), []).append(j)
        for head, chosen in heads.items():
            items.append((list(head), [pairs[j][1] for j in chosen]))
            owners.append((e, chosen))
    scores, trees = score_items(scorer, items)
    found = [[None] * len(example["choices"]) for example in examples]
    shared = [True] * len(examples)
    for (e, chosen), scored, tree in zip(owners, scores, trees):
        for j, one in zip(chosen, scored):
            found[e][j] = one
        shared[e] = shared[e] and tree
    return [{"logprobs": [lp for lp, _ in f], "greedy": [g for _, g in f]} for f in found], shared


def rolling(scorer: Scorer, examples: list[dict]) -> tuple[list[dict], list[bool]]:
    per_text = [
        windows(encode(scorer, e["prompt"]), scorer.prefix, scorer.max_len) for e in examples
    ]
    scores, trees = score_items(scorer, [(head, [tail]) for w in per_text for head, tail in w])
    found, flags, at = [], [], 0
    for w in per_text:
        found.append({"logprob": sum(s[0][0] for s in scores[at : at + len(w)])})
        flags.append(all(trees[at : at + len(w)]))
        at += len(w)
    return found, flags


def windows(tokens: list[int], prefix: int, max_len: int) -> list[tuple[list[int], list[int]]]:
    """lm-eval's rolling windows (`get_rolling_token_windows` with a context of 1, made disjoint
    by `make_disjoint_window`): (context, tokens scored) pairs that score every token once."""
    if not tokens:
        return []
    first = min(max_len, len(tokens))
    out = [([prefix], tokens[:first])]
    done = first
    while done < len(tokens):
        size = min(len(tokens) - done, max_len)
        end = done + size
        head, tail = tokens[end - max_len - 1 : end - 1], tokens[end - size : end]
        out.append((head[: len(head) - (size - 1)], tail))
        done = end
    return out


def score_items(
    scorer: Scorer, items: list[tuple[list[int], list[list[int]]]]
) -> tuple[list[list[tuple[float, bool]]], list[bool]]:
    """(log-likelihood, greedy) of each continuation of each (context, continuations) item:
    by prefix tree where the tree fits the model, else as lm-eval's separate sequences; and
    whether a tree scored the item."""
    out: list[list[tuple[float, bool]]] = [[] for _ in items]
    trees = {i: _tree(scorer, *item) for i, item in enumerate(items)}
    fitted = [i for i, found in trees.items() if found is not None]
    for span in scorer.batching.spans([len(trees[i][0].tokens) for i in fitted]):
        chunk = fitted[span.start : span.stop]
        with autocast(scorer.precision, scorer.device):
            scored = prefix_tree.score(
                scorer.model, [trees[i][0] for i in chunk], scorer.tokenizer.pad_token_id
            )
        for i, logprobs, greedy in zip(chunk, scored.logprobs, scored.greedy):
            out[i] = [(logprobs[p], greedy[p]) for p in trees[i][1]]
    alone = [(i, head, conts) for i, (head, conts) in enumerate(items) if trees[i] is None]
    rest = [(i, head, cont) for i, head, conts in alone for cont in conts]
    for (i, _, _), found in zip(rest, _separate(scorer, [(h, c) for _, h, c in rest])):
        out[i].append(found)
    return out, [trees[i] is not None for i in range(len(items))]


def _tree(scorer: Scorer, head: list[int], conts: list[list[int]]):
    """A tree of the context and its continuations, with each continuation's path, or None
    where a position would pass the model's length or a sliding window's size."""
    if not scorer.trees or not head or len(head) + max(len(c) for c in conts) > scorer.max_len:
        return None
    tree = Tree.of(head)
    paths = [tree.add(cont) for cont in conts]
    window = prefix_tree.window(scorer.model)
    return None if window is not None and len(tree.tokens) > window else (tree, paths)


@torch.no_grad()
def _separate(scorer: Scorer, pairs: list[tuple[list[int], list[int]]]):
    """lm-eval's own way: (context + continuation) cut to the model's length plus one from the
    left, the last token dropped, right-padded batches."""
    out = []
    for span in scorer.batching.spans([min(len(h) + len(c), scorer.max_len) for h, c in pairs]):
        chunk = pairs[span.start : span.stop]
        inputs = [(head + cont)[-(scorer.max_len + 1) :][:-1] for head, cont in chunk]
        logits = _logits(scorer, inputs)
        for row, (ids, (_, cont)) in enumerate(zip(inputs, chunk)):
            logp = logits[row, len(ids) - len(cont) : len(ids)].float().log_softmax(-1)
            target = torch.tensor(cont, device=logp.device)
            picked = logp.gather(-1, target[:, None]).squeeze(-1)
            out.append((float(picked.double().sum()), bool((logp.argmax(-1) == target).all())))
    return out


def _logits(scorer: Scorer, inputs: list[list[int]]) -> torch.Tensor:
    width, pad = max(len(ids) for ids in inputs), scorer.tokenizer.pad_token_id
    ids = torch.tensor([ids + [pad] * (width - len(ids)) for ids in inputs])
    mask = torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids in inputs])
    with autocast(scorer.precision, scorer.device):
        return scorer.model(
            input_ids=ids.to(scorer.device), attention_mask=mask.to(scorer.device)
        ).logits


def generations(scorer: Scorer, examples: list[dict]) -> tuple[list[dict], list[bool]]:
    """Greedy generations, each cut at its first stop sequence (the task's `until` and the
    tokenizer's eos text) as lm-eval cuts them."""
    stops = [stop_sequences(scorer.tokenizer, e["until"]) for e in examples]
    contexts = [generation_context(scorer.tokenizer, scorer.max_len, e) for e in examples]
    tokens: list[list[int]] = [[] for _ in examples]
    shared = [False] * len(examples)
    for size in sorted({e["max_gen_toks"] for e in examples}):
        group = [i for i, e in enumerate(examples) if e["max_gen_toks"] == size]
        for span in scorer.batching.spans([len(contexts[i]) + size for i in group]):
            chunk = group[span.start : span.stop]
            found = _greedy(
                scorer,
                [contexts[i] for i in chunk],
                [examples[i] for i in chunk],
                size,
                [stops[i] for i in chunk],
            )
            for i, (ids, tree) in zip(chunk, found):
                tokens[i], shared[i] = ids, tree
    texts = [{"text": cut(_decode(scorer, ids), s)} for ids, s in zip(tokens, stops)]
    return texts, shared


def stop_sequences(tokenizer, until: list[str]) -> list[str]:
    """lm-eval's `handle_stop_sequences`: the task's `until` and the eos token's text."""
    eos = tokenizer.decode(tokenizer.eos_token_id, skip_special_tokens=False)
    return until + [eos] * (eos not in until)


def generation_context(tokenizer, max_len: int, example: dict) -> list[int]:
    """lm-eval's `tok_batch_encode` of a generation context, cut from the left to leave room
    for `max_gen_toks` new tokens."""
    room = max_len - example["max_gen_toks"]
    if room <= 0:
        raise ValueError(
            f"max_gen_toks {example['max_gen_toks']} leaves no room in the model's "
            f"{max_len} positions"
        )
    bos = tokenizer.bos_token
    special = {"add_special_tokens": False} if bos and example["prompt"].startswith(bos) else {}
    return tokenizer(example["prompt"], **special)["input_ids"][-room:]


@torch.no_grad()
def _greedy(scorer: Scorer, contexts, examples, size: int, stops) -> list[tuple[list[int], bool]]:
    """Greedy tokens after each context, at most `size`, ended at an eos id or once a stop
    sequence shows in the decoded text; and whether a prefix tree started them."""

    def done(i: int, ids: list[int]) -> bool:
        return bool(scorer.eos_ids & set(ids)) or any(s in _decode(scorer, ids) for s in stops[i])

    trees = [_generation_tree(scorer, c, e, size) for c, e in zip(contexts, examples)]
    if None in trees:
        return [(_plain_greedy(scorer, c, size), False) for c in contexts]
    drafts = [t[1] for t in trees]
    trees = [t[0] for t in trees]
    pad = scorer.tokenizer.pad_token_id
    with autocast(scorer.precision, scorer.device):
        scored = prefix_tree.score(scorer.model, trees, pad, drafts)
        found = prefix_tree.generate(scorer.model, trees, pad, None, size, scored, done)
    return [(ids, True) for ids in found]


def _generation_tree(scorer: Scorer, context: list[int], example: dict, size: int):
    """The context as a tree, with the draft (at most `size` tokens) as its one path, or None
    where trees do not apply."""
    window = prefix_tree.window(scorer.model)
    if not scorer.trees or not context:
        return None
    tree = Tree.of(context)
    draft = None
    if example.get("draft"):
        tail = scorer.tokenizer.encode(example["draft"], add_special_tokens=False)[:size]
        draft = tree.add(tail) if tail else None
    if window is not None and len(tree.tokens) + size > window:
        return None
    return tree, draft


def _plain_greedy(scorer: Scorer, context: list[int], size: int) -> list[int]:
    config = GenerationConfig(
        max_new_tokens=size,
        do_sample=False,
        num_beams=1,
        pad_token_id=scorer.tokenizer.pad_token_id,
        eos_token_id=sorted(scorer.eos_ids) or None,
    )
    with autocast(scorer.precision, scorer.device):
        out = scorer.model.generate(
            input_ids=torch.tensor([context], device=scorer.device), generation_config=config
        )
    return out[0, len(context) :].tolist()


def _decode(scorer: Scorer, ids: list[int]) -> str:
    """The generated text up to the first eos id (HF's `generate` stops there), without
    special tokens."""
    ends = [n for n, t in enumerate(ids) if t in scorer.eos_ids]
    return scorer.tokenizer.decode(ids[: ends[0]] if ends else ids, skip_special_tokens=True)


def cut(text: str, stops: list[str]) -> str:
    """lm-eval's `postprocess_generated_text`: the text before the first stop sequence."""
    for stop in stops:
        if stop:
            text = text.split(stop)[0]
    return text


ANSWERS = {"loglikelihood": loglikelihoods, "rolling": rolling, "generate": generations}
