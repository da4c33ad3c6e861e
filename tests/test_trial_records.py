"""What a trial leaves in its folder (`engine/train/records.py`) and the trial table read from
those folders: complete checkpoints only, finished trials found under any id, and a failed
trial that changes nothing about the others' rows or the merges planned from them."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from engine.core.models import TRIAL_INFO
from engine.core.rundir import RunDir
from engine.merge.planner import plan_jobs
from engine.train import records
from engine.train.axes import identities
from engine.train.experiment import unfinished
from engine.train.table import trials_table
from sweeps import parse_sweep
from tests.conftest import DEMO_DATA

SIZES = {"default": {"50": 50, "100": 100}}


def sweep_of_four():
    return parse_sweep(
        {
            "name": "records",
            "model": {"preset": "tiny-random"},
            "data": {"train": str(DEMO_DATA / "add" / "train.jsonl")},
            "train": {"max_steps": 4},
            "data_scale": [50, 100],
            "seeds": [0, 1],
            "merge": [{"type": "soup"}],
        }
    )


def checkpoint(tmp_path: Path, step: int, total: int = 4) -> Path:
    """A finished checkpoint folder as the training loop saves it (weights stand-in)."""
    folder = tmp_path / f"made-{step}-{len(list(tmp_path.iterdir()))}"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"w" * (100 + step))
    info = {"step": step, "total_steps": total, "eval_loss": 1.0 / step}
    (folder / TRIAL_INFO).write_text(json.dumps(info))
    return folder


def test_only_checkpoints_with_a_matching_marker_count(tmp_path):
    trial = tmp_path / "tune" / "abc_00000-s0"
    records.record_attempt(trial, "s0", None)
    first = records.publish(checkpoint(tmp_path, 2), trial, 2)
    second = records.publish(checkpoint(tmp_path, 4), trial, 4)
    assert records.complete_checkpoints([trial]) == [first, second]
    (second / "model.safetensors").write_bytes(b"cut")  # a file that is not what was saved
    assert records.complete_checkpoints([trial]) == [first]
    (first / records.MARKER).unlink()  # no marker: never complete
    assert records.complete_checkpoints([trial]) == []


def test_a_stopped_trial_is_its_checkpoint_at_the_stop_even_with_later_ones(tmp_path):
    # A worker group can publish a checkpoint after the step its scheduler stopped it at.
    trial = tmp_path / "tune" / "abc_00000-s0"
    records.record_attempt(trial, "s0", None)
    at_stop = records.publish(checkpoint(tmp_path, 2), trial, 2)
    for step in (3, 4):  # 4 is the last step: alone it would make the trial done
        records.publish(checkpoint(tmp_path, step), trial, step)
    records.record_stop(trial, 2, "asha", {"step": 2})
    assert records.complete_checkpoints([trial]) == [at_stop]
    record = records.read_trial([trial])
    assert (record.status, record.checkpoint, record.metrics["step"]) == ("stopped", at_stop, 2)
    assert records.is_finished([trial])


def test_a_paused_group_trial_starts_again_at_its_pause_and_takes_the_pause_up_once(tmp_path):
    # A worker group can save checkpoints past the report its scheduler paused it at; its
    # trial's next start deletes them, and a later start (after a driver was killed, say)
    # keeps everything the continued trial saved since.
    trial = tmp_path / "tune" / "abc_00000-s0"
    records.record_attempt(trial, "s0", None)
    at_pause = records.publish(checkpoint(tmp_path, 2, total=6), trial, 2)
    for step in (4, 6):  # 6 is the last step: kept, it would make the trial done
        records.publish(checkpoint(tmp_path, step, total=6), trial, step)
    assert records.back_to_pause([trial]) is None  # never paused
    assert records.record_pause(trial, 2) and not records.record_pause(trial, 2)
    pause = records.back_to_pause([trial])
    assert (pause["step"], pause["discarded"]) == (2, [4, 6])
    assert records.complete_checkpoints([trial]) == [at_pause]
    assert not records.is_finished([trial])
    records.record_attempt(trial, "s0", 2, pause=pause)
    assert records.read_attempts(trial)[-1]["discarded"] == [4, 6]
    continued = [records.publish(checkpoint(tmp_path, s, total=6), trial, s) for s in (4, 6)]
    assert records.back_to_pause([trial]) is None  # taken up by the attempt above
    assert records.complete_checkpoints([trial]) == [at_pause, *continued]
    assert records.record_pause(trial, 4)  # a new pause, at another step: a new id
    assert records.back_to_pause([trial])["step"] == 4
    assert records.complete_checkpoints([trial]) == [at_pause, continued[0]]


def test_a_failed_trial_keeps_data_sizes_whole_and_merge_names_unchanged(tmp_path):
    sweep, run = sweep_of_four(), RunDir(tmp_path / "run")
    trials = identities(sweep, SIZES)
    for number, trial in enumerate(trials):
        folder = run.tune / records.folder_name(f"abc_{number:05d}", trial.name)
        records.record_attempt(folder, trial.name, None)
        if number == 0:  # the first trial fails before any checkpoint
            (folder / "error.txt").write_text("Failure # 1\nTraceback ...\nValueError: broken\n")
            continue
        records.publish(checkpoint(tmp_path, 4), folder, 4)
    table = trials_table(run, sweep, SIZES)
    assert list(table["status"]) == ["error", "done", "done", "done"]
    assert table.loc[0, "error"] == "ValueError: broken"
    assert pd.api.types.is_integer_dtype(table["data_size"]), table["data_size"]
    names = {job.candidate for job in plan_jobs(sweep, table)}
    assert names == {"soup/n50", "soup/n100"}, names
    assert [cell["seed"] for cell in unfinished(sweep, run, SIZES)] == [0]


def test_a_trial_started_again_under_a_new_id_is_one_row_with_its_checkpoints(tmp_path):
    sweep, run = sweep_of_four(), RunDir(tmp_path / "run")
    trial = identities(sweep, SIZES)[0]
    old = run.tune / records.folder_name("abc_00000", trial.name)
    records.record_attempt(old, trial.name, None)
    kept = records.publish(checkpoint(tmp_path, 2), old, 2)
    new = run.tune / records.folder_name("def_00000", trial.name)
    records.record_attempt(new, trial.name, 2)
    final = records.publish(checkpoint(tmp_path, 4), new, 4)
    row = trials_table(run, sweep, SIZES).iloc[0]
    assert (row["status"], row["attempts"], row["checkpoint"]) == ("done", 2, str(final))
    assert list(row["checkpoints"]) == [str(kept), str(final)]
