"""One replica of the team engine: the documents it holds, their versions, and the engine
worker that runs their requests; no Ray here (`completion.engine_app` wraps it in a Ray
Serve deployment), so the rules below read as plain Python.

Why a replica keeps its own copy of each text: requests carry edits (`completion.wire`),
and an edit only means something against the exact text it was made on.  The copy is
updated when a message arrives, on the event loop and in arrival order, before its job is
queued: a job cancelled before it ran still moved the text on, so the edge's idea of what
the replica holds stays right.  A message whose base is not the held version, or whose
result has another checksum than the edge's, gets `need_text` and nothing is decoded.

Why one worker thread with priorities: the engine is single-threaded by design (one
document's cache at a time), and many editors share it, so requests (`complete`) run
before background work (`prepare`, `ahead`, `refresh`) from any editor; a cancelled job
(the edge names its request id in a `cancel`) stops within one decode step, as in the
embedded server.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import heapq
import itertools
import logging
import os
import threading
import time
from collections import OrderedDict
from types import MappingProxyType, SimpleNamespace
from typing import Any, Callable

from . import wire
from .kvcache import Cancelled

log = logging.getLogger(__name__)

#: documents a replica keeps texts for (least recently used closed first; the KV caches
#: have their own byte budget, `cache_budget_mb`, in `kvcache.CacheStore`)
MAX_DOCS = 1024
PRIORITY = {"complete": 0, "close": 0, "prepare": 1, "ahead": 2, "refresh": 3}
MONITOR_KEYS = ("enabled", "members", "names", "kwargs", "modules", "scopes")


class NeedText(Exception):
    """The replica does not hold the text the message's edit was made on."""


@dataclasses.dataclass
class HeldText:
    version: str
    text: str
    crc: int


class Worker:
    """One thread running jobs by priority, then arrival; a job is `fn(cancel_event)`."""

    def __init__(self) -> None:
        self._heap: list = []
        self._seq = itertools.count()
        self._cond = threading.Condition()
        self._cancels: dict[str, threading.Event] = {}
        self._stop = False
        self.busy_s = 0.0
        self.thread = threading.Thread(target=self._run, name="draftline-replica", daemon=True)
        self.thread.start()

    def submit(self, kind: str, rid: str, fn: Callable[[threading.Event], Any]) -> concurrent.futures.Future:
        fut: concurrent.futures.Future = concurrent.futures.Future()
        ev = threading.Event()
        with self._cond:
            if rid:
                self._cancels[rid] = ev
            heapq.heappush(self._heap, (PRIORITY.get(kind, 3), next(self._seq), rid, fn, fut, ev))
            self._cond.notify()
        return fut

    def cancel(self, rid: str) -> bool:
        with self._cond:
            ev = self._cancels.get(rid)
        if ev is not None:
            ev.set()
        return ev is not None

    def queued(self) -> int:
        with self._cond:
            return len(self._heap)

    def stop(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._heap and not self._stop:
                    self._cond.wait()
                if self._stop:
                    return
                _, _, rid, fn, fut, ev = heapq.heappop(self._heap)
            try:
                if ev.is_set():
                    raise Cancelled()
                t0 = time.perf_counter()
                try:
                    out = fn(ev)
                finally:
                    self.busy_s += time.perf_counter() - t0
                fut.set_result(out)
            except BaseException as e:  # noqa: BLE001 (handed to the waiting request)
                fut.set_exception(e)
            finally:
                if rid:
                    with self._cond:
                        if self._cancels.get(rid) is ev:
                            del self._cancels[rid]


class ReplicaCore:
    """Messages in (dicts, already authenticated), replies out (dicts)."""

    def __init__(self, engine: Any, name: str = "") -> None:
        self.engine = engine
        self.base_config = engine.config
        self.name = name or f"pid{os.getpid()}"
        self.texts: OrderedDict[str, HeldText] = OrderedDict()
        self.worker = Worker()
        self.counters = {"requests": 0, "need_text": 0, "edits": 0, "full_texts": 0, "cancelled": 0,
                         "errors": 0, "evicted": 0}

    # -- texts ---------------------------------------------------------------------------
    def take_text(self, doc: str, msg: dict) -> str:
        """The text a message is about, its edit applied; NeedText when the replica does
        not hold the base, or the result's checksum is not the edge's."""
        version, want = msg.get("version"), msg.get("crc")
        if not isinstance(version, str) or not isinstance(want, int):
            raise ValueError("a document message needs `version` (string) and `crc` (integer)")
        held = self.texts.get(doc)
        if isinstance(msg.get("text"), str):
            text = msg["text"]
            self.counters["full_texts"] += 1
        elif held is None or held.version != msg.get("base"):
            raise NeedText()
        elif msg.get("edit") is not None:
            try:
                text = wire.apply(held.text, msg["edit"])
            except ValueError as e:
                log.warning("document %s: %s: asking for the text", doc[:12], e)
                raise NeedText() from e
            self.counters["edits"] += 1
        elif held.version == version:
            self.texts.move_to_end(doc)
            return held.text
        else:
            text = held.text
        got = wire.crc(text)
        if got != want:
            log.warning("document %s: checksum %08x, the edge has %08x: asking for the text", doc[:12], got, want)
            self.texts.pop(doc, None)
            raise NeedText()
        self.texts[doc] = HeldText(version, text, got)
        self.texts.move_to_end(doc)
        while len(self.texts) > MAX_DOCS:
            old, _ = self.texts.popitem(last=False)
            self.counters["evicted"] += 1
            self.worker.submit("close", "", lambda c, d=old: self.engine.close(d))
        return text

    # -- messages ------------------------------------------------------------------------
    def reply_base(self, doc: str | None) -> dict:
        out: dict[str, Any] = {"replica": self.name, "pid": os.getpid()}
        c = self.engine.cache_of(doc) if doc else None
        if c is not None:
            out["cache"] = {"tokens": len(c.tokens), "stale": c.stale, "bytes": c.nbytes}
        return out

    def submit(self, msg: dict, t_recv: float) -> tuple[int, dict] | concurrent.futures.Future:
        """A reply now as (HTTP status, body), or a future of one (a job for the worker)."""
        op = msg.get("op")
        self.counters["requests"] += 1
        if op == "hello":
            return 200, self.hello()
        if op == "cancel":
            rid = msg.get("rid")
            return 200, {"cancelled": isinstance(rid, str) and self.worker.cancel(rid)}
        doc = msg.get("doc")
        if not isinstance(doc, str) or not doc:
            return 400, {"error": f"`doc` (a document id) is required for op {op!r}"}
        rid = msg.get("rid") if isinstance(msg.get("rid"), str) else ""
        eng = self.engine
        if op == "close":
            self.texts.pop(doc, None)
            return self._job("close", rid, doc, lambda c: (eng.close(doc), {})[1])
        if op == "refresh":
            return self._job("refresh", rid, doc, lambda c: {"n": eng.refresh(doc, c)})
        if op == "ahead":
            return self._job("ahead", rid, doc, lambda c: self._ahead(doc, c))
        if op not in ("complete", "prepare", "reanswer"):
            return 400, {"error": f"unknown op {op!r}"}
        try:
            text = self.take_text(doc, msg)
        except NeedText:
            self.counters["need_text"] += 1
            return 200, {"need_text": True, **self.reply_base(None)}
        except ValueError as e:
            return 400, {"error": str(e)}
        cursor = msg.get("cursor")
        if not isinstance(cursor, int) or not 0 <= cursor <= len(text):
            return 400, {"error": f"cursor {cursor!r} outside a text of {len(text)} characters"}
        cfg = dataclasses.replace(self.base_config, **wire.request_config(msg.get("config")))
        if op == "prepare":
            def prep(c: threading.Event) -> dict:
                st = self._with_config(cfg, lambda: eng.prepare(doc, text, cursor, c))
                return {"more": bool(st.more), "computed": st.computed, "mode": st.mode}

            return self._job("prepare", rid, doc, prep)
        ctx = self._context(msg.get("context"))
        elapsed = msg.get("elapsed_ms")
        arrived = t_recv - (elapsed / 1000 if isinstance(elapsed, (int, float)) and 0 <= elapsed < 60_000 else 0)
        k = msg.get("k") if isinstance(msg.get("k"), int) and 1 <= msg.get("k") <= 8 else None

        def complete(c: threading.Event) -> dict:
            if op == "reanswer":  # idle time: the place answered again from the whole window
                res = self._with_config(cfg, lambda: eng.reanswer(doc, text, cursor, c, ctx))
                if res is None:
                    return {"none": True}
            else:
                res = self._with_config(cfg, lambda: eng.complete(doc, text, cursor, k=k, cancel=c, context=ctx,
                                                                  arrived=arrived))
            return {"drafts": [[d.text, d.replace, d.logprob] for d in res.drafts], "timings": res.timings,
                    "tokens": res.tokens, "short_window": res.short_window, "ahead_pending": res.ahead_pending}

        return self._job("complete" if op == "complete" else "ahead", rid, doc, complete)

    def _job(self, kind: str, rid: str, doc: str, fn: Callable[[threading.Event], dict]) -> concurrent.futures.Future:
        out: concurrent.futures.Future = concurrent.futures.Future()
        t_q = time.perf_counter()

        def done(f: concurrent.futures.Future) -> None:
            try:
                body = f.result()
                body.update(self.reply_base(doc))
                body.setdefault("queued_ms", round((t_run[0] - t_q) * 1000, 2) if t_run else 0.0)
                out.set_result((200, body))
            except Cancelled:
                self.counters["cancelled"] += 1
                out.set_result((200, {"cancelled": True, **self.reply_base(doc)}))
            except MemoryError:
                self.counters["errors"] += 1
                freed = self.engine.release_memory()
                log.error("out of memory in %s: released %.0f MiB of KV caches", kind, freed / 2**20)
                out.set_result((503, {"error": "replica out of memory (caches released): retry", **self.reply_base(None)}))
            except Exception as e:  # noqa: BLE001 (one request's failure, answered and logged)
                self.counters["errors"] += 1
                log.exception("%s for document %s failed", kind, doc[:12])
                out.set_result((500, {"error": f"{kind} failed on replica {self.name}: {type(e).__name__}: {e}"}))

        t_run: list[float] = []

        def timed(c: threading.Event) -> dict:
            t_run.append(time.perf_counter())
            return fn(c)

        self.worker.submit(kind, rid, timed).add_done_callback(done)
        return out

    def _with_config(self, cfg: Any, fn: Callable[[], Any]) -> Any:
        """The request's settings for the length of its job (worker thread: one at a time)."""
        self.engine.config = cfg
        try:
            return fn()
        finally:
            self.engine.config = self.base_config

    def _context(self, raw: Any) -> Any:
        from .engine import DocContext

        raw = raw if isinstance(raw, dict) else {}
        mon = raw.get("monitors") if isinstance(raw.get("monitors"), dict) else {}
        monitors = SimpleNamespace(**{k: bool(mon.get(k, True)) for k in MONITOR_KEYS})
        lang = raw.get("language") if isinstance(raw.get("language"), str) else ""
        # other open documents stay with the editor (their texts would cost the wire more
        # than a keystroke): the monitors read this document only
        return DocContext(lang, MappingProxyType({}), monitors, jedi=bool(raw.get("jedi", True)))

    def _ahead(self, doc: str, cancel: threading.Event) -> dict:
        """Continue the last answer's drafts; the edge gets their longer texts back (its
        typed-ahead store answers keystrokes without a round trip)."""
        n = self.engine.continue_ahead(doc, cancel)
        out: dict[str, Any] = {"n": n}
        entries = self.engine.ahead.entries(doc) if n else ()
        if entries:
            e = entries[0]
            out["entry"] = {"prefix_len": len(e.prefix), "suffix_len": len(e.suffix),
                            "texts": list(e.texts), "replace": list(e.replace)}
        return out

    def hello(self) -> dict:
        eng = self.engine
        caches = list(eng.caches.caches.values())
        return {"ok": True, "model": dict(eng.lm.info), "load_ms": round(eng.lm.load_ms, 1),
                "documents": len(self.texts), "cache_bytes": sum(c.nbytes for c in caches),
                "cache_budget_mb": self.base_config.cache_budget_mb, "queued": self.worker.queued(),
                "busy_s": round(self.worker.busy_s, 3), "counters": dict(self.counters),
                **self.reply_base(None)}
