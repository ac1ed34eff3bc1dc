"""The jedi client: the server's side of the jedi analyses (`PythonAnalyzer.query`).

Why a client at all: jedi is pure Python, slow on a cold cache (a first query takes ~1 s,
a library type's members ~200 ms) and not thread-safe, while the decoder waits on each
step.  So every analysis runs on one worker, one query at a time, and the caller waits at
most a time budget: when it runs out the caller gets None (no constraint) and the answer
lands in the cache for later steps.  The worker is a child process (`_ProcessWorker`, the
default: off this process's GIL, see its docstring) or, with ``DRAFTLINE_JEDI=thread``, a
thread of this process (`_Worker`, also what tests that stand in for jedi use).  Either
runs the public analyses of `jedi_backend.JediBackend` through its explicit table
(`JediBackend.analyses`).
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import queue
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from concurrent.futures import Future

from .jedi_backend import QUERY_KINDS, Completions, JediBackend, run_with_overlay

log = logging.getLogger(__name__)

__all__ = ["ISOLATED", "PythonAnalyzer"]


class _Worker:
    """One daemon thread running jedi calls in order (jedi is not thread-safe), in this
    process: used when ``DRAFTLINE_JEDI=thread`` and by tests that patch the analyzer's
    backend (`PythonAnalyzer.backend`: the analyses it runs)."""

    def __init__(self) -> None:
        self._q: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="draftline-jedi", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            fn, fut, docs = self._q.get()
            if not fut.set_running_or_notify_cancel():
                continue
            try:
                fut.set_result(run_with_overlay(fn, docs))
            except BaseException as e:  # noqa: BLE001 - report any jedi failure as "unknown"
                log.debug("jedi query failed: %r", e)
                fut.set_exception(e)

    def submit(self, fn: Callable[[], object], docs: Mapping[str, str] | None) -> Future:
        fut: Future = Future()
        self._q.put((fn, fut, docs))
        return fut

    def query(self, analyzer: "PythonAnalyzer", kind: str, before: str, after: str, path: str | None,
              docs: Mapping[str, str] | None) -> Future:
        fn = analyzer.backend.analyses()[kind]
        return self.submit(lambda: fn(before, after, path), docs)

    @property
    def backlog(self) -> int:
        return self._q.qsize()


class _ProcessWorker:
    """jedi in a child process (``python -P -m draftline.analysis.jedi_worker``), one query
    at a time, answers read by a thread that only waits on the pipe.

    Why not a thread: jedi is pure Python. In this process it holds the GIL while the
    decoder's torch calls want it back after every operation, so each of the ~1,000 small
    operations of a forward could wait for jedi's switch interval (5 ms): a 2k-token prefill
    took ~10 s instead of ~5 s while a query ran beside it. In a child process it only
    shares the cores (at a lower priority).  Messages are JSON lines (no pickle from a
    process that reads the workspace); open documents are sent once per version.
    A child that dies fails its pending queries (None for the caller) and is restarted by the
    next query; one stuck past HANG_S is killed.
    """

    HANG_S = 30.0

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._proc = None
        self._pending: dict[int, tuple[Future, float]] = {}
        self._ids = itertools.count()
        self._sent: dict[str, int] = {}  # path -> hash of the text the child holds

    def _ensure(self):
        """The live child (started or restarted here); called with the lock held."""
        import subprocess

        proc = self._proc
        if proc is not None and proc.poll() is None:
            oldest = min((t for _, t in self._pending.values()), default=None)
            if oldest is None or time.monotonic() - oldest < self.HANG_S:
                return proc
            log.warning("jedi worker stuck for %.0f s; restarting it", time.monotonic() - oldest)
            proc.kill()
        # the old child's queries die with it (its reader may not have seen the end yet:
        # left pending, they would count as backlog and as "stuck" against the new child)
        self._fail(list(self._pending.values()), "jedi worker restarted")
        self._pending.clear()
        proc = subprocess.Popen([sys.executable, "-P", "-m", "draftline.analysis.jedi_worker"],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, encoding="ascii")
        self._proc = proc
        self._sent = {}
        threading.Thread(target=self._read, args=(proc,), name="draftline-jedi-reader", daemon=True).start()
        return proc

    @staticmethod
    def _fail(pending: list[tuple[Future, float]], why: str) -> None:
        for f, _ in pending:
            if not f.done():
                f.set_exception(RuntimeError(why))

    def _read(self, proc) -> None:
        for line in proc.stdout:
            try:
                msg = json.loads(line)
            except ValueError:
                continue
            with self._lock:
                got = self._pending.pop(msg.get("q"), None)
            if got is None:
                continue
            fut = got[0]
            if "error" in msg:
                fut.set_exception(RuntimeError(f"jedi worker: {msg['error']}"))
            elif msg.get("names") is None:
                fut.set_result(None)
            else:
                fut.set_result(Completions(frozenset(msg["names"]), frozenset(msg.get("callables") or ())))
        # the child is gone: its pending queries are unknown (unless a restart failed them already)
        with self._lock:
            dead = list(self._pending.values()) if self._proc is proc else []
            if dead:
                self._pending.clear()
        self._fail(dead, "jedi worker exited")

    def query(self, analyzer: "PythonAnalyzer", kind: str, before: str, after: str, path: str | None,
              docs: Mapping[str, str] | None) -> Future:
        fut: Future = Future()
        fut.set_running_or_notify_cancel()
        with self._lock:
            qid = next(self._ids)
            try:
                proc = self._ensure()
                sent = {}
                for p, text in (docs or {}).items():
                    h = hash(text)
                    sent[p] = [h, None if self._sent.get(p) == h else text]
                    self._sent[p] = h
                msg = {"q": qid, "config": [analyzer.workspace_root, list(analyzer.added_sys_path)],
                       "kind": kind, "before": before, "after": after, "path": path, "docs": sent}
                self._pending[qid] = (fut, time.monotonic())
                proc.stdin.write(json.dumps(msg) + "\n")
                proc.stdin.flush()
            except (OSError, ValueError) as e:  # the child died under us: unknown, restart next time
                self._pending.pop(qid, None)
                self._sent = {}
                fut.set_exception(RuntimeError(f"jedi worker unavailable: {e}"))
        return fut

    @property
    def backlog(self) -> int:
        with self._lock:
            return max(0, len(self._pending) - 1)  # queued behind the one running


_workers: dict[bool, "_Worker | _ProcessWorker"] = {}
_worker_lock = threading.Lock()
#: jedi runs in a child process unless DRAFTLINE_JEDI=thread (see _ProcessWorker)
ISOLATED = os.environ.get("DRAFTLINE_JEDI", "process") != "thread"


def _get_worker(isolated: bool | None = None):
    iso = ISOLATED if isolated is None else isolated
    with _worker_lock:
        w = _workers.get(iso)
        if w is None:
            w = _workers[iso] = _ProcessWorker() if iso else _Worker()
        return w


class PythonAnalyzer:
    """The jedi client shared by all Python documents of one workspace: answers cached by
    key, queries started on the worker, waits bounded by a budget.

    ``workspace_root``: the jedi project root (its modules become importable); ``added_sys_path``:
    extra import roots, from trusted (user-level) settings only.  ``budget_s``: how long one
    query may be waited for; a later query for the same key gets the answer for free.
    ``isolated``: jedi in the child process (None: the module default, `ISOLATED`).
    """

    MAX_BACKLOG = 2

    def __init__(self, workspace_root: str | None = None, added_sys_path: tuple[str, ...] = (),
                 budget_s: float = 0.3, cache_size: int = 512, isolated: bool | None = None) -> None:
        self.workspace_root = os.path.abspath(workspace_root) if workspace_root else None
        self.added_sys_path = tuple(added_sys_path)
        self.budget_s = budget_s
        self._cache: OrderedDict[tuple, tuple[Future, float]] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()
        self.isolated = isolated  # jedi in a child process (None: the module default, ISOLATED)
        #: the analyses in this process: what a thread worker runs (a child process keeps its
        #: own per configuration), and what tools that call jedi directly use
        self.backend = JediBackend(self.workspace_root, self.added_sys_path, cache_size=cache_size)

    @staticmethod
    def text_key(before: str, after: str, path: str | None, docs_key: object = None) -> tuple:
        """Cache key for a query on ``before`` + ``after`` (hashes: no big strings are kept)."""
        return (hash(before), len(before), hash(after), len(after), path, docs_key)

    def query(self, kind: str, before: str, after: str, *, path: str | None = None,
              open_documents: Mapping[str, str] | None = None, key: tuple | None = None,
              wait: bool = True, budget: float | None = None, urgent: bool = False,
              start: bool = True) -> object | None:
        """Run (or fetch) one analysis; None when unknown, dynamic, failed or over budget.

        ``kind``: "members" (``before`` ends right after a dot), "kwargs" (``before`` ends right
        after a call's ``(``), "complete" (names/modules jedi lists at the end of ``before``).
        ``wait=False`` only starts the query (prefetch) and returns what is already known; a
        prefetch is only queued when the worker has nothing queued (``urgent``: like a waited
        query), so speculative queries never crowd out the ones a decode step waits for.
        ``budget``: seconds to wait, counted from when the query was first started (default
        ``budget_s``).  ``start=False``: only look the answer up, never start a query.
        """
        if key is None:
            docs_key = tuple(sorted((p, hash(t)) for p, t in open_documents.items())) if open_documents else None
            key = (kind,) + self.text_key(before, after, path, docs_key)
        else:
            key = (kind,) + key
        now = time.monotonic()
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
        if hit is None:
            if not start:
                return None
            if kind not in QUERY_KINDS:
                raise ValueError(f"unknown analysis {kind!r}")
            worker = _get_worker(self.isolated)
            if worker.backlog >= (self.MAX_BACKLOG if wait or urgent else 1):
                return None
            docs = None
            if open_documents:
                docs = {os.path.normcase(os.path.abspath(p)): t for p, t in open_documents.items()}
            fut = worker.query(self, kind, before, after, path, docs)
            hit = (fut, now)
            with self._lock:
                self._cache[key] = hit
                while len(self._cache) > self._cache_size:
                    self._cache.popitem(last=False)
        fut, started = hit
        if not fut.done():
            if not wait:
                return None
            remaining = (self.budget_s if budget is None else budget) - (now - started)
            if remaining <= 0:
                return None
            try:
                fut.result(timeout=remaining)
            except Exception:  # timeout or jedi failure
                return None
        if fut.exception() is not None:
            return None
        return fut.result()

    def pending(self, kind: str, key: tuple) -> bool:
        """Whether the query (kind, key) was started and has not finished yet."""
        with self._lock:
            hit = self._cache.get((kind,) + key)
        return hit is not None and not hit[0].done()

    def warm_up(self) -> Future:
        """Load jedi and the builtins/typeshed stubs in the background (the first query is
        slow) and list the members of common library types, as one job of the worker."""
        return _get_worker(self.isolated).query(self, "warm", "", "", None, None)
