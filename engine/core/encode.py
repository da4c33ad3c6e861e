"""Text to token ids in Ray Data workers, without importing torch where that is safe.

`transformers.AutoTokenizer` imports torch (seconds per fresh worker, and hundreds of MB). A
model folder with a `tokenizer.json` is encoded with the `tokenizers` library directly; the
driver checks once that both agree on probe texts, and otherwise the workers use
`AutoTokenizer`.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

IGNORE = -100  # the label of a token that is not predicted (the prompt's, padding)

PROBES = [
    "Hello world",
    " leading space",
    "12+35= 47",
    "reverse abc: cba",
    "Ünïcode — naïve café\tand\nnewlines",
    "  two  spaces ",
    "x",
]


@dataclass(frozen=True)
class TextEncoder:
    """Token ids of texts (no special tokens added), and the bos and eos ids to add by hand."""

    encode: Callable[[list[str]], list[list[int]]]
    bos: list[int]
    eos: list[int]


@functools.lru_cache(maxsize=4)
def text_encoder(
    model_path: str, trust_remote_code: bool = False, fast: bool = True
) -> TextEncoder:
    """The encoder for a model's tokenizer; `fast` uses `tokenizers` when the folder allows it."""
    folder = Path(model_path)
    if fast and not trust_remote_code and (folder / "tokenizer.json").is_file():
        return _from_tokenizer_json(folder)
    # Imported here: it imports torch, which a data worker on the fast path never needs.
    from engine.core.models import load_tokenizer

    return tokenizer_encoder(load_tokenizer(model_path, trust_remote_code))


def tokenizer_encoder(tok) -> TextEncoder:
    """The encoder of a loaded `transformers` tokenizer."""

    def encode(texts: list[str]) -> list[list[int]]:
        return tok(texts, add_special_tokens=False)["input_ids"]

    return TextEncoder(encode, _ids(tok.bos_token_id), _ids(tok.eos_token_id))


def remembering(enc: TextEncoder, limit: int = 500_000) -> TextEncoder:
    """`enc` that keeps each text's ids (at most `limit` texts, then it starts afresh): an
    evaluation actor scores every candidate on the same examples, with one tokenizer."""
    known: dict[str, list[int]] = {}

    def encode(texts: list[str]) -> list[list[int]]:
        new = [text for text in dict.fromkeys(texts) if text not in known]
        if len(known) + len(new) > limit:
            known.clear()
            new = list(dict.fromkeys(texts))
        if new:
            known.update(zip(new, enc.encode(new)))
        return [list(known[text]) for text in texts]  # copies: a caller may change its list

    return TextEncoder(encode, enc.bos, enc.eos)


def fast_path_agrees(model_path: str, trust_remote_code: bool = False) -> bool:
    """Whether the torch-free encoder gives exactly what `AutoTokenizer` gives."""
    if trust_remote_code or not (Path(model_path) / "tokenizer.json").is_file():
        return False
    fast, slow = text_encoder(model_path, False, True), text_encoder(model_path, False, False)
    return (fast.encode(PROBES), fast.bos, fast.eos) == (slow.encode(PROBES), slow.bos, slow.eos)


def _from_tokenizer_json(folder: Path) -> TextEncoder:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    specials = _special_tokens(folder)

    def special(name: str) -> list[int]:
        return _ids(tok.token_to_id(specials[name])) if specials.get(name) else []

    def encode(texts: list[str]) -> list[list[int]]:
        return [e.ids for e in tok.encode_batch(texts, add_special_tokens=False)]

    return TextEncoder(encode, special("bos_token"), special("eos_token"))


def _special_tokens(folder: Path) -> dict[str, str]:
    found: dict[str, str] = {}
    for name in ("special_tokens_map.json", "tokenizer_config.json"):
        path = folder / name
        if path.is_file():
            for key, value in json.loads(path.read_text()).items():
                if key in ("bos_token", "eos_token") and value:
                    found[key] = value["content"] if isinstance(value, dict) else value
    return found


def _ids(token_id: int | None) -> list[int]:
    return [token_id] if token_id is not None else []


def training_layout(
    enc: TextEncoder, prompts: list[str], completions: list[str] | None = None
) -> tuple[list[list[int]], list[list[int]]]:
    """Token ids and labels as training sees them: bos + text + eos, every token labelled; or
    bos + prompt, completion + eos, with the prompt's labels IGNORE."""
    if completions is None:
        ids = [enc.bos + t + enc.eos for t in enc.encode(prompts)]
        return ids, ids
    heads = [enc.bos + p for p in enc.encode(prompts)]
    tails = [c + enc.eos for c in enc.encode(completions)]
    return (
        [h + t for h, t in zip(heads, tails)],
        [[IGNORE] * len(h) + t for h, t in zip(heads, tails)],
    )


def encode_examples(enc: TextEncoder, data_format: str, columns: list[list[str]]) -> dict:
    """One batch of examples (`columns`: the format's fields, as `DataConfig.fields` orders
    them) in the training layout: `input_ids` and `labels`; preference data's `input_ids` and
    `labels` hold the prompt with its chosen completion, and `rejected_ids` and
    `rejected_labels` the prompt with its rejected one."""
    if data_format != "preference":
        ids, labels = training_layout(enc, *columns)
        return {"input_ids": ids, "labels": labels}
    prompts, chosen, rejected = columns
    ids, labels = training_layout(enc, prompts, chosen)
    rejected_ids, rejected_labels = training_layout(enc, prompts, rejected)
    return {
        "input_ids": ids,
        "labels": labels,
        "rejected_ids": rejected_ids,
        "rejected_labels": rejected_labels,
    }
