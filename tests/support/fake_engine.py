"""A fake engine for fault injection (tests only; never in the installed package).

Fake engine: `DRAFTLINE_FAKE_ENGINE="steps:N,delay_ms:M,fail:KIND,..."` with the tests' own
entry point (`tests/support/serve.py`) replaces the model with `FakeEngine` (same API as
completion.engine.Engine: complete / prepare / refresh / close / needs_refresh). Keys:

  steps:N         decode steps per completion (default 4); the cancel flag is checked
                  before every step, as the real decoder does
  delay_ms:M      time per step (default 1)
  fail:KIND       exc (RuntimeError) | oom (MemoryError) | die (kills the worker thread)
                  | load (the model load fails) | bad (a result that cannot be serialized)
  fail_first:N    only the first N completions fail (default: every one)
  print:1         write to sys.stdout and to fd 1 during every completion (P9)
  ignore_cancel:1 never look at the cancel flag (exercises the version check, P3)
  gated:1         every step waits for `FakeEngine.gate` (in-process scheduling tests)
  drafts:K        drafts per completion (default: the configured k)
  prepare_steps:N steps per idle-time cache sync (`prepare`, default 0), cancellable and
                  gated like completion steps

Counters are kept in `engine.lm.info`, which `draftline/status` returns as "model":
calls, completed, cancelled, failures, steps, max_steps_after_cancel (steps finished after
the job's cancel flag was set: the promise is at most 1), max_active (concurrent
completions: at most 1), prepares, closes.
"""

from __future__ import annotations

import os
import sys
import threading
import time
import zlib
from collections import OrderedDict, deque
from typing import Any, Callable

from draftline.completion.kvcache import Cancelled


class WorkerKill(BaseException):
    """Escapes every `except Exception`: takes the worker thread down (fault injection)."""


def parse_spec(spec: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for part in (spec or "").split(","):
        part = part.strip()
        if not part:
            continue
        k, _, v = part.partition(":")
        out[k.strip()] = v.strip() or "1"
    return out


def fingerprint(text: str) -> str:
    """What a fake draft says about the text it was computed on."""
    return f"{len(text)}:{zlib.crc32(text.encode('utf-8', 'surrogatepass')):08x}"


class FakeLM:
    def __init__(self) -> None:
        self.load_ms = 0.0
        # fixed keys only: the status request serializes this dict on another thread
        self.info: dict[str, Any] = {
            "architecture": "fake", "calls": 0, "completed": 0, "cancelled": 0, "failures": 0,
            "steps": 0, "max_steps_after_cancel": 0, "cancels_seen": 0, "active": 0, "max_active": 0,
            "prepares": 0, "closes": 0,
        }


class FakeCaches:
    def __init__(self) -> None:
        self.caches: OrderedDict = OrderedDict()
        self.nbytes = 0


class FakeEngine:
    def __init__(self, spec: str | dict | None = None, config: Any = None):
        o = parse_spec(spec) if isinstance(spec, str) or spec is None else dict(spec)
        self.opts = o
        self.steps = int(o.get("steps", 4))
        self.delay = float(o.get("delay_ms", 1)) / 1000
        self.fail = o.get("fail", "")
        self.fail_first = int(o.get("fail_first", 10**9))
        self.print = o.get("print", "0") not in ("0", "")
        self.ignore_cancel = o.get("ignore_cancel", "0") not in ("0", "")
        self.ndrafts = int(o["drafts"]) if "drafts" in o else None
        self.prepare_steps = int(o.get("prepare_steps", 0))
        self.stale = o.get("stale", "0") not in ("0", "")  # needs_refresh() after every sync
        self.calls: deque[tuple[str, str]] = deque(maxlen=1000)  # (kind, doc) in the order run
        self.gate: threading.Semaphore | None = threading.Semaphore(0) if o.get("gated", "0") not in ("0", "") else None
        self.entered = threading.Event()  # set when a completion starts (gated tests wait on it)
        self.finished = threading.Event()  # set when a completion ends, however it ends
        self.prepare_entered = threading.Event()  # set when a (stepped) prepare starts
        self.config = config
        self.lm = FakeLM()
        self.caches = FakeCaches()
        self.guide_factory = None
        from draftline.completion.ahead import AheadStore

        self.ahead = AheadStore()  # the real store (the fake never fills it)
        self.texts: dict[str, str] = {}
        self.seen: deque[tuple[str, str]] = deque(maxlen=1000)  # (doc, fingerprint) of completions started
        self._lock = threading.Lock()
        if self.fail == "load":
            raise RuntimeError("fake engine: injected load failure")

    # -- Engine API ------------------------------------------------------------------------
    def prepare(self, doc: str, text: str, cursor: int, cancel: threading.Event | None = None):
        self.lm.info["prepares"] += 1
        self.lm.info["prepare_cursor"] = cursor
        self.calls.append(("prepare", doc))
        if self.prepare_steps:
            self.prepare_entered.set()
        for _ in range(self.prepare_steps):
            if cancel is not None and cancel.is_set():
                raise Cancelled()
            if self.gate is not None:
                self.gate.acquire()
            if self.delay:
                time.sleep(self.delay)
        self.texts[doc] = text
        return None

    def reanswer(self, doc: str, text: str, cursor: int, cancel=None, context=None) -> None:
        return None  # nothing kept to answer again (the policy then does nothing more)

    def refresh(self, doc: str, cancel: threading.Event | None = None) -> int:
        self.calls.append(("refresh", doc))
        return 0

    def needs_refresh(self, doc: str) -> bool:
        return self.stale

    def release_memory(self) -> int:
        self.lm.info["released"] = self.lm.info.get("released", 0) + 1
        return 0

    def close(self, doc: str) -> None:
        self.lm.info["closes"] += 1
        self.texts.pop(doc, None)

    def complete(self, doc: str, text: str, cursor: int, *, k: int | None = None, max_tokens: int | None = None,
                 cancel: threading.Event | None = None, method: str | None = None, guides: list | None = None,
                 trim: Callable | None = None, context: Any = None, arrived: float | None = None):
        from draftline.completion.engine import DraftOut, Result

        info = self.lm.info
        with self._lock:
            info["calls"] += 1
            n = info["calls"]
            info["active"] += 1
            info["max_active"] = max(info["max_active"], info["active"])
        self.seen.append((doc, fingerprint(text)))
        self.calls.append(("complete", doc))
        done = [0]
        set_at: list[int] = []
        if cancel is not None:  # note how many steps were done when the flag went up
            orig = cancel.set

            def hooked_set() -> None:
                if not set_at:
                    set_at.append(done[0])
                orig()

            cancel.set = hooked_set  # type: ignore[method-assign]
            if cancel.is_set():
                set_at.append(0)

        def after() -> None:
            if set_at:
                info["max_steps_after_cancel"] = max(info["max_steps_after_cancel"], done[0] - set_at[0])

        try:
            self.entered.set()
            if self.print:
                print("fake engine: print() to sys.stdout", flush=True)
                sys.stdout.write("Content-Length: 2\r\n\r\n{}")
                sys.stdout.flush()
                os.write(1, b"fake engine: raw write to fd 1\nContent-Length: 5\r\n\r\n{\"a\":")
            for _ in range(self.steps):
                if cancel is not None and cancel.is_set() and not self.ignore_cancel:
                    info["cancels_seen"] += 1
                    raise Cancelled()
                if self.gate is not None:
                    self.gate.acquire()
                if self.delay:
                    time.sleep(self.delay)
                done[0] += 1
                info["steps"] += 1
            if self.fail and self.fail != "load" and n <= self.fail_first:
                info["failures"] += 1
                if self.fail == "exc":
                    raise RuntimeError("fake engine: injected failure")
                if self.fail == "oom":
                    raise MemoryError("fake engine: injected out of memory")
                if self.fail == "die":
                    raise WorkerKill("fake engine: injected worker death")
            kk = self.ndrafts or k or getattr(self.config, "k", 3) or 3
            fp = fingerprint(text)
            drafts = [DraftOut(f"draft{i} {fp}", 0, -float(i)) for i in range(kk)]
            if self.fail == "bad" and n <= self.fail_first:
                drafts[0] = DraftOut(object(), 0, 0.0)  # type: ignore[arg-type]
            info["completed"] += 1
            return Result(drafts=drafts, timings={"total": done[0] * self.delay * 1000},
                          tokens={"prompt": len(text), "generated": done[0], "steps": done[0]})
        except Cancelled:
            info["cancelled"] += 1
            raise
        finally:
            after()
            with self._lock:
                info["active"] -= 1
            self.finished.set()


def fake_factory(spec: str):
    """An engine factory for `build_server`: the fake engine instead of the model."""

    def factory(settings: Any, progress: Any = None, roots: Any = ()) -> FakeEngine:
        from draftline.completion.build import engine_config

        return FakeEngine(spec, engine_config(settings))

    return factory


