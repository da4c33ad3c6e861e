"""Tune's searcher for a learning `search` (optuna, hyperopt, bohb), each point replicated.

With `branches`, the searcher suggests the branch, then that branch's values (`Branches`):
Optuna through a define-by-run space, HyperOpt through a nested `hp.choice` of the branches.

The searcher suggests a *point* (one value for every searched field); `Replicates` trains it as one
trial per task, data size and seed, the cells of the point, and tells the searcher the point's
score once all of them ended: the mean of the sweep's `metric` over the point's trials at the
largest data size (every task and seed), as each last reported it. A trial that failed or never
reported the metric is left out of the mean; a point with no score left is reported to the searcher
as failed. BOHB also learns from every scored replicate's result at each budget of its HyperBand,
as it comes (`Replicates.on_trial_result`). A point is told once: a failed trial that a resume
trains again later does not change what the searcher learned. Its state (the points, their trials
and scores) is saved with Tune's experiment, so a resumed sweep goes on with the searcher where it
was. Where Tune's files are lost, the search is rebuilt from the trials' folders (`rebuilt`): every
point they record keeps its number and values, the points whose trials all finished are told to a
new searcher (a new Optuna study, new HyperOpt trials, or BOHB results at its largest budget), and
the trials left run next.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any, NamedTuple

from ray import tune
from ray.tune.search import Searcher

from sweeps import Sweep
from sweeps.schedulers import hyperband_max_t
from sweeps.space import Choice, LogUniform, RandInt, Space, Uniform
from sweeps.trials import value_label


class Started(NamedTuple):
    """A trial as its folder records it: its cell, name, whether it finished, and the sweep's
    metric at its last checkpoint (None when it did not finish)."""

    cell: dict
    name: str
    finished: bool
    score: float | None


def build(sweep: Sweep) -> Replicates:
    """The searcher of `sweep.search`, wrapped so that each point runs on every replicate."""
    space = Branches(sweep) if sweep.branches else tune_space(sweep)
    inner = BUILDERS[sweep.search.type](sweep, space)
    return Replicates(inner, sweep, space if sweep.branches else None)


def tune_space(sweep: Sweep) -> dict[str, Any]:
    """The sweep's sampled spaces as Tune's search space, by dotted field path."""
    return {path: _domain(space) for path, space in sweep.search_space().items()}


def _domain(space: Space):
    if isinstance(space, Choice):
        return tune.choice(space.values())
    low, high = space.bounds()
    if isinstance(space, RandInt):
        return tune.randint(low, high + 1)  # Tune's upper bound is excluded, ours included
    if isinstance(space, LogUniform):
        return tune.loguniform(low, high)
    if isinstance(space, Uniform):
        return tune.uniform(low, high)
    raise ValueError(f"a {space.key} space cannot be searched")  # refused at validate


class Branches:
    """The space of a sweep with `branches`: the branch first, then that branch's spaces, each
    named by its branch (`b1:train.lr`), since a field's range differs between branches. Called,
    it is Optuna's define-by-run space (a class, not a closure: Tune pickles the searcher with
    its space); `hyperopt()` gives HyperOpt's."""

    def __init__(self, sweep: Sweep) -> None:
        self.order = list(sweep.search_space())
        # each space as (kind, values or bounds): pydantic's generic spaces do not pickle
        self.branches = [
            (fixed, {path: _plain_space(space) for path, space in branch.search_space().items()})
            for branch, fixed in zip(sweep.branch_sweeps(), sweep.branch_values())
        ]

    def __call__(self, trial) -> None:
        index = trial.suggest_categorical("branch", list(range(len(self.branches))))
        for path, (kind, given) in self.branches[index][1].items():
            name = f"b{index}:{path}"
            if kind == "choice":
                trial.suggest_categorical(name, given)
            elif kind == "randint":
                trial.suggest_int(name, *given)
            else:
                trial.suggest_float(name, *given, log=kind == "loguniform")

    def hyperopt(self) -> dict[str, Any]:
        """HyperOpt's space: a choice of the branches, each a dict of its index and its spaces
        (HyperOpt then models each branch's values only from the points of that branch)."""
        from hyperopt import hp  # only for sweeps that search with it

        def domain(name: str, kind: str, given):
            if kind == "choice":
                return hp.choice(name, given)
            if kind == "randint":
                return hp.randint(name, given[0], given[1] + 1)  # upper bound excluded there
            if kind == "loguniform":
                return hp.loguniform(name, math.log(given[0]), math.log(given[1]))
            return hp.uniform(name, *given)

        options = [
            {"branch": index, **{f"b{index}:{p}": domain(f"b{index}:{p}", *s) for p, s in spaces}}
            for index, (_, branch) in enumerate(self.branches)
            for spaces in [branch.items()]
        ]
        return {"branch": hp.choice("branch", options)}

    def optuna_point(self, values: dict[str, Any]) -> tuple[dict, dict]:
        """A configuration's values as Optuna's parameters and their distributions: its
        branch, and that branch's spaces (the inverse of `values`)."""
        import optuna  # only for sweeps that search with it

        kinds = {
            "choice": lambda given: optuna.distributions.CategoricalDistribution(given),
            "randint": lambda given: optuna.distributions.IntDistribution(*given),
            "uniform": lambda given: optuna.distributions.FloatDistribution(*given),
            "loguniform": lambda given: optuna.distributions.FloatDistribution(*given, log=True),
        }
        index, spaces = self._branch_of(values)
        params = {"branch": index, **{f"b{index}:{p}": values[p] for p in spaces}}
        found = {f"b{index}:{p}": kinds[kind](given) for p, (kind, given) in spaces.items()}
        found["branch"] = kinds["choice"](list(range(len(self.branches))))
        return params, found

    def hyperopt_point(self, values: dict[str, Any]) -> dict[str, Any]:
        """A configuration's values as HyperOpt's, by label (see `hyperopt_values`)."""
        index, spaces = self._branch_of(values)
        named = {f"b{index}:{path}": space for path, space in spaces.items()}
        return {
            "branch": index,
            **hyperopt_values(named, {f"b{index}:{p}": values[p] for p in spaces}),
        }

    def _branch_of(self, values: dict[str, Any]) -> tuple[int, dict]:
        """The first branch whose set values `values` has, and its spaces."""
        for index, (fixed, spaces) in enumerate(self.branches):
            if all(values.get(path) == value for path, value in fixed.items()) and set(
                spaces
            ) <= set(values):
                return index, spaces
        raise ValueError(f"no branch of this sweep gives the values {values}")

    def values(self, suggested: dict[str, Any]) -> dict[str, Any]:
        """A suggestion as the values of a configuration: what its branch sets, and the values
        suggested for that branch's spaces, in the sweep's field order."""
        if isinstance(suggested["branch"], dict):  # HyperOpt's: the chosen branch's dict
            suggested = suggested["branch"]
        index = suggested["branch"]
        fixed, spaces = self.branches[index]
        found = {**fixed, **{path: suggested[f"b{index}:{path}"] for path in spaces}}
        return {path: found[path] for path in self.order if path in found}


def _plain_space(space: Space) -> tuple[str, Any]:
    return (space.key, space.values() if isinstance(space, Choice) else tuple(space.bounds()))


def hyperopt_values(spaces: dict[str, tuple[str, Any]], values: dict[str, Any]) -> dict[str, Any]:
    """Values as HyperOpt records them for its labels: a choice's as its index."""
    return {
        label: spaces[label][1].index(value) if spaces[label][0] == "choice" else value
        for label, value in values.items()
    }


def _optuna(sweep: Sweep, space: dict | Branches) -> Searcher:
    import optuna  # only for sweeps that search with it
    from ray.tune.search.optuna import OptunaSearch

    config = sweep.search
    sampler = optuna.samplers.TPESampler(seed=config.seed, n_startup_trials=config.startup_trials)
    return OptunaSearch(space, metric=sweep.metric, mode=sweep.direction(), sampler=sampler)


def _hyperopt(sweep: Sweep, space: dict | Branches) -> Searcher:
    from ray.tune.search.hyperopt import HyperOptSearch  # only for sweeps that search with it

    config = sweep.search
    return HyperOptSearch(
        space.hyperopt() if isinstance(space, Branches) else space,
        metric=sweep.metric,
        mode=sweep.direction(),
        n_initial_points=config.startup_trials,
        random_state_seed=config.seed,
    )


def _bohb(sweep: Sweep, space: dict) -> Searcher:
    from ray.tune.search.bohb import TuneBOHB  # only for sweeps that search with it

    config = sweep.search
    return TuneBOHB(
        space=TuneBOHB.convert_search_space(space),  # ConfigSpace's, as TuneBOHB wants it
        metric=sweep.metric,
        mode=sweep.direction(),
        seed=config.seed,  # ConfigSpace's random draws; BOHB's model draws from numpy's own
        bohb_config={"min_points_in_model": config.startup_trials}
        if config.startup_trials
        else None,
    )


BUILDERS = {"optuna": _optuna, "hyperopt": _hyperopt, "bohb": _bohb}


class _BudgetResult:
    """A result as hpbandster's BOHB reads one: a loss at a budget for a configuration."""

    def __init__(self, loss: float, budget: float, config: dict) -> None:
        self.result = {"loss": loss}
        self.kwargs = {"budget": budget, "config": config}
        self.exception = None


class Replicates(Searcher):
    """Each suggested point as one trial per task, data size and seed (see the module)."""

    def __init__(self, searcher: Searcher, sweep: Sweep, branches: Branches | None = None) -> None:
        super().__init__(metric=sweep.metric, mode=sweep.direction())
        self.searcher = searcher  # the name Tune's SearchGenerator looks for to save it
        self.branches = branches  # a suggestion's values with `branches`
        self.kind = sweep.search.type
        self.max_t = hyperband_max_t(sweep) if self.kind == "bohb" else None
        self.spaces = (  # (kind, values or bounds) by path, without `branches`
            {}
            if branches
            else {path: _plain_space(space) for path, space in sweep.search_space().items()}
        )
        sizes = sweep.data_scale or [None]
        self.replicas = [
            {"task": task, "data_size": size, "seed": seed}
            for task in sweep.task_names()
            for size in sizes
            for seed in sweep.seeds
        ]
        self.scored_size = sizes[-1]  # data-scale values are sorted, largest last
        self.points: list[dict] = []  # {"id", "label", "trials": {trial id: score}, "told"}
        self.queue: deque = deque()  # (point index, cell) not yet given to Tune
        self.point_of: dict[str, int] = {}  # trial id -> index in `points`
        self.scored: set[str] = set()  # the trials at the scored data size

    def suggest(self, trial_id: str) -> dict | None:
        if not self.queue:
            # numbered past every point so far (a rebuilt search may lack some numbers)
            point_id = f"p{max((int(p['id'][1:]) + 1 for p in self.points), default=0)}"
            values = self.searcher.suggest(point_id)
            if values is None or values == Searcher.FINISHED:
                return values
            if self.branches is not None:
                values = self.branches.values(values)
            values = {path: _plain(value) for path, value in values.items()}
            label = point_label(point_id, values)
            self.points.append({"id": point_id, "label": label, "trials": {}})
            config = {"label": label, "values": values, "point": point_id}
            index = len(self.points) - 1
            self.queue.extend((index, {"config": config, **replica}) for replica in self.replicas)
        index, cell = self.queue.popleft()
        self.point_of[trial_id] = index
        self.points[index]["trials"][trial_id] = None
        if cell["data_size"] == self.scored_size:
            self.scored.add(trial_id)
        return {"trial": cell}

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        """BOHB learns from every result at a budget of its HyperBand (the scheduler marks
        them): each replicate's at the scored data size is told under its point's id, one
        observation of the point's values each. The other searchers learn from the points'
        means only."""
        index = self.point_of.get(trial_id)
        budget = (result.get("hyperband_info") or {}).get("budget")
        if self.kind != "bohb" or index is None or budget is None or trial_id not in self.scored:
            return
        point = self.points[index]
        # Left out: a rebuilt point's (BOHB never suggested it), and a point's told already
        # (a replicate trained again by a resume: BOHB has let go of the point).
        if "values" in point or point.get("told") or self.metric not in result:
            return
        self.searcher.on_trial_result(point["id"], result)  # NaN: BOHB takes it as the worst

    def on_pause(self, trial_id: str) -> None:
        """BOHB's HyperBand paused the trial (it tells the searcher, through Tune's
        `ConcurrencyLimiter` where there is one). Nothing to do: TuneBOHB counts paused
        trials only against a cap of its own, which raysoup does not give it."""

    def on_unpause(self, trial_id: str) -> None:
        """See `on_pause`."""

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False):
        index = self.point_of.get(trial_id)
        if index is None:  # not ours (a trial of an experiment this one replaced)
            return
        point = self.points[index]
        score = (result or {}).get(self.metric) if trial_id in self.scored else None
        point["trials"][trial_id] = _finite(score, error)
        self._tell_if_ended(point)

    def _tell_if_ended(self, point: dict) -> None:
        """Tell the searcher the point's score once all its replicates ended (once: a searcher
        refuses a second score)."""
        ended = len(point["trials"]) == len(self.replicas) and None not in point["trials"].values()
        if not ended or point.get("told"):
            return
        point["told"] = True
        scores = [s for s in point["trials"].values() if not math.isnan(s)]
        mean = sum(scores) / len(scores) if scores else None
        if "values" in point:  # a rebuilt point: the new study never suggested it
            self._add_to_study(point["values"], mean)
        elif mean is not None:
            self.searcher.on_trial_complete(point["id"], {self.metric: mean})
        else:
            self.searcher.on_trial_complete(point["id"], None, error=True)

    def _add_to_study(self, values: dict, mean: float | None) -> None:
        """A point the searcher did not suggest, told as an evaluated trial."""
        if self.kind == "hyperopt":
            self._add_to_hyperopt(values, mean)
            return
        if self.kind == "bohb":  # as a result at the largest budget (a failed point: none)
            if mean is not None:
                loss = self.searcher._metric_op * mean  # BOHB minimises, as Tune's TuneBOHB
                self.searcher.bohber.new_result(_BudgetResult(loss, self.max_t, dict(values)))
            return
        if self.branches is None:
            self.searcher.add_evaluated_point(values, mean or 0.0, error=mean is None)
            return
        import optuna  # only for sweeps that search with it

        params, distributions = self.branches.optuna_point(values)
        state = optuna.trial.TrialState
        self.searcher._ot_study.add_trial(
            optuna.trial.create_trial(
                params=params,
                distributions=distributions,
                value=mean,
                state=state.FAIL if mean is None else state.COMPLETE,
            )
        )

    def _add_to_hyperopt(self, values: dict, mean: float | None) -> None:
        """A point HyperOpt did not suggest, as a finished trial of its trials object (Tune's
        `HyperOptSearch` offers no public way to add one: its `_hpopt_trials` is written as
        HyperOpt's `fmin` writes a trial, every label of the space listed, those of another
        branch empty)."""
        import hyperopt  # only for sweeps that search with it

        labelled = (
            self.branches.hyperopt_point(values)
            if self.branches is not None
            else hyperopt_values(self.spaces, {p: values[p] for p in self.spaces})
        )
        trials = self.searcher._hpopt_trials
        tid = trials.new_trial_ids(1)[0]
        labels = self.searcher.domain.params
        misc = {
            "tid": tid,
            "cmd": ("domain_attachment", "FMinIter_Domain"),
            "workdir": None,
            "idxs": {label: [tid] if label in labelled else [] for label in labels},
            "vals": {label: [labelled[label]] if label in labelled else [] for label in labels},
        }
        if mean is None:
            result, state = {"status": hyperopt.STATUS_FAIL}, hyperopt.JOB_STATE_ERROR
        else:  # HyperOpt minimises: Tune's searcher gives it the metric times `metric_op`
            loss = self.searcher.metric_op * mean
            result, state = {"loss": loss, "status": hyperopt.STATUS_OK}, hyperopt.JOB_STATE_DONE
        doc = trials.new_trial_docs([tid], [None], [result], [misc])[0]
        doc["state"] = state
        trials.insert_trial_docs([doc])
        trials.refresh()

    def restart(self, started: list[Started]) -> None:
        """Take up the points a search recorded in its trials' folders (its Tune state lost):
        `started` holds each trial in the order it started.
        Each point keeps its number, label and values; a finished trial keeps its score; the
        cells not finished (or never started) of every point are handed out first; a point
        whose trials all finished is told to the searcher now, the others when they end."""
        by_point: dict[str, list] = {}
        for trial in started:
            by_point.setdefault(trial.cell["config"]["point"], []).append(trial)
        for point_id in sorted(by_point, key=lambda p: int(p[1:])):
            entries = by_point[point_id]
            config = entries[0].cell["config"]
            index = len(self.points)
            point = {"id": point_id, "label": config["label"], "trials": {}}
            point["values"] = config["values"]
            self.points.append(point)
            for cell, name, finished, score in entries:
                if not finished:
                    self.queue.append((index, cell))
                    continue
                key = f"rebuilt:{name}"
                self.point_of[key] = index
                scored = cell["data_size"] == self.scored_size
                if scored:
                    self.scored.add(key)
                point["trials"][key] = _finite(score if scored else None, False)
            recorded = {(t.cell["task"], t.cell["data_size"], t.cell["seed"]) for t in entries}
            for replica in self.replicas:
                if (replica["task"], replica["data_size"], replica["seed"]) not in recorded:
                    self.queue.append((index, {"config": config, **replica}))
            self._tell_if_ended(point)

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        return True  # the searcher was built with the sweep's space, metric and mode

    def get_state(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "searcher"}

    def set_state(self, state: dict) -> None:
        self.__dict__.update(state)
        # saved before queued cells carried their point: all were the newest point's
        newest = len(self.points) - 1
        self.queue = deque(c if isinstance(c, tuple) else (newest, c) for c in self.queue)

    def save(self, checkpoint_path: str) -> None:
        self.searcher.save(checkpoint_path)

    def restore(self, checkpoint_path: str) -> None:
        self.searcher.restore(checkpoint_path)


def rebuilt(sweep: Sweep, started: list[Started]) -> Replicates:
    """The searcher of a sweep whose Tune state is rebuilt from its trials' folders (see
    `Replicates.restart`). Its seed moves on by the points recorded: with the sweep's own
    seed, the new searcher's first random draws would be the first points again."""
    points = len({trial.cell["config"]["point"] for trial in started})
    seed = sweep.search.seed
    if seed is not None:
        search = sweep.search.model_copy(update={"seed": seed + points})
        sweep = sweep.model_copy(update={"search": search})
    rebuilt = build(sweep)
    rebuilt.restart(started)
    return rebuilt


def point_label(point_id: str, values: dict[str, Any]) -> str:
    """A suggested point's label: its number, then its values (`p3/lr=0.00123/r=16`)."""
    return "/".join([point_id, *(value_label(path, v) for path, v in values.items())])


def _plain(value: Any) -> Any:
    """A searcher's value as plain Python (numpy scalars from some of them)."""
    return value.item() if hasattr(value, "item") else value


def _finite(score, error: bool) -> float:
    """A replicate's score, NaN when it has none (failed, or not at the scored size)."""
    if error or not isinstance(score, (int, float)) or not math.isfinite(score):
        return math.nan
    return float(score)
