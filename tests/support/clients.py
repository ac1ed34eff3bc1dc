"""Clients for the tests: a strict raw-bytes client of the server process, and an in-process
harness on the real server object (tests only; never in the installed package)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

# -- a strict raw-bytes client ---------------------------------------------------------------
#: the tests' own entry point: `draftline serve` with the fake engine when DRAFTLINE_FAKE_ENGINE is set
SERVE = [sys.executable, str(Path(__file__).resolve().parent / "serve.py")]
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


def keep(msg: dict, notifications: list[dict], responses: dict[Any, list[dict]]) -> None:
    """File a message from the server that is not a request: a notification, or a response
    under its id (every response kept, so a duplicate shows)."""
    if "method" in msg:
        notifications.append(msg)
    else:
        responses.setdefault(msg.get("id"), []).append(msg)


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
            keep(msg, self.notifications, self.responses)
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
        from draftline.lsp.lifecycle import Dispatcher
        from draftline.lsp.server import build_server

        from .fake_engine import fake_factory
        from .serve import add_test_requests

        self.ls = build_server(settings, fake_factory(fake) if fake is not None else None)
        add_test_requests(self.ls)
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
            from draftline.lsp.framing import Frame

            self.dispatcher.feed(Frame(message={"jsonrpc": "2.0", "id": msg["id"], "result": None}))
        else:
            keep(msg, self.notifications, self.responses)
        self._changed.set()

    def send(self, msg: dict) -> None:
        from draftline.lsp.framing import Frame

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
