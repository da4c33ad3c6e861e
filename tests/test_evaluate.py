"""The evaluate stage: metric values against plain torch, the actor pool, candidates, config errors.

Two pool runs serve most tests: one actor and two actors over the same sets, the demo model, a
LoRA adapter, the same adapter merged into full weights, and (in the two-actor run) a broken
model folder.
"""

from __future__ import annotations

import json
import math
import re

import pandas as pd
import pyarrow as pa
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from engine.core.batches import Batching, token_nll
from engine.core.models import load_tokenizer
from engine.demo import BASE_DIR
from engine.evaluate.metrics import get_metric, metric
from engine.evaluate.metrics.choice import pick
from engine.evaluate.pool import (
    Candidate,
    candidates_from_paths,
    evaluate_candidates,
    plan_set,
    unit_pieces,
    work_units,
)
from engine.evaluate.sets import set_problems
from sweeps import SweepError
from sweeps.evaluation import EvalSetConfig, EvaluateConfig
from tests.conftest import DEMO_DATA

ADD = DEMO_DATA / "add" / "eval.jsonl"
N, NEW_TOKENS = 12, 6
USER = "tests.test_evaluate:same_first_char"


@metric("same_length", needs="generation")
def same_length(prediction: str, reference: str) -> float:
    return float(len(prediction.strip()) == len(reference.strip()))


def same_first_char(prediction: str, reference: str) -> float:
    return float(prediction.strip()[:1] == reference.strip()[:1])


def breaks_on_nope(prediction: str, reference: str) -> float:
    """A user metric with a bug: it raises on the rows whose reference is "nope"."""
    if reference.strip() == "nope":
        raise ValueError("cannot score 'nope'")
    return 1.0


BROKEN_METRIC = "tests.test_evaluate:breaks_on_nope"


# ---- plain torch references ------------------------------------------------------------------


@pytest.fixture(scope="module")
def base():
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(BASE_DIR, dtype=torch.float32).eval()
    return model, load_tokenizer(str(BASE_DIR))


def encode(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


@torch.no_grad()
def completion_logprob(model, tok, prompt: str, completion: str) -> tuple[float, int]:
    """Summed log-probability of completion + eos after bos + prompt, one example at a time."""
    head = [tok.bos_token_id] + encode(tok, prompt)
    tail = encode(tok, completion) + [tok.eos_token_id]
    logp = model(torch.tensor([head + tail])).logits[0].log_softmax(-1)
    return sum(float(logp[len(head) - 1 + j, t]) for j, t in enumerate(tail)), len(tail)


@torch.no_grad()
def greedy(model, tok, prompt: str, new: int) -> str:
    ids = [tok.bos_token_id] + encode(tok, prompt)
    out = []
    for _ in range(new):
        nxt = int(model(torch.tensor([ids + out])).logits[0, -1].argmax())
        if nxt == tok.eos_token_id:
            break
        out.append(nxt)
    return tok.decode(out, skip_special_tokens=True)


def rows(path, limit=None) -> list[dict]:
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return lines[:limit]


# ---- fixtures: models, sets, the two pool runs ----------------------------------------------


@pytest.fixture(scope="module")
def models(tmp_path_factory, base):
    """A LoRA adapter on the demo model (random, non-zero B), and the same adapter merged."""
    import peft
    from transformers import AutoModelForCausalLM

    root = tmp_path_factory.mktemp("models")
    # A fresh copy: PEFT changes the model it wraps, and `base` is the reference.
    model, tok = AutoModelForCausalLM.from_pretrained(BASE_DIR, dtype=torch.float32), base[1]
    config = peft.LoraConfig(
        r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"
    )
    wrapped = peft.get_peft_model(model, config)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        for name, param in wrapped.named_parameters():
            if "lora_B" in name:
                torch.nn.init.normal_(param, std=0.2)
    wrapped.save_pretrained(root / "adapter")
    merged = wrapped.merge_and_unload()
    merged.save_pretrained(root / "merged")
    tok.save_pretrained(root / "merged")
    (root / "broken").mkdir()
    (root / "broken" / "config.json").write_text('{"model_type": "no-such-architecture"}')
    return root


@pytest.fixture(scope="module")
def em_file(tmp_path_factory, base):
    """Half the rows' completions are the demo model's own greedy output, half are wrong."""
    model, tok = base
    path = tmp_path_factory.mktemp("sets") / "em.jsonl"
    lines = []
    for i, row in enumerate(rows(ADD, N)):
        completion = greedy(model, tok, row["prompt"], NEW_TOKENS) if i % 2 == 0 else " nope"
        lines.append(json.dumps({"prompt": row["prompt"], "completion": completion}))
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def sets(em_file):
    return [
        EvalSetConfig(name="add", path=str(ADD), limit=N, max_new_tokens=NEW_TOKENS),
        EvalSetConfig(
            name="em",
            path=str(em_file),
            max_new_tokens=NEW_TOKENS,
            metrics=["exact_match", "same_length", USER],
        ),
    ]


@pytest.fixture(scope="module")
def candidates(models):
    return [
        Candidate("demo", "base", str(BASE_DIR)),
        Candidate("adapter", "trial", str(models / "adapter")),
        Candidate("merged", "task_merge", str(models / "merged")),
    ]


@pytest.fixture(scope="module")
def one_actor(ray_local, candidates, sets):
    return evaluate_candidates(candidates, sets, EvaluateConfig(actors=1, batch_size=5))


@pytest.fixture(scope="module")
def two_actors(ray_local, candidates, sets, models, tmp_path_factory):
    """Two actors, a broken candidate in the middle, a user metric that raises, and a test set
    that must not be read."""
    ghost = EvalSetConfig(name="ghost", path="/nonexistent/test.jsonl", split="test")
    em = sets[1].model_dump()
    em = EvalSetConfig(**{**em, "metrics": [*em["metrics"], BROKEN_METRIC]})
    out = tmp_path_factory.mktemp("out")
    broken = Candidate("broken", "soup", str(models / "broken"))
    table = evaluate_candidates(
        [candidates[0], broken, *candidates[1:]],
        [sets[0], em, ghost],
        # Batches cut by tokens (1 to 3 examples), where `one_actor` cuts them by count.
        EvaluateConfig(actors=2, batch_size=64, batch_tokens=60),
        splits=["selection"],
        out=out,
    )
    return table, out


def value(table: pd.DataFrame, candidate: str, eval_set: str, name: str) -> float:
    row = table[
        (table.candidate == candidate) & (table.eval_set == eval_set) & (table.metric == name)
    ]
    assert len(row) == 1, (candidate, eval_set, name)
    assert row.iloc[0]["status"] == "ok", row.iloc[0]["error"]
    return float(row.iloc[0]["value"])


# ---- metric values against plain torch -------------------------------------------------------


def test_default_metrics_and_columns(one_actor):
    add = one_actor[one_actor.eval_set == "add"]
    assert list(dict.fromkeys(add.metric)) == [
        "loss",
        "ppl",
        "accuracy",
        "accuracy_norm",
        "exact_match",
    ]
    assert {
        "candidate",
        "kind",
        "eval_set",
        "split",
        "metric",
        "value",
        "n",
        "status",
        "error",
        "seconds",
    } <= set(one_actor.columns)
    assert (one_actor.status == "ok").all() and (one_actor.n == N).all()
    assert set(one_actor.kind) == {"base", "trial", "task_merge"}


def test_loss_and_ppl_match_plain_torch(one_actor, base):
    model, tok = base
    scored = [completion_logprob(model, tok, r["prompt"], r["completion"]) for r in rows(ADD, N)]
    loss = -sum(lp for lp, _ in scored) / sum(n for _, n in scored)
    assert value(one_actor, "demo", "add", "loss") == pytest.approx(loss, rel=1e-5)
    assert value(one_actor, "demo", "add", "ppl") == pytest.approx(math.exp(loss), rel=1e-5)


def test_loss_matches_the_training_report(one_actor, base):
    """Tokenized as the prepare stage does and scored by the training loop's evaluation."""
    from types import SimpleNamespace

    from engine.core.batches import mean_loss
    from engine.prepare.tokenize import tokenize_batch
    from sweeps import DataConfig

    model, tok = base
    data = DataConfig(train=str(ADD), format="prompt_completion")
    batch = tokenize_batch(
        pa.Table.from_pylist(rows(ADD, N)).select(data.fields()),
        data,
        str(BASE_DIR),
        trust_remote_code=False,
    )
    split = {"input_ids": batch["input_ids"].to_pylist(), "labels": batch["labels"].to_pylist()}
    cfg = SimpleNamespace(batch_size=4, seq_len=128, precision="fp32", truncation="error")
    trained = mean_loss(model, split, cfg, tok.pad_token_id, torch.device("cpu"))
    assert value(one_actor, "demo", "add", "loss") == pytest.approx(trained, rel=1e-5)


def test_choice_accuracy_matches_plain_torch(one_actor, base):
    model, tok = base
    summed, normed = [], []
    for row in rows(ADD, N):
        scored = [completion_logprob(model, tok, row["prompt"], c) for c in row["choices"]]
        summed.append(max(range(4), key=lambda i: scored[i][0]) == row["answer"])
        normed.append(max(range(4), key=lambda i: scored[i][0] / scored[i][1]) == row["answer"])
    assert value(one_actor, "demo", "add", "accuracy") == pytest.approx(sum(summed) / N)
    assert value(one_actor, "demo", "add", "accuracy_norm") == pytest.approx(sum(normed) / N)


def test_exact_match_and_user_metrics_match_greedy_decoding(one_actor, em_file, base):
    assert value(one_actor, "demo", "em", "exact_match") == pytest.approx(0.5)
    model, tok = base
    refs = rows(em_file)
    preds = [greedy(model, tok, r["prompt"], NEW_TOKENS) for r in refs]
    lengths = [len(p.strip()) == len(r["completion"].strip()) for p, r in zip(preds, refs)]
    firsts = [p.strip()[:1] == r["completion"].strip()[:1] for p, r in zip(preds, refs)]
    assert value(one_actor, "demo", "em", "same_length") == pytest.approx(sum(lengths) / N)
    assert value(one_actor, "demo", "em", USER) == pytest.approx(sum(firsts) / N)


# ---- candidates and the pool -----------------------------------------------------------------


def test_lora_adapter_equals_its_merged_weights(one_actor):
    for name in ("loss", "accuracy", "accuracy_norm"):
        assert value(one_actor, "adapter", "add", name) == pytest.approx(
            value(one_actor, "merged", "add", name), rel=1e-4
        )
    assert value(one_actor, "adapter", "add", "loss") != pytest.approx(
        value(one_actor, "demo", "add", "loss"), rel=1e-3
    )


def test_one_and_two_actors_agree(one_actor, two_actors):
    table, _ = two_actors
    assert table.attrs["actors"] == 2 and one_actor.attrs["actors"] == 1
    for _, row in one_actor.iterrows():
        assert value(table, row.candidate, row.eval_set, row.metric) == pytest.approx(
            row.value, rel=1e-5, abs=1e-6
        )


def test_each_actor_loads_each_model_once(one_actor, two_actors):
    assert one_actor.attrs["model_loads"] == {"demo": 1, "adapter": 1, "merged": 1}
    assert one_actor.attrs["prefix_tree_share"] == 1.0  # every example went through a tree
    # Four candidates keep two actors busy: each candidate is one unit, loaded by one actor.
    assert two_actors[0].attrs["model_loads"] == {"demo": 1, "broken": 1, "adapter": 1, "merged": 1}


def test_an_auto_pool_is_sized_by_the_cluster_not_by_free_cpus(ray_local, candidates, sets):
    """A sweep reaches evaluation while its last trials may still hold CPUs: the auto pool is
    sized by the cluster (2 CPUs: 2 actors, grown as CPUs free up) and starts with what is
    free, so it finishes even while a CPU stays busy throughout. (Whether and when Ray grows
    the pool depends on timing, so that is not asserted.)"""
    import ray

    @ray.remote(num_cpus=1)
    class Busy:
        def ready(self) -> bool:
            return True

    busy = Busy.remote()
    ray.get(busy.ready.remote())
    try:
        many = [Candidate(f"{c.name}{i}", c.kind, c.path) for i in range(2) for c in candidates]
        table = evaluate_candidates(many, sets, EvaluateConfig(actors="auto", batch_size=8))
    finally:
        ray.kill(busy)
    assert (table.status == "ok").all()
    assert table.attrs["actors"] == 2 and table.attrs["actor_processes"] == 1


def test_work_units_cover_every_example_once_in_runs_of_about_equal_size(sets):
    plans = [plan_set(s) for s in sets]
    candidates = [Candidate(f"c{i}", "trial", "/unused") for i in range(2)]
    units = work_units(candidates, plans, pieces=3)
    assert len(units) == 6 and [u["candidate"] for u in units] == [0, 0, 0, 1, 1, 1]
    seen = [
        (p["set"], e["i"])
        for u in units[:3]
        for p in json.loads(u["payload"])
        for e in p["examples"]
    ]
    assert sorted(seen) == [
        (s, i) for s, plan in enumerate(plans) for i in range(len(plan.examples))
    ]
    sizes = [sum(len(p["examples"]) for p in json.loads(u["payload"])) for u in units[:3]]
    assert max(sizes) - min(sizes) <= 2
    assert unit_pieces(candidates=27, examples=400, actors=2) == 1
    assert unit_pieces(candidates=1, examples=400, actors=2) == 4
    assert unit_pieces(candidates=27, examples=5000, actors=2) == 3


def test_failing_candidate_is_recorded_and_others_complete(two_actors):
    table, _ = two_actors
    broken = table[table.candidate == "broken"]
    assert len(broken) == len(table[table.candidate == "demo"]) == 5 + 4
    assert (broken.status == "failed").all() and broken.value.isna().all()
    assert broken.error.str.contains("cannot load").all()
    assert broken.error.str.contains("no-such-architecture").all()
    others = table[(table.candidate != "broken") & (table.metric != BROKEN_METRIC)]
    assert len(others) == 3 * (5 + 3) and (others.status == "ok").all()


def test_a_user_metric_that_raises_fails_its_rows_and_the_others_complete(one_actor, two_actors):
    table, _ = two_actors
    rows = table[(table.metric == BROKEN_METRIC) & (table.candidate != "broken")]
    assert len(rows) == 3 and (rows.status == "failed").all() and rows.value.isna().all()
    assert (rows.error == f"metric {BROKEN_METRIC!r}: ValueError: cannot score 'nope'").all()
    # The same set's other metrics, for the same candidates, are unaffected.
    for _, row in one_actor[one_actor.eval_set == "em"].iterrows():
        assert value(table, row.candidate, "em", row.metric) == pytest.approx(row.value, rel=1e-5)


def test_selection_never_reads_a_test_set_and_results_are_written(two_actors):
    table, out = two_actors
    assert set(table.split) == {"selection"} and "ghost" not in set(table.eval_set)
    written = pd.read_parquet(out / "evals.parquet")
    pd.testing.assert_frame_equal(written, table.reset_index(drop=True), check_like=True)


# ---- config and input errors -----------------------------------------------------------------


def test_unknown_metric_lists_the_known_ones():
    with pytest.raises(
        ValueError,
        match=r"unknown metric 'acc'; known: accuracy, "
        r"accuracy_norm, exact_match, loss, ppl",
    ):
        EvalSetConfig(name="a", path="a.jsonl", metrics=["acc"])
    with pytest.raises(ValueError, match="unknown metric 'acc'"):
        get_metric("acc")


def test_metric_needing_a_null_field_names_the_set_and_field():
    with pytest.raises(ValueError, match="eval set 'a': metric 'accuracy' needs `answer_field`"):
        EvalSetConfig(name="a", path="a.jsonl", answer_field=None, metrics=["accuracy"])


def test_metric_needing_a_field_the_file_lacks(tmp_path):
    path = tmp_path / "qa.jsonl"
    path.write_text('{"prompt": "1+1=", "completion": " 2", "choices": [" 2", " 3"]}\n')
    config = EvaluateConfig(
        sets=[EvalSetConfig(name="qa", path=str(path), metrics=["loss", "accuracy"])]
    )
    problems = set_problems(config.sets[0], "evaluate.sets[0]")
    assert len(problems) == 1
    assert re.match(
        r"evaluate.sets\[0\].metrics: eval set 'qa': metric 'accuracy' needs field "
        r"'answer'",
        problems[0],
    )
    # Left to the defaults, the set gets the metrics its fields allow.
    assert set_problems(EvalSetConfig(name="qa", path=str(path)), "evaluate.sets[0]") == []


def test_bad_answer_names_the_row(tmp_path, ray_local):
    path = tmp_path / "bad.jsonl"
    path.write_text(
        '{"prompt": "a", "choices": ["x", "y"], "answer": 0}\n'
        '{"prompt": "b", "choices": ["x", "y"], "answer": 5}\n'
    )
    bad = EvalSetConfig(name="bad", path=str(path), metrics=["accuracy"])
    with pytest.raises(SweepError, match=r"'bad'.* row 2: field 'answer': index 5 is outside"):
        evaluate_candidates([Candidate("demo", "base", str(BASE_DIR))], [bad])


def test_candidates_with_the_same_name_are_refused_before_any_work(sets):
    twice = [Candidate("demo", "base", str(BASE_DIR)), Candidate("demo", "trial", "/elsewhere")]
    with pytest.raises(SweepError, match="candidates: names must be unique; repeated: demo"):
        evaluate_candidates(twice, sets)


def test_candidates_from_folders_of_the_same_name_get_distinct_names(tmp_path):
    paths = [tmp_path / "a" / "model", tmp_path / "b" / "model", tmp_path / "c" / "other"]
    names = [c.name for c in candidates_from_paths([str(p) for p in paths])]
    assert names == ["a/model", "b/model", "other"]


def test_duplicate_metric_registration_is_refused():
    with pytest.raises(ValueError, match="already registered"):
        metric("loss", needs="tokens", per_example=False)(lambda obs: 0.0)


def test_set_names_must_be_unique():
    one = EvalSetConfig(name="a", path="a.jsonl")
    with pytest.raises(ValueError, match="repeated: a"):
        EvaluateConfig(sets=[one, one])


# ---- pure math -------------------------------------------------------------------------------


def test_token_nll_is_cross_entropy_per_row():
    torch.manual_seed(0)
    logits, labels = torch.randn(3, 7, 11), torch.randint(0, 11, (3, 7))
    labels[0, :4] = -100
    labels[2, 5:] = -100
    nll, count = token_nll(logits, labels)
    for row in range(3):
        ce = torch.nn.functional.cross_entropy(
            logits[row, :-1], labels[row, 1:], ignore_index=-100, reduction="sum"
        )
        assert float(nll[row]) == pytest.approx(float(ce), rel=1e-6)
        assert int(count[row]) == int((labels[row, 1:] != -100).sum())


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(1, 50), max_size=40), st.integers(1, 8), st.integers(1, 120))
def test_batches_keep_order_and_both_limits_and_are_as_full_as_the_limits_allow(
    lengths, size, tokens
):
    spans = Batching(size, tokens).spans(lengths)
    assert [i for span in spans for i in span] == list(range(len(lengths)))
    for span, after in zip(spans, [*spans[1:], None]):
        widest = max(lengths[i] for i in span)
        assert len(span) <= size
        assert len(span) == 1 or len(span) * widest <= tokens
        if after is not None:  # the next sequence would break a limit
            longer = max(widest, lengths[after.start])
            assert len(span) == size or (len(span) + 1) * longer > tokens


def test_pick_sums_or_normalises_and_breaks_ties_to_the_first():
    assert pick([-3.0, -2.0], [3, 1]) == 1
    assert pick([-3.0, -2.0], [3, 1], normalise=True) == 0
    assert pick([-1.0, -1.0], [1, 1]) == 0


# ---- the command -----------------------------------------------------------------------------


def test_eval_command(ray_local, tmp_path):
    from engine.cli import app

    result = CliRunner().invoke(
        app,
        [
            "eval",
            str(BASE_DIR),
            "--data",
            str(ADD),
            "--limit",
            "6",
            "--metric",
            "loss",
            "--metric",
            "accuracy",
            "--out",
            str(tmp_path),
            "--actors",
            "1",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "loss" in result.output and "accuracy" in result.output
    table = pd.read_parquet(tmp_path / "evals.parquet")
    assert list(table.metric) == ["loss", "accuracy"] and set(table.candidate) == {"base"}
    assert set(table.split) == {"selection"} and (table.n == 6).all()  # the config's default


def test_eval_command_errors(tmp_path):
    from engine.cli import app

    result = CliRunner().invoke(
        app, ["eval", str(BASE_DIR), "--data", str(ADD), "--metric", "bleu"]
    )
    assert result.exit_code == 2
    assert "unknown metric 'bleu'" in result.output


@pytest.mark.gpu
def test_gpu_actor_gives_the_cpu_values(one_actor, candidates, sets, ray_local):
    table = evaluate_candidates(
        candidates[:1], sets[:1], EvaluateConfig(actors=1, gpus_per_actor=1)
    )
    for _, row in table.iterrows():
        assert row.value == pytest.approx(value(one_actor, "demo", "add", row.metric), rel=1e-3)


def test_an_interrupted_evaluate_stage_keeps_every_pair_that_finished(tmp_path, monkeypatch):
    """`evals.parquet` is written for the first pair, then at most every `WRITE_EVERY_S`, and
    whatever ends the stage writes the pairs that came: here the pool (a stand-in that hands
    three finished pairs to the stage, then a Ctrl-C) is interrupted between two writes."""
    from engine.core.rundir import RunDir
    from engine.evaluate import stage
    from sweeps import parse_sweep

    sweep = parse_sweep(
        {
            "name": "j",
            "model": {"preset": "tiny-random"},
            "data": {"train": str(ADD), "eval": str(ADD), "format": "prompt_completion"},
        }
    )
    run = RunDir(tmp_path)
    merges = pd.DataFrame(
        {
            "candidate": ["m0", "m1", "m2"],
            "kind": "soup",
            "path": ["/m0", "/m1", "/m2"],
            "status": "done",
            "reused": True,
        }
    )
    trials = pd.DataFrame({"name": [], "status": [], "checkpoint": []})
    seen = []
    monkeypatch.setattr(stage, "WRITE_EVERY_S", 3600.0)

    def pool(todo, sets, config, *, on_result, **_):
        for candidate in todo[:3]:
            on_result(pd.DataFrame([{"candidate": candidate.name, "eval_set": "default"}]))
            seen.append(set(pd.read_parquet(run.evals)["candidate"]))
        raise KeyboardInterrupt

    monkeypatch.setattr(stage, "evaluate_candidates", pool)
    with pytest.raises(KeyboardInterrupt):
        stage.eval_stage(sweep, run, trials, merges, str(BASE_DIR), progress=False)
    assert seen == [{"base"}, {"base"}, {"base"}]  # the first pair at once, then none
    assert set(pd.read_parquet(run.evals)["candidate"]) == {"base", "m0", "m1"}
