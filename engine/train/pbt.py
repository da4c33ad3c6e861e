"""Population-based training on raysoup's own checkpoints (`scheduler: {type: pbt | pb2}`).

Tune's `PopulationBasedTraining` (or `PB2`) decides when a trial exploits another and how its
values change; its exploitation goes through Tune's checkpoints, which raysoup's trials do not
report (each publishes its own into its folder, `engine/train/records.py`). `Exploit` keeps
the decisions and replaces the transfer: the trial is paused and restarted with the perturbed
configuration and a `clone` entry naming the top trial and the step of its last report, whose
checkpoint was published before that report. The restarted trial (`run_trial`) continues from
that checkpoint, so a top trial that never reported is never cloned (Ray #27170).
"""

from __future__ import annotations

import random
import uuid

from ray import tune
from ray.tune.schedulers import PopulationBasedTraining

from sweeps import Sweep
from sweeps.schedulers import Pbt
from sweeps.space import LogUniform, RandInt, Space, Uniform

CLONE = "clone"  # the config key of an exploit: {"from": trial name, "step": int, "id": str}
COORDS = "pb2"  # the config key of a pb2 trial's values as its bandit sees them (`pb2.py`)


class Exploit:
    """Population-based training whose exploit restarts the trial from the top trial's
    raysoup checkpoint (mixed into Tune's PBT or PB2)."""

    def __init__(self, *args, seed: int = 0, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.rng = random.Random(seed)

    def _checkpoint_or_exploit(self, trial, tune_controller, upper_quantile, lower_quantile):
        # A top trial needs no save: its checkpoint was published before the report.
        if trial not in lower_quantile or not upper_quantile:
            return
        source = self.rng.choice(upper_quantile)
        last = self._trial_state[source].last_result or {}
        if "step" not in last or "name" not in last:
            return
        explored, _ = self._get_new_config(trial, source)
        self._num_perturbations += 1
        # an id of its own: a restarted driver counts perturbations from 0 again
        clone = {"from": last["name"], "step": int(last["step"]), "id": uuid.uuid4().hex[:12]}
        if trial.status != "PAUSED":
            tune_controller.pause_trial(trial, should_checkpoint=False)
        trial.set_config(cloned_config(trial.config, explored, clone))


class Exploiter(Exploit, PopulationBasedTraining):
    """PBT: a clone's values are the top trial's, perturbed at random."""


def cloned_config(own: dict, explored: dict, clone: dict) -> dict:
    """The clone's config: its own cell (task, data size, seed, label: who it is) with the
    values PBT explored from the top trial's, and the `clone` entry. Tune's PBT copies the
    top trial's whole config, which would make the clone take the top trial's name."""
    cell = own["trial"]
    values = explored["trial"]["config"]["values"]
    mine = {**cell, "config": {**cell["config"], "values": values}}
    coords = {COORDS: explored[COORDS]} if COORDS in explored else {}
    return {**own, "trial": mine, CLONE: clone, **coords}


def build(config: Pbt, sweep: Sweep) -> Exploiter:
    mutations = config.perturbed()
    # Tune's PBT seeds its own perturbations from Python's global generator.
    random.seed(config.seed)
    return Exploiter(
        time_attr="step",
        metric=sweep.metric,
        mode=sweep.direction(),
        perturbation_interval=config.perturbation_interval,
        hyperparam_mutations={"trial": {"config": {"values": _tune_spaces(mutations)}}},
        quantile_fraction=config.quantile_fraction,
        resample_probability=config.resample_probability,
        custom_explore_fn=lambda new: _within(new, mutations),
        synch=config.synch,
        log_config=False,
        seed=config.seed,
    )


def _tune_spaces(mutations: dict[str, list | Space]) -> dict:
    spaces = {}
    for path, space in mutations.items():
        if isinstance(space, list):
            spaces[path] = space
        elif isinstance(space, LogUniform):
            spaces[path] = tune.loguniform(*space.bounds())
        elif isinstance(space, Uniform):
            spaces[path] = tune.uniform(*space.bounds())
        elif isinstance(space, RandInt):
            low, high = space.bounds()
            spaces[path] = tune.randint(low, high + 1)  # Tune's upper bound is excluded
    return spaces


def _within(config: dict, mutations: dict[str, list | Space]) -> dict:
    """A perturbed value (x0.8 or x1.2) kept inside its range; an integer stays one."""
    values = config["trial"]["config"]["values"]
    for path, space in mutations.items():
        if not isinstance(space, list) and path in values:
            values[path] = within(space, values[path])
    return config


def within(space: Space, value: float) -> float | int:
    """`value` kept inside the range of `space` (an integer range gives an integer)."""
    low, high = space.bounds()
    value = min(max(value, low), high)
    return round(value) if isinstance(space, RandInt) else value
