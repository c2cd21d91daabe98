"""The inference worker: one thread owns the loaded model; requests reach it through a bounded queue.

Why one thread: a loaded model is one set of backend sessions and one decode loop at a time is what
the CPU (or accelerator) can do anyway, so serving concurrent requests means ordering them, not
running them in parallel. Requests that wait together and share their generation options (num_beams,
max_new_tokens: the options a batch has in common; task and text are per image) are run as one
`model.run(images, tasks, texts, **options)` batch, because the decoder is memory-bound and reads its
weights once per step for the whole batch. A static-shape artifact takes one image per graph call,
so its jobs run one by one.

Every job carries its own Future: an answer can only ever reach the request that asked for it. A batch
that fails is retried job by job, so one job's failure is its own and never its neighbours'.
Nothing here knows about HTTP; app.py turns jobs into responses.
"""

from __future__ import annotations

import collections
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field

from ..records import result_record


class QueueFull(Exception):
    """The queue holds `max_queue` waiting jobs; the caller should come back later."""


class WorkerStopped(Exception):
    """The worker is shutting down and takes no new jobs."""


@dataclass
class Job:
    """One request, already checked: a decoded image, its task and text, and the generation overrides."""

    name: str  # what the record calls the image (the upload's file name)
    image: object  # a decoded PIL image
    task: str
    text: str | None
    options: dict  # generation overrides shared by a batch (num_beams, max_new_tokens)
    future: Future = field(default_factory=Future)  # -> (record dict, batch size)

    @property
    def batch_key(self) -> tuple:
        return tuple(sorted(self.options.items()))


class InferenceWorker:
    """Runs jobs on `model` in its own thread. `max_batch` 1 disables batching; `window` is how long a
    batch may wait to fill (10 ms: nothing next to a model call). `gate`, if given, is waited on before
    each batch runs: tests hold the worker with it to fill the queue deterministically."""

    def __init__(self, model, max_queue: int = 16, max_batch: int = 8, gate: threading.Event | None = None,
                 window: float = 0.01):
        self.model, self.max_queue, self.gate, self.window = model, max_queue, gate, window
        # A static artifact's graphs take one image: batching it would only delay the first answer.
        self.max_batch = 1 if getattr(model.manifest, "static", None) else max_batch
        self._waiting: collections.deque[Job] = collections.deque()
        self._running = 0
        self._stopping = False
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._loop, name="florence2-inference", daemon=True)
        self.batches: list[int] = []  # the size of every batch run, in order (for tests and the load script)

    def start(self) -> InferenceWorker:
        self._thread.start()
        return self

    def submit(self, job: Job) -> Future:
        with self._changed:
            self.check_room()  # the Condition's lock is reentrant
            self._waiting.append(job)
            self._changed.notify_all()
        return job.future

    def check_room(self) -> None:
        """QueueFull or WorkerStopped now, so a request that would be refused is not decoded first;
        `submit` checks again, under the lock."""
        with self._changed:
            if self._stopping:
                raise WorkerStopped("the service is shutting down")
            if len(self._waiting) >= self.max_queue:
                raise QueueFull(f"the queue is full ({self.max_queue} requests waiting); retry shortly")

    def stop(self, timeout: float | None = None) -> None:
        """Take no new jobs, finish the queued ones, then end the thread."""
        with self._changed:
            self._stopping = True
            self._changed.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive() and not self._stopping

    def load(self) -> dict:
        """How busy the worker is: jobs waiting in the queue and jobs in the batch being run."""
        with self._changed:
            return {"queued": len(self._waiting), "running": self._running}

    def _loop(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            if self.gate is not None:
                self.gate.wait()
            try:
                self._run(batch)
            finally:
                with self._changed:
                    self._running = 0
                    self._changed.notify_all()

    def _next_batch(self) -> list[Job] | None:
        """The oldest waiting job plus every waiting job with the same options, up to max_batch; jobs
        with other options keep their place in the queue. None once stopping and drained."""
        with self._changed:
            while True:
                while not self._waiting:
                    if self._stopping:
                        return None
                    self._changed.wait()
                self._gather()
                batch, kept = [], collections.deque()
                while self._waiting and len(batch) < self.max_batch:
                    job = self._waiting.popleft()
                    if batch and job.batch_key != batch[0].batch_key:
                        kept.append(job)
                    # False: its request went away (client disconnected) while it waited; drop it.
                    elif job.future.set_running_or_notify_cancel():
                        batch.append(job)
                kept.extend(self._waiting)
                self._waiting = kept
                if batch:
                    self._running = len(batch)
                    return batch

    def _gather(self) -> None:
        """Wait up to `window` seconds for a batch to fill. Clients answered by one batch send their next
        requests milliseconds apart: without the wait, the first of them would always run alone."""
        if self.max_batch == 1 or self.window <= 0:
            return
        deadline = time.monotonic() + self.window
        while len(self._waiting) < self.max_batch and not self._stopping:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self._changed.wait(left)

    def _run(self, batch: list[Job]) -> None:
        if len(batch) > 1:
            try:
                self._answer(batch)
                return
            except Exception:  # noqa: BLE001 - retried alone below, where each job gets its own error
                pass
        for job in batch:
            try:
                self._answer([job])
            except Exception as err:  # noqa: BLE001 - handed to the job's request, which maps it
                job.future.set_exception(err)

    def _answer(self, batch: list[Job]) -> None:
        began = time.perf_counter()
        results = self.model.run([j.image for j in batch], [j.task for j in batch], [j.text for j in batch],
                                 **batch[0].options)
        # Per item, as the batch CLI records it: the batch's time shared out.
        seconds = (time.perf_counter() - began) / len(batch)
        self.batches.append(len(batch))
        for job, result in zip(batch, results):
            job.future.set_result((result_record(job.name, job.task, result.answer[job.task], seconds,
                                                 result.image_size),
                                   len(batch)))
