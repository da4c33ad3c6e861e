"""The command line of a W&B sweep file's script (`engine/agent/command.py`): every macro of
W&B's agent against hand-written argument lists, and against wandb's own functions where wandb
has one. No Ray."""

from __future__ import annotations

import json

import pytest
from wandb.sdk.launch.sweeps.utils import create_sweep_command, create_sweep_command_args

from engine.agent import command
from sweeps.errors import SweepError

PY = "/venv/bin/python"
JSON = "/trial/wandb/sweep-s/config-r.json"
ARGS = {
    "flag": {"value": True},
    "off": {"value": False},
    "lr": {"value": 0.001},
    "name": {"value": "a b"},
    "model": {"value": {"width": 8, "act": "relu"}},
}


def run(cmd, args=ARGS, program="train.py", environ=None):
    return command.argv(cmd, program, args, environ or {}, PY, JSON)


CASES = [
    (
        "default command",
        None,
        [
            "/usr/bin/env",
            PY,
            "train.py",
            "--flag=True",
            "--off=False",
            "--lr=0.001",
            "--name=a b",
            "--model={'width': 8, 'act': 'relu'}",
        ],
    ),
    (
        "args_no_hyphens",
        ["${interpreter}", "${program}", "${args_no_hyphens}"],
        [PY, "train.py", "flag=True", "off=False", "lr=0.001", "name=a b",
         "model={'width': 8, 'act': 'relu'}"],
    ),
    (
        "args_no_boolean_flags",
        ["${program}", "${args_no_boolean_flags}"],
        ["train.py", "--flag", "--lr=0.001", "--name=a b", "--model={'width': 8, 'act': 'relu'}"],
    ),
    (
        "args_no_equals",
        ["${args_no_equals}"],
        ["--flag", "True", "--off", "False", "--lr", "0.001", "--name", "a b", "--model",
         "{'width': 8, 'act': 'relu'}"],
    ),
    (
        "args_json",
        ["x", "${args_json}"],
        ["x", '{"flag": true, "off": false, "lr": 0.001, "name": "a b", '
         '"model": {"width": 8, "act": "relu"}}'],
    ),
    ("args_json_file", ["python3", "${program}", "--config", "${args_json_file}"],
     ["python3", "train.py", "--config", JSON]),
    (
        "hydra",
        ["${args_append_hydra}", "${args_override_hydra}"],
        ["+flag=True", "+off=False", "+lr=0.001", "+name=a b", "+model={'width': 8, 'act': 'relu'}",
         "++flag=True", "++off=False", "++lr=0.001", "++name=a b",
         "++model={'width': 8, 'act': 'relu'}"],
    ),
    ("env", ["${env}"], ["/usr/bin/env"]),
    ("literal items as text", ["python3", 5, 0.5, "--x=${args}"],
     ["python3", "5", "0.5", "--x=${args}"]),
]  # fmt: skip


@pytest.mark.parametrize(("cmd", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_macros_give_the_agents_arguments(cmd, expected):
    assert run(cmd) == expected


def test_parameter_macros_equal_wandbs_own():
    ours = command.argument_macros(ARGS)
    theirs = create_sweep_command_args({"args": ARGS})
    assert ours == {name: theirs[name] for name in ours}
    assert set(theirs) - set(ours) == {"args_dict"}  # refused: see test_args_dict_is_refused


def test_envvar_is_replaced_inside_an_item_and_before_macros():
    environ = {"DATA_DIR": "/data", "SEED": "7", "WHAT": "${args_json_file}"}
    cmd = ["--data=${envvar:DATA_DIR}/x", "${envvar:SEED}", "${envvar:WHAT}"]
    assert run(cmd, environ=environ) == ["--data=/data/x", "7", JSON]
    assert command.uses_json_file(cmd, environ) and not command.uses_json_file(cmd[:2], environ)


def test_envvar_expansion_equals_wandbs_when_the_variable_is_set(monkeypatch):
    monkeypatch.setenv("DATA_DIR", "/data")
    cmd = ["a${envvar:DATA_DIR}b${envvar:DATA_DIR}", "${args}"]
    assert command.command_items(cmd, {"DATA_DIR": "/data"}) == create_sweep_command(list(cmd))


def test_missing_envvar_is_an_error_naming_it():
    with pytest.raises(SweepError, match=r"command\[1\]: \$\{envvar:TOKEN_DIR\}: .*no TOKEN_DIR"):
        run(["python3", "${envvar:TOKEN_DIR}"])


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ("${argz}", r"command\[0\]: unknown macro \$\{argz\}; known: \$\{env\}"),
        ("${envvar:lower}", r"unknown macro \$\{envvar:lower\} \(an environment variable is"),
        ("${args_dict}", r"\$\{args_dict\}: W&B's agent puts the parameters' names here"),
    ],
)
def test_unknown_macro_is_an_error_naming_it(item, message):
    with pytest.raises(SweepError, match=message):
        run([item])


def test_program_macro_needs_a_program():
    with pytest.raises(SweepError, match=r"\$\{program\}: the file has no `program`"):
        run(None, program=None)
    assert run(["python3", "job.py", "${args}"], program=None)[:2] == ["python3", "job.py"]


def test_no_parameters_give_no_arguments():
    assert run(["${program}", "${args}", "${args_no_hyphens}"], args={}) == ["train.py"]
    assert run(["${args_json}"], args={}) == ["{}"]


def test_args_follow_wandbs_order_top_level_first_then_nested():
    # HyperParameterSet.to_config: names sorted, nested parameters after the top-level ones
    paths = [("b",), ("a", "y"), ("a", "x"), ("c", "z", "w"), ("a-b",), ("d",)]
    config = {"b": 1, "a": {"y": 2, "x": 3}, "c": {"z": {"w": 4}}, "a-b": 5, "d": 6}
    args = command.wandb_args(paths, config)
    assert list(args) == ["a-b", "b", "d", "a", "c"]
    assert args["a"] == {"value": {"x": 3, "y": 2}} and list(args["a"]["value"]) == ["x", "y"]
    assert args["c"] == {"value": {"z": {"w": 4}}}
    assert run(["${args}"], args=args) == [
        "--a-b=5", "--b=1", "--d=6", "--a={'x': 3, 'y': 2}", "--c={'z': {'w': 4}}",
    ]  # fmt: skip


def test_dotted_names_stay_one_argument():
    args = command.wandb_args([("train.lr",)], {"train.lr": 0.1})
    assert run(["${args}"], args=args) == ["--train.lr=0.1"]
    assert json.loads(run(["${args_json}"], args=args)[0]) == {"train.lr": 0.1}
