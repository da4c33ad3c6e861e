"""Early stops of worker-group trials.

A worker-group trial's own process waits in Ray Train's `fit` while its workers train, so when
the scheduler stops the trial nothing reaches the workers: Tune's `cleanup` cannot end the
function's thread, and ending the process leaves the group's placement group to a cleaner
that needs Ray's state API. Instead the trial's process says so to `GroupStops`, one actor per
sweep; rank 0 of the group sees it between two steps, every rank learns it in the step's own
all-reduce (`Session.stopping`), the loop ends, and Ray Train ends the group and removes its
placement group as after any finished run. `EndsItsGroup` (mixed into the trainable) does the
telling, and waits for the group before Tune goes on; `ReportsUntilStopped` keeps the group's
controller from waiting on Tune for a report Tune no longer takes.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import threading
import uuid
from dataclasses import dataclass, field

import ray
from ray.tune.integration.ray_train import TuneReportCallback
from ray.util.queue import Full

GRACE_S = 120.0  # how long a stopped trial's process waits for its group to end
PUT_S = 1.0  # how often a report waiting for Tune checks whether the trial was stopped


@ray.remote(num_cpus=0)
class GroupStops:
    """The worker groups whose trials were stopped, each by its own key (a trial's id and
    one start of its group, so a stop never reaches a later attempt of the same trial)."""

    def __init__(self) -> None:
        self.events: dict[str, asyncio.Event] = {}

    def _event(self, key: str) -> asyncio.Event:
        return self.events.setdefault(key, asyncio.Event())

    async def stop(self, key: str) -> None:
        self._event(key).set()

    async def wait(self, key: str) -> None:
        """Returns once the group's trial was stopped."""
        await self._event(key).wait()


@dataclass
class Running:
    """A worker group its trial's process waits for."""

    stops: ray.actor.ActorHandle
    key: str
    ended: threading.Event = field(default_factory=threading.Event)


LIVE: list[Running] = []  # in a trial's process: its group, while `fit` runs


def group_key(trial_id: str) -> str:
    """The key of one start of a trial's worker group."""
    return f"{trial_id}/{uuid.uuid4().hex}"


@contextlib.contextmanager
def running(stops: ray.actor.ActorHandle, key: str):
    """While the trial's worker group `key` runs: what `EndsItsGroup` stops."""
    live = Running(stops, key)
    LIVE.append(live)
    try:
        yield
    finally:
        live.ended.set()
        LIVE.remove(live)


def end_groups() -> None:
    """Stop this process's running worker group, and wait for it to end (up to `GRACE_S`)."""
    for live in list(LIVE):
        live.stops.stop.remote(live.key)
    for live in list(LIVE):
        if not live.ended.wait(GRACE_S):
            print(
                f"raysoup: the worker group {live.key} did not end within {GRACE_S:.0f} s "
                "of its trial's stop; the trial's process ends it",
                file=sys.stderr,
            )


class EndsItsGroup:
    """Mixed into the trial's Tune trainable (Tune's `wrap_function` reads `__mixins__`):
    before Tune ends the trial's process (`cleanup`) or gives it another trial
    (`reset_config`), the trial's worker group is stopped and ended."""

    def cleanup(self) -> None:
        end_groups()
        super().cleanup()

    def reset_config(self, new_config: dict) -> bool:
        end_groups()
        return super().reset_config(new_config)


class StopSeen:
    """On rank 0 of a group: whether its trial was stopped, without waiting."""

    def __init__(self, stops: ray.actor.ActorHandle, key: str) -> None:
        self.stopped = stops.wait.remote(key)

    def __call__(self) -> bool:
        ready, _ = ray.wait([self.stopped], timeout=0)
        return bool(ready)


class ReportsUntilStopped(TuneReportCallback):
    """Ray Train's callback that passes rank 0's reports on to the Tune trial, in the group's
    controller, except once the trial was stopped: Tune then takes no more reports, and a
    report waiting for room in Tune's queue (it holds one) would hold the controller, and
    the group, forever."""

    def __init__(self, stops: ray.actor.ActorHandle, key: str) -> None:
        super().__init__()
        self.stopped = StopSeen(stops, key)

    def after_report(self, run_context, metrics: list[dict], checkpoint) -> None:
        # Tune's own callback puts without a timeout; its queue is its private attribute.
        while not self.stopped():
            try:
                self._training_actor_item_queue.put(dict(metrics[0]), timeout=PUT_S)
                return
            except Full:
                continue
