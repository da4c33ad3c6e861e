"""The fault-injection suite's shared parts: a tally of what it tried, a small sweep, a tmpfs to
fill, and `raysoup` run as a real process.

Every test that injects a fault or tries a bad input says so in the tally (`tally.injected`,
`tally.survived`, `tally.bad_input`, `tally.lost`); the suite prints the totals at the end,
and writes them to `$RAYSOUP_FAULT_REPORT` when it is set (docs/reliability.md quotes them).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from collections import Counter
from pathlib import Path

import pytest

from tests.conftest import DEMO_DATA, REPO


class Tally:
    """What the suite did: faults injected and survived, bad inputs tried, records lost."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.kinds: dict[str, Counter[str]] = {"injected": Counter(), "bad_input": Counter()}

    def injected(self, kind: str, n: int = 1) -> None:
        self.counts["faults injected"] += n
        self.kinds["injected"][kind] += n

    def survived(self, kind: str, n: int = 1) -> None:
        self.counts["faults survived"] += n

    def bad_input(self, kind: str, n: int = 1) -> None:
        self.counts["bad inputs tried"] += n
        self.kinds["bad_input"][kind] += n

    def lost(self, n: int) -> None:
        self.counts["records lost"] += n

    def summary(self) -> dict:
        order = ("faults injected", "faults survived", "bad inputs tried", "records lost")
        return {
            **{key: self.counts[key] for key in order},
            "faults by kind": dict(self.kinds["injected"]),
            "bad inputs by kind": dict(self.kinds["bad_input"]),
        }


TALLY = Tally()


@pytest.fixture
def tally() -> Tally:
    return TALLY


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    summary = TALLY.summary()
    if not any(summary[k] for k in ("faults injected", "bad inputs tried")):
        return
    terminalreporter.section("fault suite")
    for key, value in summary.items():
        terminalreporter.write_line(f"{key}: {value}")
    out = os.environ.get("RAYSOUP_FAULT_REPORT")
    if out:
        Path(out).write_text(json.dumps(summary, indent=2) + "\n")


# -- a time limit for every test -------------------------------------------------------------

BUDGET_S = 600  # a test of the default suite
SLOW_BUDGET_S = 1800  # a `slow` one


@pytest.fixture(autouse=True)
def deadline(request):
    """Fail a test that runs past its budget instead of hanging the suite: a fault that makes
    something wait for ever is what this suite looks for. (Module fixtures bound their own
    waits: `finish` and `helpers.wait` take a timeout.)"""
    budget = SLOW_BUDGET_S if request.node.get_closest_marker("slow") else BUDGET_S

    def expired(signum, frame):
        raise TimeoutError(f"{request.node.name} ran past its budget of {budget} s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(budget)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


# -- a small sweep -------------------------------------------------------------------------


def small_sweep(root: Path, name: str = "faults", **extra) -> dict:
    """A sweep of the tiny random model on 200 rows of the demo's `add` task, with an eval
    (selection) and a test file: seconds per trial on one CPU."""
    data = root / "data"
    if not data.is_dir():
        data.mkdir(parents=True)
        for split, rows in (("train", 200), ("eval", 16), ("test", 16)):
            lines = (DEMO_DATA / "add" / f"{split}.jsonl").read_text().splitlines()[:rows]
            (data / f"{split}.jsonl").write_text("\n".join(lines) + "\n")
    sweep = {
        "name": name,
        "model": {"preset": "tiny-random"},
        "data": {
            "train": str(data / "train.jsonl"),
            "eval": str(data / "eval.jsonl"),
            "test": str(data / "test.jsonl"),
            "format": "prompt_completion",
        },
        "train": {"lr": 3e-3, "max_steps": 6, "batch_size": 8, "seq_len": 24, "eval_every": 2},
        "checkpoint": {"every": 2, "keep": 2},
        "evaluate": {"batch_size": 8},
        "resources": {"max_concurrent": 1},
    }
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(sweep.get(key), dict):
            sweep[key] = {**sweep[key], **value}
        else:
            sweep[key] = value
    return sweep


def write_sweep(path: Path, sweep: dict) -> Path:
    path.write_text(json.dumps(sweep))
    return path


# -- raysoup as a process ------------------------------------------------------------------


def raysoup(*args: str, env: dict | None = None, **popen) -> subprocess.Popen:
    """`raysoup ARGS` as a process of its own (its own session, so a kill reaches the Ray it
    starts), output captured as text."""
    base = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    return subprocess.Popen(
        [sys.executable, "-m", "engine.cli", *args],
        cwd=REPO,
        env={**base, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        **popen,
    )


def finish(proc: subprocess.Popen, timeout: float) -> tuple[int, str]:
    out, _ = proc.communicate(timeout=timeout)
    return proc.returncode, out


# -- a small disk ----------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path):
    """`mount(size)` gives a fresh tmpfs of that size (`"20m"`), unmounted after the test;
    skips where mounting is not allowed (it needs root, or CAP_SYS_ADMIN)."""
    mounted: list[Path] = []

    def mount(size: str, readonly: bool = False) -> Path:
        target = tmp_path / f"disk-{uuid.uuid4().hex[:6]}"
        target.mkdir()
        options = f"size={size}" + (",ro" if readonly else "")
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(target)],
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip() or 'not allowed'})")
        mounted.append(target)
        return target

    yield mount
    for target in reversed(mounted):
        subprocess.run(["umount", "-l", str(target)], capture_output=True)


def fill(folder: Path, leave: int = 0) -> Path:
    """Fill the disk of `folder` up to `leave` bytes free with one file; returns it."""
    stats = os.statvfs(folder)
    free = stats.f_bavail * stats.f_frsize
    filler = folder / "filler.bin"
    with open(filler, "wb") as handle:
        remaining = max(0, free - leave)
        block = b"\0" * (1 << 20)
        while remaining > 0:
            try:
                remaining -= handle.write(block[: min(len(block), remaining)])
            except OSError:
                break
    return filler
