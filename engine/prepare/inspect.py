"""What preflight learns from each task's data before Ray starts, in seconds.

For a training file of at most `LOCAL_ROWS` rows: the selection stages run in this process
(`select_locally`, the same stages as in prepare), so the rows they keep are counted exactly;
the held-out selection split is counted by the same example keys as in prepare; the data-scale
sizes are checked against what is left for training, naming the task; a sample of examples is
tokenized and its lengths are checked against `train.seq_len` (`train.truncation` says whether
cut examples refuse the sweep); and exact copies of examples shared by the training, selection
and test files are counted. Larger files are checked by their row counts, and prepare does the
rest.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from engine.core.encode import IGNORE, encode_examples, text_encoder
from engine.core.files import count_rows, line_problem, read_rows
from engine.core.findings import Findings
from engine.prepare.checks import task_size_problems, where
from engine.prepare.keys import KEY_BUCKETS, example_keys
from engine.prepare.selection.pipeline import select_locally
from sweeps import Sweep
from sweeps.config import DataConfig
from sweeps.space import Space

LOCAL_ROWS = 20_000  # training files up to this size are selected and counted before Ray starts
SAMPLE_ROWS = 2_000  # examples whose token lengths are measured


def inspect_data(sweep: Sweep, tokenizer: str | None) -> Findings:
    """Every task's rows, selection counts, usable sizes, lengths and overlaps; `tokenizer` is a
    local model folder to measure lengths with (None: lengths are left to prepare)."""
    found = Findings()
    for task in sweep.task_names():
        found += _inspect_task(sweep, task, tokenizer)
    return found


def _inspect_task(sweep: Sweep, task: str, tokenizer: str | None) -> Findings:
    data, label = sweep.task_data(task), _label(sweep, task)
    if "://" in data.train:
        return Findings(notes=[f"{label}: {data.train} is read and counted in prepare"])
    rows = count_rows(data.train)
    if rows > LOCAL_ROWS:
        return Findings(
            problems=task_size_problems(sweep, task),
            notes=[
                f"{label}: {rows:,} training rows; selection and lengths are checked in prepare"
            ],
        )
    records = read_records(data.train, data.fields())
    kept, report = select_locally(
        ["\x1f".join(r) for r in records], data.select, data, _reader(data)
    )
    kept_records = [records[i] for i in kept]
    usable = len(kept) - _held_out(kept_records, data)
    found = Findings(notes=[_rows_note(label, rows, report, usable, len(kept), sweep)])
    found.problems += _size_problems(sweep, task, usable, rows, len(kept))
    if tokenizer is not None:
        found += _lengths(sweep, task, data, kept_records[:SAMPLE_ROWS], tokenizer)
    found.warnings += _overlaps(label, data, kept_records)
    return found


def read_records(path: str, fields: list[str]) -> list[tuple[str, ...]]:
    """The `fields` of every row of a data file, as text (malformed JSONL lines skipped: the
    file checks have already refused them unless `data.on_bad_line` is `skip`)."""
    if path.endswith(".jsonl"):
        with open(path, encoding="utf-8", errors="replace") as handle:
            rows = [
                json.loads(line)
                for line in handle
                if line.strip() and not line_problem(line, fields)
            ]
    else:
        rows = read_rows(path)
    return [tuple(str(row[f]) for f in fields) for row in rows]


def _reader(data: DataConfig):
    """Reads a side file (a selection stage's target sample) as texts, as prepare does."""
    return lambda path, fields: ["\n".join(r) for r in read_records(path, fields)]


def _held_out(records: list[tuple[str, ...]], data: DataConfig) -> int:
    """How many of the kept rows prepare holds out as the selection split (none with an eval
    file): those whose example key falls in the lowest `eval_fraction` of the key buckets."""
    if data.eval or not records:
        return 0
    keys = example_keys(["\x1f".join(r) for r in records], data.seed)
    return int(np.sum(keys % KEY_BUCKETS < int(round(data.eval_fraction * KEY_BUCKETS))))


def _rows_note(
    label: str, rows: int, report: list[dict], usable: int, kept: int, sweep: Sweep
) -> str:
    stages = ", ".join(f"{s['type']} -{s['rows_in'] - s['rows_out']}" for s in report)
    selected = f"; selection ({stages}) keeps {kept:,}" if report else ""
    held = f"; {kept - usable:,} held out as the selection split" if kept != usable else ""
    sizes = _sizes(sweep, usable)
    shown = f"; data sizes {', '.join(f'{n:,}' for n in sizes)}" if sizes else ""
    return f"{label}: {rows:,} training rows{selected}{held}; {usable:,} to train on{shown}"


def _sizes(sweep: Sweep, usable: int) -> list[int]:
    values = sweep.data_scale or []
    return sorted({v if isinstance(v, int) else max(1, round(v * usable)) for v in values})


def _size_problems(sweep: Sweep, task: str, usable: int, rows: int, kept: int) -> list[str]:
    if usable == 0:
        return [f"{_label(sweep, task)}: no example is left to train on ({rows} rows, {kept} kept)"]
    too_big = [n for n in _sizes(sweep, usable) if n > usable]
    if not too_big:
        return []
    held = f", {kept - usable} held out as the selection split" if kept != usable else ""
    return [
        f"data_scale: {max(too_big)} examples asked, but {_label(sweep, task)} has {usable} "
        f"to train on ({rows} rows, {kept} after selection{held})"
    ]


def _lengths(sweep: Sweep, task: str, data: DataConfig, sample: list, tokenizer: str) -> Findings:
    """Token lengths of a sample against the smallest `train.seq_len`, and what truncation
    would cut."""
    if not sample:
        return Findings()
    enc = text_encoder(tokenizer, sweep.model.trust_remote_code, True)
    tokens = encode_examples(enc, data.format, [list(c) for c in zip(*sample)])
    # A preference pair is two sequences (its prompt with each completion), each cut alike.
    ids = tokens["input_ids"] + tokens.get("rejected_ids", [])
    labels = tokens["labels"] + tokens.get("rejected_labels", [])
    total = np.array([len(x) for x in ids])
    trained = np.array([sum(t != IGNORE for t in y) for y in labels])
    seq_len = smallest(sweep.train.seq_len)
    label = _label(sweep, task)
    found = Findings(
        notes=[
            f"{label}: tokens per example (sample of {len(sample):,}): median "
            f"{int(np.median(total))}, 95th percentile {int(np.percentile(total, 95))}, longest "
            f"{total.max()}; train.seq_len {seq_len}"
        ]
    )
    found += truncation(label, total, trained, seq_len, sweep.train)
    return found


def truncation(label: str, total, trained, seq_len: int, train) -> Findings:
    """What cutting examples of `total` tokens (`trained` of them labelled, at the end) to
    `seq_len` tokens does, by `train.truncation`: a problem or a warning."""
    keep_end = train.truncation == "left"
    cut = trained > seq_len if keep_end else total > seq_len
    none_left = (trained == 0) if keep_end else (total - trained >= seq_len)
    longest = int(total.max())
    if none_left.all():
        return Findings(
            problems=[
                f"train.seq_len: {seq_len} tokens leave no trained token in any example of "
                f"{label} (the longest is {longest} tokens); raise seq_len, or set "
                "train.truncation: left to cut prompts from the start"
            ]
        )
    share = float(cut.mean())
    if share == 0:
        return Findings()
    what = "the start of their completion" if keep_end else "their end"
    message = (
        f"train.seq_len: {seq_len} tokens cut {what} off {int(cut.sum())} of {len(cut)} "
        f"examples of {label} ({share:.1%}; the longest is {longest} tokens): they lose tokens "
        "they are trained on"
    )
    if train.truncation == "error" and share > train.max_truncated:
        advice = (
            f"; raise seq_len to {longest}, set train.truncation: left to keep completions, or "
            f"train.truncation: warn to accept it (train.max_truncated {train.max_truncated:g})"
        )
        return Findings(problems=[message + advice])
    return Findings(warnings=[message])


def smallest(value) -> int:
    """The smallest value a field can take: itself, or the least of its search space."""
    if not isinstance(value, Space):
        return value
    values = value.values()
    return min(values) if values else value.bounds()[0]


def _overlaps(label: str, data: DataConfig, train: list[tuple[str, ...]]) -> list[str]:
    """Examples of the selection and test files that also stand in the training data (or in
    each other), counted as exact copies of their fields."""
    sets = {"the training data": set(train)}
    for name, path in (("the selection file", data.eval), ("the test file", data.test)):
        if path and "://" not in path and Path(path).is_file() and count_rows(path) <= LOCAL_ROWS:
            sets[name] = set(read_records(path, data.fields()))
    names = list(sets)
    found = []
    for i, first in enumerate(names):
        for second in names[i + 1 :]:
            shared = len(sets[first] & sets[second])
            if shared:
                found.append(
                    f"{label}: {shared} example(s) of {second} also stand in {first}; scores on "
                    f"{second} overstate what a model learned"
                )
    return found


def _label(sweep: Sweep, task: str) -> str:
    return f"task {task!r}" if sweep.tasks else where(sweep, task) + ".train"
