"""One inference worker thread, off the event loop; newer work supersedes older work.

Why one thread: the model, its KV caches and torch's intra-op threads want the cores to
themselves; two concurrent forwards would only slow each other. Every job carries a
`threading.Event`; decoding and chunked prefills check it between steps, so a newer
request or edit for the same document, or `$/cancelRequest`, stops the old job within one
decode step. Results come back to the event loop as asyncio futures.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from draftline.completion.kvcache import Cancelled

log = logging.getLogger(__name__)


@dataclass
class Job:
    doc: str | None
    kind: str  # "load" | "prepare" | "complete" | "refresh" | "other"
    fn: Callable[[threading.Event], Any]
    future: asyncio.Future | None
    cancel: threading.Event = field(default_factory=threading.Event)
    created: float = field(default_factory=time.monotonic)


class WorkerDied(RuntimeError):
    pass


class Scheduler:
    """Queue of jobs run in order by one daemon thread."""

    def __init__(self, loop: asyncio.AbstractEventLoop, max_restarts: int = 3):
        self.loop = loop
        self.q: "queue.Queue[Job | None]" = queue.Queue()
        self.current: Job | None = None
        self.pending: list[Job] = []
        self.lock = threading.Lock()
        self.restarts = 0
        self.max_restarts = max_restarts
        self.disabled_reason: str | None = None
        self._thread = self._start()

    def _start(self) -> threading.Thread:
        t = threading.Thread(target=self._run, name="draftline-worker", daemon=True)
        t.start()
        return t

    def submit(self, doc: str | None, kind: str, fn: Callable[[threading.Event], Any],
               supersede: tuple[str, ...] = ()) -> Job:
        """Queue fn(cancel_event). Jobs of the same document whose kind is in `supersede`
        are cancelled first (queued ones never start, the running one stops at its next
        step)."""
        if supersede and doc is not None:
            self.cancel_doc(doc, supersede)
        fut = self.loop.create_future()
        job = Job(doc, kind, fn, fut)
        if not self._thread.is_alive():
            self._revive()
        with self.lock:
            self.pending.append(job)
        self.q.put(job)
        return job

    def cancel_doc(self, doc: str, kinds: tuple[str, ...]) -> int:
        n = 0
        with self.lock:
            jobs = list(self.pending) + ([self.current] if self.current else [])
        for j in jobs:
            if j.doc == doc and j.kind in kinds and not j.cancel.is_set():
                j.cancel.set()
                n += 1
        return n

    def busy(self) -> bool:
        return self.current is not None or not self.q.empty()

    def _revive(self) -> None:
        self.restarts += 1
        if self.restarts > self.max_restarts:
            self.disabled_reason = "the inference worker died too often; completions are disabled"
            return
        log.error("inference worker died; restarting (%d/%d)", self.restarts, self.max_restarts)
        self._thread = self._start()

    def _resolve(self, job: Job, result: Any = None, exc: BaseException | None = None) -> None:
        fut = job.future
        if fut is None:
            return

        def done() -> None:
            if fut.done():
                return
            if exc is not None:
                fut.set_exception(exc)
            else:
                fut.set_result(result)

        try:
            self.loop.call_soon_threadsafe(done)
        except RuntimeError:  # loop closed during shutdown
            pass

    def _run(self) -> None:
        while True:
            job = self.q.get()
            if job is None:
                return
            with self.lock:
                if job in self.pending:
                    self.pending.remove(job)
                self.current = job
            try:
                if job.cancel.is_set():
                    raise Cancelled()
                res = job.fn(job.cancel)
                self._resolve(job, res)
            except Cancelled as e:
                self._resolve(job, exc=e)
            except MemoryError as e:
                log.error("out of memory in %s job for %s", job.kind, job.doc)
                self._resolve(job, exc=e)
            except Exception as e:  # engine faults become errors, never a dead server
                log.exception("%s job for %s failed", job.kind, job.doc)
                self._resolve(job, exc=e)
            finally:
                with self.lock:
                    self.current = None

    def stop(self) -> None:
        with self.lock:
            for j in self.pending:
                j.cancel.set()
            if self.current is not None:
                self.current.cancel.set()
        self.q.put(None)
