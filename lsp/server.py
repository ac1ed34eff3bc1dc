"""The pygls language server: one handler per LSP method, each translating types and
calling into the engine through the scheduler (pygls examples style).

Flow: didChange updates our document store and, after `debounce_ms` of quiet, syncs the
document's KV cache (PIE) in the worker; inlineCompletion / completion snapshot the text
before their first await, run the engine in the worker, and answer only if the document
is still at that version (else an empty result: never a stale edit).
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import logging
import os
import threading
import time
import uuid
from collections import deque
from dataclasses import asdict
from typing import Any

from lsprotocol import types as T
from pygls.exceptions import JsonRpcException, JsonRpcInvalidParams
from pygls.lsp.server import LanguageServer

from draftline.completion.kvcache import Cancelled

from .config import MonitorSettings, Settings
from .documents import MAX_DOCUMENT_CHARS, DocumentError, Documents
from .lifecycle import MallocTrimmer, malloc_trim, malloc_tuned
from .protocol import DraftlineProtocol
from .scheduler import Scheduler

log = logging.getLogger(__name__)

VERSION = "0.1.0"
ACCEPT_COMMAND = "draftline.accept"


class ContentModified(JsonRpcException):
    CODE = -32801
    MESSAGE = "Content modified"


STALE_REFRESH_DELAY_S = 0.25  # quiet time before a refresh forced by staleness starts

class DraftlineServer(LanguageServer):
    def __init__(self, settings: Settings | None = None, test_mode: bool = False):
        super().__init__("draftline", VERSION, protocol_cls=DraftlineProtocol,
                         text_document_sync_kind=T.TextDocumentSyncKind.Incremental)
        self.settings = settings or Settings()
        self.test_mode = test_mode
        self.docs = Documents()
        self.engine = None  # draftline.completion.engine.Engine once loaded
        self.model_error: str | None = None
        self._model_future: asyncio.Future | None = None
        self._scheduler: Scheduler | None = None
        self._debounce: dict[str, asyncio.TimerHandle] = {}
        self._idle: dict[str, asyncio.TimerHandle] = {}
        self.encoding = "utf-16"
        self.counters = {"requests": 0, "shown": 0, "accepted": 0, "partially_accepted": 0,
                         "cancelled": 0, "stale": 0}
        self.last_items: dict[str, list[str]] = {}
        # after an accepted draft: uri -> (version, cursor, future of the engine result)
        self.prefetched: dict[str, tuple[int, int, asyncio.Future]] = {}
        self.accepted_pending: dict[str, str] = {}
        self.workspace_roots: list[str] = []
        self.active: str | None = None  # the document of the last request or edit
        self.engine_ready_at = 0.0  # time.perf_counter() when the model finished loading
        # the last completions' stage timings, for `draftline/status {"recent": N}` (benches,
        # and a user asking why a suggestion was slow)
        self.recent: deque[dict] = deque(maxlen=256)

    # -- infrastructure ----------------------------------------------------------------------
    @property
    def scheduler(self) -> Scheduler:
        if self._scheduler is None:
            self._scheduler = Scheduler(asyncio.get_running_loop(), on_disabled=lambda msg: self.window_show_message(
                T.ShowMessageParams(type=T.MessageType.Error, message=f"draftline: {msg}")),  # once (P7)
                on_memory_error=self._release_memory)
            if malloc_tuned():
                self._scheduler.on_idle = MallocTrimmer()
        return self._scheduler

    def _release_memory(self) -> None:
        """Worker thread, after a MemoryError: drop the KV caches (rebuilt on demand)."""
        eng = self.engine
        if eng is not None:
            freed = eng.release_memory()
            log.warning("out of memory: released %.0f MiB of KV caches", freed / 2**20)

    def log_user(self, msg: str, kind: T.MessageType = T.MessageType.Info) -> None:
        log.info(msg)
        try:
            self.window_log_message(T.LogMessageParams(type=kind, message=msg))
        except Exception:  # no writer yet (tests)
            pass

    def start_model_load(self) -> asyncio.Future:
        """Load the model in the worker, reporting work-done progress to the editor."""
        if self._model_future is not None:
            return self._model_future
        loop = asyncio.get_running_loop()
        token = str(uuid.uuid4())
        progress_ok = bool(getattr(getattr(self.client_capabilities, "window", None), "work_done_progress", False))
        if progress_ok:
            try:
                self.work_done_progress.create(token)
                self.work_done_progress.begin(token, T.WorkDoneProgressBegin(
                    title="draftline: loading model", percentage=0, cancellable=False))
            except Exception:
                progress_ok = False

        def progress(msg: str, pct: int) -> None:
            log.info("model: %s (%d%%)", msg, pct)
            if progress_ok:
                loop.call_soon_threadsafe(lambda: self.work_done_progress.report(
                    token, T.WorkDoneProgressReport(message=msg, percentage=pct)))

        s = self.settings

        def load(cancel: threading.Event):
            if self.test_mode and os.environ.get("DRAFTLINE_FAKE_ENGINE"):  # fault injection (lsp/testing.py)
                from .testing import fake_engine

                engine = fake_engine(os.environ["DRAFTLINE_FAKE_ENGINE"], engine_config(s))
            else:
                from draftline.completion import model as M
                from draftline.completion.engine import Engine

                lm = M.load(s.model, progress=progress, dtype=s.dtype, quantize=s.quantize)
                engine = Engine(lm, engine_config(s))
                if s.monitors.enabled:
                    from draftline.completion.guides import token_masker

                    token_masker(engine)
            # What was just built lives as long as the server (vocabulary indexes: ~220k
            # objects): out of the cycle collector's sight, a full collection no longer walks
            # it.  Before, one took ~90 ms and landed inside requests (a 2k sync: 149 ms vs
            # ~60).  A reload of the model unfreezes first (the old one becomes garbage).
            gc.unfreeze()
            gc.collect()
            gc.freeze()
            if malloc_tuned():  # the load's temporaries (GGUF read, quantization): back to the OS
                malloc_trim()
            return engine

        job = self.scheduler.submit(None, "load", load)

        def done(fut: asyncio.Future) -> None:
            if fut.cancelled():
                return
            exc = fut.exception()
            if exc is not None:
                self.model_error = f"draftline: model failed to load: {exc}"
                self.log_user(self.model_error, T.MessageType.Error)
                try:
                    self.window_show_message(T.ShowMessageParams(type=T.MessageType.Error, message=self.model_error))
                except Exception:
                    pass
            else:
                self.engine = fut.result()
                self.engine_ready_at = time.perf_counter()
                self.engine.guide_factory = make_guide_factory(self)
                self.start_ngram()
                if self.settings.monitors.enabled:
                    try:
                        from draftline.completion.guides import warm_up

                        warm_up()
                    except Exception:
                        log.exception("monitor warm-up failed")
                self.log_user(f"draftline: model ready ({self.engine.lm.info['architecture']}, "
                              f"{self.engine.lm.load_ms:.0f} ms)")
            if progress_ok:
                self.work_done_progress.end(token, T.WorkDoneProgressEnd(
                    message="ready" if exc is None else "failed"))

        job.future.add_done_callback(done)
        self._model_future = job.future
        return job.future

    def start_ngram(self) -> None:
        """The workspace n-gram model (superposed decoding): open documents now, the files
        under the workspace roots in a background thread (.gitignore, size caps)."""
        eng = self.engine
        if getattr(eng, "tok", None) is None:  # the fault-injection engine
            return
        try:
            from draftline.completion.ngram import NGram

            ng = NGram(eng.tok)
            for uri in self.docs.docs:
                self.ngram_update(uri, ng)
            eng.ngram = ng
            ng.build(self.workspace_roots)
        except Exception:  # an aid only: decoding works without it
            log.exception("workspace n-gram model unavailable")

    def ngram_update(self, uri: str, ng=None) -> None:
        """Record a document's text for the n-gram model (tokenized by the worker)."""
        if ng is None:
            ng = getattr(self.engine, "ngram", None)
        d = self.docs.docs.get(uri)
        if ng is not None and d is not None and not d.binary and len(d.text) <= MAX_DOCUMENT_CHARS:
            ng.update_text(uri, d.text)

    def context_of(self, doc) -> "DocContext":
        """Event loop: the snapshot a job for `doc` reads (its analysis never touches
        `self.docs` or `self.settings` from the worker thread)."""
        from types import MappingProxyType

        from draftline.completion.engine import DocContext

        others = {u: o.text for u, o in self.docs.docs.items() if u != doc.uri and not o.binary}
        return DocContext(doc.language_id, MappingProxyType(others), dataclasses.replace(self.settings.monitors))

    async def ensure_engine(self):
        fut = self.start_model_load()
        try:
            await asyncio.shield(fut)
        except Exception:
            pass
        if self.engine is None:
            raise JsonRpcException.from_error(T.ResponseError(code=-32603, message=self.model_error or "model not loaded"))
        return self.engine

    # -- edits -------------------------------------------------------------------------------
    def schedule_prepare(self, uri: str, delay: float | None = None) -> None:
        """Debounced cache sync after an edit, then an idle-time exact refresh."""
        loop = asyncio.get_running_loop()
        for table in (self._debounce, self._idle):
            h = table.pop(uri, None)
            if h is not None:
                h.cancel()
        if self.engine is None:
            return
        self.scheduler.cancel_doc(uri, ("prepare", "prefill", "refresh"))
        wait = self.settings.debounce_ms / 1000 if delay is None else delay
        self._debounce[uri] = loop.call_later(wait, self._prepare_now, uri)

    def _prepare_now(self, uri: str) -> None:
        self._debounce.pop(uri, None)
        doc = self.docs.docs.get(uri)
        eng = self.engine
        if doc is None or eng is None or doc.binary or len(doc.text) > MAX_DOCUMENT_CHARS:
            return
        if self.scheduler.has_doc(uri, ("prepare", "prefill")):
            return  # a step is queued already: it reads the document when it runs
        text = doc.text
        if doc.last_edit:
            cursor = doc.last_edit[2]
        else:  # just opened: the request's cursor if one came already (it synced for it), else the end
            cursor = doc.request_cursor if doc.request_cursor is not None else len(text)
        if doc.request_cursor is not None and doc.request_cursor > cursor:
            # the edit was above the last request's cursor: a prompt for that cursor covers
            # the edit too and keeps the cache past it (syncing for the edit's position would
            # drop everything after it, to be re-encoded by the next request)
            cursor = doc.request_cursor
        # the document the user is in first; the others' prefill in what idle time is left
        kind = "prepare" if uri == self.active else "prefill"
        job = self.scheduler.submit(uri, kind, lambda c: eng.prepare(uri, text, cursor, c),
                                    supersede=("prepare", "prefill", "refresh"))

        def done(f: asyncio.Future) -> None:
            if f.cancelled() or f.exception() is not None:
                return
            if getattr(f.result(), "more", False):  # a short window: grow it one more step
                self._prepare_now(uri)
            else:
                self._after_prepare(uri)

        job.future.add_done_callback(done)

    def prefetch_after_accept(self, uri: str) -> None:
        """The edit that inserted an accepted draft: compute the next completion now, at the
        end of the inserted text, so the editor's next request finds it ready."""
        accepted = self.accepted_pending.pop(uri, None)
        doc = self.docs.docs.get(uri)
        eng = self.engine
        if accepted is None or doc is None or eng is None or doc.last_edit is None:
            return
        a, _, b = doc.last_edit
        if doc.text[a:b] != accepted:
            return
        if self.settings.ahead and eng.ahead.lookup(uri, doc.text, b) is not None:
            return  # the accepted draft's continuation is already known
        text, version, cursor = doc.text, doc.version, b
        context = self.context_of(doc)
        job = self.scheduler.submit(uri, "complete", lambda c: eng.complete(
            uri, text, cursor, cancel=c, trim=make_trim(context.language), context=context),
            supersede=("prepare", "refresh"))
        job.future.add_done_callback(lambda f: f.cancelled() or f.exception())
        self.prefetched[uri] = (version, cursor, job.future)

    def _after_prepare(self, uri: str) -> None:
        eng = self.engine
        if eng is None or uri not in self.docs:
            return
        # past the staleness bound: soon, but not the instant a completion was answered, when
        # the next keystroke is most likely (the request that interrupts a refresh waits for
        # the chunk in flight); otherwise when the editor has been idle for idle_refresh_ms
        delay = STALE_REFRESH_DELAY_S if eng.needs_refresh(uri) else self.settings.idle_refresh_ms / 1000
        loop = asyncio.get_running_loop()
        old = self._idle.pop(uri, None)
        if old is not None:
            old.cancel()
        self._idle[uri] = loop.call_later(delay, self._refresh_now, uri)

    def defer_other_refreshes(self, uri: str) -> None:
        """A request for `uri`: other documents' exact refreshes wait for idle time.

        A refresh armed for a document the user has left (250 ms after its last request,
        when past the staleness bound) would otherwise run between this document's
        requests, and each request would wait for its chunk in flight (~100 ms at 2k)."""
        loop = asyncio.get_running_loop()
        delay = self.settings.idle_refresh_ms / 1000
        for other in list(self.docs.docs):
            if other == uri:
                continue
            h = self._idle.pop(other, None)
            if h is not None:
                h.cancel()
            cancelled = self.scheduler.cancel_doc(other, ("refresh",)) if self._scheduler is not None else 0
            if h is not None or cancelled:
                self._idle[other] = loop.call_later(delay, self._refresh_now, other)

    def _refresh_now(self, uri: str) -> None:
        self._idle.pop(uri, None)
        eng = self.engine
        if eng is None or uri not in self.docs:
            return
        job = self.scheduler.submit(uri, "refresh", lambda c: eng.refresh(uri, c), supersede=("refresh",))
        job.future.add_done_callback(lambda f: f.cancelled() or f.exception())

    # -- completion --------------------------------------------------------------------------
    async def drafts(self, uri: str, position: T.Position, k: int | None = None):
        """Run the engine for a cursor; returns (document snapshot, cursor, drafts) or None
        when the result would be stale."""
        self.counters["requests"] += 1
        t_in = time.perf_counter()
        try:
            doc = self.docs.get(uri)
        except DocumentError as e:
            raise JsonRpcInvalidParams(str(e)) from e
        text, version = doc.text, doc.version  # the snapshot, before any await
        context = self.context_of(doc)
        try:
            cursor = doc.offset(position.line, position.character, self.encoding)
        except ValueError as e:
            raise JsonRpcInvalidParams(f"position {position.line}:{position.character}: {e}") from e
        if doc.binary or len(text) > MAX_DOCUMENT_CHARS:
            return None
        doc.request_cursor = cursor
        self.active = uri
        eng = await self.ensure_engine()
        # the budget counts from the request's arrival, or from the end of the model load it waited for
        t_in = max(t_in, self.engine_ready_at)
        if self.settings.ahead:
            hit = eng.ahead.lookup(uri, text, cursor)
            if hit is not None:  # the user typed what a draft said: its rest, no model run
                from draftline.completion.engine import DraftOut, Result

                self.counters["ahead_hits"] = self.counters.get("ahead_hits", 0) + 1
                res = Result(drafts=[DraftOut(t, r) for t, r in hit],
                             timings={"total": round((time.perf_counter() - t_in) * 1000, 2)})
                self._record(uri, version, t_in, res, "ahead")
                return text, cursor, res
        pre = self.prefetched.pop(uri, None)
        if pre is not None and pre[0] == version and pre[1] == cursor and not pre[2].cancelled():
            try:
                res = await pre[2]
                self.counters["prefetch_hits"] = self.counters.get("prefetch_hits", 0) + 1
                self._record(uri, version, t_in, res, "prefetch")
                return text, cursor, res
            except Exception:
                pass  # fall through to a fresh request
        self.defer_other_refreshes(uri)
        t_submit = time.perf_counter()
        job = self.scheduler.submit(uri, "complete", lambda c: eng.complete(
            uri, text, cursor, k=k, cancel=c, trim=make_trim(context.language), context=context,
            arrived=t_in), supersede=("complete", "ahead", "prepare", "prefill", "refresh"))
        try:
            res = await job.future
            if log.isEnabledFor(logging.DEBUG):  # (the scheduler logs the job's queueing time)
                log.debug("completion %s v%d: %.0f ms after submit; engine %s %s", uri, version,
                          (time.perf_counter() - t_submit) * 1000,
                          getattr(res, "timings", None), getattr(res, "tokens", None))
        except asyncio.CancelledError:
            job.cancel.set()
            self.counters["cancelled"] += 1
            raise
        except Cancelled:
            self.counters["cancelled"] += 1
            return None
        cur = self.docs.docs.get(uri)
        if cur is None or cur.version != version:
            self.counters["stale"] += 1
            return None
        if getattr(res, "ahead_pending", False):  # continue the drafts while the user reads them
            self.scheduler.submit(uri, "ahead", lambda c: eng.continue_ahead(uri, c),
                                  supersede=("ahead",)).future.add_done_callback(
                lambda f: f.cancelled() or f.exception())
        if getattr(res, "short_window", False):
            self.schedule_prepare(uri, delay=0)  # grow the window back, a step at a time
        else:
            self._after_prepare(uri)
        self._record(uri, version, t_in, res, "engine")
        return text, cursor, res

    def _record(self, uri: str, version: int, t_in: float, res, source: str) -> None:
        self.recent.append({"uri": uri, "version": version, "source": source,
                            "ms": round((time.perf_counter() - t_in) * 1000, 1),
                            "timings": dict(getattr(res, "timings", None) or {}),
                            "tokens": dict(getattr(res, "tokens", None) or {}),
                            "drafts": len(getattr(res, "drafts", None) or [])})


def engine_config(s: Settings):
    from draftline.completion.engine import EngineConfig

    return EngineConfig(k=s.drafts, max_tokens=s.max_tokens, context_tokens=s.context_tokens,
                        method=s.method, pie=s.pie, cache_budget_mb=s.cache_budget_mb, ngram_weight=s.ngram_weight,
                        stale_limit=s.stale_limit, monitors=s.monitors.enabled,
                        latency_budget_ms=s.latency_budget_ms, ahead=s.ahead)


def workspace_roots(params: T.InitializeParams) -> list[str]:
    """Directories of the workspace folders (or rootUri / rootPath), for the n-gram scan."""
    from draftline.completion.ngram import doc_key

    uris = [f.uri for f in (params.workspace_folders or [])]
    if not uris and params.root_uri:
        uris = [params.root_uri]
    roots = [doc_key(u) for u in uris]
    if not roots and params.root_path:
        roots = [params.root_path]
    return [r for r in roots if r and os.path.isdir(r)]


def make_guide_factory(server: DraftlineServer):
    """Monitors for a document (static analysis masks identifiers while decoding)."""
    try:
        from draftline.completion.guides import monitor_guides
    except ImportError:
        return None

    def factory(doc: str, prompt, ctx) -> list:
        """Worker thread: reads the job's snapshot `ctx` only, never the server's tables."""
        try:
            return monitor_guides(server.engine, ctx.language, doc, prompt, ctx.others,
                                  ctx.monitors or MonitorSettings())
        except Exception:  # analysis never blocks a completion: no monitor = no constraint
            log.exception("monitors unavailable for %s", doc)
            return []

    return factory


def make_trim(language_id: str):
    """Syntax-aware trimming of drafts (analysis.trim), when available."""
    try:
        from draftline.analysis.trim import adds_parse_errors, trim_draft
    except ImportError:
        return None

    def trim(prefix: str, draft: str, suffix: str):
        """(text, replaced suffix chars, parses cleanly) or None for an empty draft."""
        line_after = suffix.split("\n", 1)[0]
        r = trim_draft(language_id, prefix, draft, suffix, mid_line=bool(line_after.strip()))
        if r is None:
            return None
        ok = not adds_parse_errors(language_id, prefix, r.text, suffix[r.replace:])
        return r.text, r.replace, ok

    return trim


def line_end(text: str, offset: int) -> int:
    """Offset of the end of the line holding `offset` (before its line break)."""
    for i in range(offset, len(text)):
        if text[i] in "\r\n":
            return i
    return len(text)


def build_server(settings: Settings | None = None, test_mode: bool = False) -> DraftlineServer:
    ls = DraftlineServer(settings, test_mode)

    @ls.feature(T.INITIALIZE)
    def initialize(ls: DraftlineServer, params: T.InitializeParams) -> None:
        opts = params.initialization_options
        if opts:
            ignored = ls.settings.update(opts, trusted=True)
            if ignored:
                log.info("unknown initializationOptions ignored: %s", ignored)
        enc = ls.protocol.workspace.position_encoding if ls.protocol._workspace else None
        ls.encoding = {"utf-8": "utf-8", "utf-32": "utf-32"}.get(str(getattr(enc, "value", enc) or "utf-16"), "utf-16")
        ls.workspace_roots = workspace_roots(params)

    @ls.feature(T.INITIALIZED)
    def initialized(ls: DraftlineServer, params: T.InitializedParams) -> None:
        ls.start_model_load()

    @ls.feature(T.SHUTDOWN)
    def shutdown(ls: DraftlineServer, *args) -> None:
        if ls._scheduler is not None:
            ls._scheduler.stop()

    @ls.feature(T.TEXT_DOCUMENT_DID_OPEN)
    def did_open(ls: DraftlineServer, params: T.DidOpenTextDocumentParams) -> None:
        td = params.text_document
        ls.docs.open(td.uri, td.text, td.version, td.language_id)
        ls.ngram_update(td.uri)
        ls.schedule_prepare(td.uri)

    @ls.feature(T.TEXT_DOCUMENT_DID_CHANGE)
    def did_change(ls: DraftlineServer, params: T.DidChangeTextDocumentParams) -> None:
        uri = params.text_document.uri
        try:
            ls.docs.change(uri, params.text_document.version, params.content_changes, ls.encoding)
        except DocumentError as e:
            log.warning("didChange ignored: %s", e)
            return
        ls.ngram_update(uri)
        ls.active = uri
        # a newer edit supersedes in-flight decoding of the same document, and the
        # continuation of the last answer unless the edit typed what it predicted
        eng = ls.engine
        doc = ls.docs.docs.get(uri)
        predicted = (eng is not None and doc is not None and doc.last_edit is not None and ls.settings.ahead
                     and eng.ahead.lookup(uri, doc.text, doc.last_edit[2]) is not None)
        ls.scheduler.cancel_doc(uri, ("complete",) if predicted else ("complete", "ahead"))
        ls.prefetched.pop(uri, None)
        if uri in ls.accepted_pending:
            ls.prefetch_after_accept(uri)
        else:
            ls.schedule_prepare(uri)

    @ls.feature(T.TEXT_DOCUMENT_DID_CLOSE)
    def did_close(ls: DraftlineServer, params: T.DidCloseTextDocumentParams) -> None:
        uri = params.text_document.uri
        ls.docs.close(uri)
        if ls._scheduler is not None:
            ls._scheduler.cancel_doc(uri, ("complete", "ahead", "prepare", "prefill", "refresh"))
        eng = ls.engine
        if eng is not None:
            ls.scheduler.submit(uri, "other", lambda c: eng.close(uri)).future.add_done_callback(
                lambda f: f.cancelled() or f.exception())

    @ls.feature(T.WORKSPACE_DID_CHANGE_CONFIGURATION)
    def did_change_configuration(ls: DraftlineServer, params: T.DidChangeConfigurationParams) -> None:
        ls.settings.update(params.settings, trusted=False)
        if ls.engine is not None:
            ls.engine.config = engine_config(ls.settings)

    @ls.feature(T.TEXT_DOCUMENT_INLINE_COMPLETION, T.InlineCompletionOptions())
    async def inline_completion(ls: DraftlineServer, params: T.InlineCompletionParams):
        got = await ls.drafts(params.text_document.uri, params.position)
        if got is None:
            return T.InlineCompletionList(items=[])
        text, cursor, res = got
        drafts = res.drafts  # all k: clients that show one take the first, the best ranked
        items = []
        for d in drafts:
            end = params.position
            if d.replace:
                line, ch = _position_after(text, cursor, d.replace, ls.encoding)
                end = T.Position(line=line, character=ch)
            items.append(T.InlineCompletionItem(insert_text=d.text, range=T.Range(start=params.position, end=end)))
        ls.last_items[params.text_document.uri] = [d.text for d in drafts]
        return T.InlineCompletionList(items=items)

    @ls.feature(T.TEXT_DOCUMENT_COMPLETION, T.CompletionOptions(trigger_characters=["."]))
    async def completion(ls: DraftlineServer, params: T.CompletionParams):
        got = await ls.drafts(params.text_document.uri, params.position)
        if got is None:
            return T.CompletionList(is_incomplete=True, items=[])
        text, cursor, res = got
        # replace from the start of the word being typed to the end of the line, so that
        # editors filter the items by the typed word and keep the rest of the line
        ws = cursor
        while ws > 0 and (text[ws - 1].isalnum() or text[ws - 1] == "_"):
            ws -= 1
        le = line_end(text, cursor)
        start = T.Position(*_pos(text, ws, ls.encoding))
        end = T.Position(*_pos(text, le, ls.encoding))
        word = text[ws:cursor]
        items = []
        for i, d in enumerate(res.drafts):
            rest = text[min(le, cursor + d.replace) : le]
            new_text = word + d.text + rest
            first = (word + d.text).split("\n", 1)[0]
            items.append(T.CompletionItem(
                label=first.strip() or d.text.strip().split("\n", 1)[0],
                kind=T.CompletionItemKind.Text,
                detail="draftline",
                documentation=T.MarkupContent(kind=T.MarkupKind.Markdown, value=f"```\n{word + d.text}\n```"),
                sort_text=f"{i:04d}",
                filter_text=word + d.text.split("\n", 1)[0],
                text_edit=T.TextEdit(range=T.Range(start=start, end=end), new_text=new_text),
                insert_text_format=T.InsertTextFormat.PlainText,
            ))
        return T.CompletionList(is_incomplete=True, items=items)

    # -- Copilot-compatible usage notifications -------------------------------------------
    @ls.feature("textDocument/didShowCompletion")
    def did_show(ls: DraftlineServer, params: Any) -> None:
        ls.counters["shown"] += 1

    @ls.feature("textDocument/didPartiallyAcceptCompletion")
    def did_partially_accept(ls: DraftlineServer, params: Any) -> None:
        ls.counters["partially_accepted"] += 1

    @ls.command(ACCEPT_COMMAND)
    def accept(ls: DraftlineServer, *args: Any) -> None:
        """Arguments: [uri, acceptedText]. Counts it and prefetches what follows it."""
        ls.counters["accepted"] += 1
        if isinstance(args, (list, tuple)) and len(args) >= 2 and isinstance(args[0], str) and isinstance(args[1], str):
            ls.accepted_pending[args[0]] = args[1]
            doc = ls.docs.docs.get(args[0])
            if doc is not None and doc.last_edit and doc.text[doc.last_edit[0]:doc.last_edit[2]] == args[1]:
                ls.prefetch_after_accept(args[0])  # the editor sent the insertion first

    @ls.feature("draftline/status")
    def status(ls: DraftlineServer, params: Any = None) -> dict:
        out: dict[str, Any] = {"version": VERSION, "model_error": ls.model_error,
                               "settings": asdict(ls.settings), "counters": dict(ls.counters),
                               "documents": len(ls.docs.docs), "pid": os.getpid(),
                               "gc_frozen": gc.get_freeze_count()}
        eng = ls.engine
        if eng is not None:
            out["model"] = eng.lm.info
            out["caches"] = [{"uri": uri, "tokens": len(c.tokens), "stale": c.stale, "bytes": c.nbytes}
                             for uri, c in list(eng.caches.caches.items())]
            out["cache_bytes"] = sum(v["bytes"] for v in out["caches"])
        n = params.get("recent") if isinstance(params, dict) else getattr(params, "recent", None)
        if isinstance(n, int) and n > 0:
            out["recent"] = list(ls.recent)[-n:]
        if ls._scheduler is not None and ls._scheduler.disabled_reason:
            out["disabled"] = ls._scheduler.disabled_reason
        return out

    if test_mode:
        @ls.feature("draftline/documentText")
        def document_text(ls: DraftlineServer, params: Any) -> dict | None:
            uri = params.uri if hasattr(params, "uri") else params["uri"]
            d = ls.docs.docs.get(uri)
            return None if d is None else {"text": d.text, "version": d.version}

    return ls


def _pos(text: str, offset: int, encoding: str) -> tuple[int, int]:
    from draftline.analysis.text import position_at

    return position_at(text, offset, encoding)


def _position_after(text: str, cursor: int, n: int, encoding: str) -> tuple[int, int]:
    return _pos(text, min(len(text), cursor + n), encoding)
