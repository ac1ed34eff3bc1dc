"""The pygls language server: one handler per LSP method, each translating types and
calling into the engine through the scheduler (pygls examples style).

Flow (docs/architecture.md): didChange updates the document store (`documents`) and hands
the timing of background cache work to `policy`; inlineCompletion / completion snapshot
the text before their first await, answer from the kept drafts when the user typed what
they predicted (`completion.ahead`, no model run), else run the engine in the worker
(`scheduler`) and answer only if the document is still at that version (else an empty
result: never a stale edit).  The model side is built by `engine_factory` (by default
`completion.build.build_engine`), never assembled here.
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
from typing import Any, Callable

from lsprotocol import types as T
from pygls.exceptions import JsonRpcException, JsonRpcInvalidParams
from pygls.lsp.server import LanguageServer

from draftline.completion.kvcache import Cancelled

from .config import Settings
from .documents import MAX_DOCUMENT_CHARS, DocumentError, Documents
from .memory import MallocTrimmer, malloc_trim, malloc_tuned
from .policy import CachePolicy, _quiet
from .protocol import DraftlineProtocol
from .scheduler import BACKGROUND, Scheduler

log = logging.getLogger(__name__)

VERSION = "0.1.0"
ACCEPT_COMMAND = "draftline.accept"
#: a document this large is analysed without jedi (tree-sitter scopes of its window only)
ANALYSIS_MAX_CHARS = 512 * 1024

#: what a request's snapshot holds of the other open documents (Documents.recent)
OTHERS_COUNT = 8
OTHERS_MAX_CHARS = ANALYSIS_MAX_CHARS

EngineFactory = Callable[[Settings, Callable[[str, int], None], list], Any]


def default_engine_factory(settings: Settings, progress, roots: list):
    if settings.engine:  # a team engine (`draftline engine serve`): the model side is remote
        from .remote import RemoteEngine

        return RemoteEngine(settings, progress, roots)
    from draftline.completion.build import build_engine

    return build_engine(settings, progress, roots)


class DraftlineServer(LanguageServer):
    def __init__(self, settings: Settings | None = None, engine_factory: EngineFactory | None = None):
        super().__init__("draftline", VERSION, protocol_cls=DraftlineProtocol,
                         text_document_sync_kind=T.TextDocumentSyncKind.Incremental)
        self.settings = settings or Settings()
        self.engine_factory = engine_factory or default_engine_factory
        self.docs = Documents()
        self.policy = CachePolicy(self)
        self.engine = None  # the model side (completion.engine.Engine) once loaded
        self.model_error: str | None = None
        self._model_future: asyncio.Future | None = None
        self._scheduler: Scheduler | None = None
        self.encoding = "utf-16"
        self.counters = {"requests": 0, "shown": 0, "accepted": 0, "partially_accepted": 0,
                         "cancelled": 0, "stale": 0}
        self.workspace_roots: list[str] = []
        self.active: str | None = None  # the document of the last request or edit
        self.engine_ready_at = 0.0  # time.perf_counter() when the model finished loading
        # the last completions' stage timings, for `draftline/status {"recent": N}` (benches,
        # and a user asking why a suggestion was slow)
        self.recent: deque[dict] = deque(maxlen=256)

    # -- infrastructure ----------------------------------------------------------------------
    @property
    def has_scheduler(self) -> bool:
        return self._scheduler is not None

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
        """Build the engine in the worker, reporting work-done progress to the editor."""
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

        settings, roots = dataclasses.replace(self.settings), list(self.workspace_roots)

        def load(cancel: threading.Event):
            engine = self.engine_factory(settings, progress, roots)
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
                for uri in list(self.docs.docs):
                    self.note_text(uri)
                self.log_user(f"draftline: model ready ({self.engine.lm.info['architecture']}, "
                              f"{self.engine.lm.load_ms:.0f} ms)")
            if progress_ok:
                self.work_done_progress.end(token, T.WorkDoneProgressEnd(
                    message="ready" if exc is None else "failed"))

        job.future.add_done_callback(done)
        self._model_future = job.future
        return job.future

    def note_text(self, uri: str) -> None:
        """A document's new text, for the engine's workspace n-gram model (when it has one)."""
        note = getattr(self.engine, "note_text", None)
        d = self.docs.docs.get(uri)
        if note is not None and d is not None and not d.binary and len(d.text) <= MAX_DOCUMENT_CHARS:
            note(uri, d.text)

    def context_of(self, doc) -> Any:
        """Event loop: the snapshot (`completion.engine.DocContext`) a job for `doc` reads:
        its analysis never touches `self.docs` or `self.settings` from the worker thread."""
        from types import MappingProxyType

        from draftline.completion.engine import DocContext

        self.docs.touch(doc)
        others = self.docs.recent(doc.language_id, doc.uri, OTHERS_COUNT, OTHERS_MAX_CHARS)
        return DocContext(doc.language_id, MappingProxyType(others), dataclasses.replace(self.settings.monitors),
                          jedi=len(doc.text) <= ANALYSIS_MAX_CHARS)

    async def ensure_engine(self):
        fut = self.start_model_load()
        try:
            await asyncio.shield(fut)
        except Exception:
            pass
        if self.engine is None:
            raise JsonRpcException.from_error(T.ResponseError(code=-32603, message=self.model_error or "model not loaded"))
        return self.engine

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
        pre = self.policy.take_prefetched(uri, version, cursor)
        if pre is not None:
            try:
                res = await pre
                self.counters["prefetch_hits"] = self.counters.get("prefetch_hits", 0) + 1
                self._record(uri, version, t_in, res, "prefetch")
                return text, cursor, res
            except Exception:
                pass  # fall through to a fresh request
        self.policy.before_request(uri)
        t_submit = time.perf_counter()
        job = self.scheduler.submit(uri, "complete", lambda c: eng.complete(
            uri, text, cursor, k=k, cancel=c, context=context, arrived=t_in),
            supersede=("complete",) + BACKGROUND)
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
        self.policy.after_answer(uri, res)
        self._record(uri, version, t_in, res, "engine")
        return text, cursor, res

    def _record(self, uri: str, version: int, t_in: float, res, source: str) -> None:
        self.recent.append({"uri": uri, "version": version, "source": source,
                            "ms": round((time.perf_counter() - t_in) * 1000, 1),
                            "timings": dict(getattr(res, "timings", None) or {}),
                            "tokens": dict(getattr(res, "tokens", None) or {}),
                            "drafts": len(getattr(res, "drafts", None) or [])})


def workspace_roots(params: T.InitializeParams) -> list[str]:
    """Directories of the workspace folders (or rootUri / rootPath), for the n-gram scan."""
    from draftline.completion.workspace import doc_key

    uris = [f.uri for f in (params.workspace_folders or [])]
    if not uris and params.root_uri:
        uris = [params.root_uri]
    roots = [doc_key(u) for u in uris]
    if not roots and params.root_path:
        roots = [params.root_path]
    return [r for r in roots if r and os.path.isdir(r)]


def line_end(text: str, offset: int) -> int:
    """Offset of the end of the line holding `offset` (before its line break)."""
    for i in range(offset, len(text)):
        if text[i] in "\r\n":
            return i
    return len(text)


def build_server(settings: Settings | None = None, engine_factory: EngineFactory | None = None) -> DraftlineServer:
    """The server with its handlers; `engine_factory(settings, progress, workspace_roots)`
    builds the model side (default: `completion.build.build_engine`)."""
    ls = DraftlineServer(settings, engine_factory)

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
        if ls.has_scheduler:
            ls.scheduler.stop()

    @ls.feature(T.TEXT_DOCUMENT_DID_OPEN)
    def did_open(ls: DraftlineServer, params: T.DidOpenTextDocumentParams) -> None:
        td = params.text_document
        ls.docs.open(td.uri, td.text, td.version, td.language_id)
        ls.note_text(td.uri)
        ls.policy.on_open(td.uri)

    @ls.feature(T.TEXT_DOCUMENT_DID_CHANGE)
    def did_change(ls: DraftlineServer, params: T.DidChangeTextDocumentParams) -> None:
        uri = params.text_document.uri
        try:
            ls.docs.change(uri, params.text_document.version, params.content_changes, ls.encoding)
        except DocumentError as e:
            log.warning("didChange ignored: %s", e)
            return
        ls.note_text(uri)
        ls.active = uri
        ls.policy.on_change(uri)

    @ls.feature(T.TEXT_DOCUMENT_DID_CLOSE)
    def did_close(ls: DraftlineServer, params: T.DidCloseTextDocumentParams) -> None:
        uri = params.text_document.uri
        ls.docs.close(uri)
        ls.policy.on_close(uri)
        if ls.has_scheduler:
            ls.scheduler.cancel_doc(uri, ("complete",) + BACKGROUND)
        eng = ls.engine
        if eng is not None:
            ls.scheduler.submit(uri, "other", lambda c: eng.close(uri)).future.add_done_callback(_quiet)

    @ls.feature(T.WORKSPACE_DID_CHANGE_CONFIGURATION)
    def did_change_configuration(ls: DraftlineServer, params: T.DidChangeConfigurationParams) -> None:
        ls.settings.update(params.settings, trusted=False)
        if ls.engine is not None and hasattr(ls.engine, "config"):
            from draftline.completion.build import engine_config

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
            ls.policy.on_accept(args[0], args[1])

    @ls.feature("draftline/status")
    def status(ls: DraftlineServer, params: Any = None) -> dict:
        out: dict[str, Any] = {"version": VERSION, "model_error": ls.model_error,
                               "settings": {**asdict(ls.settings), "engine_token": "***" if ls.settings.engine_token else None},
                               "counters": dict(ls.counters),
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
        if ls.has_scheduler and ls.scheduler.disabled_reason:
            out["disabled"] = ls.scheduler.disabled_reason
        return out

    return ls


def _pos(text: str, offset: int, encoding: str) -> tuple[int, int]:
    from draftline.analysis.positions import position_at

    return position_at(text, offset, encoding)


def _position_after(text: str, cursor: int, n: int, encoding: str) -> tuple[int, int]:
    return _pos(text, min(len(text), cursor + n), encoding)
