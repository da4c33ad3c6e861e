"""The command line a W&B sweep file runs for one configuration, with the W&B agent's macros.

Each rule is the W&B agent's, as wandb 0.31 runs a sweep's script (`Agent._command_run` in
`wandb/wandb_agent.py`, `create_sweep_command` and `create_sweep_command_args` in
`wandb/sdk/launch/sweeps/utils.py`):

- the command is the file's `command`, or `${env} ${interpreter} ${program} ${args}`;
- `${envvar:NAME}` is replaced by the variable's value wherever it stands in an item (NAME is
  upper-case letters, digits and `_`); then an item that is a whole `${...}` is a macro and is
  replaced by its arguments (none, one or several); any other item is passed as it is;
- a parameter's argument text is Python's `str` of its value (`True`, `None`, `[1, 2]`), and a
  nested parameter is one argument whose value is the mapping of its parameters.

Two rules differ, on purpose: W&B leaves an unset variable's name in place of `${envvar:NAME}`
and drops an unknown macro silently; raysoup refuses both, naming them. `${interpreter}` is
the Python that runs raysoup's trials (`sys.executable`), where W&B's agent runs `python` from
the PATH.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

from sweeps.errors import SweepError

DEFAULT_COMMAND = ("${env}", "${interpreter}", "${program}", "${args}")
ENVVAR = re.compile(r"\$\{envvar\:([A-Z0-9_]*)\}")
POSIX_ENV = "/usr/bin/env"  # the agent's `${env}` on every system but Windows
# wandb/sweeps `HyperParameterSet.NESTING_DELIMITER`: the order of nested parameters' names
NESTING = ".wbnest[599c28ca25da]."
MACROS = (
    "env",
    "interpreter",
    "program",
    "args",
    "args_no_equals",
    "args_no_hyphens",
    "args_no_boolean_flags",
    "args_json",
    "args_json_file",
    "args_append_hydra",
    "args_override_hydra",
)
# each parameter's arguments, in `create_sweep_command_args`'s forms
ARGUMENT_MACROS = (
    "args",
    "args_no_equals",
    "args_no_hyphens",
    "args_no_boolean_flags",
    "args_append_hydra",
    "args_override_hydra",
)
ARGS_DICT = (
    "${args_dict}: W&B's agent puts the parameters' names here, which no script can read "
    "as its configuration; use ${args_json} or ${args_json_file}"
)

KeyPath = tuple[str, ...]


def wandb_args(paths: Sequence[KeyPath], config: Mapping[str, Any]) -> dict[str, dict]:
    """The configuration as W&B's controller hands it to its agent (`command["args"]`,
    wandb/sweeps `HyperParameterSet.to_config`): `{name: {"value": v}}`, a nested parameter's
    value the mapping of its parameters. The order is W&B's: top-level parameters by name,
    then the nested ones, their parameters by name at every level.

    `paths` are the parameters' key paths (`sweeps.wandb_sweeps.leaves`), `config` a
    configuration as `sample` and `grid` draw it.
    """
    ordered = sorted(paths, key=NESTING.join)
    tree: dict[str, Any] = {}
    for path in [p for p in ordered if len(p) == 1] + [p for p in ordered if len(p) > 1]:
        node = tree
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = _at(config, path)
    return {name: {"value": value} for name, value in tree.items()}


def _at(config: Mapping[str, Any], path: KeyPath) -> Any:
    node: Any = config
    for key in path:
        node = node[key]
    return node


def argument_macros(args: Mapping[str, dict]) -> dict[str, list[str]]:
    """The arguments of each parameter macro, as `create_sweep_command_args` makes them."""
    made: dict[str, list[str]] = {name: [] for name in ARGUMENT_MACROS}
    for name, entry in args.items():
        value = entry["value"]
        flag = f"{name}={value}"
        made["args"].append("--" + flag)
        made["args_no_hyphens"].append(flag)
        made["args_no_equals"] += [f"--{name}", str(value)]
        made["args_append_hydra"].append("+" + flag)
        made["args_override_hydra"].append("++" + flag)
        if not isinstance(value, bool):
            made["args_no_boolean_flags"].append("--" + flag)
        elif value:
            made["args_no_boolean_flags"].append("--" + name)
    made["args_json"] = [args_json(args)]
    return made


def args_json(args: Mapping[str, dict]) -> str:
    """`${args_json}`, and the text of `${args_json_file}`'s file: the parameters as one JSON
    object (nested parameters as objects)."""
    return json.dumps({name: entry["value"] for name, entry in args.items()})


def expand_envvars(item: Any, environ: Mapping[str, str], where: str = "command") -> str:
    """An item of the command with each `${envvar:NAME}` replaced by the variable's value."""
    text = str(item)
    for match in reversed(list(ENVVAR.finditer(text))):
        name = match.group(1)
        if name not in environ:
            raise SweepError(f"{where}: ${{envvar:{name}}}: the environment has no {name}")
        text = text[: match.start()] + environ[name] + text[match.end() :]
    return text


def command_items(command: Sequence[Any] | None, environ: Mapping[str, str]) -> list[str]:
    """The command's items as text, their `${envvar:...}` replaced."""
    items = list(command) if command else list(DEFAULT_COMMAND)
    return [expand_envvars(item, environ, f"command[{i}]") for i, item in enumerate(items)]


def uses_json_file(command: Sequence[Any] | None, environ: Mapping[str, str]) -> bool:
    """Whether the command names `${args_json_file}` (only then is the file written)."""
    return "${args_json_file}" in command_items(command, environ)


def argv(
    command: Sequence[Any] | None,
    program: str | None,
    args: Mapping[str, dict],
    environ: Mapping[str, str],
    interpreter: str,
    json_file: str,
) -> list[str]:
    """The argument list (never a shell line) that runs one configuration; `args` as
    `wandb_args` gives them, `json_file` the path `${args_json_file}` stands for."""
    values = {**argument_macros(args), "env": [POSIX_ENV], "interpreter": [interpreter]}
    values["args_json_file"] = [json_file]
    if program is not None:
        values["program"] = [program]
    out: list[str] = []
    for i, item in enumerate(command_items(command, environ)):
        if item.startswith("${") and item.endswith("}"):
            out += _macro(item[2:-1], values, f"command[{i}]")
        else:
            out.append(item)
    return out


def _macro(name: str, values: dict[str, list[str]], where: str) -> list[str]:
    if name in values:
        return values[name]
    if name == "args_dict":
        raise SweepError(f"{where}: {ARGS_DICT}")
    if name == "program":
        raise SweepError(f"{where}: ${{program}}: the file has no `program`")
    hint = " (an environment variable is ${envvar:NAME}, NAME in upper case)" * (
        name.startswith("envvar:")
    )
    known = ", ".join(f"${{{m}}}" for m in MACROS)
    raise SweepError(f"{where}: unknown macro ${{{name}}}{hint}; known: {known}, ${{envvar:NAME}}")
