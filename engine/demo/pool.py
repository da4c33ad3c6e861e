"""The demo's training pool: a task's clean training examples with planted noise.

Real training data comes with copies, reformatted copies and junk; the demo's selection stages
(`exact_dedup`, `filter`, `near_dedup`) are there to remove them. `plant_noise` adds, at
random places, rows of three kinds, each made for one stage to remove:

* ``exact``: copies of training examples, byte for byte or with different runs of white space
  (the same text once `exact_dedup` has normalised it);
* ``near``: examples re-spaced around their symbols (``"11 + 21 ="`` for ``"11+21="``): the
  same words, a different text, which only `near_dedup` sees as a copy;
* ``junk``: rows of almost nothing, symbol soup, and absurdly long word salad, for `filter`.

Each planted row has a ``planted`` field naming its kind (the engine reads only the prompt and
the completion), so a test can check that the stages remove exactly these rows. Like the task
data, the result depends only on its arguments.
"""

from __future__ import annotations

import random
import string

PLANTED = {"exact": 150, "near": 100, "junk": 60}
SYMBOLS = "!@#$%^&*()[]{}<>?/|~;:'\",.-_=+"


def plant_noise(examples: list[dict], seed: int) -> list[dict]:
    """``examples`` with ``PLANTED`` rows of noise inserted at random places."""
    rng = random.Random(f"raysoup-demo-pool:{seed}")
    originals = rng.sample(range(len(examples)), PLANTED["exact"] + PLANTED["near"])
    planted = [_exact_copy(examples[i], rng) for i in originals[: PLANTED["exact"]]]
    planted += [_near_copy(examples[i]) for i in originals[PLANTED["exact"] :]]
    planted += _junk(PLANTED["junk"], rng)
    pool = list(examples)
    for row in planted:
        pool.insert(rng.randrange(len(pool) + 1), row)
    return pool


def _exact_copy(example: dict, rng: random.Random) -> dict:
    """The example again; every other copy with a doubled space or a trailing one."""
    prompt = example["prompt"]
    if rng.random() < 0.5:
        prompt = prompt.replace(" ", "  ", 1) if " " in prompt else prompt + " "
    return {**example, "prompt": prompt, "planted": "exact"}


def _near_copy(example: dict) -> dict:
    """The example with a space on each side of every symbol of its prompt."""
    prompt = "".join(f" {c} " if c in SYMBOLS else c for c in example["prompt"])
    return {**example, "prompt": " ".join(prompt.split()), "planted": "near"}


def _junk(n: int, rng: random.Random) -> list[dict]:
    """``n`` distinct junk rows, a third of each kind."""
    makers = (_almost_empty, _symbol_soup, _word_salad)
    rows: dict[str, dict] = {}
    while len(rows) < n:
        row = makers[len(rows) % len(makers)](rng)
        rows.setdefault(" ".join((row["prompt"] + " " + row["completion"]).split()), row)
    return list(rows.values())


def _almost_empty(rng: random.Random) -> dict:
    letters = "".join(rng.choices(string.ascii_lowercase, k=rng.randint(0, 2)))
    return _row(rng.choice(["", " ", "?", "-"]), " " + letters)


def _symbol_soup(rng: random.Random) -> dict:
    def soup(k: int) -> str:
        return "".join(rng.choices(SYMBOLS, k=k))

    return _row(soup(rng.randint(6, 30)), " " + soup(rng.randint(2, 10)))


def _word_salad(rng: random.Random) -> dict:
    words = [
        "".join(rng.choices(string.ascii_lowercase, k=rng.randint(2, 9)))
        for _ in range(rng.randint(120, 240))
    ]
    return _row(" ".join(words), " " + words[0])


def _row(prompt: str, completion: str) -> dict:
    return {"prompt": prompt, "completion": completion, "planted": "junk"}
