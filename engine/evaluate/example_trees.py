"""Evaluation examples as prefix trees (`engine.evaluate.prefix_tree`), and trees back to
observations.

A tree answers `choices` and `generation` for any example, and `tokens` for a prompt/completion
example (a text example's loss labels the whole text: there is no prompt to share). An example
whose sequences would not fit in the set's `seq_len` (separate sequences then drop the prompt's
start, each in its own way) gets no tree and is scored as separate sequences, so both ways give
the same numbers.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from engine.core.encode import TextEncoder
from engine.evaluate.prefix_tree import Tree, until_eos

SHARED = ("tokens", "choices", "generation")


@dataclass
class ExampleTree:
    """An example's tree and which of its paths answer which need."""

    tree: Tree
    completion: int | None = None  # the path of completion + eos (loss)
    choices: list[int] = field(default_factory=list)  # the path of each choice + eos
    draft: int | None = None  # the path of reference + eos, when generation is asked for

    def observation(
        self,
        logprobs: list[float],
        generated: list[int] | None,
        example: dict,
        decode,
        eos: int | None,
    ) -> dict:
        """The observations separate sequences would give (see `engine.evaluate.worker`)."""
        paths, found = self.tree.paths, {}
        if self.completion is not None:
            found.update(nll=-logprobs[self.completion], tokens=len(paths[self.completion]))
        if self.choices:
            found.update(
                logprobs=[logprobs[c] for c in self.choices],
                lengths=[len(paths[c]) for c in self.choices],
                answer=example["answer"],
            )
        if generated is not None:
            found.update(
                prediction=decode(until_eos(generated, eos)), reference=example["reference"]
            )
        return found


def shared_needs(needs: list[str], examples: list[dict]) -> list[str]:
    """The needs a tree answers for these examples."""
    return [n for n in needs if n in SHARED and (n != "tokens" or "completion" in examples[0])]


def build(
    enc: TextEncoder,
    examples: list[dict],
    needs: list[str],
    seq_len: int,
    max_new: int,
    window: int | None = None,
) -> list[ExampleTree | None]:
    """A tree per example answering `needs` (from `shared_needs`), or None where it does not
    fit: more than `seq_len` tokens on a path, a prompt longer than generation keeps, or more
    columns than a sliding-window cache (`window`) holds."""
    prompts = enc.encode([e["prompt"] for e in examples])
    encoded = {
        need: _encode_nested(enc, [_continuations(e, need) for e in examples]) for need in needs
    }
    out = []
    for i, prompt in enumerate(prompts):
        item = ExampleTree(Tree.of(enc.bos + prompt))
        paths = {need: [item.tree.add(t + enc.eos) for t in encoded[need][i]] for need in needs}
        item.completion = paths["tokens"][0] if "tokens" in paths else None
        item.choices = paths.get("choices", [])
        item.draft = paths["generation"][0] if "generation" in paths else None
        out.append(item if _fits(item, seq_len, max_new, window) else None)
    return out


def _continuations(example: dict, need: str) -> list[str]:
    if need == "choices":
        return example["choices"]
    return [example["completion" if need == "tokens" else "reference"]]


def _encode_nested(enc: TextEncoder, groups: list[list[str]]) -> list[list[list[int]]]:
    flat = enc.encode([text for group in groups for text in group])
    out, at = [], 0
    for group in groups:
        out.append(flat[at : at + len(group)])
        at += len(group)
    return out


def _fits(item: ExampleTree, seq_len: int, max_new: int, window: int | None) -> bool:
    tree, prompt = item.tree, item.tree.prompt_end + 1
    generates = item.draft is not None
    longest = max((len(p) for p in tree.paths), default=0)
    return (
        prompt >= 1
        and prompt + longest <= seq_len
        and (not generates or prompt <= max(1, seq_len - max_new))
        and (window is None or len(tree.tokens) + (max_new if generates else 0) <= window)
    )
