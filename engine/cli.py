"""The `raysoup` command: each subcommand parses, validates and calls one library function.

Each command imports what it runs inside its own function, so `raysoup --help` and
`raysoup validate` start without loading Ray or torch.
"""

from __future__ import annotations

import functools
import sys
import time
import warnings
from importlib import metadata
from pathlib import Path

import typer
import yaml
from rich.console import Console
from rich.markup import escape

from sweeps import SweepError, load_sweep
from sweeps.evaluation import BATCH_SIZE, BATCH_TOKENS
from sweeps.load import YAML_SUFFIXES, convert_wandb, script_sweep_data


def _version(show: bool) -> None:
    if show:
        console.print(f"raysoup {metadata.version('raysoup')}")
        raise typer.Exit()


app = typer.Typer(
    help="Sweep fine-tunes of Hugging Face models on Ray, and merge the results.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
errors = Console(stderr=True)

DEMO_SWEEP = Path(__file__).resolve().parent.parent / "sweeps" / "examples" / "demo.yaml"
StorageOption = typer.Option(
    None,
    "--storage",
    help="Folder that holds run directories (default: the sweep's `storage`, `runs`).",
)
SCRIPT = "W&B sweep files with program or command"
RayOption = typer.Option(
    None,
    "--address",
    help="Ray cluster to run on: its head's address (host:6379) or `auto` "
    "(default: RAY_ADDRESS, else a new local Ray).",
)


def _use_cluster(address: str | None) -> None:
    """Join the cluster at `address` or RAY_ADDRESS, with this machine's token (before Ray
    is imported: Ray reads its authentication mode then)."""
    from engine.core.session import use_cluster

    use_cluster(address)


@app.callback()
def main_options(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Sweep fine-tunes of Hugging Face models on Ray, merge the results, and find the best
    model among the trials and the merges."""


def user_errors(fn):
    """Show a user's mistake as one clear message and exit 2, and a run that cannot go on
    (`RunError`) as one and exit 1, with no traceback; a Ctrl-C exits 130 (saying how to
    resume when a sweep was stopped)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except KeyboardInterrupt as err:
            message = str(err) or "interrupted"
            errors.print(message, style="yellow", highlight=False, markup=False, soft_wrap=True)
            raise typer.Exit(130) from None
        except Exception as err:
            code = _exit_code(err)
            if code is None:
                raise
            errors.print(
                f"error: {err}", style="red", highlight=False, markup=False, soft_wrap=True
            )
            raise typer.Exit(code) from None

    return wrapper


def _exit_code(err: Exception) -> int | None:
    """2 for a user's mistake, 1 for a run that cannot go on (`RunError`: a held lock, damaged
    state, a full disk), None for a bug (its traceback is shown)."""
    # These are looked up only if their module was imported: importing merging costs torch's
    # start-up, and the run's errors matter only once a run started.
    merge_error = getattr(sys.modules.get("merging.errors"), "MergeError", None)
    run_error = getattr(sys.modules.get("engine.core.errors"), "RunError", None)
    if run_error and isinstance(err, run_error):
        return 1
    user = (SweepError, FileNotFoundError) + ((merge_error,) if merge_error else ())
    return 2 if isinstance(err, user) else None


@app.command()
@user_errors
def validate(sweep: Path = typer.Argument(..., help="Sweep file (.yaml or .py).")) -> None:
    """Check a sweep file and its data files without running anything."""
    from engine.core.progress import show_findings
    from engine.preflight import check

    if script_sweep_data(sweep) is not None:
        from engine.agent import plan  # no Ray: what would run

        described = escape(plan.describe(plan.load(sweep)))
        console.print(f"[green]ok[/] {sweep}: {described}", soft_wrap=True)
        return
    definition = load_sweep(sweep)
    show_findings(check(definition), console)
    spaces = definition.search_space()
    console.print(
        f"[green]ok[/] {sweep}: sweep '{definition.name}', "
        f"{len(spaces)} searched field(s): {', '.join(spaces) or 'none'}; "
        f"{definition.trial_count()} trial(s)"
    )


@app.command()
@user_errors
def run(
    sweep: Path = typer.Argument(..., help="Sweep file (.yaml or .py)."),
    storage: str | None = StorageOption,
    address: str | None = RayOption,
    stage_inputs: bool = typer.Option(
        False,
        "--stage-inputs",
        help="First copy the files the sweep names relative to itself into the run "
        "directory's inputs/ and read them there (what `raysoup submit`'s jobs do: their "
        "working directory is deleted with them).",
    ),
    seed: int | None = typer.Option(
        None,
        "--seed",
        help="Seed of method random's draws and bayes's sampler (default 0).",
        rich_help_panel=SCRIPT,
    ),
    wandb_mode: str | None = typer.Option(
        None,
        "--wandb-mode",
        help="WANDB_MODE of the scripts: offline (default) or online.",
        rich_help_panel=SCRIPT,
    ),
    wandb_sweep_id: str | None = typer.Option(
        None,
        "--wandb-sweep-id",
        help="WANDB_SWEEP_ID of the scripts: the id of a sweep "
        "W&B's server knows (default: none, so the runs sync anywhere).",
        rich_help_panel=SCRIPT,
    ),
    cpus_per_trial: float | None = typer.Option(
        None,
        "--cpus-per-trial",
        help="CPUs each trial reserves (default 1).",
        rich_help_panel=SCRIPT,
    ),
    gpus_per_trial: float | None = typer.Option(
        None,
        "--gpus-per-trial",
        help="GPUs each trial reserves (default 0).",
        rich_help_panel=SCRIPT,
    ),
) -> None:
    """Run a sweep: prepare data, train, merge, evaluate every candidate, write the report.

    A W&B sweep file with `program` or `command` runs its script for each configuration,
    as W&B's agent would, each a Ray Tune trial (docs/wandb-sweep-files.md)."""
    _use_cluster(address)
    script_options = {
        "--seed": seed,
        "--wandb-mode": wandb_mode,
        "--wandb-sweep-id": wandb_sweep_id,
        "--cpus-per-trial": cpus_per_trial,
        "--gpus-per-trial": gpus_per_trial,
    }
    if script_sweep_data(sweep) is not None:
        _run_script_sweep(sweep, storage, script_options, stage_inputs)
        return
    given = [flag for flag, value in script_options.items() if value is not None]
    if given:
        raise SweepError(f"{given[0]}: only for W&B sweep files with `program` or `command`")
    definition = load_sweep(sweep)
    if stage_inputs:
        from engine.submit.inputs import stage_inputs as staged

        definition = staged(sweep, definition, storage)
    _run(definition, storage)


@app.command()
@user_errors
def resume(
    run_dir: str = typer.Argument(
        ..., help="Run directory of an interrupted sweep: a folder, or s3:// or gs://."
    ),
    rebuild_state: bool = typer.Option(
        False,
        "--rebuild-state",
        help="Set Tune's saved state aside and rebuild the experiment from the trial folders "
        "(when resume says it is damaged); finished trials are reused.",
    ),
    address: str | None = RayOption,
) -> None:
    """Finish an interrupted sweep; finished trials, merges and evaluations are reused."""
    _use_cluster(address)  # before Ray is imported
    from engine.runner import resume as resume_sweep

    _finish(resume_sweep(run_dir, rebuild_state=rebuild_state))


@app.command()
@user_errors
def report(
    run_dir: str = typer.Argument(
        ..., help="Run directory of a finished sweep: a folder, or s3:// or gs://."
    ),
) -> None:
    """Print a finished sweep's data selection, leaderboard and candidates; rebuild report.html."""
    from engine.core.rundir import RunDir
    from engine.prepare.manifest import read_manifest
    from engine.report.files import write_report
    from engine.report.result import load_result
    from engine.report.terminal import print_result, selection_table

    result = load_result(run_dir)
    run = RunDir.at(result.run_dir)
    write_report(result.sweep, run, result.trials, result.merges, result.evals)
    run.push()  # on object storage: the rebuilt report too
    manifest = read_manifest(run) or {}
    for task, entry in manifest.get("tasks", {}).items():
        if entry.get("selection"):
            console.print(selection_table(entry["selection"], task))
    print_result(result, console)


@app.command()
@user_errors
def merge(
    recipe: Path = typer.Argument(..., help="Merge recipe: raysoup's or any mergekit YAML."),
    out: Path = typer.Option(
        ..., "--out", help="Output model folder; it appears only when the merge is complete."
    ),
    overwrite: bool = typer.Option(False, help="Replace --out if it exists."),
    workers: int = typer.Option(2, help="Threads reading and combining tensors."),
    progress: bool = typer.Option(True, help="Show per-tensor progress."),
) -> None:
    """Merge models by a recipe into a Hugging Face model folder (per-tensor progress)."""
    from merging.cli import merge_command

    merge_command(recipe, out, overwrite=overwrite, progress=progress, workers=workers)


@app.command()
@user_errors
def bake(
    adapter: Path = typer.Argument(..., help="LoRA adapter folder (a PEFT adapter)."),
    out: Path = typer.Option(
        ..., "--out", help="Output model folder; it appears only when complete."
    ),
    base: str | None = typer.Option(
        None, "--base", help="Base model folder (default: the adapter's base_model_name_or_path)."
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace --out if it exists."),
) -> None:
    """Bake a LoRA adapter into its base model: a full model folder that merges like any other."""
    from engine.core.models import adapter_base
    from merging import bake_adapter

    try:
        base = adapter_base(str(adapter), base)
    except ValueError as err:
        raise SweepError(f"--base: {err}") from None
    if base is None:
        raise SweepError(f"{adapter}: not a LoRA adapter (it has no adapter_config.json)")
    path = bake_adapter(base, adapter, out, overwrite=overwrite)
    console.print(f"wrote [green]{path}[/]")


@app.command("eval")
@user_errors
def eval_(
    models: list[Path] = typer.Argument(
        ..., help="Model folders (full models or LoRA adapters) to evaluate."
    ),
    data: list[Path] = typer.Option(
        ...,
        "--data",
        help="Evaluation file (.jsonl, .json, .parquet, .csv); repeat for several sets.",
    ),
    name: list[str] | None = typer.Option(
        None,
        "--name",
        help="Name of each model, in order (default: its folder's name; a checkpoint folder "
        "with its parent's).",
    ),
    set_name: list[str] | None = typer.Option(
        None, "--set-name", help="Name of each --data set, in order (default: the file's stem)."
    ),
    format: str = typer.Option(
        "prompt_completion", "--format", help="prompt_completion, text or preference."
    ),
    metric: list[str] | None = typer.Option(
        None,
        "--metric",
        help="Metric to compute, repeatable: loss, ppl, accuracy, preference_accuracy, "
        "accuracy_norm, exact_match or module:function (default: by the file's fields).",
    ),
    split: str = typer.Option(
        "selection", "--split", help="selection or test (a label in the results)."
    ),
    out: Path | None = typer.Option(None, "--out", help="Folder to write evals.parquet into."),
    actors: str = typer.Option(
        "auto", "--actors", help="Evaluation actors (a number, or auto: one per free CPU)."
    ),
    batch_size: int = typer.Option(
        BATCH_SIZE, "--batch-size", help="Most examples per model batch."
    ),
    batch_tokens: int = typer.Option(
        BATCH_TOKENS, "--batch-tokens", help="Most tokens per model batch, padding counted."
    ),
    limit: int | None = typer.Option(None, "--limit", help="Only the first n rows of each set."),
    max_new_tokens: int = typer.Option(
        32, "--max-new-tokens", help="Generation limit for exact_match."
    ),
    gpus_per_actor: float = typer.Option(0.0, "--gpus-per-actor", help="GPUs per actor (0: CPU)."),
) -> None:
    """Evaluate model folders on evaluation sets and print one table (exit 1 if any failed)."""
    from engine.core.session import ray_session
    from engine.evaluate.pool import candidates_from_paths, evaluate_candidates
    from engine.report.terminal import print_evals
    from sweeps.evaluation import config_for_files

    config = config_for_files(
        [str(d) for d in data],
        names=set_name,
        metrics=metric,
        set_fields={
            "format": format,
            "split": split,
            "limit": limit,
            "max_new_tokens": max_new_tokens,
        },
        actors=int(actors) if actors.isdigit() else actors,
        batch_size=batch_size,
        batch_tokens=batch_tokens,
        gpus_per_actor=gpus_per_actor,
    )
    candidates = candidates_from_paths([str(m) for m in models], kind="model", names=name)
    with ray_session():
        table = evaluate_candidates(candidates, config=config, out=out, progress=True)
    print_evals(table, console)
    if out is not None:
        console.print(f"Results: {out / 'evals.parquet'}")
    if (table["status"] == "failed").any():
        raise typer.Exit(1)


@app.command()
@user_errors
def demo(storage: str | None = StorageOption) -> None:
    """Run the built-in demo: the whole pipeline on two bundled tasks, a small model, local Ray."""
    console.print(f"Demo sweep: {DEMO_SWEEP}")
    _use_cluster(None)
    _run(load_sweep(DEMO_SWEEP), storage)


convert_app = typer.Typer(
    help="Convert sweep files of other tools into raysoup sweep files.", no_args_is_help=True
)
app.add_typer(convert_app, name="convert")


@convert_app.command("wandb")
@user_errors
def convert_wandb_file(
    sweep: Path = typer.Argument(
        ..., help="W&B sweep file (.yaml) whose parameters name raysoup fields (train.lr)."
    ),
    out: Path = typer.Option(..., "--out", help="Raysoup sweep file to write (.yaml)."),
    base: Path | None = typer.Option(
        None,
        "--base",
        help="Raysoup sweep file (.yaml) the parameters are written over: the model, data and "
        "everything the W&B file does not set. Its relative paths are kept as written.",
    ),
    force: bool = typer.Option(False, "--force", help="Overwrite --out if it exists."),
) -> None:
    """Convert a W&B sweep file into a raysoup sweep file, validated (docs/wandb-sweep-files.md)."""
    if out.suffix not in YAML_SUFFIXES:
        raise SweepError(f"--out {out}: a raysoup sweep file is .yaml or .yml")
    if out.resolve() in [p.resolve() for p in (sweep, base) if p is not None]:
        raise SweepError(f"--out {out}: is one of the input files, which are never changed")
    if out.exists() and not force:
        raise SweepError(f"--out {out}: exists; pass --force to overwrite it")
    converted = convert_wandb(sweep, base)
    out.write_text(yaml.safe_dump(converted, sort_keys=False))
    errors.print(
        f"wrote {out}; check it with `raysoup validate {out}`", highlight=False, markup=False
    )
    if base is not None and base.resolve().parent != out.resolve().parent:
        errors.print(
            f"note: relative paths kept from {base} are now taken from {out.parent}, the "
            "folder of --out",
            style="yellow",
            highlight=False,
            markup=False,
            soft_wrap=True,
        )


k8s = typer.Typer(help="Kubernetes manifests (KubeRay) for sweeps.", no_args_is_help=True)
app.add_typer(k8s, name="k8s")


@k8s.command("rayjob")
@user_errors
def k8s_rayjob(
    sweep: Path = typer.Argument(..., help="Sweep file (.yaml or .py)."),
    image: str = typer.Option(
        ..., "--image", help="Container image that holds raysoup and Ray 2.60.0."
    ),
    out: Path | None = typer.Option(
        None, "--out", help="File to write the manifests to (default: standard output)."
    ),
    storage: str | None = typer.Option(
        None,
        "--storage",
        help="Run directories' folder in the pods (default: /mnt/runs "
        "with --runs-claim, else the sweep's `storage`).",
    ),
    runs_claim: str | None = typer.Option(
        None,
        "--runs-claim",
        help="ReadWriteMany PersistentVolumeClaim mounted at /mnt/runs "
        "in every pod (the nodes of a sweep must share its run directory).",
    ),
    namespace: str | None = typer.Option(None, "--namespace", help="Kubernetes namespace."),
    gpu_workers: int = typer.Option(1, "--gpu-workers", help="GPU worker pods."),
    gpus_per_worker: int = typer.Option(1, "--gpus-per-worker", help="GPUs in each worker pod."),
    ttl: int = typer.Option(
        600, "--ttl", help="Seconds the cluster is kept after the sweep ends (then deleted)."
    ),
    pip: list[str] | None = typer.Option(
        None, "--pip", help="Extra pip package for the job's runtime environment (repeatable)."
    ),
) -> None:
    """Write a KubeRay RayJob (and the ConfigMap holding the sweep file) that runs a sweep on a
    cluster made for it; apply it with `kubectl apply -f`."""
    from engine.submit.k8s import rayjob_yaml

    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", UserWarning)
            text = rayjob_yaml(
                sweep,
                image=image,
                storage=storage,
                namespace=namespace,
                ttl_seconds=ttl,
                gpu_workers=gpu_workers,
                gpus_per_worker=gpus_per_worker,
                pip=pip or None,
                runs_claim=runs_claim,
            )
    except ValueError as err:
        raise SweepError(str(err)) from None
    for warning in caught:
        errors.print(f"warning: {warning.message}", style="yellow", highlight=False, markup=False)
    if out is None:
        sys.stdout.write(text)
        return
    out.write_text(text)
    errors.print(f"wrote {out}; apply it with `kubectl apply -f {out}`", highlight=False)


AddressOption = typer.Option(
    None,
    "--address",
    help="The cluster's Jobs API (its dashboard), e.g. http://head:8265 (default: "
    "RAY_API_SERVER_ADDRESS, RAY_ADDRESS, then http://127.0.0.1:8265).",
)


@app.command()
@user_errors
def submit(
    sweep: Path = typer.Argument(..., help="Sweep file (.yaml or .py), inside --working-dir."),
    address: str | None = AddressOption,
    storage: str | None = typer.Option(
        None,
        "--storage",
        help="Absolute folder on the cluster for the run directory, shared by its nodes "
        "(default: the sweep's `storage`, which must then be absolute).",
    ),
    working_dir: Path | None = typer.Option(
        None,
        "--working-dir",
        help="Folder sent with the job (default: the current one); the sweep file and the "
        "files it names relatively must be inside it.",
    ),
    follow: bool = typer.Option(
        False, "--follow", help="Stream the job's log and exit with the sweep's exit code."
    ),
    runtime_env: Path | None = typer.Option(
        None, "--runtime-env", help="YAML or JSON file of Ray runtime_env fields to add."
    ),
    pip: list[str] | None = typer.Option(
        None, "--pip", help="Package to pip-install for the job (repeatable)."
    ),
    image: str | None = typer.Option(
        None, "--image", help="Container image to run the job in (Ray's image_uri)."
    ),
    shared: list[Path] | None = typer.Option(
        None,
        "--shared",
        help="Folder every node mounts at the same path: absolute paths under it are "
        "allowed in the sweep (repeatable).",
    ),
    exclude: list[str] | None = typer.Option(
        None, "--exclude", help="Gitignore-style pattern of files not to send (repeatable)."
    ),
) -> None:
    """Submit a sweep to a Ray cluster as a job (`raysoup run` on the cluster); prints its id."""
    from engine.submit import jobs

    job = jobs.submit(
        sweep,
        address=address,
        working_dir=working_dir,
        storage=storage,
        runtime_env_file=runtime_env,
        pip=pip or None,
        image=image,
        shared=shared or None,
        excludes=exclude or None,
    )
    sent = job.package
    errors.print(
        f"submitted {job.job_id} to {job.address} ({sent.files} files, "
        f"{sent.size / 2**20:.1f} MiB from {sent.working_dir}); run directory {job.run_dir}",
        highlight=False,
        markup=False,
    )
    sys.stdout.write(job.job_id + "\n")
    if follow:
        _follow(jobs, jobs.client(address), job.job_id)
    else:
        errors.print(
            f"follow it with `raysoup jobs logs {job.job_id} --follow --address {job.address}`",
            highlight=False,
            markup=False,
        )


jobs_app = typer.Typer(
    help="Jobs on a Ray cluster: list, status, logs, stop.", no_args_is_help=True
)
app.add_typer(jobs_app, name="jobs")
JobArgument = typer.Argument(..., help="Job id (as `raysoup submit` printed it).")


@jobs_app.command("list")
@user_errors
def jobs_list(address: str | None = AddressOption) -> None:
    """List the cluster's jobs, oldest first, with the sweep each one runs."""
    from rich.table import Column, Table
    from rich.text import Text

    from engine.submit import jobs

    table = Table(Column("job", no_wrap=True), "status", "sweep", "started", "took", "entrypoint")
    for info in jobs.list_jobs(jobs.client(address)):
        cells = (
            info.submission_id or info.job_id or "-",
            jobs.status(info),
            (info.metadata or {}).get("raysoup_sweep", "-"),
            _when(info.start_time),
            _took(info.start_time, info.end_time),
            info.entrypoint,
        )
        table.add_row(*(Text(str(cell)) for cell in cells))  # their text, never markup
    console.print(table)


@jobs_app.command("status")
@user_errors
def jobs_status(job: str = JobArgument, address: str | None = AddressOption) -> None:
    """A job's status, its sweep and run directory, and why it failed when it did."""
    from engine.submit import jobs

    info = jobs.details(jobs.client(address), job)
    metadata = info.metadata or {}
    console.print(f"{escape(job)}: [bold]{jobs.status(info)}[/]", highlight=False)
    for label, value in (
        ("sweep", metadata.get("raysoup_sweep")),
        ("run directory", metadata.get("raysoup_run_dir")),
        ("started", _when(info.start_time)),
        ("took", _took(info.start_time, info.end_time)),
        ("exit code", info.driver_exit_code),
        ("message", info.message),
    ):
        if value not in (None, "", "-"):
            console.print(f"  {label}: {value}", highlight=False, markup=False)


@jobs_app.command("logs")
@user_errors
def jobs_logs(
    job: str = JobArgument,
    address: str | None = AddressOption,
    follow: bool = typer.Option(
        False, "--follow", help="Keep streaming until the job ends; exit with its exit code."
    ),
) -> None:
    """Print a job's log (the sweep's output on the cluster)."""
    from engine.submit import jobs

    client = jobs.client(address)
    if follow:
        _follow(jobs, client, job)
    else:
        sys.stdout.write(jobs.logs(client, job))


@jobs_app.command("stop")
@user_errors
def jobs_stop(job: str = JobArgument, address: str | None = AddressOption) -> None:
    """Stop a job; `raysoup resume` on its run directory finishes the sweep later."""
    from engine.submit import jobs

    info = jobs.stop(jobs.client(address), job)
    console.print(f"{escape(job)}: [bold]{jobs.status(info)}[/]", highlight=False)


def _follow(jobs, client, job: str) -> None:
    info = jobs.follow(client, job)
    code = jobs.exit_code(info)
    style = "green" if code == 0 else "red"
    errors.print(f"job {escape(job)}: [{style}]{jobs.status(info)}[/]", highlight=False)
    if code:
        raise typer.Exit(code)


def _when(timestamp_ms: int | None) -> str:
    if not timestamp_ms:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(timestamp_ms / 1000))


def _took(start_ms: int | None, end_ms: int | None) -> str:
    if not start_ms:
        return "-"
    seconds = ((end_ms or time.time() * 1000) - start_ms) / 1000
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def _run_script_sweep(sweep: Path, storage: str | None, flags: dict, stage: bool) -> None:
    """A W&B sweep file's script, as Ray Tune trials; exit 1 when any trial failed."""
    from engine.agent import experiment, plan, results

    if stage:
        raise SweepError("--stage-inputs: not for a W&B sweep file that runs a script")
    given = {flag[2:].replace("-", "_"): v for flag, v in flags.items() if v is not None}
    given["sweep_id"] = given.pop("wandb_sweep_id", None)
    options = experiment.AgentOptions(storage=storage or "runs", **given)
    result = experiment.run(plan.load(sweep), options)
    results.print_result(result, console)
    if result.failures():
        raise typer.Exit(1)


def _run(definition, storage: str | None) -> None:
    from engine.runner import run as run_sweep

    _finish(run_sweep(definition, storage))


def _finish(result) -> None:
    """Print a sweep's result; exit 1 when any trial, merge or evaluation failed."""
    from engine.report.terminal import print_result

    print_result(result, console)
    if result.failures():
        raise typer.Exit(1)


def main() -> None:
    app(prog_name="raysoup")


if __name__ == "__main__":
    sys.exit(main())
