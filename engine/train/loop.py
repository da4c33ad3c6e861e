"""The training loop of one trial, independent of how it is launched.

It talks to its launcher only through a `Session` (report metrics and checkpoints, find the
checkpoint to resume from), so a Tune function trial and a Ray Train worker run the same code.
"""

from __future__ import annotations

import math
import random
import resource
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from engine.core import models
from engine.core.batches import autocast, collate, mean_loss
from engine.evaluate.local import LocalScorer
from engine.evaluate.sets import sweep_sets
from engine.prepare.splits import load_split
from sweeps import Sweep
from sweeps.config import DEFAULT_TASK


class Session(Protocol):
    """How the loop talks to its launcher. `report` may move the checkpoint folder away."""

    def report(self, metrics: dict, checkpoint: Path | None = None) -> None: ...

    def restore_dir(self) -> Path | None: ...


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


def train(spec: TrialSpec, session: Session) -> dict:
    """Fine-tune, evaluate every `eval_every` steps, checkpoint every `checkpoint.every` steps."""
    cfg, trust = spec.sweep.train, spec.sweep.model.trust_remote_code
    seed_everything(spec.seed)
    data = load_split(spec.data_dir, "train", spec.data_size)
    evals = load_split(spec.data_dir, "eval")
    tokenizer = models.load_tokenizer(spec.model_path, spec.sweep.model.trust_remote_code)
    model = models.load_for_training(
        spec.model_path,
        spec.sweep.finetune.method,
        spec.sweep.finetune.lora,
        spec.sweep.model.trust_remote_code,
    )
    device = _device(spec.sweep)
    model.to(device)
    score = selection_scorer(spec, device)
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=cfg.lr, weight_decay=cfg.weight_decay
    )
    n = len(data["input_ids"])
    per_step = cfg.batch_size * cfg.grad_accum
    total = cfg.max_steps or max(1, math.ceil(cfg.epochs * n / per_step))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _schedule(cfg, total))
    step, tokens = _restore(session, model, optimizer, scheduler)
    batches = _batch_order(n, per_step, spec.seed)
    pad = tokenizer.pad_token_id
    started, losses, last = time.time(), [], {}
    while step < total:
        model.train()
        for micro in np.array_split(batches(step), cfg.grad_accum):
            batch = collate(data, micro, cfg.seq_len, pad, device, cfg.truncation == "left")
            tokens += int(batch["attention_mask"].sum())  # real tokens, padding excluded
            with autocast(cfg.precision, device):
                loss = model(**batch).loss
            (loss / cfg.grad_accum).backward()
            losses.append(loss.item())
        if cfg.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        save = step % spec.sweep.checkpoint.every == 0 or step == total
        if save or step % cfg.eval_every == 0:
            last = {
                "name": spec.name,
                "step": step,
                "total_steps": total,
                "train_loss": float(np.mean(losses)),
                "eval_loss": mean_loss(model, evals, cfg, pad, device),
                "examples_seen": step * per_step,
                "tokens_seen": tokens,
                "data_size": n,
                "epoch": step * per_step / n,
                "seconds": round(time.time() - started, 2),
            }
            last["eval_ppl"] = math.exp(min(last["eval_loss"], 50.0))
            if score is not None:
                scored = time.time()
                last[spec.sweep.metric] = score(model, spec.model_path, trust)
                last["metric_seconds"] = round(time.time() - scored, 2)
            last["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            losses = []
            _report(session, last, model, tokenizer, optimizer, scheduler, save)
    return last


def selection_scorer(spec: TrialSpec, device: torch.device) -> LocalScorer | None:
    """Scores the trial's model on its task's selection set by the sweep's `metric`, when that
    is an evaluation metric (accuracy, exact match, ...) rather than one training reports."""
    sweep = spec.sweep
    if not sweep.metric_is_evaluated():
        return None
    sets = [s for s in sweep_sets(sweep) if s.name == spec.task and s.split == "selection"]
    return LocalScorer(sets, sweep.metric, device, sweep.train.precision, sweep.evaluate.batch_size)


def _device(sweep: Sweep) -> torch.device:
    if sweep.resources.gpus_per_trial > 0 and torch.cuda.is_available():
        return torch.device("cuda")
    torch.set_num_threads(max(1, int(sweep.resources.cpus_per_trial)))
    return torch.device("cpu")


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
    session: Session, metrics: dict, model, tokenizer, optimizer, scheduler, save: bool
) -> None:
    if not save:
        session.report(metrics)
        return
    state = {
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "step": metrics["step"],
        "tokens_seen": metrics["tokens_seen"],
    }
    with tempfile.TemporaryDirectory(prefix="raysoup-ckpt-") as tmp:
        # A folder inside the temporary one: the session may move it away (to publish it).
        folder = Path(tmp) / "checkpoint"
        models.save_checkpoint(model, tokenizer, folder, state, metrics)
        session.report(metrics, checkpoint=folder)


def _restore(session: Session, model, optimizer, scheduler) -> tuple[int, int]:
    """The step and the tokens seen so far: (0, 0), or those of the checkpoint resumed from."""
    folder = session.restore_dir()
    if folder is None:
        return 0, 0
    models.load_checkpoint_weights(model, folder)
    state = models.load_trainer_state(folder)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    return int(state["step"]), int(state.get("tokens_seen", 0))
