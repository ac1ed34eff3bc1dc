"""One inference worker thread, off the event loop; newer work supersedes older work.

Why one thread: the model, its KV caches and torch's intra-op threads want the cores to
themselves; two concurrent forwards would only slow each other. Every job carries a
`threading.Event`; decoding and chunked prefills check it between steps, so a newer
request or edit for the same document, or `$/cancelRequest`, stops the old job within one
decode step. Completions run before any queued idle-time cache work (prepare / refresh,
of any document) and cancel a running one, so a request waits at most one prefill chunk
for background work. Results come back to the event loop as asyncio futures.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from pygls.exceptions import JsonRpcException

from draftline.completion.kvcache import Cancelled

log = logging.getLogger(__name__)


# Lower runs first. Requests (and the model load) never wait behind the idle-time cache
# work of other documents; a running background job is cancelled when a request arrives
# (it stops within one prefill chunk and is redone by the request itself if needed).
# "ahead" continues the drafts of the answer just given (completion.ahead); "prepare" syncs
# the active document's cache (and encodes its short window's whole window), "prefill" the same for
# documents the user is not in.
PRIORITY = {"load": 0, "complete": 1, "other": 1, "ahead": 2, "header": 2.5, "prepare": 3, "prefill": 3.5,
            "refresh": 4}
BACKGROUND = ("ahead", "header", "prepare", "prefill", "refresh")


@dataclass
class Job:
    doc: str | None
    kind: str  # "load" | "prepare" | "complete" | "refresh" | "other"
    fn: Callable[[threading.Event], Any]
    future: asyncio.Future | None
    cancel: threading.Event = field(default_factory=threading.Event)
    created: float = field(default_factory=time.monotonic)


def _superseded(cancel: threading.Event) -> Any:
    raise Cancelled()


class WorkerDied(JsonRpcException):
    """The worker thread died inside a job (the job's request gets this error)."""

    CODE = -32603
    MESSAGE = "draftline: the inference worker died; it was restarted"


class EngineDisabled(JsonRpcException):
    """Completions are off after too many worker faults, or the server is stopping."""

    CODE = -32603
    MESSAGE = "draftline: completions are disabled"


class Scheduler:
    """Queue of jobs run in order by one daemon thread.

    Faults (docs/reliability.md, P7): an exception in a job fails that job only. A MemoryError or a
    dead worker thread (a BaseException escaping a job) is a fault: the worker is restarted
    (a new thread) up to `max_restarts` times; one more fault disables the scheduler: every
    waiting and future job fails at once with EngineDisabled, and `on_disabled(reason)` is
    called exactly once (the server shows it to the user)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, max_restarts: int = 3,
                 on_disabled: Callable[[str], None] | None = None,
                 on_memory_error: Callable[[], None] | None = None):
        self.loop = loop
        # (priority, sequence, job): completions before background cache work, FIFO within
        self.q: "queue.PriorityQueue[tuple[int, int, Job | None]]" = queue.PriorityQueue()
        self._seq = itertools.count()
        self.current: Job | None = None
        self.pending: list[Job] = []
        self.lock = threading.Lock()
        self.restarts = 0
        self.faults = 0
        self.max_restarts = max_restarts
        self.on_disabled = on_disabled
        self.on_memory_error = on_memory_error  # run on the worker: free caches before the next job
        self.on_idle: Callable[[], None] | None = None  # run on the worker after IDLE_S without jobs
        self.disabled_reason: str | None = None
        self.stopped = False
        self.jobs_run = 0
        self.preempted = 0
        self._death_pending = False  # the worker died and told the loop; not handled yet
        self._thread = self._start()

    def _start(self) -> threading.Thread:
        t = threading.Thread(target=self._run, name="draftline-worker", daemon=True)
        t.start()
        return t

    def submit(self, doc: str | None, kind: str, fn: Callable[[threading.Event], Any],
               supersede: tuple[str, ...] = ()) -> Job:
        """Queue fn(cancel_event). Jobs of the same document whose kind is in `supersede`
        are cancelled first (queued ones never start, the running one stops at its next
        step). When disabled or stopped the job's future fails at once."""
        if supersede and doc is not None:
            self.cancel_doc(doc, supersede)
        fut = self.loop.create_future()
        job = Job(doc, kind, fn, fut)
        if self.disabled_reason is not None or self.stopped:
            job.cancel.set()
            fut.set_exception(EngineDisabled(f"draftline: {self.disabled_reason or 'shutting down'}"))
            fut.exception()  # retrieved: no "exception never retrieved" noise
            return job
        with self.lock:
            self.pending.append(job)
            cur = self.current
        if kind == "complete" and cur is not None:
            log.debug("complete for %s submitted while %s for %s runs", doc, cur.kind, cur.doc)
            if cur.kind in BACKGROUND and not cur.cancel.is_set():
                cur.cancel.set()  # a request is waiting: background cache work yields (one chunk)
                self.preempted += 1
        self.q.put((PRIORITY.get(kind, 1), next(self._seq), job))
        if not self._thread.is_alive() and not self._death_pending:  # died silently
            self._fault("the inference worker thread is gone")
        return job

    def cancel_doc(self, doc: str, kinds: tuple[str, ...]) -> int:
        """Cancel the document's jobs of these kinds (event-loop thread).  A queued one is
        answered (Cancelled) and lets go of its closure at once: it holds snapshots of
        document texts, and it stays in the queue until the worker reaches it."""
        n = 0
        with self.lock:
            queued = list(self.pending)
            cur = self.current
        for j in queued + ([cur] if cur is not None else []):
            if j.doc == doc and j.kind in kinds and not j.cancel.is_set():
                j.cancel.set()
                if j is not cur:  # never to run: answered now, its closure released
                    j.fn = _superseded
                    if j.future is not None and not j.future.done():
                        j.future.set_exception(Cancelled())
                        j.future.exception()  # retrieved: a superseded background job is no error
                n += 1
        return n

    def has_doc(self, doc: str, kinds: tuple[str, ...]) -> bool:
        """A job of these kinds for `doc` is queued and not cancelled (not the running one)."""
        with self.lock:
            return any(j.doc == doc and j.kind in kinds and not j.cancel.is_set() for j in self.pending)

    def busy(self) -> bool:
        return self.current is not None or not self.q.empty()

    # -- faults (event-loop thread) ---------------------------------------------------------
    def _fault(self, what: str, worker_dead: bool = False) -> None:
        if worker_dead:
            self._death_pending = False
        if self.disabled_reason is not None or self.stopped:
            return
        self.faults += 1
        if self.faults > self.max_restarts:
            self._disable(f"completions are disabled after {self.faults} engine faults (last: {what}); "
                          "restart the language server to re-enable them")
            return
        if worker_dead or not self._thread.is_alive():
            self.restarts += 1
            log.error("inference worker died (%s); restarting (%d/%d)", what, self.faults, self.max_restarts)
            self._thread = self._start()
        else:
            log.error("engine fault (%s) (%d/%d)", what, self.faults, self.max_restarts)

    def _fail_with_fault(self, job: Job, exc: BaseException, what: str, worker_dead: bool) -> None:
        """Count the fault first (restart or disable), then fail the job: by the time its
        request is answered the scheduler is already in its new state."""
        self._fault(what, worker_dead)
        if job.future is not None and not job.future.done():
            job.future.set_exception(exc)

    def _disable(self, reason: str) -> None:
        self.disabled_reason = reason
        log.error("%s", reason)
        with self.lock:
            jobs, self.pending = list(self.pending), []
        for j in jobs:
            j.cancel.set()
            if j.future is not None and not j.future.done():
                j.future.set_exception(EngineDisabled(f"draftline: {reason}"))
                j.future.exception()
        if self.current is not None:
            self.current.cancel.set()
        self.q.put((-1, next(self._seq), None))  # a live worker exits now
        if self.on_disabled is not None:
            try:
                self.on_disabled(reason)
            except Exception:
                log.exception("could not report that completions are disabled")

    # -- worker thread ----------------------------------------------------------------------
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

        self._call(done)

    def _call(self, fn: Callable[..., Any], *args: Any) -> None:
        try:
            self.loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:  # loop closed during shutdown
            pass

    IDLE_S = 1.0

    def _next(self) -> Job | None:
        """The next job; `on_idle()` runs once whenever the queue stayed empty for IDLE_S."""
        try:
            return self.q.get(timeout=self.IDLE_S if self.on_idle is not None else None)[2]
        except queue.Empty:
            pass
        try:
            self.on_idle()  # type: ignore[misc]
        except Exception:
            log.exception("idle-time work failed")
        return self.q.get()[2]

    def _run(self) -> None:
        while True:
            job = self._next()
            if job is None or self.disabled_reason is not None:
                return
            with self.lock:
                if job in self.pending:
                    self.pending.remove(job)
                else:
                    continue  # failed already (disabled)
                self.current = job
            t0 = time.monotonic()
            try:
                if job.cancel.is_set():
                    raise Cancelled()
                res = job.fn(job.cancel)
                self._resolve(job, res)
            except Cancelled as e:
                self._resolve(job, exc=e)
            except MemoryError as e:
                log.error("out of memory in %s job for %s", job.kind, job.doc)
                e.with_traceback(None)  # its frames hold the tensors being built
                if self.on_memory_error is not None:
                    try:
                        self.on_memory_error()
                    except Exception:
                        log.exception("freeing memory after an out-of-memory fault failed")
                self._call(self._fail_with_fault, job, e, "out of memory", False)
            except Exception as e:  # engine faults become errors, never a dead server
                log.exception("%s job for %s failed", job.kind, job.doc)
                self._resolve(job, exc=e)
            except BaseException as e:  # the thread is going down: answer the job first
                log.error("inference worker killed by %s in a %s job", type(e).__name__, job.kind, exc_info=e)
                with self.lock:
                    self.current = None
                self._death_pending = True
                self._call(self._fail_with_fault, job, WorkerDied(), f"worker died: {type(e).__name__}", True)
                return
            finally:
                with self.lock:
                    if self.current is job:
                        self.current = None
                self.jobs_run += 1
                if log.isEnabledFor(logging.DEBUG):
                    log.debug("%s job for %s: queued %.0f ms, ran %.0f ms%s", job.kind, job.doc,
                              (t0 - job.created) * 1000, (time.monotonic() - t0) * 1000,
                              " (cancelled)" if job.cancel.is_set() else "")

    def stop(self) -> None:
        self.stopped = True
        with self.lock:
            for j in self.pending:
                j.cancel.set()
            if self.current is not None:
                self.current.cancel.set()
        self.q.put((99, next(self._seq), None))  # after the (cancelled) jobs already queued
