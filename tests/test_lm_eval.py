"""lm-evaluation-harness tasks on the evaluation pool: the same metric values as lm-eval's own
`simple_evaluate` with its Hugging Face backend, `limit` and `num_fewshot`, bad task input at
validation time, and the vLLM engine's plumbing (running it needs a GPU).

Four local tasks over JSONL files the module writes: multiple choice (`acc`, `acc_norm`),
generation (`exact_match`; half its targets are the demo model's own greedy answers, so the
metric is not 0 everywhere), rolling log-likelihood (perplexities over texts longer than the
model's 256 positions) and log-likelihood (`perplexity`, `acc` from greedy flags). The
candidates are the demo model, a LoRA trial on it and a linear merge of the two.
"""

from __future__ import annotations

import json
import math
import random
from importlib.util import find_spec

import pytest
import torch

from engine.core.models import load_tokenizer
from engine.demo import BASE_DIR
from engine.evaluate.pool import Candidate, plan_set, results_table, run_pool
from sweeps import SweepError, parse_sweep
from sweeps.evaluation import EvaluateConfig
from tests.conftest import DEMO_DATA

lm_eval = pytest.importorskip(
    "lm_eval", reason="lm-evaluation-harness is not installed (pip install 'raysoup[lm-eval]')"
)

TASKS = ["arith_mc", "reverse_gen", "add_rolling", "add_ll"]
LIMIT, SHOTS, GEN_TOKENS = 12, 2, 16  # GEN_TOKENS: the demo model's generation_config's too


def lines(path, n: int | None = None) -> list[dict]:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return rows[:n]


def write_jsonl(path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


@torch.no_grad()
def own_answer(model, tok, context: str) -> str:
    """The model's greedy answer as lm-eval's HF backend makes it: the context tokenized with
    the tokenizer's own special tokens, at most GEN_TOKENS, cut at eos and at a newline."""
    ids = tok(context)["input_ids"]
    out = model.generate(
        torch.tensor([ids]),
        max_new_tokens=GEN_TOKENS,
        do_sample=False,
        pad_token_id=tok.pad_token_id,
    )
    return tok.decode(out[0, len(ids) :], skip_special_tokens=True).split("\n")[0]


def task_yaml(name: str, data: str, body: str) -> str:
    return (
        f"task: {name}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\n"
        f"    train: {data}\ntest_split: test\nfewshot_split: train\n{body}"
    )


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory):
    from transformers import AutoModelForCausalLM

    root = tmp_path_factory.mktemp("lm_eval_tasks")
    add, reverse = (
        lines(DEMO_DATA / "add" / "eval.jsonl"),
        lines(DEMO_DATA / "reverse" / "eval.jsonl"),
    )
    model = AutoModelForCausalLM.from_pretrained(BASE_DIR, dtype=torch.float32).eval()
    tok = load_tokenizer(str(BASE_DIR))
    gen = [
        {
            **row,
            "target": own_answer(model, tok, "<s>" + row["prompt"]) if i % 2 else row["completion"],
        }
        for i, row in enumerate(reverse[:16])
    ]
    # Log-likelihood targets: every other one is the model's own greedy answer (so `acc`, which
    # asks whether each target token is the greedy pick, is not 0 everywhere).
    answers = [own_answer(model, tok, row["prompt"]) for row in add[40:56]]
    ll = [
        {**row, "target": answer if i % 2 and answer else row["completion"]}
        for i, (row, answer) in enumerate(zip(add[40:56], answers))
    ]
    texts = [
        {"text": "\n".join(r["prompt"] + r["completion"] for r in add[i : i + 3])}
        for i in (0, 3, 6)
    ]
    texts.append({"text": "\n".join(r["prompt"] + r["completion"] for r in add[20:60])})  # > 256
    files = {
        "arith_mc": (
            add[:30],
            'output_type: multiple_choice\ndoc_to_text: "<s>{{prompt}}"\n'
            'doc_to_choice: "{{choices}}"\ndoc_to_target: answer\ntarget_delimiter: ""\n'
            "metric_list:\n  - metric: acc\n  - metric: acc_norm\n",
        ),
        "reverse_gen": (
            gen,
            'output_type: generate_until\nnum_fewshot: 0\ndoc_to_text: "<s>{{prompt}}"\n'
            'doc_to_target: "{{target}}"\ntarget_delimiter: ""\n'
            f'generation_kwargs:\n  until: ["\\n"]\n  max_gen_toks: {GEN_TOKENS}\n'
            "metric_list:\n  - metric: exact_match\n",
        ),
        "add_rolling": (
            texts,
            'output_type: loglikelihood_rolling\nnum_fewshot: 0\ndoc_to_text: ""\n'
            'doc_to_target: "{{text}}"\nmetric_list:\n  - metric: word_perplexity\n'
            "  - metric: byte_perplexity\n  - metric: bits_per_byte\n",
        ),
        "add_ll": (
            ll,
            'output_type: loglikelihood\nnum_fewshot: 0\ndoc_to_text: "{{prompt}}"\n'
            'doc_to_target: "{{target}}"\ntarget_delimiter: ""\n'
            "metric_list:\n  - metric: perplexity\n  - metric: acc\n",
        ),
    }
    for name, (rows, body) in files.items():
        data = write_jsonl(root / f"{name}.jsonl", rows)
        (root / f"{name}.yaml").write_text(task_yaml(name, data, body))
    return root


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A LoRA trial on the demo model (random, non-zero B) and a linear merge of the demo model
    with that trial's merged weights."""
    import peft
    from transformers import AutoModelForCausalLM

    from merging.api import merge

    root = tmp_path_factory.mktemp("models")
    model = AutoModelForCausalLM.from_pretrained(BASE_DIR, dtype=torch.float32)
    config = peft.LoraConfig(
        r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"
    )
    with torch.random.fork_rng(devices=[]):  # the same adapter on every run (A and B)
        torch.manual_seed(3)
        wrapped = peft.get_peft_model(model, config)
        for name, param in wrapped.named_parameters():
            if "lora_B" in name:
                torch.nn.init.normal_(param, std=0.3)
    wrapped.save_pretrained(root / "trial")
    wrapped.merge_and_unload().save_pretrained(root / "trial-full")
    recipe = {
        "merge_method": "linear",
        "models": [{"model": str(BASE_DIR)}, {"model": str(root / "trial-full")}],
    }
    merge(recipe, root / "merge")
    return root


@pytest.fixture(scope="module")
def candidates(models):
    return [
        Candidate("base", "base", str(BASE_DIR)),
        Candidate("trial", "trial", str(models / "trial"), base=str(BASE_DIR)),
        Candidate("merge", "task_merge", str(models / "merge")),
    ]


@pytest.fixture(scope="module")
def harness_set(task_dir):
    return {
        "type": "lm_eval",
        "tasks": TASKS,
        "include_path": str(task_dir),
        "num_fewshot": SHOTS,
        "limit": LIMIT,
    }


@pytest.fixture(scope="module")
def reference(task_dir, candidates):
    """lm-eval's own results per candidate: `simple_evaluate`, Hugging Face backend."""
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=str(task_dir), include_defaults=False)
    out = {}
    for c in candidates:
        args = {"pretrained": c.base, "peft": c.path} if c.base else {"pretrained": c.path}
        results = simple_evaluate(
            model="hf",
            model_args=args,
            tasks=TASKS,
            task_manager=manager,
            num_fewshot=SHOTS,
            limit=LIMIT,
            batch_size=1,
            device="cpu",
        )
        out[c.name] = results["results"]
    return out


def pool_run(candidates, harness_set, actors: int):
    config = EvaluateConfig.model_validate(
        {"sets": [harness_set], "actors": actors, "batch_size": 8}
    )
    plans = [plan_set(s) for s in config.sets]
    rows, facts = run_pool(candidates, plans, config)
    return plans[0], rows, results_table(candidates, plans, rows), facts


@pytest.fixture(scope="module")
def one_actor(ray_local, candidates, harness_set):
    return pool_run(candidates, harness_set, 1)


@pytest.fixture(scope="module")
def two_actors(ray_local, candidates, harness_set):
    return pool_run(candidates, harness_set, 2)


def agreement(table, reference) -> dict[tuple[str, str], float]:
    """The largest relative-or-absolute difference from lm-eval, per (task, metric)."""
    worst: dict[tuple[str, str], float] = {}
    for row in table.itertuples():
        assert row.status == "ok", row.error
        theirs = reference[row.candidate][row.eval_set][f"{row.metric},none"]
        gap = abs(row.value - theirs) / max(1.0, abs(theirs))
        worst[(row.eval_set, row.metric)] = max(gap, worst.get((row.eval_set, row.metric), 0.0))
    return worst


# ---- the same numbers as lm-eval -------------------------------------------------------------


@pytest.mark.parametrize("run", ["one_actor", "two_actors"])
def test_metric_values_match_lm_eval_simple_evaluate(run, request, reference):
    _, _, table, facts = request.getfixturevalue(run)
    worst = agreement(table, reference)
    assert set(worst) == {
        ("arith_mc", "acc"),
        ("arith_mc", "acc_norm"),
        ("reverse_gen", "exact_match"),
        ("add_rolling", "word_perplexity"),
        ("add_rolling", "byte_perplexity"),
        ("add_rolling", "bits_per_byte"),
        ("add_ll", "perplexity"),
        ("add_ll", "acc"),
    }
    assert max(worst.values()) < 1e-4, worst
    assert set(table.candidate) == {"base", "trial", "merge"}  # a merge and a trial together
    assert facts["actor_processes"] == facts["actors"] == int(run == "two_actors") + 1
    assert facts["prefix_tree_share"] > 0.5


def test_metrics_are_not_trivial(one_actor, reference):
    """The comparison means something: values differ across candidates, and the base model's
    exact match and greedy-token accuracy are neither 0 nor 1."""
    _, _, table, _ = one_actor
    em = table[table.metric == "exact_match"].set_index("candidate")["value"]
    greedy = table[(table.eval_set == "add_ll") & (table.metric == "acc")]
    assert 0 < em["base"] < 1 and 0 < greedy.set_index("candidate")["value"]["base"] < 1
    acc = table[(table.eval_set == "arith_mc") & (table.metric == "acc")]["value"]
    ppl = table[table.metric == "word_perplexity"]["value"]
    assert acc.nunique() > 1 or ppl.nunique() > 1


def test_standard_errors_are_lm_evals(one_actor, reference):
    plan, rows, _, _ = one_actor
    observations = [
        json.loads(r["obs"]) for r in sorted(rows, key=lambda r: r["index"]) if r["candidate"] == 0
    ]
    for row in plan.results(observations, None):
        theirs = reference["base"][row["eval_set"]][f"{row['metric']}_stderr,none"]
        if theirs == "N/A":
            assert math.isnan(row["stderr"]) and math.isnan(row["low"])
        else:
            assert row["stderr"] == pytest.approx(theirs, rel=1e-4, abs=1e-6)
            half = 1.959963984540054 * row["stderr"]
            assert (row["low"], row["high"]) == pytest.approx(
                (row["value"] - half, row["value"] + half)
            )


def test_limit_and_num_fewshot(one_actor, task_dir):
    plan, _, table, _ = one_actor
    n = table.drop_duplicates("eval_set").set_index("eval_set")["n"]
    assert n.to_dict() == {
        "arith_mc": LIMIT,
        "reverse_gen": LIMIT,
        "add_rolling": 4,
        "add_ll": LIMIT,
    }
    contexts = [
        e["prompt"]
        for e in plan.examples
        if e["kind"] == "loglikelihood" and len(e["choices"]) == 4
    ]
    assert len(contexts) == LIMIT
    assert all(c.count("<s>") == SHOTS + 1 for c in contexts)  # two shots, then the question
    generations = [e["prompt"] for e in plan.examples if e["kind"] == "generate"]
    assert len(generations) == LIMIT and all(g.count("<s>") == 1 for g in generations)  # its 0


def test_a_failing_candidate_fails_its_rows_only(ray_local, candidates, harness_set, tmp_path):
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text('{"model_type": "no-such-architecture"}')
    small = {**harness_set, "tasks": ["arith_mc"], "limit": 3}
    broken = Candidate("broken", "soup", str(tmp_path / "broken"))
    _, _, table, _ = pool_run([broken, candidates[0]], small, 1)
    assert set(table[table.candidate == "broken"].status) == {"failed"}
    assert set(table[table.candidate == "broken"].metric) == {"acc", "acc_norm"}
    assert set(table[table.candidate == "base"].status) == {"ok"}


CONTEXTS = ["", "87+50=", "87+50= ", "<s>reverse jcn:", "Q: 11+82=\nA:"]
CONTINUATIONS = [" 137", "137", " 93\n", "<s>1", "</s>"]


@pytest.mark.parametrize("trees", [True, False], ids=["prefix trees", "separate sequences"])
def test_answers_match_hflm_request_by_request(trees):
    """Each request answered in this process (no Ray) as lm-eval's HFLM answers it: empty
    contexts, trailing spaces, a bos text in the prompt, rolling texts longer than the model,
    generation until a stop string; with prefix trees and without."""
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM
    from transformers import AutoModelForCausalLM

    from engine.evaluate import answers

    lm = HFLM(pretrained=str(BASE_DIR), batch_size=1, device="cpu")
    model = AutoModelForCausalLM.from_pretrained(BASE_DIR, dtype=torch.float32).eval()
    scorer = answers.Scorer(model, load_tokenizer(str(BASE_DIR)), torch.device("cpu"), trees=trees)

    def ask(kind, args):
        return [Instance(kind, {}, a, i) for i, a in enumerate(args)]

    pairs = [(c, k) for c in CONTEXTS for k in CONTINUATIONS]
    theirs = lm.loglikelihood(ask("loglikelihood", pairs), disable_tqdm=True)
    examples = [{"kind": "loglikelihood", "prompt": c, "choices": CONTINUATIONS} for c in CONTEXTS]
    mine = [x for found in answers.answer(scorer, examples)[0] for x in zip(*found.values())]
    assert [g for _, g in mine] == [g for _, g in theirs]
    assert [lp for lp, _ in mine] == pytest.approx([lp for lp, _ in theirs], abs=1e-4)

    add = lines(DEMO_DATA / "add" / "eval.jsonl")
    texts = ["12+3= 15", "\n".join(r["prompt"] + r["completion"] for r in add[:40])]  # > 256
    theirs = lm.loglikelihood_rolling(ask("loglikelihood_rolling", [(t,) for t in texts]))
    found = answers.answer(scorer, [{"kind": "rolling", "prompt": t} for t in texts])[0]
    assert [f["logprob"] for f in found] == pytest.approx(theirs, rel=1e-6)

    kwargs = {"until": ["\n", "="], "max_gen_toks": GEN_TOKENS, "do_sample": False}
    theirs = lm.generate_until(ask("generate_until", [(c, kwargs) for c in CONTEXTS[1:]]))
    examples = [
        {
            "kind": "generate",
            "prompt": c,
            "until": kwargs["until"],
            "max_gen_toks": GEN_TOKENS,
            "draft": " 137",
        }
        for c in CONTEXTS[1:]
    ]
    assert [f["text"] for f in answers.answer(scorer, examples)[0]] == theirs


def test_rolling_windows_are_lm_evals():
    from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

    from engine.evaluate.answers import windows

    rng = random.Random(0)
    for _ in range(200):
        tokens = [rng.randrange(100) for _ in range(rng.randrange(0, 40))]
        size = rng.randrange(1, 12)
        theirs = [make_disjoint_window(w) for w in get_rolling_token_windows(tokens, 99, size, 1)]
        assert windows(tokens, 99, size) == [(list(a), list(b)) for a, b in theirs]


# ---- bad input, at validation time -----------------------------------------------------------


def harness_sweep(tasks: list[str], include_path, **fields) -> object:
    train = str(DEMO_DATA / "add" / "train.jsonl")
    return parse_sweep(
        {
            "name": "t",
            "model": {"preset": "demo"},
            "data": {
                "train": train,
                "eval": str(DEMO_DATA / "add" / "eval.jsonl"),
                "format": "prompt_completion",
            },
            "evaluate": {
                "sets": [{"type": "lm_eval", "tasks": tasks, "include_path": str(include_path)}],
                **fields,
            },
        }
    )


def validation_error(sweep) -> str:
    from engine.preflight import check

    with pytest.raises(SweepError) as err:
        check(sweep)
    return str(err.value)


def test_a_valid_harness_sweep_passes_and_ranks_by_an_lm_eval_metric(task_dir):
    from engine.preflight import check

    check(harness_sweep(["arith_mc", "reverse_gen"], task_dir, rank_by="acc"))
    message = validation_error(harness_sweep(["arith_mc"], task_dir, rank_by="exact_match,flex"))
    assert "evaluate.rank_by: no selection set reports 'exact_match,flex'" in message


def test_an_unknown_task_is_named(task_dir):
    message = validation_error(harness_sweep(["arith_mcq"], task_dir))
    assert "evaluate.sets[0].tasks: unknown task 'arith_mcq'" in message
    assert str(task_dir) in message and "did you mean arith_mc" in message


def test_a_task_file_that_does_not_parse_is_named(task_dir, tmp_path):
    folder = tmp_path / "tasks"
    folder.mkdir()
    (folder / "broken.yaml").write_text("task: broken_task\ndataset_path: json\nmetric_list: [\n")
    message = validation_error(harness_sweep(["broken_task"], folder))
    broken = folder / "broken.yaml"
    assert f"evaluate.sets[0].include_path: {broken} (task 'broken_task') does not parse" in message
    assert "unknown task 'broken_task'" in message and "does not parse (above)" in message


def test_a_dataset_that_cannot_be_loaded_offline_is_named(tmp_path):
    folder = tmp_path / "tasks"
    folder.mkdir()
    missing = tmp_path / "gone.jsonl"
    (folder / "gone.yaml").write_text(
        task_yaml("gone_task", str(missing), "output_type: loglikelihood\n")
    )
    (folder / "hub.yaml").write_text(
        "task: hub_task\ndataset_path: no-such-user/no-such-dataset\ntest_split: test\n"
        "output_type: loglikelihood\ndoc_to_text: x\ndoc_to_target: y\n"
    )
    message = validation_error(harness_sweep(["gone_task", "hub_task"], folder))
    assert f"task 'gone_task' ({folder / 'gone.yaml'}): does not load" in message
    assert f"task 'hub_task' ({folder / 'hub.yaml'}): does not load" in message


def test_set_types_and_engine_are_checked():
    train = str(DEMO_DATA / "add" / "train.jsonl")
    sweep = {"name": "t", "model": {"preset": "demo"}, "data": {"train": train}}
    with pytest.raises(SweepError, match=r"evaluate.sets: \[0\].type: unknown set type 'lm'"):
        parse_sweep({**sweep, "evaluate": {"sets": [{"type": "lm", "tasks": ["x"]}]}})
    with pytest.raises(Exception, match="engine: vllm runs on GPUs only"):
        EvaluateConfig(engine="vllm")


@pytest.mark.skipif(find_spec("vllm") is not None, reason="vllm is installed here")
def test_vllm_engine_without_vllm_is_refused_at_validation(task_dir):
    sweep = harness_sweep(["arith_mc"], task_dir, engine="vllm", gpus_per_actor=1, rank_by="acc")
    assert "evaluate.engine: vllm is not installed here" in validation_error(sweep)


# ---- the vLLM engine -------------------------------------------------------------------------


def test_vllm_plumbing_builds_one_processor_per_model(ray_local, candidates, harness_set):
    """Without a GPU the engines cannot run; what can be checked is what raysoup hands to Ray
    Data LLM: the actors' share, the groups (an adapter with its base), the processors."""
    from engine.evaluate import vllm_generation as vg

    config = EvaluateConfig.model_validate(
        {"sets": [harness_set], "engine": "vllm", "gpus_per_actor": 1}
    )
    plan = plan_set(config.sets[0])
    needs, keep = vg.actor_share([plan])
    kinds = {plan.examples[i]["kind"] for i in keep[0]}
    assert needs == [["requests"]] and kinds == {"loglikelihood", "rolling"}
    groups = vg.engine_groups(candidates)
    assert [(g.source, g.members, list(g.adapters)) for g in groups] == [
        (str(BASE_DIR), [0, 1], [1]),
        (candidates[2].path, [2], []),
    ]
    lora = vg.processor_config(groups[0], config, engines=2, adapters_rank=4)
    assert lora.engine_kwargs["enable_lora"] and lora.engine_kwargs["max_lora_rank"] == 8
    assert lora.concurrency == 2 and lora.model_source == str(BASE_DIR)
    assert vg.build(groups[1], config, 1) is not None
    items = vg.prompts(candidates[1], 1, [plan])
    assert len(items) == LIMIT and {len(i["stops"]) for i in items} == {2}  # "\n" and "</s>"
    actor = {
        "candidate": 0,
        "set": 0,
        "index": 3,
        "obs": '{"nll": 1.0}',
        "error": "",
        "seconds": 1.0,
        "loads": 1,
    }
    engine = {**actor, "obs": '{"prediction": "x"}', "seconds": 0.5, "loads": 0}
    (both,) = vg.merge_rows([actor, engine])
    assert json.loads(both["obs"]) == {"nll": 1.0, "prediction": "x"} and both["seconds"] == 1.5
    with pytest.raises(SweepError, match="vllm needs GPUs, and this Ray cluster has none"):
        run_pool(candidates, [plan], config)


@pytest.mark.gpu
def test_vllm_generations_match_the_transformers_engine(ray_local, candidates, harness_set):
    gen = {**harness_set, "tasks": ["reverse_gen"]}
    plans = [plan_set(EvaluateConfig.model_validate({"sets": [gen]}).sets[0])]
    tables = {}
    for engine in ("transformers", "vllm"):
        config = EvaluateConfig.model_validate(
            {"sets": [gen], "engine": engine, "gpus_per_actor": 1, "actors": 1}
        )
        rows, _ = run_pool(candidates, plans, config)
        tables[engine] = results_table(candidates, plans, rows).set_index("candidate")["value"]
    assert (
        tables["vllm"] - tables["transformers"]
    ).abs().max() <= 1 / LIMIT  # one near tie at most
    assert not math.isnan(tables["vllm"].sum())
