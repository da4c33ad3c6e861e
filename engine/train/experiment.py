"""The train stage: the search space as one Ray Tune experiment of function trials."""

from __future__ import annotations

import functools
import shutil
from pathlib import Path

from ray import tune

from engine.core.rundir import RunDir
from engine.train.axes import Sizes, identify
from engine.train.loop import TrialSpec, train
from sweeps import Sweep
from sweeps.trials import configurations


class TuneSession:
    """The `Session` of a trial that runs inside a Tune function trainable."""

    def __init__(self) -> None:
        self._restored = tune.get_checkpoint()
        self._tmp: Path | None = None

    def report(self, metrics: dict, checkpoint: Path | None = None) -> None:
        ckpt = tune.Checkpoint.from_directory(str(checkpoint)) if checkpoint else None
        tune.report(metrics, checkpoint=ckpt)

    def restore_dir(self) -> Path | None:
        if self._restored is None:
            return None
        self._tmp = Path(self._restored.to_directory())
        return self._tmp

    def close(self) -> None:
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)


def run_trial(config: dict, sweep_json: str, model_path: str, data_dir: str, sizes: Sizes) -> None:
    """A Tune function trainable: one trial of the sweep.

    `sizes` turns the data-size axis value (a count or a fraction) into the task's exact count.
    """
    sweep = Sweep.model_validate_json(sweep_json)
    trial = identify(sweep, config, sizes)
    spec = TrialSpec(
        sweep=sweep.for_trial(trial.values),
        model_path=model_path,
        data_dir=Path(data_dir) / trial.task,
        task=trial.task,
        seed=trial.seed,
        data_size=trial.data_size,
        name=trial.name,
    )
    session = TuneSession()
    try:
        train(spec, session)
    finally:
        session.close()


def param_space(sweep: Sweep) -> dict:
    """Tune's param space: four grid axes. `config` holds the configurations drawn before
    training (so each is trained unchanged on every task, data size and seed); `task`,
    `data_size` and `seed` are the sweep's own axes."""
    drawn = [{"label": c.label, "values": c.values} for c in configurations(sweep)]
    return {
        "config": tune.grid_search(drawn),
        "task": tune.grid_search(sweep.task_names()),
        "data_size": tune.grid_search(sweep.data_scale) if sweep.data_scale else None,
        "seed": tune.grid_search(sweep.seeds),
    }


def trainable(sweep: Sweep, model_path: str, run: RunDir, sizes: Sizes):
    fn = tune.with_parameters(
        run_trial,
        sweep_json=sweep.model_dump_json(),
        model_path=model_path,
        data_dir=str(run.data),
        sizes=sizes,
    )
    res = sweep.resources
    return tune.with_resources(fn, {"cpu": res.cpus_per_trial, "gpu": res.gpus_per_trial})


def tuner(sweep: Sweep, model_path: str, run: RunDir, sizes: Sizes, callbacks: list) -> tune.Tuner:
    """A new Tune experiment in `<run>/tune`, or the interrupted one restored from there.

    `sizes` maps each task and data-size value to the exact example count.
    """
    fn = trainable(sweep, model_path, run, sizes)
    if tune.Tuner.can_restore(str(run.tune)):
        return tune.Tuner.restore(
            str(run.tune),
            trainable=fn,
            resume_unfinished=True,
            resume_errored=True,
            param_space=param_space(sweep),
        )
    run_config = tune.RunConfig(
        name=run.tune.name,
        storage_path=str(run.root),
        callbacks=callbacks,
        verbose=0,
        checkpoint_config=tune.CheckpointConfig(num_to_keep=checkpoints_to_keep(sweep)),
        failure_config=tune.FailureConfig(max_failures=0),
    )
    # Reusing trial processes saves each trial the start of a Ray worker and the import of
    # torch and transformers; every trial seeds everything it uses, so results do not change.
    tune_config = tune.TuneConfig(
        num_samples=1,  # the samples are drawn before training: the `config` axis holds them
        metric=sweep.metric,
        mode=sweep.direction(),
        reuse_actors=True,
        max_concurrent_trials=sweep.resources.max_concurrent,
        trial_dirname_creator=functools.partial(trial_folder, sweep=sweep, sizes=sizes),
    )
    return tune.Tuner(
        fn, param_space=param_space(sweep), tune_config=tune_config, run_config=run_config
    )


def trial_folder(trial, sweep: Sweep, sizes: Sizes) -> str:
    """A trial's folder under `tune/`: Tune's id, then the trial's name
    (`bdf2d_00011-add-n1000-s0`)."""
    return f"{trial.trial_id}-{identify(sweep, trial.config, sizes).name.replace('/', '-')}"


def checkpoints_to_keep(sweep: Sweep) -> int | None:
    """`checkpoint.keep`, raised so that every checkpoint a checkpoint_average plan reads stays."""
    keep = sweep.checkpoint.keep
    for plan in sweep.merge:
        if plan.type != "checkpoint_average" or keep is None:
            continue
        keep = max(keep, plan.k) if plan.select == "last" else None
    return keep
