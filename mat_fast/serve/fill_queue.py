"""The fill queue: one model, one worker thread, fills run one at a time in arrival order.

A GPU (or the CPU) runs one fill fastest when it runs alone, so requests wait in a FIFO and
each can ask for its place. A request whose client has gone (cancelled, or no longer
polling) is dropped when its turn comes instead of being computed for nobody. Results live
in memory for a short while and are never written to disk.
"""

from __future__ import annotations

import collections
import logging
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Deque, Dict, Optional

log = logging.getLogger("mat_fast")

QUEUED, RUNNING, DONE, FAILED, CANCELLED = "queued", "running", "done", "failed", "cancelled"


class QueueFull(Exception):
    """Too many fills are waiting; the client should try again later."""


@dataclass
class Job:
    """One fill: what to compute (``work``, run on the worker) and what came of it."""

    work: Optional[Callable[[], bytes]]  # returns the encoded result
    seed: int
    id: str = field(default_factory=lambda: secrets.token_urlsafe(12))
    state: str = QUEUED
    result: Optional[bytes] = None
    error: Optional[str] = None
    notice: Optional[str] = None
    last_seen: float = field(default_factory=time.monotonic)
    started: Optional[float] = None
    finished: Optional[float] = None
    done: threading.Event = field(default_factory=threading.Event)

    def status(self, position: Optional[int]) -> dict:
        """What a client may see (never the image bytes)."""
        status = {"id": self.id, "state": self.state, "seed": self.seed}
        if position is not None:
            status["position"] = position  # fills ahead of this one, the running one included
        if self.started is not None:
            end = self.finished if self.finished is not None else time.monotonic()
            status["seconds"] = round(end - self.started, 2)
        if self.error:
            status["error"] = self.error
        if self.notice:
            status["notice"] = self.notice
        return status


class FillQueue:
    """FIFO of :class:`Job` run by one worker thread.

    ``abandon_after``: seconds without a sign of life from its client (a poll, or the
    waiting request's own check) after which a queued job is dropped at its turn.
    ``keep_results``: seconds a finished job's result stays fetchable.
    ``max_waiting``: queued jobs accepted before :class:`QueueFull`.
    """

    def __init__(
        self, *, abandon_after: float = 30.0, keep_results: float = 600.0, max_waiting: int = 16
    ):
        self.abandon_after = abandon_after
        self.keep_results = keep_results
        self.max_waiting = max_waiting
        self._jobs: Dict[str, Job] = {}
        self._waiting: Deque[Job] = collections.deque()
        self._running: Optional[Job] = None
        self._lock = threading.Condition()
        self._stopping = False
        self._thread: Optional[threading.Thread] = None

    # -- client side ---------------------------------------------------------------------
    def submit(self, job: Job) -> Job:
        with self._lock:
            self._forget_old()
            if len(self._waiting) >= self.max_waiting:
                raise QueueFull(
                    f"the server is busy: {len(self._waiting)} fills are waiting; try again later"
                )
            self._jobs[job.id] = job
            self._waiting.append(job)
            self._lock.notify_all()
        return job

    def add_finished(self, job: Job, result: bytes, notice: str) -> Job:
        """A job that needs no model (nothing to fill): done at once, fetchable like others."""
        with self._lock:
            self._forget_old()
            job.result, job.notice, job.state = result, notice, DONE
            job.started = job.finished = time.monotonic()
            job.done.set()
            self._jobs[job.id] = job
        return job

    def get(self, job_id: str) -> Optional[Job]:
        """The job, marked as still wanted by its client; None if unknown or forgotten."""
        with self._lock:
            job = self._jobs.get(job_id)
            if job is not None:
                job.last_seen = time.monotonic()
            return job

    def position(self, job: Job) -> Optional[int]:
        with self._lock:
            if job.state != QUEUED:
                return None
            ahead = next(i for i, waiting in enumerate(self._waiting) if waiting is job)
            return ahead + (self._running is not None)

    def cancel(self, job_id: str) -> bool:
        """Drop a job: a queued one is never computed; a running one's result is discarded."""
        with self._lock:
            job = self._jobs.pop(job_id, None)
            if job is None:
                return False
            if job.state in (QUEUED, RUNNING):
                job.state = CANCELLED
                job.done.set()
            return True

    def take_result(self, job_id: str) -> Optional[Job]:
        """The finished job; its result is then forgotten (fetched once, never kept)."""
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None or job.state != DONE:
                return job
            return self._jobs.pop(job_id)

    # -- worker side ---------------------------------------------------------------------
    def start(self) -> None:
        with self._lock:
            if self._thread is None:
                self._stopping = False
                self._thread = threading.Thread(
                    target=self._work, name="mat-fast-fill", daemon=True
                )
                self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        with self._lock:
            self._stopping = True
            self._lock.notify_all()
            thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout)

    def _next(self) -> Optional[Job]:
        with self._lock:
            while True:
                while not self._waiting and not self._stopping:
                    self._lock.wait()
                if self._stopping:
                    return None
                job = self._waiting.popleft()
                idle = time.monotonic() - job.last_seen
                if job.state == QUEUED and idle <= self.abandon_after:
                    job.state, job.started = RUNNING, time.monotonic()
                    self._running = job
                    return job
                if job.state == QUEUED:  # its client stopped asking: nobody would see it
                    log.info("mat-fast serve: dropped job %s, abandoned %.0f s ago", job.id, idle)
                    job.state = CANCELLED
                    job.done.set()
                    self._jobs.pop(job.id, None)

    def _work(self) -> None:
        while True:
            job = self._next()
            if job is None:
                return
            try:
                result, error = job.work(), None
            except Exception as err:  # noqa: BLE001 - reported to the client, server keeps going
                log.exception("mat-fast serve: fill %s failed", job.id)
                result, error = None, f"the fill failed: {type(err).__name__}: {err}"
            finally:
                job.work = None  # drop the decoded inputs now, not when the job is forgotten
            with self._lock:
                self._running = None
                job.finished = time.monotonic()
                if job.state == RUNNING:  # not cancelled meanwhile
                    job.result, job.error = result, error
                    job.state = DONE if error is None else FAILED
                job.done.set()

    def _forget_old(self) -> None:
        """Forget finished jobs nobody fetched within ``keep_results`` (memory stays bounded)."""
        now = time.monotonic()
        for job_id, job in list(self._jobs.items()):
            if job.finished is not None and now - job.finished > self.keep_results:
                del self._jobs[job_id]
