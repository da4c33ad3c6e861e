"""The trials a sweep runs: its configurations, drawn once, and a readable name for each trial.

A configuration is one value for every searched field: a point of the grid spaces, with the
sampled spaces (`choice`, `uniform`, `loguniform`, `randint`) drawn for it. Configurations are
drawn before training, from a generator seeded by `data.seed`, and each one is trained
unchanged on every task, data size and seed: seeds are replicates of one configuration, so a
soup across seeds or a task merge always finds its group. The same sweep draws the same
configurations again (on resume, or on another machine).
"""

from __future__ import annotations

import itertools
import math
import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from sweeps.space import Choice, LogUniform, RandInt, Space, Uniform

SIGNIFICANT = 3  # digits of a float in a name, raised where that is needed to tell two apart
# The statuses of trials that leave a result: trained to the end, or stopped early by the
# sweep's scheduler (their newest checkpoint is then the result).
RESULT_STATUSES = ("done", "stopped")


def searched_columns(sweep) -> list[str]:
    """The trial table's columns of what was searched: every searched field (by dotted path),
    after the suggested point's number (`p3`) with a learning searcher."""
    return (["point"] if sweep.search.learns() else []) + list(sweep.search_space())


def with_result(trials):
    """The rows of a trial table whose trials left a model: done or stopped, with a checkpoint."""
    return trials[trials["status"].isin(RESULT_STATUSES) & trials["checkpoint"].notna()]


def search_progress(trials, metric: str, mode: str):
    """The sweep's best `metric` as its trials ended, in the order they ended: one row per
    trial with a result, with `finished` (trials so far), `compute` (the optimizer steps of
    the trials ended so far, a stopped trial counting the steps up to its stop; trials still
    running then are not counted) and `best` (best so far)."""
    ended = with_result(trials).dropna(subset=["finished_at", metric]).sort_values("finished_at")
    ran = ended["steps"]
    if "stopped_at" in ended:  # tables written before schedulers existed have no such column
        ran = ended["stopped_at"].where(ended["status"] == "stopped", ran).fillna(ran)
    best = ended[metric].cummin() if mode == "min" else ended[metric].cummax()
    return ended[["name"]].assign(
        finished=range(1, len(ended) + 1), compute=ran.cumsum().to_numpy(), best=best.to_numpy()
    )


@dataclass(frozen=True)
class Configuration:
    """One value per searched field (by dotted path), and its short label (`lora/lr=0.002`)."""

    label: str
    values: dict[str, Any]


def configurations(sweep) -> list[Configuration]:
    """Every configuration of the sweep: each grid point, `num_samples` times, with fresh
    draws of the sampled spaces for each; labelled by the fields whose values differ. A
    learning searcher (`search.type` optuna, hyperopt) has none before the sweep runs."""
    if sweep.search.learns():
        raise ValueError(f"search.type {sweep.search.type} suggests configurations as it runs")
    seed = getattr(sweep.search, "seed", None)  # random search's own seed
    rng = np.random.default_rng(sweep.data.seed if seed is None else seed)
    order = list(sweep.search_space())
    if sweep.branches:  # each branch's own, with the values it sets, drawn in turn
        drawn = [
            {p: {**fixed, **values}[p] for p in order if p in fixed or p in values}
            for branch, fixed in zip(sweep.branch_sweeps(), sweep.branch_values())
            for values in _drawn(branch, rng)
        ]
    else:
        drawn = _drawn(sweep, rng)
    return [Configuration(label, values) for label, values in zip(labels(drawn, order), drawn)]


def _drawn(sweep, rng: np.random.Generator) -> list[dict[str, Any]]:
    spaces = sweep.search_space()
    grids = {p: s.values() for p, s in spaces.items() if s.key == "grid"}
    sampled = {p: s for p, s in spaces.items() if s.key != "grid"}
    drawn = []
    for _ in range(sweep.num_samples):
        for point in itertools.product(*grids.values()):
            values = dict(zip(grids, point))
            values.update({p: draw(s, rng) for p, s in sampled.items()})
            drawn.append({p: values[p] for p in spaces})  # in the sweep's field order
    return drawn


def draw(space: Space, rng: np.random.Generator) -> Any:
    """One value of a sampled space, as a plain Python value."""
    if isinstance(space, Choice):
        return space.values()[int(rng.integers(len(space.values())))]
    low, high = space.bounds()
    if isinstance(space, RandInt):
        return int(rng.integers(low, high + 1))
    if isinstance(space, LogUniform):
        return float(math.exp(rng.uniform(math.log(low), math.log(high))))
    if isinstance(space, Uniform):
        return float(rng.uniform(low, high))
    raise ValueError(f"cannot draw from a {space.key} space")


def labels(configs: list[dict[str, Any]], order: list[str] | None = None) -> list[str]:
    """A short label per configuration from the fields whose values differ between them (floats
    rounded as `field_digits` says); repeats of one configuration (more samples than a space
    without random fields has) are numbered `r1`, `r2`, ..."""
    digits = field_digits(configs, order)
    seen: dict[str, int] = {}
    found = []
    for config in configs:
        label = "/".join(value_label(p, config[p], d) for p, d in digits.items() if p in config)
        seen[label] = seen.get(label, 0) + 1
        repeat = f"r{seen[label] - 1}" if seen[label] > 1 else ""
        found.append("/".join(part for part in (label, repeat) if part))
    return found


def field_digits(configs: list[dict[str, Any]], order: list[str] | None = None) -> dict[str, int]:
    """The fields whose values differ between configurations (a field that some configurations
    lack, those of other `branches`, differs too), each with the fewest significant digits (at
    least `SIGNIFICANT`) that keep its distinct values apart in a name; in `order` (default:
    as the configurations give them)."""
    digits = {}
    for path in order or dict.fromkeys(p for c in configs for p in c):
        values = list({repr(c[path]): c[path] for c in configs if path in c}.values())
        lacking = any(path not in c for c in configs)
        if len(values) + lacking < 2:
            continue
        digits[path] = next(
            (
                d
                for d in range(SIGNIFICANT, 18)
                if len({short_number(v, d) for v in values}) == len(values)
            ),
            17,
        )
    return digits


def group_label(sweep, group: dict[str, Any]) -> str:
    """A merge's name for a group of trials from the values they share, in the order of trial
    names (`add/lr=0.002/n500`); `all` for the whole sweep. Searched floats are rounded as in
    trial names, so two groups never share a label."""
    learns = sweep.search.learns()  # suggested points: their number tells them apart
    digits = {} if learns else field_digits([c.values for c in configurations(sweep)])
    parts = [str(group["task"])] if sweep.tasks and group.get("task") is not None else []
    parts += [str(group["point"])] if learns and group.get("point") is not None else []
    parts += [
        value_label(p, group[p], digits.get(p, SIGNIFICANT))
        for p in sweep.search_space()
        if p in group and not (sweep.branches and group[p] is None)  # not in its branch
    ]
    parts += [f"n{group['data_size']}"] if group.get("data_size") is not None else []
    parts += [f"s{group['seed']}"] if group.get("seed") is not None else []
    parts = [_safe(part) for part in parts]
    parts += group["trial"].split("/") if "trial" in group else []  # a trial name: already safe
    return "/".join(parts) or "all"


def _safe(part: str) -> str:
    """A part of a name that is also a usable folder name (merges are folders)."""
    return re.sub(r"[^A-Za-z0-9._=+-]+", "-", part).strip("-") or "-"


def value_label(path: str, value: Any, digits: int = SIGNIFICANT) -> str:
    """One field in a name: a text value alone (`lora`), a number with its field's last name
    (`lr=0.002`, `r=16`)."""
    if isinstance(value, str):
        return _safe(value)
    if isinstance(value, (list, tuple)):  # a branch may set a list (LoRA's target modules)
        text = "+".join(short_number(v, digits) for v in value)
    else:
        text = short_number(value, digits)
    return _safe(f"{path.rsplit('.', 1)[-1]}={text}")


def short_number(value: Any, digits: int = SIGNIFICANT) -> str:
    """A number as it reads in a name: integers whole, floats to `digits` significant digits
    (`0.00338`, `3.38e-5`)."""
    if isinstance(value, bool) or not isinstance(value, float):
        return str(value)
    text = f"{value:.{digits}g}"
    mantissa, _, exponent = text.partition("e")
    return f"{mantissa}e{int(exponent)}" if exponent else text


def trial_name(sweep, task: str, label: str, data_size: int | None, seed: int) -> str:
    """A trial's name from what tells it apart: the task (with several), its configuration's
    label, `n<examples>` (with a data-scale axis) and `s<seed>` (with several seeds), joined by
    `/`: `sentiment/lora/lr=0.002/n500/s0`. A sweep of one trial calls it `trial`."""
    parts = [task if sweep.tasks else "", label]
    parts.append(f"n{data_size}" if sweep.data_scale is not None and data_size is not None else "")
    parts.append(f"s{seed}" if len(sweep.seeds) > 1 else "")
    return "/".join(part for part in parts if part) or "trial"
