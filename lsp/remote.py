"""The edge's engine when `engine` names a team engine (`draftline engine serve`): the
surface the server and the policy call (`complete`, `prepare`, `refresh`, `needs_refresh`,
`continue_ahead`, `ahead.lookup`, `close`, ...) as HTTP calls to the Ray Serve application
(`completion.engine_app`).

Why it looks like the embedded engine: the server, the policy and the scheduler stay as
they are (debounce, cancel, requests before background work), and only the factory
differs (`lsp.server.default_engine_factory`).  What stays here, on the editor's machine:
the documents, the protocol, and the typed-ahead store (a keystroke that types what a
shown draft said is answered without a round trip; the drafts come back with each answer,
their continuations with each `ahead` call).

The wire (`completion.wire`): each call carries an edit against the version this edge last
sent; a replica that lacks it answers `need_text` and the text goes once, whole.  A failed
call (the replica died, the proxy is restarting it) is retried with the whole text for up
to `RETRY_S`: the router pins the document to another live replica, which rebuilds the
cache from that text, so the request is slower, not an error.  A cancelled job sends
`cancel` for its request id and returns at once (the replica stops within a step).
"""

from __future__ import annotations

import concurrent.futures
import getpass
import http.client
import itertools
import json
import logging
import os
import secrets
import socket
import threading
import time
import urllib.parse
from collections import Counter
from typing import Any

from draftline.completion import wire
from draftline.completion.kvcache import Cancelled, SyncStats

log = logging.getLogger(__name__)

#: how long a call keeps retrying a failed engine (a replica restarting takes ~3 s here)
RETRY_S = 30.0
BACKOFF_S = (0.05, 0.1, 0.2, 0.4, 0.8, 1.0)
TIMEOUT_S = 120.0  # one HTTP exchange (a cold 2k window on a loaded CPU replica is seconds)
POLL_S = 0.005  # how often a waiting call looks at its cancel flag
HELLO_TIMEOUT_S = 10.0


class EngineError(RuntimeError):
    """The engine answered with an error, or stayed unreachable past `RETRY_S`."""


class EngineAuthError(EngineError):
    """The engine refused the token: a setting to fix, never retried."""


class EngineClient:
    """JSON over HTTP/1.1 keep-alive, one connection per calling thread."""

    def __init__(self, url: str, token: str, timeout: float = TIMEOUT_S) -> None:
        u = urllib.parse.urlsplit(url if "://" in url else f"http://{url}")
        if u.scheme not in ("http", "https") or not u.hostname:
            raise EngineError(f"engine address {url!r}: expected http://HOST:PORT{wire.ROUTE}")
        self.url, self.token, self.timeout = url, token, timeout
        self.https = u.scheme == "https"
        self.host, self.port = u.hostname, u.port or (443 if self.https else 80)
        self.path = u.path or wire.ROUTE
        self._local = threading.local()

    def _conn(self) -> http.client.HTTPConnection:
        c = getattr(self._local, "conn", None)
        if c is None:
            cls = http.client.HTTPSConnection if self.https else http.client.HTTPConnection
            c = self._local.conn = cls(self.host, self.port, timeout=self.timeout)
        return c

    def post(self, msg: dict, session: str | None) -> tuple[int, dict, int]:
        """One exchange: (HTTP status, JSON body or {"error": text}, bytes sent)."""
        body = json.dumps(msg, separators=(",", ":")).encode("ascii")
        headers = {"Content-Type": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        if session:
            headers[wire.SESSION_HEADER] = session
        for attempt in (0, 1):  # a keep-alive connection the server closed: once more, fresh
            conn = self._conn()
            try:
                conn.request("POST", self.path, body, headers)
                resp = conn.getresponse()
                raw = resp.read()
                break
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                conn.close()
                self._local.conn = None
                if attempt:
                    raise
            except Exception:
                conn.close()
                self._local.conn = None
                raise
        try:
            out = json.loads(raw)
            if not isinstance(out, dict):
                raise ValueError
        except ValueError:
            out = {"error": raw[:300].decode("utf-8", "replace") or f"HTTP {resp.status}"}
        return resp.status, out, len(body)


class _LM:
    """What the server reads of `engine.lm`: `info` (status, the ready message), `load_ms`."""

    def __init__(self, owner: "RemoteEngine") -> None:
        self.owner = owner
        self.load_ms = 0.0

    @property
    def info(self) -> dict:
        return self.owner.info()


class _CacheView:
    """A document's cache as its replica last reported it (status, `needs_refresh`)."""

    __slots__ = ("tokens", "stale", "nbytes")

    def __init__(self, tokens: int, stale: int, nbytes: int) -> None:
        self.tokens, self.stale, self.nbytes = range(tokens), stale, nbytes


class _Caches:
    def __init__(self) -> None:
        self.caches: dict[str, _CacheView] = {}


class RemoteEngine:
    """The model side on a team engine; called from the server's worker thread (and
    `ahead.lookup`, `needs_refresh`, `lm.info` from the event loop: local reads only)."""

    def __init__(self, settings: Any, progress=None, roots: list | tuple = ()) -> None:
        from draftline.completion.ahead import AheadStore
        from draftline.completion.build import engine_config

        token = settings.engine_token or os.environ.get("DRAFTLINE_ENGINE_TOKEN", "")
        self.client = EngineClient(settings.engine, token)
        self.config = engine_config(settings)
        self.monitor_settings = settings.monitors
        self.user = settings.engine_user or f"{getpass.getuser()}@{socket.gethostname()}"
        self.workspace = roots[0] if roots else ""
        self.ahead = AheadStore()
        self.caches = _Caches()
        self.lm = _LM(self)
        self.nonce = secrets.token_hex(4)
        self._seq = itertools.count(1)
        self._lock = threading.Lock()
        self._sent: dict[str, tuple[str, str]] = {}  # uri -> (version, text) the engine was last sent
        self._last: dict[str, tuple[str, int]] = {}  # uri -> (text, cursor) of the last answer
        self._ids: dict[str, str] = {}
        self.routing: dict[str, Counter] = {}  # uri -> replica -> calls answered
        self.pids: dict[str, int] = {}
        # (every key present from the start: the status request copies them on the event loop)
        self.counters = Counter(dict.fromkeys(("completions", "edits", "full_texts", "need_text", "retries",
                                               "cancelled", "errors"), 0))
        self.bytes = Counter(dict.fromkeys(("complete", "prepare", "refresh", "ahead"), 0))  # request bytes per op
        self.remote_info: dict = {}
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="draftline-engine")
        t0 = time.perf_counter()
        if progress is not None:
            progress(f"connecting to the engine at {self.client.url}", 50)
        try:  # (a short timeout: a host that drops packets must not hold the load for minutes)
            st, body, _ = EngineClient(settings.engine, token, timeout=HELLO_TIMEOUT_S).post({"op": "hello"}, None)
        except OSError as e:  # down for now: requests retry, and say so if it stays down
            log.warning("engine at %s unreachable (%s): requests will retry", self.client.url, e)
        else:
            if st == 401:
                raise EngineAuthError(f"the engine at {self.client.url} refused the token: set `engineToken` "
                                      "(or DRAFTLINE_ENGINE_TOKEN) to the engine's")
            if st != 200:
                log.warning("engine at %s: hello answered %d %s", self.client.url, st, body.get("error"))
            else:
                self.remote_info = body
        self.lm.load_ms = (time.perf_counter() - t0) * 1000

    # -- reporting ------------------------------------------------------------------------
    def info(self) -> dict:
        model = self.remote_info.get("model") or {}
        with self._lock:
            return {"architecture": f"remote {model.get('architecture', '?')}", "engine": self.client.url,
                    "model": model, "replicas": dict(self.pids),
                    "routing": {u: dict(c) for u, c in self.routing.items()},
                    "counters": dict(self.counters), "bytes": dict(self.bytes)}

    def doc_id(self, uri: str) -> str:
        d = self._ids.get(uri)
        if d is None:
            d = self._ids[uri] = wire.doc_id(self.user, self.workspace, uri)
        return d

    # -- the call ---------------------------------------------------------------------------
    def _doc_fields(self, uri: str, text: str, full: bool) -> dict:
        """The document part of a message: nothing new, an edit, or the whole text."""
        sent = self._sent.get(uri)
        if sent is not None and not full and sent[1] == text:
            return {"version": sent[0], "base": sent[0], "crc": wire.crc(text)}
        version = f"{self.nonce}.{next(self._seq)}"
        out: dict[str, Any] = {"version": version, "crc": wire.crc(text)}
        if sent is not None and not full:
            out["base"], out["edit"] = sent[0], wire.diff(sent[1], text)
        else:
            out["text"] = text
        self._sent[uri] = (version, text)  # optimistic: a replica that missed it asks again
        return out

    def _call(self, op: str, uri: str, fields, cancel: threading.Event | None) -> dict:
        """One logical call, through `need_text` and a dead replica's retries."""
        doc = self.doc_id(uri)
        deadline = time.monotonic() + RETRY_S
        full, failures = False, 0
        while True:
            rid = f"{self.nonce}.r{next(self._seq)}"
            msg = {"op": op, "doc": doc, "rid": rid, **fields(full)}
            if "text" in msg:
                self.counters["full_texts"] += 1
            elif "edit" in msg:
                self.counters["edits"] += 1
            try:
                status, body = self._exchange(op, msg, doc, rid, cancel)
            except (OSError, http.client.HTTPException) as e:
                status, body = 0, {"error": f"{type(e).__name__}: {e}"}
            if status == 401:
                raise EngineAuthError(f"the engine at {self.client.url} refused the token: {body.get('error')}")
            if status == 200 and body.get("need_text"):
                self.counters["need_text"] += 1
                if full:
                    raise EngineError(f"{op}: the engine asked again for the text it was sent")
                full = True
                continue
            if status == 200:
                self._note(uri, body)
                if body.get("cancelled"):
                    raise Cancelled()
                return body
            if status in (400, 413) or (status == 500 and "failed on replica" in str(body.get("error"))):
                self.counters["errors"] += 1
                raise EngineError(f"{op}: {body.get('error')}")
            # the replica died, or the proxy has none for now: again, with the whole text
            # (the document may land on another replica)
            failures += 1
            self.counters["retries"] += 1
            full = True
            if time.monotonic() > deadline:
                self.counters["errors"] += 1
                raise EngineError(f"engine at {self.client.url} failed {failures} times for {op} "
                                  f"({status or 'no answer'}): {body.get('error')}")
            log.info("engine %s for %s: %s %s; retrying", op, uri, status or "no answer", str(body.get("error"))[:200])
            wait = BACKOFF_S[min(failures - 1, len(BACKOFF_S) - 1)]
            if cancel is not None and cancel.wait(wait):
                raise Cancelled()
            if cancel is None:
                time.sleep(wait)

    def _exchange(self, op: str, msg: dict, doc: str, rid: str, cancel: threading.Event | None) -> tuple[int, dict]:
        fut = self._pool.submit(self.client.post, msg, doc)
        while True:
            try:
                status, body, n = fut.result(timeout=POLL_S if cancel is not None else None)
                self.bytes[op] += n
                return status, body
            except concurrent.futures.TimeoutError:
                if cancel is not None and cancel.is_set():
                    self.counters["cancelled"] += 1
                    self._pool.submit(self._quiet_post, {"op": "cancel", "rid": rid}, doc)
                    raise Cancelled() from None

    def _quiet_post(self, msg: dict, doc: str | None) -> None:
        try:
            self.client.post(msg, doc)
        except Exception as e:  # noqa: BLE001 (a cancel or close that did not arrive: the replica's LRU ends it)
            log.debug("engine %s not delivered: %s", msg.get("op"), e)

    def _note(self, uri: str, body: dict) -> None:
        rep = body.get("replica")
        with self._lock:
            if isinstance(rep, str):
                self.routing.setdefault(uri, Counter())[rep] += 1
                if isinstance(body.get("pid"), int):
                    self.pids[rep] = body["pid"]
            c = body.get("cache")
            if isinstance(c, dict):
                self.caches.caches[uri] = _CacheView(int(c.get("tokens", 0)), int(c.get("stale", 0)),
                                                     int(c.get("bytes", 0)))

    def _request_config(self) -> dict:
        c = self.config
        return {"k": c.k, "max_tokens": c.max_tokens, "method": c.method, "latency_budget_ms": c.latency_budget_ms,
                "ahead": c.ahead, "monitors": c.monitors, "stale_limit": c.stale_limit, "pie": c.pie,
                "speculate": c.speculate}

    # -- the engine surface -------------------------------------------------------------------
    def complete(self, doc: str, text: str, cursor: int, *, k: int | None = None, cancel=None,
                 context: Any = None, arrived: float | None = None, **_ignored: Any):
        return self._answer("complete", doc, text, cursor, k, cancel, context, arrived)

    def reanswer(self, doc: str, text: str, cursor: int, cancel=None, context: Any = None):
        """`Engine.reanswer` on the document's replica (None: nothing to do there)."""
        return self._answer("reanswer", doc, text, cursor, None, cancel, context, None)

    def _answer(self, op: str, doc: str, text: str, cursor: int, k: int | None, cancel, context: Any,
                arrived: float | None):
        from draftline.completion.ahead import Entry
        from draftline.completion.engine import DraftOut, Result

        t0 = time.perf_counter()
        ctx: dict[str, Any] = {}
        if context is not None:
            mon = context.monitors if context.monitors is not None else self.monitor_settings
            ctx = {"language": context.language, "jedi": bool(context.jedi),
                   "monitors": {k2: bool(getattr(mon, k2, True))
                                for k2 in ("enabled", "members", "names", "kwargs", "modules", "scopes")}}
        cfg = self._request_config()

        def fields(full: bool) -> dict:
            elapsed = (time.perf_counter() - arrived) * 1000 if arrived is not None else 0.0
            return {**self._doc_fields(doc, text, full), "cursor": cursor, "k": k, "context": ctx,
                    "config": cfg, "elapsed_ms": round(max(0.0, elapsed), 1)}

        body = self._call(op, doc, fields, cancel)
        if body.get("none"):
            return None
        drafts = [DraftOut(str(t), int(r), float(lp)) for t, r, lp in body.get("drafts") or []]
        timings = dict(body.get("timings") or {})
        total = (time.perf_counter() - t0) * 1000
        timings["wire"] = round(total - float(timings.get("total", 0.0)), 2)  # HTTP, proxy, queue
        timings["queued"] = body.get("queued_ms", 0.0)
        timings["total"] = round(total, 2)
        tokens = dict(body.get("tokens") or {})
        tokens["replica"] = body.get("replica")
        if self.config.ahead and drafts:
            self.ahead.put(doc, Entry(prefix=text[:cursor], suffix=text[cursor:], texts=tuple(d.text for d in drafts),
                                      replace=tuple(d.replace for d in drafts)))
            self._last[doc] = (text, cursor)
        self.counters["completions" if op == "complete" else "reanswers"] += 1
        return Result(drafts=drafts, timings=timings, tokens=tokens, short_window=bool(body.get("short_window")),
                      ahead_pending=bool(body.get("ahead_pending")))

    def prepare(self, doc: str, text: str, cursor: int, cancel=None) -> SyncStats:
        cfg = self._request_config()
        body = self._call("prepare", doc, lambda full: {**self._doc_fields(doc, text, full), "cursor": cursor,
                                                        "config": cfg}, cancel)
        return SyncStats(mode=str(body.get("mode", "remote")), computed=int(body.get("computed", 0)),
                         more=bool(body.get("more")))

    def refresh(self, doc: str, cancel=None) -> int:
        if doc not in self.caches.caches:
            return 0
        return int(self._call("refresh", doc, lambda full: {}, cancel).get("n", 0))

    def needs_refresh(self, doc: str) -> bool:
        c = self.caches.caches.get(doc)
        return c is not None and c.stale > self.config.stale_limit

    def continue_ahead(self, doc: str, cancel=None) -> int:
        from draftline.completion.ahead import Entry

        body = self._call("ahead", doc, lambda full: {}, cancel)
        e, last = body.get("entry"), self._last.get(doc)
        if isinstance(e, dict) and last is not None and isinstance(e.get("texts"), list):
            text, cursor = last
            self.ahead.put(doc, Entry(prefix=text[:cursor], suffix=text[cursor:],
                                      texts=tuple(str(t) for t in e["texts"]),
                                      replace=tuple(int(r) for r in e.get("replace") or [])))
        return int(body.get("n", 0))

    def cache_of(self, doc: str) -> _CacheView | None:
        return self.caches.caches.get(doc)

    def close(self, doc: str) -> None:
        self.ahead.drop(doc)
        self._last.pop(doc, None)
        self.caches.caches.pop(doc, None)
        if self._sent.pop(doc, None) is not None:  # (not waited for: the replica's LRU would end it anyway)
            self._pool.submit(self._quiet_post, {"op": "close", "doc": self.doc_id(doc)}, self.doc_id(doc))

    def release_memory(self) -> int:
        """The caches are the engine's: here only the kept drafts go."""
        for uri in list(self._last):
            self.ahead.drop(uri)
        self._last.clear()
        return 0

    def warm_up(self) -> float:
        return 0.0  # the replicas warmed up when they started
