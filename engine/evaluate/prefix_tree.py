"""Every continuation of a prompt in one forward pass, and greedy decoding from that pass.

An evaluation example asks a model about several continuations of one prompt: its completion
(loss), each choice (accuracy) and its greedy generation (exact match). Scored as separate
sequences, the prompt and every token the continuations share go through the model once per
continuation. Here an example is one row holding a token trie, a `Tree`: bos + prompt as a
chain, each continuation a path below it, a token shared by several continuations (the same
first tokens, or a choice equal to the completion) stored once. A 4D attention mask lets each
token see its ancestors only, and its position id is its depth, so it sees exactly what it
would see in its own sequence. One forward pass scores every continuation.

Greedy generation starts from the same pass: the reference (+ eos) is one of the paths, so
the logits along it say what greedy decoding picks for as long as it agrees with the reference
(the first pick comes from the prompt's last token). Rows that leave the reference before eos
and before the token limit go on decoding from the pass's key/value cache, with no second pass
over the prompt.

Both are rearrangements of the plain computation: the same tokens at the same positions attend
to the same tokens; only the floating-point order of sums may differ. A model whose attention
ignored custom masks or position ids would give other numbers, so the caller checks each model
class once against separate sequences (`engine.evaluate.worker`).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

MASKABLE = ("sdpa", "eager")  # attention implementations that take a custom 4D mask


@dataclass
class Tree:
    """One example's tokens as a trie: the prompt (bos + prompt) is a chain of nodes 0..p-1;
    `paths` are the continuations, each the list of its nodes below the prompt."""

    tokens: list[int]
    parents: list[int]
    prompt_end: int
    paths: list[list[int]] = field(default_factory=list)
    children: dict[tuple[int, int], int] = field(default_factory=dict)

    @classmethod
    def of(cls, prompt: list[int]) -> Tree:
        """A tree holding only the prompt (at least one token: the model needs something to
        predict the first continuation token from)."""
        return cls(list(prompt), list(range(-1, len(prompt) - 1)), len(prompt) - 1)

    def add(self, continuation: list[int]) -> int:
        """The index of `continuation` in `paths`; tokens shared with earlier paths are reused."""
        node, path = self.prompt_end, []
        for token in continuation:
            child = self.children.get((node, token))
            node = child if child is not None else self._grow(node, token)
            path.append(node)
        if path not in self.paths:
            self.paths.append(path)
        return self.paths.index(path)

    def _grow(self, parent: int, token: int) -> int:
        self.tokens.append(token)
        self.parents.append(parent)
        self.children[(parent, token)] = len(self.tokens) - 1
        return len(self.tokens) - 1

    def depths(self) -> list[int]:
        out: list[int] = []
        for parent in self.parents:
            out.append(0 if parent < 0 else out[parent] + 1)
        return out


@dataclass
class Packed:
    """Trees as one right-padded batch; column j of a row is node j of its tree."""

    ids: torch.Tensor  # (n, width)
    positions: torch.Tensor  # (n, width): depth in the tree
    visible: torch.Tensor  # (n, width, width) bool: node (row) attends to node (column)


def supported(model) -> bool:
    """Whether the model's attention implementation takes a custom 4D mask."""
    return getattr(model.config, "_attn_implementation", None) in MASKABLE


def window(model) -> int | None:
    """A sliding-window cache's size: a tree must not have more columns (older ones would be
    dropped)."""
    return getattr(model.config, "sliding_window", None) or None


def pack(trees: list[Tree], pad: int) -> Packed:
    width = max(len(t.tokens) for t in trees)
    ids = torch.full((len(trees), width), pad, dtype=torch.long)
    positions = torch.zeros((len(trees), width), dtype=torch.long)
    hop = torch.arange(width).repeat(len(trees), 1)  # a root and padding are their own parent
    for row, tree in enumerate(trees):
        ids[row, : len(tree.tokens)] = torch.tensor(tree.tokens)
        positions[row, : len(tree.tokens)] = torch.tensor(tree.depths())
        hop[row, : len(tree.tokens)] = torch.tensor(
            [p if p >= 0 else node for node, p in enumerate(tree.parents)]
        )
    # Ancestors by pointer doubling: after k rounds a node sees those fewer than 2^k levels up.
    # A padding column sees itself only: no empty row (no NaN), and nothing real sees it.
    visible = torch.eye(width, dtype=torch.bool).repeat(len(trees), 1, 1)
    for _ in range(width.bit_length()):
        visible |= visible.gather(1, hop[:, :, None].expand(-1, -1, width))
        hop = hop.gather(1, hop)
    return Packed(ids, positions, visible)


def attention_mask(visible: torch.Tensor, model) -> torch.Tensor:
    """(n, q, k) visibility as the (n, 1, q, k) mask the attention implementation takes."""
    if model.config._attn_implementation == "sdpa":
        return visible[:, None]
    dtype = next(model.parameters()).dtype
    return torch.zeros(visible.shape, dtype=dtype).masked_fill(~visible, torch.finfo(dtype).min)[
        :, None
    ]


@dataclass
class Scored:
    """What one pass gives: each path's log-likelihood, and how greedy decoding starts."""

    logprobs: list[list[float]]  # per tree, per path: summed log-probability of its tokens
    greedy: list[list[bool]]  # per tree, per path: every token is the model's greedy pick
    generated: list[list[int]]  # per tree: greedy tokens read off the pass (see `follow`)
    seen: torch.Tensor | None  # (n, width): the columns the next greedy token attends to
    cache: object | None  # the pass's key/value cache


@torch.no_grad()
def score(model, trees: list[Tree], pad: int, drafts: list[int | None] | None = None) -> Scored:
    """Score every path of every tree; with `drafts` (a path index or None per tree), also the
    greedy tokens that follow from the pass, and the cache to go on decoding from."""
    packed = pack(trees, pad)
    rows, columns, targets, owners = _targets(trees)
    # The vocabulary projection only where a token is scored or a greedy pick is read.
    keep = _kept_columns(trees, drafts, columns)
    index = torch.full((packed.ids.shape[1],), -1, dtype=torch.long)  # column -> logits row
    index[keep] = torch.arange(len(keep))
    out = model(
        input_ids=packed.ids.to(model.device),
        attention_mask=attention_mask(packed.visible, model).to(model.device),
        position_ids=packed.positions.to(model.device),
        use_cache=drafts is not None,
        **_keeping(model, keep),
    )
    if out.logits.shape[1] != len(keep):  # the model computed every column
        index = torch.arange(packed.ids.shape[1])
    logp = out.logits[rows, index[columns]].float().log_softmax(-1)
    wanted = torch.tensor(targets, dtype=torch.long, device=logp.device)
    picked = logp.gather(-1, wanted[:, None]).squeeze(-1)
    counts = [len(t.paths) for t in trees]
    logprobs = _per_path(picked, owners, counts)
    missed = _per_path((logp.argmax(-1) != wanted).double(), owners, counts)
    greedy = [[m == 0 for m in tree] for tree in missed]
    if drafts is None:
        return Scored(logprobs, greedy, [], None, None)
    generated, last = follow(out.logits, index, trees, drafts)
    seen = packed.visible[torch.arange(len(trees)), torch.tensor(last)]
    return Scored(logprobs, greedy, generated, seen, out.past_key_values)


def _per_path(picked: torch.Tensor, owners: list[int], counts: list[int]) -> list[list[float]]:
    """Token values summed per path (in float64), grouped per tree."""
    sums = torch.zeros(sum(counts), dtype=torch.float64, device=picked.device)
    owner = torch.tensor(owners, dtype=torch.long, device=picked.device)
    sums = sums.index_add(0, owner, picked.double()).tolist()
    out, at = [], 0
    for count in counts:
        out.append(sums[at : at + count])
        at += count
    return out


def until_eos(ids: list[int], eos: int | None) -> list[int]:
    """Generated ids up to (not including) the first eos."""
    return ids[: ids.index(eos)] if eos in ids else ids


def _kept_columns(
    trees: list[Tree], drafts: list[int | None] | None, columns: list[int]
) -> list[int]:
    """Columns whose logits are read: those predicting a scored token, and where `follow`
    reads a greedy pick (the prompt's end and the draft path)."""
    keep = set(columns)
    for tree, draft in zip(trees, drafts or [None] * len(trees)):
        keep.add(tree.prompt_end)
        keep.update(tree.paths[draft] if draft is not None else [])
    return sorted(keep)


def _keeping(model, keep: list[int]) -> dict:
    """`logits_to_keep` for models whose forward takes it (most causal LMs since
    transformers 4.45)."""
    if "logits_to_keep" not in inspect.signature(model.forward).parameters:
        return {}
    return {"logits_to_keep": torch.tensor(keep, device=model.device)}


def _targets(trees: list[Tree]) -> tuple[list[int], list[int], list[int], list[int]]:
    """For every scored token of every path: its row, the column whose logits predict it (its
    parent's), the token, and the path's flat index."""
    rows, columns, targets, owners, flat = [], [], [], [], 0
    for row, tree in enumerate(trees):
        for path in tree.paths:
            rows += [row] * len(path)
            columns += [tree.parents[node] for node in path]
            targets += [tree.tokens[node] for node in path]
            owners += [flat] * len(path)
            flat += 1
    return rows, columns, targets, owners


def follow(
    logits: torch.Tensor, index: torch.Tensor, trees: list[Tree], drafts: list[int | None]
) -> tuple[list[list[int]], list[int]]:
    """Greedy tokens known from the pass, and per tree the last node they passed through.

    Along the draft path the argmax is read at each node's parent: while it agrees with the
    draft, greedy decoding walks the path; where it first differs, that argmax is the next
    token (none when it agrees to the end: the path ends with eos). Without a draft, the
    first greedy token only. `index` maps a column to its place in `logits`.
    """
    generated, last = [], []
    for row, (tree, draft) in enumerate(zip(trees, drafts)):
        path = tree.paths[draft] if draft is not None else []
        picks = logits[row, index[[tree.prompt_end] + path]].argmax(-1).tolist()
        kept = 0
        while kept < len(path) and picks[kept] == tree.tokens[path[kept]]:
            kept += 1
        generated.append([tree.tokens[n] for n in path[:kept]] + picks[kept : kept + 1])
        last.append(path[kept - 1] if kept else tree.prompt_end)
    return generated, last


@torch.no_grad()
def generate(
    model,
    trees: list[Tree],
    pad: int,
    eos: int | None,
    max_new: int,
    scored: Scored,
    done: Callable[[int, list[int]], bool] | None = None,
) -> list[list[int]]:
    """Greedy continuations (at most `max_new` tokens, ending at eos if one comes) of every
    tree's prompt, going on from a pass `score(model, trees, pad, drafts)`. `done(i, tokens)`,
    when given, ends tree i's continuation early (a stop sequence was reached)."""
    tokens = [g[:max_new] for g in scored.generated]

    def going(i: int) -> bool:
        row = tokens[i]
        return len(row) < max_new and eos not in row and not (done and done(i, row))

    active = [i for i in range(len(tokens)) if going(i)]
    if not active:
        return tokens
    cache = scored.cache
    cache.batch_select_indices(torch.tensor(active, device=model.device))
    seen = scored.seen[active]
    while running := {i for i in active if going(i)}:
        feed = [[tokens[i][-1] if i in running else pad] for i in active]
        depth = [[trees[i].prompt_end + len(tokens[i])] for i in active]  # the fed token's
        seen = torch.cat([seen, torch.ones((len(active), 1), dtype=torch.bool)], 1)
        out = model(
            input_ids=torch.tensor(feed, device=model.device),
            position_ids=torch.tensor(depth, device=model.device),
            attention_mask=attention_mask(seen[:, None], model).to(model.device),
            past_key_values=cache,
            use_cache=True,
        )
        cache = out.past_key_values
        picks = out.logits[:, -1].argmax(-1).tolist()
        for row, i in enumerate(active):
            if i in running:
                tokens[i].append(picks[row])
    return tokens
