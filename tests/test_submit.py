"""`raysoup submit` and `raysoup jobs` against a real cluster on loopback: `ray start --head` with
Ray's token authentication on, plus a second node from `ray start --address` (two raylets on this
machine), started and killed by the module's fixture. Before it, what a submission takes to the
cluster and what it refuses, checked without one."""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import yaml

from engine.core import session
from engine.submit import jobs
from engine.submit.inputs import stage_inputs
from sweeps import SweepError, load_sweep
from tests.conftest import DEMO_DATA

BIN = Path(sys.executable).parent
ADD = DEMO_DATA / "add"


def project(root: Path, name: str = "remote", **extra) -> Path:
    """A project folder as a user has one: a sweep file and its data, written relative."""
    (root / "data").mkdir(parents=True, exist_ok=True)
    for split in ("train", "eval"):
        shutil.copy(ADD / f"{split}.jsonl", root / "data" / f"{split}.jsonl")
    sweep = {
        "name": name,
        "model": {"preset": "tiny-random"},
        "data": {
            "train": "data/train.jsonl",
            "eval": "data/eval.jsonl",
            "format": "prompt_completion",
        },
        "train": {"lr": 3e-3, "max_steps": 100, "batch_size": 8, "seq_len": 24, "eval_every": 100},
        "seeds": [0, 1],
        "checkpoint": {"every": 100},
        "resources": {"cpus_per_trial": 1, "max_failures": 0},
        "evaluate": {"batch_size": 8},
    }
    sweep.update(extra)
    path = root / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep, sort_keys=False))
    return path


# -- what is sent, what is refused (no cluster) --------------------------------------------


def test_package_sends_the_project_without_runs_envs_and_checkpoints(tmp_path):
    sweep_file = project(tmp_path, storage="out/runs")
    for junk in (
        ".venv/lib/big.bin",
        "runs/old/x.bin",
        "out/runs/r/y.bin",
        "a/checkpoint_000002/w",
    ):
        (tmp_path / junk).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / junk).write_bytes(b"0" * 5000)
    (tmp_path / "notes.txt").write_text("kept")
    pack = jobs.package(sweep_file, load_sweep(sweep_file), tmp_path)
    data = sum((tmp_path / "data" / f).stat().st_size for f in ("train.jsonl", "eval.jsonl"))
    sent = data + sweep_file.stat().st_size + len("kept")
    assert (pack.files, pack.size) == (4, sent)  # the junk (20,000 bytes) is left out
    assert pack.sweep_path == "sweep.yaml"
    assert "/out/runs/" in pack.excludes  # the sweep's own relative storage folder
    more = jobs.package(sweep_file, load_sweep(sweep_file), tmp_path, excludes=["*.txt"])
    assert (more.files, more.size) == (3, sent - len("kept"))


def test_a_working_dir_over_the_limit_is_refused_naming_the_largest_files(tmp_path, monkeypatch):
    sweep_file = project(tmp_path)
    (tmp_path / "blob.bin").write_bytes(b"0" * 3 * 2**20)
    monkeypatch.setattr(jobs, "SIZE_LIMIT", 2**20)
    with pytest.raises(SweepError, match=r"largest files: blob\.bin \(3\.0 MiB\).*--shared"):
        jobs.package(sweep_file, load_sweep(sweep_file), tmp_path)
    jobs.package(sweep_file, load_sweep(sweep_file), tmp_path, excludes=["blob.bin"])


def test_files_the_cluster_cannot_read_are_refused_naming_the_field(tmp_path):
    root, elsewhere = tmp_path / "proj", tmp_path / "elsewhere"
    sweep_file = project(root)
    elsewhere.mkdir()
    shutil.copy(ADD / "eval.jsonl", elsewhere / "eval.jsonl")
    raw = yaml.safe_load(sweep_file.read_text())
    raw["data"]["eval"] = "../elsewhere/eval.jsonl"  # relative, outside the project
    raw["data"]["train"] = str(root / "data" / "train.jsonl")  # absolute, inside it
    raw["data"]["test"] = "/cluster/only/test.jsonl"  # absolute, not here: the cluster's
    sweep_file.write_text(yaml.safe_dump(raw))
    sweep = load_sweep(sweep_file)
    with pytest.raises(SweepError) as caught:
        jobs.package(sweep_file, sweep, root)
    text = str(caught.value)
    assert "data.eval: '../elsewhere/eval.jsonl' is " in text and "outside the working" in text
    assert f"data.train: {root}/data/train.jsonl is inside the working directory" in text
    assert "data.test" not in text
    raw["data"]["train"] = "data/train.jsonl"
    raw["data"]["eval"] = str(elsewhere / "eval.jsonl")  # absolute, on shared storage
    sweep_file.write_text(yaml.safe_dump(raw))
    with pytest.raises(SweepError, match=r"data\.eval: .* a file on this machine"):
        jobs.package(sweep_file, load_sweep(sweep_file), root)
    jobs.package(sweep_file, load_sweep(sweep_file), root, shared=[elsewhere])
    raw["data"]["eval"] = "../elsewhere/eval.jsonl"  # under --shared, but relative: followed
    sweep_file.write_text(yaml.safe_dump(raw))  # from the job's copy, where it is not
    with pytest.raises(SweepError, match=r"data\.eval: '\.\./elsewhere/eval\.jsonl' is "):
        jobs.package(sweep_file, load_sweep(sweep_file), root, shared=[elsewhere])
    with pytest.raises(SweepError, match="outside the working directory"):
        jobs.package(sweep_file, load_sweep(sweep_file), root / "data")
    raw["data"]["eval"] = "data/missing.jsonl"
    sweep_file.write_text(yaml.safe_dump(raw))
    with pytest.raises(SweepError, match=r"data\.eval: 'data/missing\.jsonl': no such file"):
        jobs.package(sweep_file, load_sweep(sweep_file), root)


def test_storage_must_be_absolute_and_the_runtime_env_holds_no_secret(tmp_path):
    sweep_file = project(tmp_path)
    sweep = load_sweep(sweep_file)
    with pytest.raises(SweepError, match=r"storage: 'runs' is relative: .*--storage"):
        jobs.job_storage(sweep, None)
    assert jobs.job_storage(sweep, "s3://b/p/") == "s3://b/p/"  # object storage: any node's
    with pytest.raises(SweepError, match=r"ftp://b/p.* s3://bucket/prefix"):
        jobs.job_storage(sweep, "ftp://b/p")
    assert jobs.job_storage(sweep, "/shared/runs") == "/shared/runs"
    pack = jobs.package(sweep_file, sweep, tmp_path)
    extra = {"pip": ["a"], "env_vars": {"HF_HOME": "/x"}}
    env = jobs.runtime_env(pack, sweep, extra=extra, pip=["b"], image="img:1")
    assert env["working_dir"] == str(tmp_path) and env["pip"] == ["a", "b"]
    assert env["image_uri"] == "img:1" and env["excludes"] == pack.excludes
    # The sweep's own `submit` section comes first; the file and the command line add to it.
    raw = yaml.safe_load(sweep_file.read_text())
    raw["submit"] = {"pip": ["s"], "image": "sweep:1", "env_vars": {"HF_HOME": "/s", "A": "1"}}
    sweep_file.write_text(yaml.safe_dump(raw))
    named = load_sweep(sweep_file)
    env = jobs.runtime_env(pack, named, extra=extra, pip=["b"])
    assert env["pip"] == ["s", "a", "b"] and env["image_uri"] == "sweep:1"
    assert env["env_vars"] == {"HF_HOME": "/x", "A": "1"}
    assert jobs.runtime_env(pack, named, image="cli:2")["image_uri"] == "cli:2"
    raw["submit"]["env_vars"] = {"HF_TOKEN": "hf_x"}
    sweep_file.write_text(yaml.safe_dump(raw))
    with pytest.raises(SweepError, match=r"submit\.env_vars: .*HF_TOKEN: looks like a secret"):
        load_sweep(sweep_file)
    with pytest.raises(SweepError, match=r"env_vars\.WANDB_API_KEY: looks like a secret"):
        jobs.runtime_env(pack, sweep, extra={"env_vars": {"WANDB_API_KEY": "k"}})
    with pytest.raises(SweepError, match="working_dir: set by raysoup submit"):
        jobs.runtime_env(pack, sweep, extra={"working_dir": "."})
    command = jobs.entrypoint(pack, "/shared/my runs")
    assert command == "raysoup run sweep.yaml --storage '/shared/my runs' --stage-inputs"


def test_a_jobs_inputs_are_copied_into_its_run_directory_and_read_there(tmp_path):
    root = tmp_path / "proj"
    sweep_file = project(root)
    raw = yaml.safe_load(sweep_file.read_text())
    raw["evaluate"]["sets"] = [{"name": "held", "path": "data/eval.jsonl"}]
    sweep_file.write_text(yaml.safe_dump(raw))
    before = (root / "data" / "train.jsonl").read_bytes()
    storage = tmp_path / "runs"
    staged = stage_inputs(sweep_file, load_sweep(sweep_file), str(storage))
    inputs = storage / "remote" / "inputs" / "data"
    assert staged.data.train == str(inputs / "train.jsonl")
    assert staged.data.eval == str(inputs / "eval.jsonl")
    assert staged.evaluate.sets[0].path == str(inputs / "eval.jsonl")
    assert (
        (inputs / "train.jsonl").read_bytes() == before == (root / "data/train.jsonl").read_bytes()
    )
    again = stage_inputs(sweep_file, load_sweep(sweep_file), str(storage))  # a resubmission
    assert again == staged
    (root / "data" / "train.jsonl").write_bytes(before[:-200])
    with pytest.raises(SweepError, match=r"data\.train: .* differs from .*inputs/data/train"):
        stage_inputs(sweep_file, load_sweep(sweep_file), str(storage))
    assert (inputs / "train.jsonl").read_bytes() == before  # the run's copy is never changed


def test_the_token_is_found_where_ray_keeps_it(tmp_path, monkeypatch):
    # A copy of the environment: `use_cluster` sets variables itself, and none may outlive
    # the test (monkeypatch restores only what it changed).
    monkeypatch.setattr(os, "environ", dict(os.environ))
    for name in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_AUTH_MODE", "RAY_ADDRESS"):
        os.environ.pop(name, None)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert session.auth_token() == (None, None)
    (tmp_path / ".ray").mkdir()
    (tmp_path / ".ray" / "auth_token").write_text("home\n")
    assert session.auth_token() == ("home", "~/.ray/auth_token")
    (tmp_path / "t").write_text("file")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "t"))
    assert session.auth_token() == ("file", "RAY_AUTH_TOKEN_PATH")
    monkeypatch.setenv("RAY_AUTH_TOKEN", "env")
    assert session.auth_token() == ("env", "RAY_AUTH_TOKEN")
    # Joining a cluster with a token at hand puts Ray's client in token mode (it sends none
    # otherwise), unless the user chose a mode.
    session.use_cluster("head:6379")
    assert os.environ["RAY_ADDRESS"] == "head:6379" and os.environ["RAY_AUTH_MODE"] == "token"
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    session.use_cluster(None)
    assert os.environ["RAY_AUTH_MODE"] == "disabled"
    monkeypatch.delenv("RAY_AUTH_MODE")
    monkeypatch.delenv("RAY_AUTH_TOKEN")
    monkeypatch.delenv("RAY_AUTH_TOKEN_PATH")
    (tmp_path / ".ray" / "auth_token").unlink()
    session.use_cluster(None)
    assert "RAY_AUTH_MODE" not in os.environ
    monkeypatch.delenv("RAY_ADDRESS")
    monkeypatch.delenv("RAY_API_SERVER_ADDRESS", raising=False)
    assert jobs.cluster_address() == jobs.DEFAULT_ADDRESS
    monkeypatch.setenv("RAY_ADDRESS", "head:8265")
    assert jobs.cluster_address() == "http://head:8265"
    assert jobs.cluster_address("https://x") == "https://x"


# -- a real cluster on loopback ------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """`ray start --head` (token auth on) and a second node, one CPU each: the dashboard's URL,
    the environment that holds the token (its path, as on a user's machine), the two nodes'
    ids and the head's address."""
    root = tmp_path_factory.mktemp("cluster")
    token = root / "token"
    token.write_text(os.urandom(16).hex())
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    env.pop("RAY_ADDRESS", None)
    env |= {
        "PATH": f"{BIN}{os.pathsep}{env['PATH']}",  # the job runs `raysoup` from this venv
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN_PATH": str(token),
        "RAY_USAGE_STATS_ENABLED": "0",
    }
    port, dashboard = free_port(), free_port()
    # Short: Ray's socket paths under it must fit a Unix socket name (107 bytes).
    temp = Path(tempfile.mkdtemp(prefix="rs-", dir="/tmp"))
    common = ["--num-cpus=1", f"--temp-dir={temp}", "--disable-usage-stats"]
    # Two nodes on one machine: each its own agent ports (the defaults would clash).
    agents = [
        [
            f"--dashboard-agent-listen-port={free_port()}",
            f"--dashboard-agent-grpc-port={free_port()}",
            f"--metrics-export-port={free_port()}",
            f"--runtime-env-agent-port={free_port()}",
        ]
        for _ in range(2)
    ]
    head = [
        str(BIN / "ray"),
        "start",
        "--head",
        f"--port={port}",
        "--dashboard-host=127.0.0.1",
        f"--dashboard-port={dashboard}",
        "--include-dashboard=true",
        *common,
        *agents[0],
    ]
    second = [str(BIN / "ray"), "start", f"--address=127.0.0.1:{port}", *common, *agents[1]]
    sessions = []
    try:
        for command in (head, second):
            # Twice at most: on a loaded machine `ray start`'s first call to the head can pass
            # Ray's own 30-second deadline ("Failed to get node info: Deadline Exceeded").
            for _ in range(2):
                started = subprocess.Popen(
                    command,
                    env=env,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    text=True,
                    start_new_session=True,  # every process it starts is in this session
                )
                sessions.append(started.pid)
                output = started.communicate(timeout=120)[0]
                if started.returncode == 0:
                    break
                kill_sessions([started.pid])
            assert started.returncode == 0, output[-3000:]
        url = f"http://127.0.0.1:{dashboard}"
        client_env = {k: v for k, v in env.items() if k != "RAY_AUTH_MODE"}
        nodes = _wait_for_nodes(url, client_env, 2)
        yield SimpleNamespace(url=url, env=client_env, nodes=nodes, head=f"127.0.0.1:{port}")
    finally:
        # Only this cluster's processes (`ray stop` would stop every Ray on the machine).
        kill_sessions(sessions)
        shutil.rmtree(temp, ignore_errors=True)


def kill_sessions(sessions: list[int]) -> None:
    """Kill every process in the given sessions (Ray renames its processes, so their command
    lines do not say which cluster they serve; their session does)."""
    for entry in Path("/proc").iterdir():
        try:
            stat = (entry / "stat").read_text()
            if entry.name.isdigit() and int(stat.rsplit(")", 1)[1].split()[3]) in sessions:
                os.kill(int(entry.name), signal.SIGKILL)
        except (OSError, ValueError, IndexError):
            continue


def _wait_for_nodes(url: str, env: dict, count: int) -> set[str]:
    code = (
        "import ray, json; ray.init(address='auto', logging_level='ERROR'); "
        "print(json.dumps([n['NodeID'] for n in ray.nodes() if n['Alive']]))"
    )
    for _ in range(60):
        done = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
        )
        nodes = json.loads(done.stdout.strip().splitlines()[-1]) if done.returncode == 0 else []
        if len(nodes) >= count:
            return set(nodes)
        time.sleep(1)
    raise RuntimeError(f"the cluster at {url} did not reach {count} nodes: {done.stderr[-2000:]}")


def started_on(run: Path, trials: int, deadline_s: float = 300) -> list[str]:
    """The nodes the run's first `trials` trials started on, read from their `attempts.jsonl`
    as the job writes them (waiting for them up to `deadline_s`)."""
    end = time.monotonic() + deadline_s
    while True:
        lines = [
            json.loads(line)
            for attempts in sorted(run.glob("tune/*/attempts.jsonl"))
            for line in attempts.read_text().split("\n")[:-1]  # whole lines only
        ]
        if len(lines) >= trials or time.monotonic() > end:
            assert len(lines) >= trials, f"{len(lines)} of {trials} trials started in {run}"
            return [line["node_id"] for line in lines]
        time.sleep(1)


def raysoup(*args: str, env: dict, cwd: Path | None = None, timeout: int = 600):
    return subprocess.run(
        [str(BIN / "raysoup"), *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.ray
def test_without_the_token_the_cluster_is_refused_in_raysoups_words(cluster, tmp_path):
    url, env = cluster.url, cluster.env
    bare = {k: v for k, v in env.items() if not k.startswith("RAY_AUTH")} | {"HOME": str(tmp_path)}
    done = raysoup("jobs", "list", "--address", url, env=bare)
    assert done.returncode == 1, done.stderr
    assert f"error: the Ray cluster at {url} wants a token and this machine has none" in done.stderr
    assert "Traceback" not in done.stderr
    wrong = bare | {"RAY_AUTH_TOKEN": "0" * 32}
    done = raysoup("jobs", "list", "--address", url, env=wrong)
    assert done.returncode == 1 and "refused the token from RAY_AUTH_TOKEN" in done.stderr
    done = raysoup("jobs", "status", "raysoup-nosuch", "--address", url, env=env)
    assert done.returncode == 1 and "no job 'raysoup-nosuch' on this cluster" in done.stderr


@pytest.mark.ray
def test_a_submitted_sweep_runs_on_both_nodes_and_jobs_lists_logs_and_stops(cluster, tmp_path):
    url, env, nodes = cluster.url, cluster.env, cluster.nodes
    sweep_file = project(tmp_path / "proj")
    storage = tmp_path / "runs"
    submit = ["submit", "sweep.yaml", "--address", url, "--storage", str(storage), "--follow"]
    done = raysoup(*submit, env=env, cwd=sweep_file.parent)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    job = done.stdout.splitlines()[0]
    assert job.startswith("raysoup-remote-")
    assert "Leaderboard" in done.stdout or "leaderboard" in done.stdout.lower()
    trials = pd.read_parquet(storage / "remote" / "trials.parquet")
    assert list(trials["status"]) == ["done", "done"]
    # Where they ran is recorded (which node is up to Tune: the second trial may reuse the
    # first one's process when that one finishes before the other node's worker starts).
    assert set(trials["node_id"]) <= nodes and trials["node_id"].notna().all()
    assert not (tmp_path / "proj" / "runs").exists()  # nothing written into the project
    # The run directory holds its inputs: it resumes from here, the job's copy of the
    # working directory aside.
    recorded = load_sweep(storage / "remote" / "sweep.yaml")
    assert recorded.data.train == str(storage / "remote" / "inputs" / "data" / "train.jsonl")
    resumed = raysoup(
        "resume", str(storage / "remote"), "--address", cluster.head, env=env, cwd=tmp_path
    )
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    again = pd.read_parquet(storage / "remote" / "trials.parquet")
    assert list(again["attempts"]) == [1, 1]  # nothing trained again

    # A sweep that fails on the cluster: `--follow` exits with its exit code (2: a record
    # lacks its completion, found by the job's checks before any training).
    broken = project(tmp_path / "broken", name="broken")
    (broken.parent / "data" / "train.jsonl").write_text('{"prompt": "1+1="}\n' * 50)
    done = raysoup(
        "submit", "sweep.yaml", "--address", url, "--storage", str(storage), "--follow",
        env=env, cwd=broken.parent,
    )  # fmt: skip
    assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-2000:]
    assert "completion" in done.stdout and "FAILED" in done.stderr
    failed = done.stdout.splitlines()[0]
    train = {"lr": 3e-3, "max_steps": 100_000, "batch_size": 8, "seq_len": 24, "eval_every": 1000}
    longer = project(tmp_path / "long", name="long", train=train, checkpoint={"every": 1000})
    done = raysoup(
        "submit",
        "sweep.yaml",
        "--address",
        url,
        "--storage",
        str(storage),
        env=env,
        cwd=longer.parent,
    )
    assert done.returncode == 0, done.stderr
    second = done.stdout.strip()
    listed = raysoup("jobs", "list", "--address", url, env=env | {"COLUMNS": "200"})
    assert listed.returncode == 0, listed.stderr
    rows = {line.split()[1]: line for line in listed.stdout.splitlines() if "raysoup-" in line}
    assert "SUCCEEDED" in rows[job] and "remote" in rows[job]
    assert "FAILED" in rows[failed] and "broken" in rows[failed]
    assert second in rows and "long" in rows[second]
    logs = raysoup("jobs", "logs", job, "--address", url, env=env)
    assert logs.returncode == 0 and "remote" in logs.stdout
    # Ctrl-C while following stops the following, not the job. Ctrl-C in a terminal reaches a
    # foreground process, whose SIGINT is not ignored; a test runner started in the background
    # by a script passes SIGINT on ignored, so the follower sets it back before it starts.
    follow = [str(BIN / "raysoup"), "jobs", "logs", second, "--follow", "--address", url]
    as_in_a_terminal = (
        "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
        "os.execv(sys.argv[1], sys.argv[1:])"
    )
    follower = subprocess.Popen(
        [sys.executable, "-c", as_in_a_terminal, *follow],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    # Ctrl-C once it follows (its first line is out), not while it still imports.
    assert select.select([follower.stdout], [], [], 120)[0], "the follower printed nothing"
    assert follower.stdout.readline()
    follower.send_signal(signal.SIGINT)
    _, err = follower.communicate(timeout=60)
    assert follower.returncode == 130, err
    assert f"stopped following; job {second} goes on" in err and "Traceback" not in err
    status = raysoup("jobs", "status", second, "--address", url, env=env)
    assert "RUNNING" in status.stdout or "PENDING" in status.stdout, status.stdout
    # Its trials never end while the test runs, and each takes its node's one CPU: the second
    # starts on the other node, whatever the load.
    assert set(started_on(storage / "long", trials=2)) == nodes  # one trial on each node
    stopped = raysoup("jobs", "stop", second, "--address", url, env=env)
    assert stopped.returncode == 0 and "STOPPED" in stopped.stdout, stopped.stderr
    status = raysoup("jobs", "status", second, "--address", url, env=env)
    assert "STOPPED" in status.stdout and str(storage / "long") in status.stdout
