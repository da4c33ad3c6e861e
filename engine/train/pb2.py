"""Population-based bandits (`scheduler: {type: pb2}`): Tune's `PB2` with raysoup's exploit.

PB2's bandit models each value on a line between its bounds; so that a log-uniform range (a
learning rate) is explored on the log scale, each trial's config carries its values as
coordinates (`COORDS`: the log10 of a log-uniform value, the value itself otherwise), which
PB2 reads and chooses, and which a clone turns back into values. Imported only when chosen:
Tune's PB2 needs scikit-learn.
"""

from __future__ import annotations

import math

import numpy as np
from ray.tune.schedulers.pb2 import PB2

from engine.train.pbt import COORDS, Exploit, within
from sweeps import Sweep
from sweeps.schedulers import Pb2
from sweeps.space import LogUniform, Space


class Bandit(Exploit, PB2):
    """PB2: a clone's values are chosen by PB2's bandit, in coordinates (`COORDS`)."""

    def __init__(self, *args, spaces: dict[str, Space], **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.spaces = spaces

    def on_trial_add(self, tune_controller, trial) -> None:
        if COORDS not in trial.config:  # a restored trial has them already
            values = trial.config["trial"]["config"]["values"]
            trial.config[COORDS] = {p: to_coordinate(s, values[p]) for p, s in self.spaces.items()}
        super().on_trial_add(tune_controller, trial)

    def _get_new_config(self, trial, trial_to_clone):
        chosen, operations = super()._get_new_config(trial, trial_to_clone)
        coords = chosen[COORDS]
        values = dict(trial_to_clone.config["trial"]["config"]["values"])
        values.update({p: from_coordinate(s, coords[p]) for p, s in self.spaces.items()})
        return {"trial": {"config": {"values": values}}, COORDS: coords}, operations


def to_coordinate(space: Space, value: float) -> float:
    return math.log10(value) if isinstance(space, LogUniform) else float(value)


def from_coordinate(space: Space, coordinate: float) -> float | int:
    """The value of a coordinate, inside its range (an integer stays one)."""
    return within(space, 10**coordinate if isinstance(space, LogUniform) else coordinate)


def build(config: Pb2, sweep: Sweep) -> Bandit:
    spaces = config.perturbed()
    bounds = {p: [to_coordinate(s, b) for b in s.bounds()] for p, s in spaces.items()}
    np.random.seed(config.seed)  # PB2 draws its acquisition's starting points from numpy's
    return Bandit(
        time_attr="step",
        metric=sweep.metric,
        mode=sweep.direction(),
        perturbation_interval=config.perturbation_interval,
        hyperparam_bounds={COORDS: bounds},
        quantile_fraction=config.quantile_fraction,
        synch=config.synch,
        log_config=False,
        seed=config.seed,
        spaces=spaces,
    )
