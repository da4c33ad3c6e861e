"""The streaming loop: read, combine and write tensors, a few at a time, in order.

``workers`` threads each read one item (a tensor or a row block of it) from every
input and combine it; a writer thread appends finished items to the open shard in
plan order. torch ops and file I/O release the GIL, so these overlap. torch's own
intra-op threads are set to 1 meanwhile: on a 2-core machine with other load, two
OpenMP threads per op made elementwise ops 4-6x slower than one (measured), whereas
one op per worker thread keeps both cores busy without contention (numpy, used by
array kernels, runs each op on the calling thread anyway). At most ``workers + 1``
items are in flight and two wait to be written, which bounds memory.
"""

from __future__ import annotations

import os
import queue
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager, nullcontext
from typing import Any

from merging.io import ShardedWriter

Item = tuple[str, "tuple[int, int] | None"]  # a tensor name and, optionally, a block of its rows
Loader = Callable[[Item], object]
Combiner = Callable[[Item, object], Any]  # returns a torch tensor or a numpy array
# Tests set this to slow every write down, so an interrupted merge can be observed.
DELAY_ENV = "RAYSOUP_TEST_WRITE_DELAY"


def stream(
    items: Sequence[Item],
    load: Loader,
    combine: Combiner,
    writer: ShardedWriter,
    *,
    progress: bool = False,
    workers: int = 2,
    on_loaded: Callable[[Item, object], None] | None = None,
) -> None:
    """For each item, in order: ``writer.write(name, combine(item, load(item)))``, overlapped.

    ``on_loaded(item, loaded)`` runs on the calling thread in item order (used to hash
    the input bytes as they pass).
    """
    sink = _WriterThread(writer)
    bar = _progress(progress)

    def work(item: Item):
        loaded = load(item)
        return combine(item, loaded), loaded

    with (
        _torch_threads(1),
        ThreadPoolExecutor(workers, thread_name_prefix="raysoup-merge") as pool,
        bar as shown,
    ):
        task = shown.add_task("merging", total=len(items)) if shown else None
        pending: deque[Future] = deque()
        upcoming = iter(items)
        try:
            for item in items:
                _fill(pending, pool, upcoming, work, workers + 1)
                merged, loaded = pending.popleft().result()
                if on_loaded:
                    on_loaded(item, loaded)
                sink.put(item[0], merged)
                del loaded
                if shown:
                    shown.update(task, advance=1, description=f"merging {item[0]}")
        except BaseException:
            for future in pending:
                future.cancel()
            sink.abort()
            raise
    sink.finish()


def _fill(pending: deque, pool: ThreadPoolExecutor, upcoming, work, limit: int) -> None:
    while len(pending) < limit:
        item = next(upcoming, None)
        if item is None:
            return
        pending.append(pool.submit(work, item))


@contextmanager
def _torch_threads(count: int):
    torch = sys.modules.get("torch")  # set only when torch is in use: importing it costs seconds
    if torch is None:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _progress(enabled: bool):
    if not enabled:
        return nullcontext(None)
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()
    )


class _WriterThread:
    """Writes finished tensors in order on a background thread; errors surface on the caller."""

    def __init__(self, writer: ShardedWriter):
        self.writer = writer
        self.queue: queue.Queue = queue.Queue(maxsize=2)
        self.error: BaseException | None = None
        self.delay = float(os.environ.get(DELAY_ENV, "0") or 0)
        self.thread = threading.Thread(target=self._run, name="raysoup-write", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while (item := self.queue.get()) is not None:
            if self.error is None:
                try:
                    self.writer.write(*item)
                    if self.delay:
                        time.sleep(self.delay)
                except BaseException as error:  # re-raised on the caller's thread
                    self.error = error

    def put(self, name: str, tensor: Any) -> None:
        if self.error:
            raise self.error
        self.queue.put((name, tensor))

    def abort(self) -> None:
        self.error = self.error or RuntimeError("aborted")
        self.queue.put(None)
        self.thread.join()

    def finish(self) -> None:
        self.queue.put(None)
        self.thread.join()
        if self.error:
            raise self.error
        self.writer.close()
