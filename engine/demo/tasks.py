"""Deterministic synthetic fine-tuning tasks for the demo.

Each example is a dict with ``prompt``, ``completion`` (which starts with a
space), and, for multiple-choice evaluation, ``choices`` (four candidate
completions, all distinct) and ``answer`` (the index of the right one).

Tasks:

* ``add``: two-digit addition, ``"12+35="`` -> ``" 47"``.
* ``reverse``: reverse a random lowercase word of 3 to 6 letters,
  ``"reverse abc:"`` -> ``" cba"``.

Generation draws from ``random.Random`` seeded by a string, which is stable
across processes and Python versions, so the same ``(name, n, seed)`` always
gives the same list, and a shorter list is a prefix of a longer one.
"""

from __future__ import annotations

import random
import string
from collections.abc import Callable

TASKS: tuple[str, ...] = ("add", "reverse")
N_CHOICES = 4

# 90 * 90 two-digit pairs; the reverse space (26**3 + ... + 26**6) is far larger.
_ADD_PROMPTS = 90 * 90


def make_task(name: str, n: int, seed: int) -> list[dict]:
    """Return ``n`` examples of task ``name`` with distinct prompts.

    The result depends only on ``(name, n, seed)``, and
    ``make_task(name, m, seed) == make_task(name, n, seed)[:m]`` for ``m <= n``,
    so callers can carve disjoint splits from one call.
    """
    draw = _draw_fn(name)
    if n < 0 or (name == "add" and n > _ADD_PROMPTS):
        raise ValueError(f"n: {n} is out of range for task {name!r}")
    rng = random.Random(f"raysoup-demo:{name}:{seed}")
    seen: set[str] = set()
    examples: list[dict] = []
    while len(examples) < n:
        example = draw(rng)
        if example["prompt"] not in seen:
            seen.add(example["prompt"])
            examples.append(example)
    return examples


def _draw_fn(name: str) -> Callable[[random.Random], dict]:
    try:
        return _DRAWERS[name]
    except KeyError:
        raise ValueError(f"unknown task {name!r}; known: {', '.join(TASKS)}") from None


def _example(prompt: str, answer: str, distractors: list[str], rng: random.Random) -> dict:
    """Assemble one example; the right answer lands at a random choice index."""
    choices = [answer, *distractors]
    rng.shuffle(choices)
    return {
        "prompt": prompt,
        "completion": " " + answer,
        "choices": [" " + c for c in choices],
        "answer": choices.index(answer),
    }


def _draw_add(rng: random.Random) -> dict:
    a, b = rng.randint(10, 99), rng.randint(10, 99)
    total = a + b
    # Near-misses (off by one in a digit, a dropped carry) make the choices hard
    # enough that a model must actually add to score well.
    offsets = [1, -1, 10, -10, 2, -2, 11, -9, 9, -11]
    rng.shuffle(offsets)
    distractors = [str(total + d) for d in offsets[: N_CHOICES - 1]]
    return _example(f"{a}+{b}=", str(total), distractors, rng)


def _draw_reverse(rng: random.Random) -> dict:
    word = "".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(3, 6)))
    answer = word[::-1]
    return _example(f"reverse {word}:", answer, _reverse_distractors(word, answer, rng), rng)


def _reverse_distractors(word: str, answer: str, rng: random.Random) -> list[str]:
    """Wrong answers that look like the right one: the word unchanged, or the
    reversal with two letters swapped or one letter replaced."""
    found: list[str] = []
    candidates = [word]
    while len(found) < N_CHOICES - 1:
        if not candidates:
            candidates.append(_perturb(answer, rng))
        candidate = candidates.pop()
        if candidate != answer and candidate not in found:
            found.append(candidate)
    return found


def _perturb(text: str, rng: random.Random) -> str:
    chars = list(text)
    i = rng.randrange(len(chars))
    if rng.random() < 0.5:
        j = rng.randrange(len(chars))
        chars[i], chars[j] = chars[j], chars[i]
    else:
        chars[i] = rng.choice(string.ascii_lowercase)
    return "".join(chars)


_DRAWERS: dict[str, Callable[[random.Random], dict]] = {
    "add": _draw_add,
    "reverse": _draw_reverse,
}


def preference_pairs(examples: list[dict]) -> list[dict]:
    """The examples as preference pairs: the right completion is chosen, and the first wrong
    choice (the choices are in random order: a random distractor) is rejected."""
    return [
        {
            "prompt": e["prompt"],
            "chosen": e["completion"],
            "rejected": next(c for c in e["choices"] if c != e["completion"]),
        }
        for e in examples
    ]
