"""Test support: a fake engine for fault injection, a raw-bytes stdio client, and an
in-process harness. Nothing here runs outside `serve --test-mode` or the test suite.

Fake engine: `DRAFTLINE_FAKE_ENGINE="steps:N,delay_ms:M,fail:KIND,..."` with
`serve --test-mode` replaces the model with `FakeEngine` (same API as
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

import asyncio
import json
import os
import re
import subprocess
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


def fake_engine(spec: str, config: Any = None) -> FakeEngine:
    """The hook `serve --test-mode` calls instead of loading the model."""
    return FakeEngine(spec, config)


# -- a strict raw-bytes client ---------------------------------------------------------------
SERVE = [sys.executable, "-m", "draftline.lsp.cli", "serve", "--test-mode"]
_HEADER = re.compile(rb"Content-Length: (\d+)\r\n")


def frame(obj: Any) -> bytes:
    body = json.dumps(obj).encode("utf-8") if not isinstance(obj, bytes) else obj
    return b"Content-Length: %d\r\n\r\n" % len(body) + body


def exactly_once(sent: list, responses: dict[Any, list], strict: bool = True) -> list[str]:
    """P1's check: every sent id has exactly one response; with `strict`, no response
    answers an id that was never sent (null ids, for unparseable input, are allowed)."""
    problems = []
    for mid in sent:
        n = len(responses.get(mid, []))
        if n != 1:
            problems.append(f"id {mid!r}: {n} responses")
    if strict:
        known = set(sent)
        problems += [f"response to unknown id {mid!r}" for mid in responses if mid is not None and mid not in known]
    return problems


class RawServer:
    """The server as a subprocess, spoken to in bytes. Every frame on its stdout is checked
    strictly (P9): anything that is not `Content-Length: N\\r\\n[Content-Type...]\\r\\n\\r\\n`
    followed by a JSON-RPC object is recorded in `violations`. Responses are kept per id,
    so a missing or duplicate response is visible (P1)."""

    def __init__(self, fake: str | None = "steps:2,delay_ms:1", *, env: dict | None = None,
                 args: tuple = (), stderr_path: str | None = None, log_level: str | None = None):
        e = dict(os.environ)
        e.pop("DRAFTLINE_FAKE_ENGINE", None)
        if fake is not None:
            e["DRAFTLINE_FAKE_ENGINE"] = fake
        if log_level:
            e["DRAFTLINE_LOG"] = log_level
        e.update(env or {})
        self.stderr_path = stderr_path
        self._stderr = open(stderr_path, "wb") if stderr_path else subprocess.DEVNULL
        self.proc = subprocess.Popen(SERVE + list(args), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self._stderr, env=e)
        self.cond = threading.Condition()
        self.responses: dict[Any, list[dict]] = {}
        self.notifications: list[dict] = []
        self.server_requests: list[dict] = []
        self.violations: list[str] = []
        self.sent_ids: list[Any] = []
        self.eof = False
        self._next = 0
        self._wlock = threading.Lock()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    # -- reading ---------------------------------------------------------------------------
    def _read(self) -> None:
        out = self.proc.stdout
        assert out is not None
        try:
            while True:
                line = out.readline()
                if not line:
                    break
                m = _HEADER.fullmatch(line)
                if m is None:
                    self._violation(f"not a frame header: {line[:80]!r}")
                    continue
                n = int(m.group(1))
                nxt = out.readline()
                if nxt.startswith(b"Content-Type:") and nxt.endswith(b"\r\n"):
                    nxt = out.readline()
                if nxt != b"\r\n":
                    self._violation(f"header not followed by an empty line: {nxt[:80]!r}")
                    continue
                body = out.read(n)
                if len(body) != n:
                    self._violation("truncated body")
                    break
                try:
                    msg = json.loads(body)
                except ValueError:
                    self._violation(f"body is not JSON: {body[:80]!r}")
                    continue
                if not isinstance(msg, dict) or msg.get("jsonrpc") != "2.0":
                    self._violation(f"not a JSON-RPC message: {body[:80]!r}")
                    continue
                self._dispatch(msg)
        finally:
            with self.cond:
                self.eof = True
                self.cond.notify_all()

    def _violation(self, what: str) -> None:
        with self.cond:
            self.violations.append(what)
            self.cond.notify_all()

    def _dispatch(self, msg: dict) -> None:
        if "method" in msg and "id" in msg:  # a request from the server: answer it
            with self.cond:
                self.server_requests.append(msg)
            self.send({"jsonrpc": "2.0", "id": msg["id"], "result": None})
            return
        with self.cond:
            if "method" in msg:
                self.notifications.append(msg)
            else:
                self.responses.setdefault(msg.get("id"), []).append(msg)
            self.cond.notify_all()

    # -- writing ---------------------------------------------------------------------------
    def send_raw(self, data: bytes) -> None:
        with self._wlock:
            assert self.proc.stdin is not None
            self.proc.stdin.write(data)
            self.proc.stdin.flush()

    def send(self, obj: Any) -> None:
        self.send_raw(frame(obj))

    def new_id(self) -> int:
        self._next += 1
        return self._next

    def request(self, method: str, params: Any = None, msg_id: Any = None) -> Any:
        mid = self.new_id() if msg_id is None else msg_id
        msg = {"jsonrpc": "2.0", "id": mid, "method": method}
        if params is not None:
            msg["params"] = params
        self.sent_ids.append(mid)
        self.send(msg)
        return mid

    def notify(self, method: str, params: Any = None) -> None:
        msg: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
        if params is not None:
            msg["params"] = params
        self.send(msg)

    # -- waiting ---------------------------------------------------------------------------
    def wait_for(self, pred: Callable[[], Any], timeout: float = 30.0) -> Any:
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                v = pred()
                if v:
                    return v
                left = deadline - time.monotonic()
                if left <= 0 or (self.eof and not pred()):
                    raise TimeoutError("condition not met" + (" (server stdout closed)" if self.eof else ""))
                self.cond.wait(min(left, 0.5))

    def until(self, fn: Callable[[], Any], timeout: float = 30.0, every: float = 0.02) -> Any:
        """Poll fn() (which may itself talk to the server) until it returns something true."""
        deadline = time.monotonic() + timeout
        while True:
            v = fn()
            if v:
                return v
            if time.monotonic() > deadline or not self.alive():
                raise TimeoutError("condition not met" + ("" if self.alive() else " (server exited)"))
            time.sleep(every)

    def engine_info(self) -> dict:
        """The fake engine's counters (status "model"); {} until the engine is loaded."""
        return self.status().get("model") or {}

    def loaded_engine_info(self, timeout: float = 30.0) -> dict:
        """engine_info() once the engine has loaded (it loads in the background after
        `initialized`: reading a counter before that read {} and raced the load)."""
        return self.until(lambda: (i := self.engine_info()) and "calls" in i and i, timeout)

    def wait(self, mid: Any, timeout: float = 30.0) -> dict:
        return self.wait_for(lambda: (self.responses.get(mid) or [None])[0], timeout)

    def call(self, method: str, params: Any = None, timeout: float = 30.0) -> dict:
        return self.wait(self.request(method, params), timeout)

    def result(self, method: str, params: Any = None, timeout: float = 30.0) -> Any:
        r = self.call(method, params, timeout)
        if "error" in r:
            raise RuntimeError(f"{method}: {r['error']}")
        return r["result"]

    def initialize(self, init_options: dict | None = None, capabilities: dict | None = None,
                   process_id: int | None = None, **extra: Any) -> dict:
        params = {"processId": process_id if process_id is not None else os.getpid(), "rootUri": None,
                  "capabilities": capabilities or {}, **extra}
        if init_options is not None:
            params["initializationOptions"] = init_options
        r = self.result("initialize", params, timeout=60)
        self.notify("initialized", {})
        return r

    def open(self, uri: str, text: str, version: int = 1, language: str = "python") -> None:
        self.notify("textDocument/didOpen", {"textDocument": {"uri": uri, "languageId": language,
                                                              "version": version, "text": text}})

    def change(self, uri: str, version: int, changes: list[dict]) -> None:
        self.notify("textDocument/didChange", {"textDocument": {"uri": uri, "version": version},
                                               "contentChanges": changes})

    def document_text(self, uri: str, timeout: float = 30.0) -> dict | None:
        return self.result("draftline/documentText", {"uri": uri}, timeout)

    def status(self, timeout: float = 30.0) -> dict:
        return self.result("draftline/status", {}, timeout)

    def inline(self, uri: str, line: int, character: int) -> Any:
        return self.request("textDocument/inlineCompletion", {
            "textDocument": {"uri": uri}, "position": {"line": line, "character": character},
            "context": {"triggerKind": 1}})

    # -- checks ----------------------------------------------------------------------------
    def missing_or_duplicate(self, ids: list | None = None) -> list[str]:
        """Requests without exactly one response, and responses to ids never sent."""
        with self.cond:
            return exactly_once(self.sent_ids if ids is None else ids, self.responses, strict=ids is None)

    def drain(self, timeout: float = 30.0) -> None:
        """Wait until every request sent so far has at least one response."""
        self.wait_for(lambda: all(self.responses.get(i) for i in self.sent_ids), timeout)

    def messages(self, method: str) -> list[dict]:
        with self.cond:
            return [n for n in self.notifications if n.get("method") == method]

    def alive(self) -> bool:
        return self.proc.poll() is None

    def rss(self) -> int:
        import psutil

        return psutil.Process(self.proc.pid).memory_info().rss

    def shutdown_and_exit(self, timeout: float = 30.0) -> int:
        r = self.call("shutdown", None, timeout)
        assert "error" not in r, r
        self.notify("exit")
        return self.proc.wait(timeout)

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.kill()
            except OSError:
                pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            pass
        for f in (self.proc.stdin, self.proc.stdout):
            try:
                f.close()
            except Exception:
                pass
        if self._stderr not in (None, subprocess.DEVNULL):
            self._stderr.close()

    def stderr_text(self) -> str:
        if not self.stderr_path:
            return ""
        with open(self.stderr_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def __enter__(self) -> "RawServer":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


# -- in-process harness --------------------------------------------------------------------------
class CaptureWriter:
    """Collects the frames the protocol writes (on the loop thread)."""

    def __init__(self, on_message: Callable[[dict], None]):
        self.on_message = on_message
        self.raw: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.raw.append(data)
        head, _, body = data.partition(b"\r\n\r\n")
        assert head.startswith(b"Content-Length: ") and int(head[16:]) == len(body), head
        self.on_message(json.loads(body))

    def close(self) -> None:
        pass


class InProc:
    """The real server object in this process and this event loop, fed JSON-RPC messages
    through the same Dispatcher as stdio; for scheduling tests that need barriers."""

    def __init__(self, settings: Any = None, fake: str | None = "steps:2,delay_ms:0"):
        from .lifecycle import Dispatcher
        from .server import build_server

        if fake is not None:
            os.environ["DRAFTLINE_FAKE_ENGINE"] = fake
        self.ls = build_server(settings, test_mode=True)
        self.loop = asyncio.get_running_loop()
        self.responses: dict[Any, list[dict]] = {}
        self.notifications: list[dict] = []
        self._changed = asyncio.Event()
        self.ls.protocol.attach(self.loop, CaptureWriter(self._on_message))
        self.ls.protocol.on_exit = lambda: None
        self.dispatcher = Dispatcher(self.ls.protocol, self.loop)
        self.task = asyncio.ensure_future(self.dispatcher.run())
        self._next = 0

    def _on_message(self, msg: dict) -> None:
        if "method" in msg and "id" in msg:
            from .lifecycle import Frame

            self.dispatcher.feed(Frame(message={"jsonrpc": "2.0", "id": msg["id"], "result": None}))
        elif "method" in msg:
            self.notifications.append(msg)
        else:
            self.responses.setdefault(msg.get("id"), []).append(msg)
        self._changed.set()

    def send(self, msg: dict) -> None:
        from .lifecycle import Frame

        self.dispatcher.feed(Frame(message=json.loads(json.dumps(msg))))

    def request(self, method: str, params: Any = None) -> int:
        self._next += 1
        self.send({"jsonrpc": "2.0", "id": self._next, "method": method, "params": params})
        return self._next

    def notify(self, method: str, params: Any = None) -> None:
        self.send({"jsonrpc": "2.0", "method": method, "params": params})

    async def wait(self, mid: Any, timeout: float = 30.0) -> dict:
        async def get() -> dict:
            while not self.responses.get(mid):
                self._changed.clear()
                await self._changed.wait()
            return self.responses[mid][0]

        return await asyncio.wait_for(get(), timeout)

    async def call(self, method: str, params: Any = None, timeout: float = 30.0) -> dict:
        return await self.wait(self.request(method, params), timeout)

    async def sync(self) -> None:
        """Returns once every message sent before it has been dispatched (a round trip)."""
        await self.call("draftline/status", {})

    async def initialize(self, init_options: dict | None = None, capabilities: dict | None = None,
                         **extra: Any) -> dict:
        r = await self.call("initialize", {"processId": None, "rootUri": None, "capabilities": capabilities or {},
                                           "initializationOptions": init_options, **extra})
        self.notify("initialized", {})
        return r

    async def engine(self, timeout: float = 30.0):
        fut = self.ls.start_model_load()
        await asyncio.wait_for(asyncio.shield(fut), timeout)
        return self.ls.engine

    def open(self, uri: str, text: str, version: int = 1, language: str = "python") -> None:
        self.notify("textDocument/didOpen", {"textDocument": {"uri": uri, "languageId": language,
                                                              "version": version, "text": text}})

    def change(self, uri: str, version: int, changes: list[dict]) -> None:
        self.notify("textDocument/didChange", {"textDocument": {"uri": uri, "version": version},
                                               "contentChanges": changes})

    def inline(self, uri: str, line: int, character: int) -> int:
        return self.request("textDocument/inlineCompletion", {
            "textDocument": {"uri": uri}, "position": {"line": line, "character": character},
            "context": {"triggerKind": 1}})

    async def close(self) -> None:
        if self.ls._scheduler is not None:
            self.ls._scheduler.stop()
        self.task.cancel()
        try:
            await self.task
        except (asyncio.CancelledError, Exception):
            pass
        os.environ.pop("DRAFTLINE_FAKE_ENGINE", None)
