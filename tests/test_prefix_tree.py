"""Prefix trees give the numbers of separate sequences: scores, greedy generations, and the
evaluation actor's observations, on every tiny architecture and both attention kernels."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from engine.core.models import load_tokenizer
from engine.demo.tiny import TINY_ARCHS, save_tiny_model
from engine.evaluate import example_trees, prefix_tree
from engine.evaluate.worker import EvalActor

PROMPTS = ["12+35=", "reverse abc:", "a much longer prompt about the weather today:", "x"]
CONTINUATIONS = [" 47", " 47", " 4", " 48 and more", "", " cba", " cab"]  # repeats, shared starts


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("archs")
    return {arch: str(save_tiny_model(root / arch, arch=arch, seed=3)) for arch in TINY_ARCHS}


@pytest.fixture(
    scope="module",
    params=[(a, k) for a in TINY_ARCHS for k in prefix_tree.MASKABLE],
    ids=lambda p: f"{p[0]}-{p[1]}",
)
def model(request, folders):
    from transformers import AutoModelForCausalLM

    arch, kernel = request.param
    path = folders[arch]
    loaded = AutoModelForCausalLM.from_pretrained(
        path, dtype=torch.float32, attn_implementation=kernel
    ).eval()
    return loaded, load_tokenizer(path)


def ids(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


@torch.no_grad()
def alone(model, sequence: list[int], start: int) -> float:
    """Summed log-probability of sequence[start:] given what precedes it, as its own batch."""
    logp = model(torch.tensor([sequence])).logits[0].float().log_softmax(-1)
    return sum(float(logp[j - 1, sequence[j]]) for j in range(start, len(sequence)))


@torch.no_grad()
def step_by_step(model, prompt: list[int], new: int, eos: int) -> list[int]:
    """Greedy decoding recomputing the whole sequence at every step (no cache, no padding)."""
    out: list[int] = []
    while len(out) < new and eos not in out:
        out.append(int(model(torch.tensor([prompt + out])).logits[0, -1].argmax()))
    return out


def test_every_path_scores_as_its_own_sequence(model):
    model, tok = model
    trees, tails = [], []
    for prompt in PROMPTS:
        tree = prefix_tree.Tree.of([tok.bos_token_id] + ids(tok, prompt))
        tails.append([ids(tok, c) + [tok.eos_token_id] for c in CONTINUATIONS])
        indices = [tree.add(t) for t in tails[-1]]
        assert indices[0] == indices[1]  # the repeated continuation is one path
        trees.append(tree)
    scored = prefix_tree.score(model, trees, tok.pad_token_id)
    for tree, row, logprobs in zip(trees, tails, scored.logprobs):
        head = tree.tokens[: tree.prompt_end + 1]
        assert len(tree.tokens) < len(head) + sum(len(t) for t in row)  # tokens were shared
        for tail in row:
            expected = alone(model, head + tail, len(head))
            assert logprobs[tree.add(tail)] == pytest.approx(expected, abs=1e-4)


def test_greedy_generation_is_step_by_step_greedy(model):
    """Drafts that agree all the way, part of the way, not at all, or are missing."""
    model, tok = model
    eos, new = tok.eos_token_id, 6
    heads = [[tok.bos_token_id] + ids(tok, p) for p in PROMPTS]
    truth = [step_by_step(model, h, new, eos) for h in heads]
    drafts = [
        truth[0] + [eos],
        truth[1][:2] + [(truth[1][2] + 1) % 500, eos],
        [(truth[2][0] + 1) % 500, eos],
        None,
    ]
    trees, picks = [], []
    for head, draft in zip(heads, drafts):
        trees.append(prefix_tree.Tree.of(head))
        picks.append(trees[-1].add(draft) if draft is not None else None)
        trees[-1].add(ids(tok, " 1") + [eos])  # a path generation does not follow
    scored = prefix_tree.score(model, trees, tok.pad_token_id, picks)
    assert scored.generated[0][:new] == truth[0]  # read off the pass entirely
    assert prefix_tree.generate(model, trees, tok.pad_token_id, eos, new, scored) == truth


def test_generation_stops_at_eos_read_off_the_pass(model):
    model, tok = model
    head = [tok.bos_token_id] + ids(tok, PROMPTS[0])
    first = step_by_step(model, head, 1, tok.eos_token_id)
    tree = prefix_tree.Tree.of(head)
    draft = tree.add(first + [tok.eos_token_id])
    scored = prefix_tree.score(model, [tree], tok.pad_token_id, [draft])
    out = prefix_tree.generate(model, [tree], tok.pad_token_id, tok.eos_token_id, 1, scored)
    assert out == [first]  # one token asked for: the eos after it is never needed


# ---- examples to trees ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def encoder(folders):
    from engine.core.encode import text_encoder

    return text_encoder(folders["llama"])


def test_examples_that_would_be_cut_get_no_tree(encoder):
    short = {
        "prompt": "1+2=",
        "completion": " 3",
        "choices": [" 3", " 4"],
        "answer": 0,
        "reference": " 3",
    }
    long = {**short, "prompt": "1+2=" * 20}
    needs = ["tokens", "choices", "generation"]
    built = example_trees.build(encoder, [short, long], needs, seq_len=32, max_new=8)
    assert built[0] is not None and built[1] is None
    assert example_trees.build(encoder, [short], needs, seq_len=32, max_new=8, window=4) == [None]
    item = built[0]
    assert item.completion == item.draft == item.choices[0]  # " 3" is scored once


def test_a_text_sets_loss_is_not_shared():
    examples = [{"prompt": "a whole text"}]
    assert example_trees.shared_needs(["tokens", "choices"], examples) == ["choices"]
    assert example_trees.shared_needs(["tokens"], [{"prompt": "p", "completion": "c"}]) == [
        "tokens"
    ]


# ---- the evaluation actor --------------------------------------------------------------------

EXAMPLES = [
    {
        "prompt": p,
        "completion": c,
        "choices": [c, " 9", c + "9"],
        "answer": 0,
        "reference": c,
        "i": i,
    }
    for i, (p, c) in enumerate(
        [("12+35=", " 47"), ("reverse abc:", " cba"), ("7+1=", " 8"), ("9" * 60, " 1")]
    )
]
NEEDS = ["tokens", "choices", "generation"]


def actor_for(folders, arch: str) -> EvalActor:
    actor = EvalActor([{"path": folders[arch], "base": None}], [], "cpu", threads=1, batch_size=2)
    actor._hold(0)
    return actor


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_the_actor_observes_the_same_either_way(folders, arch):
    actor = actor_for(folders, arch)
    spec = {"seq_len": 40, "max_new_tokens": 4}
    shared, used = actor.observe(actor._loaded(), EXAMPLES, NEEDS, spec)
    assert used == [True, True, True, False]  # the long prompt does not fit in 40 tokens
    actor.tree_checked[type(actor._loaded().model).__name__] = False
    separate, used = actor.observe(actor._loaded(), EXAMPLES, NEEDS, spec)
    assert not any(used)
    for a, b in zip(shared, separate):
        assert a.keys() == b.keys() and a["prediction"] == b["prediction"]
        assert a["tokens"] == b["tokens"] and a["lengths"] == b["lengths"]
        assert a["nll"] == pytest.approx(b["nll"], abs=1e-4)
        assert a["logprobs"] == pytest.approx(b["logprobs"], abs=1e-4)


def test_a_model_that_ignores_the_mask_is_scored_as_separate_sequences(folders):
    actor = actor_for(folders, "llama")
    model = actor._loaded().model
    forward = model.forward

    def blind(*args, attention_mask=None, position_ids=None, **kwargs):
        return forward(*args, **kwargs)

    model.forward = blind
    _, used = actor.observe(actor._loaded(), EXAMPLES, NEEDS, {"seq_len": 40, "max_new_tokens": 4})
    assert not any(used) and actor.tree_checked == {"LlamaForCausalLM": False}


def test_an_actor_loads_a_tokenizer_once_for_the_candidates_that_share_it(folders, tmp_path):
    """Candidates whose folders hold the same tokenizer files (a sweep's trials) share one
    tokenizer and its encodings; a candidate whose tokenizer differs gets its own: it is
    observed exactly as an actor that never saw the others observes it."""
    base = Path(folders["llama"])
    same, other = tmp_path / "same", tmp_path / "other"
    shutil.copytree(base, same)
    shutil.copytree(base, other)
    (same / "trial.json").write_text('{"name": "another trial"}')  # not a tokenizer file
    spec = json.loads((other / "tokenizer.json").read_text())
    vocab = spec["model"]["vocab"]
    vocab["4"], vocab["7"] = vocab["7"], vocab["4"]  # ids in range, encodings different
    (other / "tokenizer.json").write_text(json.dumps(spec))
    paths = [str(base), str(same), str(other)]
    actor = EvalActor([{"path": p, "base": None} for p in paths], [], "cpu", threads=1)
    sizes = {"seq_len": 40, "max_new_tokens": 4}
    tokenizers, observed = [], []
    for index in range(3):
        actor._hold(index)
        tokenizers.append(actor._loaded().tokenizer)
        observed.append(actor.observe(actor._loaded(), EXAMPLES, NEEDS, sizes)[0])
    assert tokenizers[1] is tokenizers[0] and tokenizers[2] is not tokenizers[0]
    assert observed[1] == observed[0]  # the same weights, encoded from what was kept
    fresh = EvalActor([{"path": str(other), "base": None}], [], "cpu", threads=1)
    fresh._hold(0)
    assert observed[2] == fresh.observe(fresh._loaded(), EXAMPLES, NEEDS, sizes)[0]
    assert observed[2] != observed[0]  # the swapped ids change what the model is given
