"""The training loop of one trial, independent of how it is launched.

It talks to its launcher only through a `Session` (report metrics and checkpoints, find the
checkpoint to resume from), so a Tune function trial and a Ray Train worker run the same code.
"""

from __future__ import annotations

import math
import random
import resource
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from engine.core import models
from engine.core.batches import mean_loss
from engine.evaluate.local import LocalScorer
from engine.evaluate.sets import sweep_sets
from engine.prepare.splits import load_split
from engine.train.hft import HalfTuning
from engine.train.losses import build_loss, preference_metrics
from engine.train.parallel import Single
from sweeps import Sweep
from sweeps.config import DEFAULT_TASK


class Session(Protocol):
    """How the loop talks to its launcher. `report` may move the checkpoint folder away."""

    def report(self, metrics: dict, checkpoint: Path | None = None) -> None: ...

    def restore_dir(self) -> Path | None: ...

    # A session whose trial can be stopped from outside while it trains (a worker group's)
    # also has `stopping() -> bool`.


@dataclass(frozen=True)
class TrialSpec:
    """Everything one trial needs: the sweep with its values filled in, and where things are."""

    sweep: Sweep
    model_path: str
    data_dir: Path
    data_size: int | None
    seed: int
    task: str = DEFAULT_TASK
    name: str = "trial"


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def train(spec: TrialSpec, session: Session, parallel: Single | None = None) -> dict:
    """Fine-tune, evaluate every `eval_every` steps, checkpoint every `checkpoint.every` steps.

    `parallel` says how this process trains: alone (the default), or as one rank of a worker
    group that splits every step's examples between its ranks (`engine.train.parallel`).
    """
    cfg, trust = spec.sweep.train, spec.sweep.model.trust_remote_code
    par = parallel or Single(spec.sweep)
    seed_everything(spec.seed)
    data = load_split(spec.data_dir, "train", spec.data_size)
    evals = load_split(spec.data_dir, "eval")
    tokenizer = models.load_tokenizer(spec.model_path, spec.sweep.model.trust_remote_code)
    device = par.device()
    model = models.load_for_training(
        spec.model_path,
        spec.sweep.finetune,
        device,
        spec.sweep.model.trust_remote_code,
        spec.sweep.model.attn_implementation,
        cfg.gradient_checkpointing,
    )
    score = selection_scorer(spec, device) if par.evaluates else None
    optimizer = par.make_optimizer(
        [p for p in model.parameters() if p.requires_grad], cfg.lr, cfg.weight_decay
    )
    n = len(data["input_ids"])
    per_step = cfg.batch_size * cfg.grad_accum * par.world
    total = cfg.max_steps or max(1, math.ceil(cfg.epochs * n / per_step))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _schedule(cfg, total))
    forward = par.prepare(model, optimizer, scheduler)
    step, tokens = _restore(session, par)
    half = None
    if spec.sweep.finetune.method == "hft":
        half = HalfTuning(model, spec.sweep.finetune.hft, spec.seed, total)
    batches = _batch_order(n, per_step, spec.seed)
    pad = tokenizer.pad_token_id
    objective = build_loss(spec.sweep, spec.data_dir, n, pad, device)
    pairs = spec.sweep.data.format == "preference"
    started, losses, last = time.time(), [], {}
    trained_s, trained_tokens = 0.0, 0  # time in training steps (not evaluating), and tokens
    stopping = getattr(session, "stopping", lambda: False)
    while step < total:
        tick = time.perf_counter()
        if half is not None:
            half.apply(step)
        forward.train()
        mine = np.array_split(batches(step), par.world)[par.rank]
        micro = [objective.batch(data, idx) for idx in np.array_split(mine, cfg.grad_accum)]
        counts = np.sum([objective.counts(b) for b in micro], axis=0).tolist()
        real = sum(int(b["attention_mask"].sum()) for b in micro)
        *totals, real, stop = par.total(*counts, real, float(stopping()))
        if stop:  # the scheduler stopped the trial: every rank of a group learns it here
            break
        summed = 0.0
        for batch in micro:
            with par.autocast(cfg.precision, device):
                loss = objective.loss(forward, batch, totals)
            # The step's gradient is that of its mean over every rank's rows (tokens or
            # pairs); DDP averages the ranks' gradients, so each adds world times.
            par.backward(loss * par.world)
            summed += loss.item()
        tokens += int(real)  # real tokens, padding excluded
        losses.append(par.total(summed)[0])
        par.step(cfg.max_grad_norm)
        trained_s += time.perf_counter() - tick
        trained_tokens += int(real)
        step += 1
        save = step % spec.sweep.checkpoint.every == 0 or step == total
        if save or step % cfg.eval_every == 0:
            last = {}
            if par.evaluates:
                last = {
                    "name": spec.name,
                    "step": step,
                    "total_steps": total,
                    "train_loss": float(np.mean(losses)),
                    "eval_loss": mean_loss(par.module, evals, cfg, pad, device),
                    "examples_seen": step * per_step,
                    "tokens_seen": tokens,
                    "data_size": n,
                    "epoch": step * per_step / n,
                    "seconds": round(time.time() - started, 2),
                    "workers": par.world,
                    # the worker group's throughput: every rank's real tokens per second
                    "tokens_per_s": round(trained_tokens / max(trained_s, 1e-9), 1),
                }
                if device.type == "cuda":
                    last["gpu_peak_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
                if half is not None:
                    last["trainable_share"] = round(half.share, 4)
                last["eval_ppl"] = math.exp(min(last["eval_loss"], 50.0))
                if pairs:
                    last.update(
                        preference_metrics(
                            par.module, evals, spec.sweep, spec.data_dir, pad, device
                        )
                    )
                if score is not None:
                    scored = time.time()
                    last[spec.sweep.metric] = score(par.module, spec.model_path, trust)
                    last["metric_seconds"] = round(time.time() - scored, 2)
                last["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            if par.rank != 0:
                last = {}
            losses = []
            _report(session, par, last, step, tokens, tokenizer, save)
    return last


def selection_scorer(spec: TrialSpec, device: torch.device) -> LocalScorer | None:
    """Scores the trial's model on its task's selection set by the sweep's `metric`, when that
    is an evaluation metric (accuracy, exact match, ...) rather than one training reports."""
    sweep = spec.sweep
    if not sweep.metric_is_evaluated():
        return None
    sets = [s for s in sweep_sets(sweep) if s.name == spec.task and s.split == "selection"]
    batching = (sweep.evaluate.batch_size, sweep.evaluate.batch_tokens)
    return LocalScorer(sets, sweep.metric, device, sweep.train.precision, *batching)


def _schedule(cfg, total: int):
    warmup, decay = cfg.warmup_steps, max(1, total - cfg.warmup_steps)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        progress = min(1.0, (step - warmup) / decay)
        if cfg.schedule == "linear":
            return 1.0 - progress
        if cfg.schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        return 1.0

    return factor


def _batch_order(n: int, per_step: int, seed: int):
    """Indices of the examples of optimizer step `step`: a fresh seeded permutation per epoch.

    A pure function of (seed, step), so a resumed trial sees exactly the batches it would have.
    """

    def batch(step: int) -> np.ndarray:
        start = step * per_step
        epoch, offset = divmod(start, n)
        out = []
        while len(out) < per_step:
            order = np.random.default_rng([seed, epoch]).permutation(n)
            take = order[offset : offset + per_step - len(out)]
            out.extend(take.tolist())
            epoch, offset = epoch + 1, 0
        return np.asarray(out)

    return batch


def _report(
    session: Session, par: Single, metrics: dict, step: int, tokens: int, tokenizer, save: bool
) -> None:
    if not save:
        session.report(metrics)
        return
    state = {"step": step, "tokens_seen": tokens}
    with par.staging(step) as folder:
        par.save(folder, tokenizer, state, metrics)
        par.barrier()  # every rank's part is written
        session.report(metrics, checkpoint=folder if par.rank == 0 else None)


def _restore(session: Session, par: Single) -> tuple[int, int]:
    """The step and the tokens seen so far: (0, 0), or those of the checkpoint resumed from."""
    folder = session.restore_dir()
    if folder is None:
        return 0, 0
    state = par.restore(folder)
    return int(state["step"]), int(state.get("tokens_seen", 0))
