"""When the engine's background work runs: the server's cache policy, in one place.

The policy in a paragraph.  Requests never wait for background work: they run first and
cancel a background job in flight, which stops within one step (see `scheduler`).  After
an edit the document's cache is synced once the editor has been quiet for `debounceMs`
(`prepare`, for the cursor of the last edit, or of the last request when the edit was
above it); a document that is not the active one is synced as `prefill`, after the
active one's work.  A cold document, or a cursor whose window the cache barely covers,
was answered from a short window: `prepare` then encodes the whole window anew, apart
(a request stops it between chunks and it resumes after).  Once the cache holds the full
window, the stale part of it (keys moved by PIE) is re-encoded exactly when the editor has been idle for
`idleRefreshMs`, or 250 ms after the last answer when more than `staleLimit` tokens are
stale; a request for one document pushes the other documents' refreshes back to idle
time.  Right after an answer, its drafts are continued (`ahead`) while the user reads
them; once a short window is whole again, the last request's place is answered again
from the whole window (`reanswer`, also an `ahead` job); an edit that types what they predicted keeps that going, any other edit cancels
it.  An accepted draft's follow-up is computed at once unless the continuation already
knows it (`prefetch_after_accept`).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from draftline.completion.kvcache import Cancelled

from .documents import MAX_DOCUMENT_CHARS

log = logging.getLogger(__name__)

STALE_REFRESH_DELAY_S = 0.25  # quiet time before a refresh forced by staleness starts


class CachePolicy:
    """Timers and background jobs per document (event-loop thread only)."""

    def __init__(self, ls: Any) -> None:
        self.ls = ls
        self._debounce: dict[str, asyncio.TimerHandle] = {}
        self._idle: dict[str, asyncio.TimerHandle] = {}
        # after an accepted draft: uri -> (version, cursor, future of the engine result)
        self.prefetched: dict[str, tuple[int, int, asyncio.Future]] = {}
        self.accepted_pending: dict[str, str] = {}
        self._short: set[str] = set()  # last answered from a short window, not answered again yet
        self._preparing: dict[str, Any] = {}  # uri -> its newest prepare/prefill job (one chain)

    # -- events from the handlers ------------------------------------------------------------
    def on_open(self, uri: str) -> None:
        self.schedule_prepare(uri)

    def on_change(self, uri: str) -> None:
        """After the edit is applied: a newer edit supersedes in-flight decoding of the same
        document, and the continuation of the last answer unless the edit typed what it
        predicted."""
        ls = self.ls
        eng, doc = ls.engine, ls.docs.docs.get(uri)
        predicted = (eng is not None and doc is not None and doc.last_edit is not None and ls.settings.ahead
                     and eng.ahead.lookup(uri, doc.text, doc.last_edit[2]) is not None)
        ls.scheduler.cancel_doc(uri, ("complete",) if predicted else ("complete", "ahead"))
        self.prefetched.pop(uri, None)
        if uri in self.accepted_pending:
            self.prefetch_after_accept(uri)
        else:
            self.schedule_prepare(uri)

    def on_close(self, uri: str) -> None:
        self._short.discard(uri)
        self._preparing.pop(uri, None)
        for table in (self._debounce, self._idle):
            h = table.pop(uri, None)
            if h is not None:
                h.cancel()
        self.prefetched.pop(uri, None)
        self.accepted_pending.pop(uri, None)

    def on_accept(self, uri: str, text: str) -> None:
        """The editor reported an accepted draft (before or after inserting it)."""
        self.accepted_pending[uri] = text
        doc = self.ls.docs.docs.get(uri)
        if doc is not None and doc.last_edit and doc.text[doc.last_edit[0]:doc.last_edit[2]] == text:
            self.prefetch_after_accept(uri)  # the editor sent the insertion first

    def before_request(self, uri: str) -> None:
        self.defer_other_refreshes(uri)

    def take_prefetched(self, uri: str, version: int, cursor: int) -> asyncio.Future | None:
        pre = self.prefetched.pop(uri, None)
        if pre is not None and pre[0] == version and pre[1] == cursor and not pre[2].cancelled():
            return pre[2]
        return None

    def after_answer(self, uri: str, res: Any) -> None:
        """An engine answer went out: continue its drafts, make its window whole, or arm the refresh."""
        # an answer from a short window is answered again once the window is whole
        # (`reanswer`), and that answer is continued: continuing this one too put ~200 ms
        # before the window's growth, and the re-answer came after the replay's next edit
        if getattr(res, "ahead_pending", False) and not getattr(res, "short_window", False):
            self._continue(uri)
        if getattr(self.ls.engine, "headers", None) is not None:
            self.update_header(uri)
        if getattr(res, "short_window", False):
            self._short.add(uri)  # answered again once the window is whole (`reanswer`)
            self.schedule_prepare(uri, delay=0)  # the whole window, encoded anew (`Engine.prepare`)
        else:
            self._after_prepare(uri)

    # -- sync, grow, refresh -----------------------------------------------------------------
    def schedule_prepare(self, uri: str, delay: float | None = None) -> None:
        """Debounced cache sync after an edit, then an idle-time exact refresh."""
        ls = self.ls
        for table in (self._debounce, self._idle):
            h = table.pop(uri, None)
            if h is not None:
                h.cancel()
        if ls.engine is None:
            return
        self._preparing.pop(uri, None)  # the chain in flight ends here (its job is cancelled)
        ls.scheduler.cancel_doc(uri, ("prepare", "prefill", "refresh"))
        wait = ls.settings.debounce_ms / 1000 if delay is None else delay
        self._debounce[uri] = asyncio.get_running_loop().call_later(wait, self._prepare_now, uri)

    def _prepare_now(self, uri: str) -> None:
        ls = self.ls
        self._debounce.pop(uri, None)
        doc = ls.docs.docs.get(uri)
        eng = ls.engine
        if doc is None or eng is None or doc.binary or len(doc.text) > MAX_DOCUMENT_CHARS:
            return
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
        kind = "prepare" if uri == ls.active else "prefill"
        job = ls.scheduler.submit(uri, kind, lambda c: eng.prepare(uri, text, cursor, c),
                                  supersede=("prepare", "prefill", "refresh"))
        self._preparing[uri] = job

        def done(f: asyncio.Future) -> None:
            if self._preparing.get(uri) is not job:
                return  # superseded: a newer chain goes on (two chains had alternated steps)
            if f.cancelled():
                return
            if isinstance(f.exception(), Cancelled):
                # a request came (a step stops between chunks, its work kept): go on after it
                self._prepare_now(uri)
                return
            if f.exception() is not None:
                self._preparing.pop(uri, None)
                return
            if getattr(f.result(), "more", False):  # not whole yet: one more step
                self._prepare_now(uri)
            else:
                self._preparing.pop(uri, None)
                self._after_prepare(uri)
                self.reanswer(uri)

        job.future.add_done_callback(done)

    def prefetch_after_accept(self, uri: str) -> None:
        """The edit that inserted an accepted draft: compute the next completion now, at the
        end of the inserted text, so the editor's next request finds it ready."""
        ls = self.ls
        accepted = self.accepted_pending.pop(uri, None)
        doc = ls.docs.docs.get(uri)
        eng = ls.engine
        if accepted is None or doc is None or eng is None or doc.last_edit is None:
            return
        a, _, b = doc.last_edit
        if doc.text[a:b] != accepted:
            return
        if ls.settings.ahead and eng.ahead.lookup(uri, doc.text, b) is not None:
            return  # the accepted draft's continuation is already known
        text, version, cursor = doc.text, doc.version, b
        context = ls.context_of(doc)
        job = ls.scheduler.submit(uri, "complete", lambda c: eng.complete(uri, text, cursor, cancel=c, context=context),
                                  supersede=("prepare", "refresh"))
        job.future.add_done_callback(_quiet)
        self.prefetched[uri] = (version, cursor, job.future)

    def reanswer(self, uri: str, refreshed: bool = False) -> None:
        """The active document's window is whole again: if its last request was answered
        from a shorter one, answer that place again from the full window (`Engine.reanswer`:
        the next request there after an edit elsewhere is re-verified, not decoded), then
        continue the drafts (the new ones, or the kept ones when there was nothing to do).
        Any edit the drafts did not predict cancels it (`ahead`)."""
        ls = self.ls
        eng, doc = ls.engine, ls.docs.docs.get(uri)
        if (uri not in self._short and not refreshed) or eng is None or doc is None or not ls.settings.ahead:
            return
        if not refreshed:
            self._short.discard(uri)
        if uri != ls.active or doc.request_cursor is None:
            if not refreshed:
                self._continue(uri)
            return
        text, cursor, context = doc.text, doc.request_cursor, ls.context_of(doc)
        job = ls.scheduler.submit(uri, "ahead", lambda c: eng.reanswer(uri, text, cursor, c, context),
                                  supersede=("ahead",))

        def done(f: asyncio.Future) -> None:
            if f.cancelled() or f.exception() is not None:
                return
            res = f.result()
            if res is not None:
                ls.counters["reanswered"] = ls.counters.get("reanswered", 0) + 1
                log.debug("re-answered %s from %d tokens in %.0f ms", uri, res.tokens["prompt"], res.timings["total"])
            if (res is None and not refreshed) or (res is not None and res.ahead_pending):
                self._continue(uri)

        job.future.add_done_callback(done)

    def update_header(self, uri: str) -> None:
        """projectContext: choose the header for the last request's cursor in idle time
        (`Engine.update_header`); a changed one is synced in at once (a PIE splice)."""
        ls = self.ls
        eng, doc = ls.engine, ls.docs.docs.get(uri)
        if doc is None or doc.request_cursor is None:
            return
        text, cursor, context = doc.text, doc.request_cursor, ls.context_of(doc)
        job = ls.scheduler.submit(uri, "header", lambda c: eng.update_header(uri, text, cursor, context, c),
                                  supersede=("header",))

        def done(f: asyncio.Future) -> None:
            if not f.cancelled() and f.exception() is None and f.result() and uri not in self._debounce:
                self.schedule_prepare(uri, delay=0)

        job.future.add_done_callback(done)

    def _continue(self, uri: str) -> None:
        """Continue the document's last answer in idle time (`Engine.continue_ahead`)."""
        eng = self.ls.engine
        self.ls.scheduler.submit(uri, "ahead", lambda c: eng.continue_ahead(uri, c),
                                 supersede=("ahead",)).future.add_done_callback(_quiet)

    def _after_prepare(self, uri: str) -> None:
        ls = self.ls
        eng = ls.engine
        if eng is None or uri not in ls.docs:
            return
        # past the staleness bound: soon, but not the instant a completion was answered, when
        # the next keystroke is most likely (the request that interrupts a refresh waits for
        # the chunk in flight); otherwise when the editor has been idle for idle_refresh_ms
        delay = STALE_REFRESH_DELAY_S if eng.needs_refresh(uri) else ls.settings.idle_refresh_ms / 1000
        old = self._idle.pop(uri, None)
        if old is not None:
            old.cancel()
        self._idle[uri] = asyncio.get_running_loop().call_later(delay, self._refresh_now, uri)

    def defer_other_refreshes(self, uri: str) -> None:
        """A request for `uri`: other documents' exact refreshes wait for idle time.

        A refresh armed for a document the user has left (250 ms after its last request,
        when past the staleness bound) would otherwise run between this document's
        requests, and each request would wait for its chunk in flight (~100 ms at 2k)."""
        ls = self.ls
        loop = asyncio.get_running_loop()
        delay = ls.settings.idle_refresh_ms / 1000
        for other in list(ls.docs.docs):
            if other == uri:
                continue
            h = self._idle.pop(other, None)
            if h is not None:
                h.cancel()
            cancelled = ls.scheduler.cancel_doc(other, ("refresh",)) if ls.has_scheduler else 0
            if h is not None or cancelled:
                self._idle[other] = loop.call_later(delay, self._refresh_now, other)

    def _refresh_now(self, uri: str) -> None:
        ls = self.ls
        self._idle.pop(uri, None)
        eng = ls.engine
        if eng is None or uri not in ls.docs:
            return
        job = ls.scheduler.submit(uri, "refresh", lambda c: eng.refresh(uri, c), supersede=("refresh",))

        def done(f: asyncio.Future) -> None:
            _quiet(f)
            if not f.cancelled() and f.exception() is None and f.result():
                self.reanswer(uri, refreshed=True)  # an answer from the stale cache, checked again

        job.future.add_done_callback(done)


def _quiet(f: asyncio.Future) -> None:
    """A background job's outcome is its own business (the scheduler logged failures)."""
    if not f.cancelled():
        f.exception()
