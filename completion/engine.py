"""The model side's one entry point: documents in, drafts out. Knows nothing of LSP.

Not thread-safe by design: the LSP scheduler calls it from a single worker thread. Each
document keeps its token state (`TokenizedText`) and its KV cache (`DocCache`); a request
diffs the new text against the last seen text, re-tokenizes the changed window, builds the
prompt for the cursor, syncs the cache to it (PIE) and decodes k drafts.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from types import MappingProxyType
from typing import Any

import torch

from .ahead import PROMPT_DRIFT, AheadStore, Entry, Pending, continue_drafts, reverify
from .decode import decode
from .drafts import DecodeSpec, DecodeStats, Draft, HealGuide, PieceIndex
from .far import far_header
from .junk import cut_loop
from .kvcache import CacheStore, Cancelled, DocCache, SyncStats
from .model import LoadedModel
from .prompt import Prompt, build_prompt, heal_index, window_start
from .rescue import BanGuide, first_choices
from .stops import logical_line_ends, make_stop, whole_lines
from .tokens import TokenizedText
from .window import HUGE_CHARS, affordable, huge_window, sync_cost
from .wire import common_affixes  # (the text diff the team wire uses too)

log = logging.getLogger(__name__)


@dataclass
class EngineConfig:
    k: int = 3  # drafts per request
    max_tokens: int = 48  # per draft
    context_tokens: int = 2048  # prompt budget (prefix + suffix)
    suffix_tokens: int = 256  # part of the budget for the text after the cursor (FIM models)
    method: str = "superposed"  # see completion.decode; measured in bench/drafts.py
    pie: bool = True  # re-rotate on edits; False = re-encode from the first change
    cache_budget_mb: int = 4096  # all documents' KV caches together
    stale_limit: int = 512  # re-encode exactly once this many tokens are stale
    monitors: bool = True
    token_healing: bool = True  # off only for ablations (bench, tests)
    # superposed scoring: weight of the workspace n-gram model; 0: the model alone found the
    # true line more often (bench/drafts.py, k=3: 0.333 vs 0.267 on 30 tasks, 0.233 vs 0.200 on 60)
    ngram_weight: float = 0.0
    # A request's budget (ms from its arrival): past it, drafts end at their next line end
    # (the first line always comes whole) and analyses stop waiting; past 3x it, decoding
    # stops.  0 = no budget (bench/replay.py: what it buys)
    latency_budget_ms: int = 300
    # tokens a request may run through the model to sync its cache (a cold or far-moved
    # window is shortened to afford it, and made whole in idle time by `prepare`).  832 vs
    # 640, side by side (replay dev split, 2026-12-05 05:12): first answer after opening
    # p50 1296 vs 1036 ms but edit similarity 0.56 vs 0.50 (0.60 vs 0.54 with the rest of
    # the file after the cursor), and an edit far above 1 s later 228 vs 354 ms: less to
    # encode later, so the place was answered again from the whole window before the edit
    request_cap: int = 832
    # the longest a request decodes a first line for (~30 tokens here); past it the line
    # stops where it is (a slow sync does not eat this time: it counts from the decode's
    # start).  1000 ms let long statements (a docstring, a literal) push p90 past 1 s.
    first_line_ms: int = 600
    # the greedy draft's next tokens guessed per forward (completion.lookup), 0 = off
    speculate: int = 6
    ahead: bool = True  # keep answers and continue them in idle time (completion.ahead)
    # context from the rest of the project before the file's text (completion.context);
    # off by default: see bench/replay.py --init '{"projectContext": true}' for what it gives
    project_context: bool = False
    header_tokens: int = 320
    far_tokens: int = 256  # a short window's header of the file's own lines (completion.far)


#: an answer whose drafts were all junk is decoded again (`completion.rescue`) only with
#: this much left before the request's hard deadline (a first line takes ~5-15 steps)
RESCUE_S = 0.15
#: the sync recomputes a token or two next to each gap (kvcache.widen): counted on top of a cap
CAP_SLACK = 4
#: tokens a request may add to the window its cache holds (a short window is made whole when idle)
GROW_SLACK = 32
#: a cached window shorter than this is not worth keeping short: the request encodes up to
#: `request_cap` tokens instead
MIN_CONTEXT = 256
#: a cursor whose window holds this many tokens fewer than the cache's last one, with this many
#: characters more after it, jumped up: answered as a far-moved cursor (`Engine._jumped`)
JUMP_TOKENS = 64
JUMP_CHARS = 64
#: an idle-time sync that would run more tokens than this encodes the window anew instead
#: (`Engine.prepare`): a splice that long is mostly stale keys behind it, refreshed later anyway
REBUILD_TOKENS = 384


@dataclass(frozen=True)
class DocContext:
    """What a request's analysis reads besides its own text, copied on the event loop when
    the job is queued: a job never reads the server's live tables (the monitors once walked
    the open-document table on the worker thread, and a didOpen / didClose at that moment
    failed the completion with "dictionary changed size during iteration")."""

    language: str = ""
    others: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))  # uri -> text
    monitors: Any = None  # a copy of the monitor settings (None: the defaults)
    jedi: bool = True  # False: tree-sitter scopes only (a document too large for jedi)


@dataclass
class DraftOut:
    text: str  # text to insert at the cursor
    replace: int = 0  # characters after the cursor that the text replaces
    logprob: float = 0.0


@dataclass
class Result:
    drafts: list[DraftOut]
    timings: dict = field(default_factory=dict)  # ms: sync, decode, first_token, total
    tokens: dict = field(default_factory=dict)  # prompt, generated, stale, computed
    sync: SyncStats | None = None
    short_window: bool = False  # the prompt started later than the full window (made whole when idle)
    ahead_pending: bool = False  # `Engine.continue_ahead(doc)` has drafts to continue

    def to_json(self) -> dict:
        return {"drafts": [asdict(d) for d in self.drafts], "timings_ms": self.timings, "tokens": self.tokens}


@dataclass(frozen=True)
class Held:
    """The window a document's cache last synced to (`Engine._sync`)."""

    body: int  # document tokens in it
    tail: int  # characters after its cursor (a cursor that moved up has more; a deletion before it, as many)
    short: bool  # it started later than the full window (`prepare` encodes the whole one)


class Engine:
    def __init__(self, lm: LoadedModel, config: EngineConfig | None = None):
        self.lm = lm
        self.net = lm.net
        self.tok = lm.tokenizer
        self.config = config or EngineConfig()
        ctx = self.config.context_tokens
        if self.net.cfg.sliding_window:
            ctx = min(ctx, self.net.cfg.sliding_window)  # within the window attention is exact
        self.context_tokens = min(ctx, self.net.cfg.max_positions - self.config.max_tokens - 8)
        self.caches = CacheStore(self.net, self.config.cache_budget_mb * 2**20)
        self.texts: dict[str, TokenizedText] = {}
        self.bases: dict[str, int] = {}  # huge documents: where the tokenized window starts
        self.pieces = PieceIndex(self.tok)
        self.guide_factory = None  # (doc, prompt, DocContext) -> list[Guide] (completion.build)
        self.trim_for = None  # language -> trim function (completion.build)
        self.ngram = None  # completion.ngram.NGram of the workspace, when its weight is above 0
        self.retokenized_chars = 0
        self.ahead = AheadStore()
        self.headers = None  # completion.context.Headers when project_context (completion.build)
        self._header_ids: dict[str, tuple[str, list[int]]] = {}
        self._synced_header: dict[str, str] = {}  # the header each document's cache was last synced with
        self._far: dict[str, str] = {}  # a short window's header of the file's own lines (completion.far)
        self._held: dict[str, Held] = {}  # the window each cache last synced to

    def warm_up(self) -> float:
        """Run each forward shape a request uses once (a prefill chunk, a sync's rows, a
        decode step, a draft tree) on a scratch cache: the first forward of a shape pays for
        kernel setup, and the first request after a start took ~1.5 s more than the next
        ones (replay, 2026-12-04).  Returns the seconds it took (~1 s here)."""
        t0 = time.perf_counter()
        net = self.net
        k, v = net.new_cache(512)
        ids = torch.arange(300) % max(1, self.tok.vocab_size - 1)
        net.forward(ids[:256], torch.arange(256), k, v, 0, logits_rows=None)
        net.forward(ids[256:290], torch.arange(256, 290), k, v, 256)
        for start in (290, 291):
            net.forward(ids[:1], torch.tensor([start]), k, v, start)
        mask = torch.ones(3, 295, dtype=torch.bool)
        net.forward(ids[:3], torch.tensor([292, 292, 292]), k, v, 292, mask=mask, logits_rows=slice(None))
        return time.perf_counter() - t0

    # -- documents -------------------------------------------------------------------------
    def update(self, doc: str, text: str, cursor: int | None = None) -> TokenizedText:
        """Bring the document's tokens to `text`, re-tokenizing only the changed window.

        A document over HUGE_CHARS is tokenized around the cursor only (`huge_window`):
        the engine's text for it is that window, from `self.bases[doc]` on."""
        base = 0
        if len(text) > HUGE_CHARS:
            base, end = huge_window(text, len(text) if cursor is None else cursor)
            text = text[base:end]
        tt = self.texts.get(doc)
        if tt is None or self.bases.get(doc, 0) != base:
            tt = TokenizedText.full(self.tok, text)
            self.texts[doc] = tt
            self.bases[doc] = base
            self.retokenized_chars += len(text)
            return tt
        if tt.text != text:
            p, s = common_affixes(tt.text, text)
            self.retokenized_chars += tt.edit(self.tok, p, len(tt.text) - s, text[p : len(text) - s])
        return tt

    def note_text(self, doc: str, text: str) -> None:
        """An open document's text, for the workspace n-gram model (when there is one;
        tokenized by the worker at the next request)."""
        if self.ngram is not None:
            self.ngram.update_text(doc, text)

    def close(self, doc: str) -> None:
        self.texts.pop(doc, None)
        self.bases.pop(doc, None)
        self._header_ids.pop(doc, None)
        self._forget_cache(doc)
        if self.headers is not None:
            self.headers.drop(doc)
        self.caches.drop(doc)
        self.ahead.drop(doc)

    def release_memory(self) -> int:
        """Free every document's KV cache (they are rebuilt on demand): called after a
        MemoryError so the next request does not fail the same way.  Returns bytes freed."""
        import gc

        freed = self.caches.clear()
        self._forget_cache(None)
        gc.collect()
        return freed

    def header_ids(self, doc: str, header: str | None) -> list[int]:
        """The tokens of a document's header (None: the one it has now: its short window's
        (`completion.far`) or else its project context's)."""
        if header is None:
            header = self._far.get(doc) or (self.headers.current(doc) if self.headers is not None else "")
        got = self._header_ids.get(doc)
        if got is None or got[0] != header:
            got = (header, self.tok.encode(header) if header else [])
            self._header_ids[doc] = got
        return got[1]

    def prompt_for(self, doc: str, text: str, cursor: int, cap: int | None = None,
                   header: str | None = None, start: int | None = None) -> Prompt:
        """The prompt for a cursor; `cap`: at most this many tokens to encode for it (the
        window then starts later: `completion.window`), or `start`: the window's first
        document token; `header`: the context to put first (None: the document's current
        one, "" none)."""
        tt = self.update(doc, text, cursor)
        cfg = self.config
        at = cursor - self.bases.get(doc, 0)
        hids = self.header_ids(doc, header)
        htext = self._header_ids[doc][0] if hids else ""

        def make(start: int | None = None) -> Prompt:
            return dataclasses.replace(build_prompt(tt, at, self.tok, self.context_tokens, cfg.suffix_tokens,
                                                    heal=cfg.token_healing, start=start, header=hids), header=htext)

        if start is not None:
            return make(start)
        full = make()
        if cap is None:
            return full
        c = self.caches.caches.get(doc)
        return affordable(c.tokens if c is not None else [], full, make, cap)

    def request_prompt(self, doc: str, text: str, cursor: int, header: str | None = None) -> Prompt:
        """A request's prompt: the full window if the cache nearly has it; else the window
        the cache already holds (grown by at most GROW_SLACK tokens: a keystroke never pays
        for growing it, `prepare` does that when idle) if it has MIN_CONTEXT tokens; else a
        window of at most `request_cap` new tokens (a cold or far-moved cursor, or one that
        jumped up and left much of the window behind it: `_jumped`)."""
        near = self.prompt_for(doc, text, cursor, cap=GROW_SLACK, header=header)
        body = near.body_end - near.window_start
        if body >= min(MIN_CONTEXT, near.body_end) and not self._jumped(doc, near):
            return near
        # cold or far moved: the tokens nearest the cursor, without the project context (it comes
        # back with the window, in idle time), after the file's lines most like the cursor's (`far`)
        cap = self.config.request_cap + CAP_SLACK
        pr = self.prompt_for(doc, text, cursor, cap=cap, header="")
        self._far.pop(doc, None)
        if pr.window_start <= self.full_window_start(doc, cursor):
            return pr  # the whole window after all: nothing above it to bring in
        tt, base = self.texts[doc], self.bases.get(doc, 0)
        a = tt.starts[pr.window_start] if pr.window_start < len(tt.starts) else len(tt.text)
        far = far_header(tt.text[:a], tt.text[a:cursor - base], pr.prefix, self.tok, self.config.far_tokens)
        if far:
            self._far[doc] = far
        return self.prompt_for(doc, text, cursor, header=far, start=pr.window_start) if far else pr

    def _jumped(self, doc: str, near: Prompt) -> bool:
        """The cursor moved up inside the window (the text after it grew by JUMP_CHARS or
        more) and left more than JUMP_TOKENS of the window behind: answered from what is
        left above it, 5 of 48 jumps read 270-815 tokens and their edit similarity was 0.42
        below the whole window's (replay, 2026-12-05).  A deletion before the cursor or
        keystrokes leave the text after it as it was: a keystroke never pays for a window."""
        held = self._held.get(doc)
        return (held is not None and near.body_end - near.window_start + JUMP_TOKENS < held.body
                and len(near.suffix) >= held.tail + JUMP_CHARS)

    def full_window_start(self, doc: str, cursor: int) -> int:
        tt = self.texts[doc]
        cfg = self.config
        room = self.context_tokens - 3 - len(self.header_ids(doc, None)) - (cfg.suffix_tokens if self.tok.fim else 0)
        return window_start(heal_index(tt, cursor - self.bases.get(doc, 0), cfg.token_healing), room)

    def prepare(self, doc: str, text: str, cursor: int, cancel: threading.Event | None = None) -> SyncStats:
        """Sync the document's cache for a cursor in idle time.  After an edit: PIE's splice
        (`DocCache.sync`).  A short window (a cold or far-moved cursor's, `request_prompt`)
        or an edit that costs more than REBUILD_TOKENS: the full window encoded anew, exactly
        (`DocCache.rebuild`), its short-window header (`completion.far`) gone.  Nothing
        cached yet (a document opened and not asked about): first the `request_cap` tokens
        nearest the cursor, as a request would, so one arriving meanwhile finds them.  A
        cancel stops it only where nothing the cache held is lost (within a layer of a
        rebuild, the chunks done kept for the next call).  `SyncStats.more`: call again."""
        cache = self.caches.get(doc)
        held = self._held.get(doc)
        if held is None and self.config.latency_budget_ms > 0:
            pr = self.prompt_for(doc, text, cursor, cap=self.config.request_cap + CAP_SLACK, header="")
            self._far.pop(doc, None)
        else:
            pr = self.prompt_for(doc, text, cursor, header=self.headers.current(doc) if self.headers is not None else "")
        if cancel is not None and cancel.is_set():
            raise Cancelled()
        rebuild = held is not None and (doc in self._far or held.short
                                        or sync_cost(cache.tokens, pr.tokens) > REBUILD_TOKENS)
        short = pr.window_start > self.full_window_start(doc, cursor)
        st = self._sync(doc, pr, None, cancel_front=cancel, rebuild=rebuild, short=short)
        if rebuild:
            self._far.pop(doc, None)
        st.more = short or self._project_header_pending(doc)
        log.debug("prepare %s: %s, %d computed, %d moved, %.0f ms, prompt %d tokens%s", doc, st.mode,
                  st.computed, st.moved, st.ms, len(pr.tokens), ", more" if st.more else "")
        return st

    def _project_header_pending(self, doc: str) -> bool:
        """The cache lacks the document's current project-context header (`prepare` syncs it)."""
        return self.headers is not None and self._synced_header.get(doc, "") != self.headers.current(doc)

    def _sync(self, doc: str, pr: Prompt, cancel: threading.Event | None, with_tail: bool = False,
              cancel_front: threading.Event | None = None, rebuild: bool = False, short: bool = False) -> SyncStats:
        """Sync the cache to the prompt (all but its last token); `with_tail`: a request
        follows, so the last token rides along in the sync's forward when it runs one;
        `rebuild`: encode it anew (`DocCache.rebuild`, cancelled by `cancel_front`);
        `short`: the prompt starts later than the full window."""
        cache = self.caches.get(doc)
        extra = self.config.max_tokens * self.config.k + 1
        if rebuild:
            st = cache.rebuild(pr.tokens[:-1], cancel_front, extra=extra)
        else:
            st = cache.sync(pr.tokens[:-1], mode="pie" if self.config.pie else "full", cancel=cancel, extra=extra,
                            tail=pr.tokens[-1] if with_tail else None, cancel_front=cancel_front)
        self._synced_header[doc] = pr.header
        self._held[doc] = Held(pr.body_end - pr.window_start, len(pr.suffix), short)
        for gone in self.caches.enforce(keep=doc):
            self._forget_cache(gone)
        return st

    def _forget_cache(self, doc: str | None) -> None:
        """What the engine knew of a document's cache (None: of every one), once it is
        closed, evicted or freed."""
        for table in (self._held, self._far, self._synced_header):
            if doc is None:
                table.clear()
            else:
                table.pop(doc, None)

    def needs_refresh(self, doc: str) -> bool:
        """Staleness past the bound: the scheduler re-encodes in the background now."""
        c = self.caches.caches.get(doc)
        return c is not None and c.stale > self.config.stale_limit

    def refresh(self, doc: str, cancel: threading.Event | None = None) -> int:
        """Re-encode the stale part of a document's cache exactly (editor idle)."""
        c = self.caches.caches.get(doc)
        return c.refresh(cancel) if c is not None else 0

    def cache_of(self, doc: str) -> DocCache | None:
        return self.caches.caches.get(doc)

    # -- completion -----------------------------------------------------------------------
    def complete(self, doc: str, text: str, cursor: int, *, k: int | None = None,
                 max_tokens: int | None = None, cancel: threading.Event | None = None,
                 method: str | None = None, guides: list | None = None, trim=None,
                 context: DocContext | None = None, arrived: float | None = None) -> Result:
        """Drafts for the cursor at character offset `cursor` of `text`; `context`: the
        snapshot the monitors read (language, other open documents); `arrived`: when the
        request arrived (time.perf_counter()), which its budget counts from."""
        cfg = self.config
        t0 = time.perf_counter()
        if trim is None and self.trim_for is not None and context is not None:
            trim = self.trim_for(context.language)
        budget = cfg.latency_budget_ms / 1000
        deadline = (arrived if arrived is not None else t0) + budget if budget > 0 else None
        # the project-context header the cache holds: a newer one (`update_header`) is
        # spliced in by `prepare` in idle time; on a request its splice cost 400-500 ms
        # (the replay's test split, 2026-12-05: edit_far p50 879 vs 335 ms without a header)
        header = self._synced_header.get(doc, "") if self.headers is not None else None
        pr = self.request_prompt(doc, text, cursor, header) if budget > 0 else \
            self.prompt_for(doc, text, cursor, header=header)
        short = pr.window_start > self.full_window_start(doc, cursor)
        t_g = time.perf_counter()
        if guides is None and self.guide_factory is not None and cfg.monitors:
            guides = self.guide_factory(doc, pr, context or DocContext())  # starts the cursor's jedi query: it runs during the sync
        t1 = time.perf_counter()
        st = self._sync(doc, pr, cancel, with_tail=True, short=short)
        t2 = time.perf_counter()
        ng = self.ngram if cfg.ngram_weight > 0 else None
        if ng is not None:  # other documents' pending edits; this one's tokens as they are
            ng.flush(current=(doc, self.texts[doc].ids))
        spec = DecodeSpec(
            k=k or cfg.k,
            max_tokens=max_tokens or cfg.max_tokens,
            stop=make_stop(pr.prefix, pr.suffix, pr.heal),
            guides=list(guides or []),
            heal=HealGuide(self.pieces, pr.heal) if pr.heal else None,
            cancel=cancel,
            method=method or cfg.method,
            ngram=ng,
            alpha=cfg.ngram_weight,
            deadline=deadline,
            # a first line longer than this stops where it is (a slow sync does not eat it)
            hard_deadline=max(deadline + 2 * budget, time.perf_counter() + cfg.first_line_ms / 1000)
            if deadline else None,
            guess=cfg.speculate,
        )
        cache = self.caches.get(doc)
        drafts = None
        reverify_ms = 0.0
        place = self.ahead.at_place(doc, pr.prefix, pr.suffix, pr.heal) if cfg.ahead else None
        prev = place if place is not None and place.checkable else None
        if prev is not None:  # this place was answered before an edit elsewhere: check, don't decode
            ds = DecodeStats()
            t_r = time.perf_counter()
            drafts = reverify(cache, pr.tokens, prev, self.tok, spec, st.tail_logits, ds)
            ds.ms = reverify_ms = (time.perf_counter() - t_r) * 1000
        reused = drafts is not None
        if drafts is None:
            if place is not None and spec.guess:  # its first tokens mostly still hold: guesses
                spec = dataclasses.replace(spec, hints=place.raw)
            drafts, ds = decode(cache, pr.tokens, self.tok, spec, first_logits=st.tail_logits)
        t_fin = time.perf_counter()
        outs, raws = self._finish(pr, drafts, trim)
        finish_ms = (time.perf_counter() - t_fin) * 1000
        bans = first_choices(drafts, self.tok, pr.heal) if not outs and drafts else None
        rescued = bool(bans) and (spec.hard_deadline is None or time.perf_counter() < spec.hard_deadline - RESCUE_S)
        if rescued:  # every draft was junk: once more without the first word each of them chose
            spec = dataclasses.replace(spec, hints=(), ban=BanGuide(bans, self.pieces.vocab))
            drafts, ds2 = decode(cache, pr.tokens, self.tok, spec, first_logits=st.tail_logits)
            if reused:  # (the first try was the re-verification: its time is `reverify`)
                ds, reused = ds2, False
            else:
                for f in ("ms", "steps", "tokens", "guessed"):
                    setattr(ds, f, getattr(ds, f) + getattr(ds2, f))
            t_fin = time.perf_counter()
            outs, raws = self._finish(pr, drafts, trim)
            finish_ms += (time.perf_counter() - t_fin) * 1000
        st.tail_logits = None  # (SyncStats is kept in the Result: not the logits)
        pending = False
        if cfg.ahead and outs:
            pending = self._keep_ahead(doc, pr, outs, raws, trim, rescued=rescued)
        t3 = time.perf_counter()
        timings = {"tokenize": round((t_g - t0) * 1000, 2), "guides_setup": round((t1 - t_g) * 1000, 2),
                   "sync": round((t2 - t1) * 1000, 2),
                   "first_token": round(ds.first_ms, 2), "decode": round(ds.ms, 2),
                   "finish": round(finish_ms, 2), "reverify": round(reverify_ms, 2),
                   "total": round((t3 - t0) * 1000, 2)}
        if spec.guides:  # monitors: their time inside the decode, and the part spent waiting on jedi
            timings["guides"] = round(sum(getattr(g, "time_s", 0.0) for g in spec.guides) * 1000, 2)
            timings["jedi"] = round(sum(getattr(g, "query_s", 0.0) for g in spec.guides) * 1000, 2)
            note = getattr(self.guide_factory, "note", None)
            if note is not None:
                note(doc, timings["jedi"])
        return Result(
            drafts=outs,
            timings=timings,
            tokens={"prompt": len(pr.tokens), "generated": ds.tokens, "steps": ds.steps, "guessed": ds.guessed,
                    "computed": st.computed, "stale": cache.stale, "sync_mode": st.mode,
                    "window": "short" if short else "full", "reused": reused, "rescued": rescued},
            sync=st,
            short_window=short,
            ahead_pending=pending,
        )

    def update_header(self, doc: str, text: str, cursor: int, context: DocContext,
                      cancel: threading.Event | None = None) -> bool:
        """Idle time after an answer: choose the document's project-context header for this
        cursor (`completion.context`); the next sync splices a changed one in by PIE.  Why not
        on the request: the selection took 200-900 ms per request over the replay's indexes
        (2026-12-05, test split: p50 +1 s on every kind).  True: the header changed."""
        if self.headers is None or doc not in self.texts:
            return False
        before = self.headers.current(doc)
        return self.headers.update(doc, text, cursor, context.others, cancel) != before

    # -- answers ahead of the user (completion.ahead) ---------------------------------------
    def reanswer(self, doc: str, text: str, cursor: int, cancel: threading.Event | None = None,
                 context: DocContext | None = None) -> Result | None:
        """Idle time once a short window is whole again: the last request's place answered
        again from the full window, and kept.  Why: the next request there after an edit
        elsewhere is then a `reverify` (one tree forward, ~60 ms) instead of a decode: in
        the replay (r5, 2026-12-05) edit_far spent 70-1030 ms decoding after a 50-90 ms
        sync, because its kept answer came from the open's 640-token window and a prompt
        that much longer changes the answer (`PROMPT_DRIFT`).  The drafts a typed-ahead
        lookup serves come from the full window too.  None: nothing to do (no answer at
        this place, the window not whole yet, or the kept answer already from about it).
        Also once the exact refresh has run, for an answer decoded on a stale cache: when the
        window was still grown at its front (stale behind it) the demo's re-answer said
        `list` there, `str` after the refresh, and the next edit's re-verification rejected it."""
        if not self.config.ahead or doc not in self.texts:
            return None
        pr = self.prompt_for(doc, text, cursor)
        e = self.ahead.at_place(doc, pr.prefix, pr.suffix, pr.heal)
        cache = self.caches.caches.get(doc)
        refreshed = e is not None and not e.exact and cache is not None and cache.stale == 0
        if e is None or (abs(e.prompt_len - len(pr.tokens)) <= PROMPT_DRIFT and not refreshed):
            return None
        if self.prompt_for(doc, text, cursor, cap=GROW_SLACK).window_start > pr.window_start:
            return None  # the cache does not hold this window (yet): `prepare` encodes it first
        return self.complete(doc, text, cursor, cancel=cancel, context=context)

    def _keep_ahead(self, doc: str, pr: Prompt, outs: list[DraftOut], raws: list[Draft], trim,
                    rescued: bool = False) -> bool:
        entry = Entry(pr.prefix, pr.suffix, tuple(o.text for o in outs), tuple(o.replace for o in outs),
                      heal=pr.heal, raw=tuple(tuple(d.tokens) for d in raws), prompt_len=len(pr.tokens),
                      exact=self.caches.caches[doc].stale == 0, rescued=rescued,
                      # ended by a rule (its stop rule, a stop token, the budget at a line end),
                      # not where a loop or max_tokens or the hard deadline stopped it
                      natural=tuple(d.done and not d.looped and (not d.open_end or d.cut is not None)
                                    for d in raws))
        pending = Pending(entry, list(pr.tokens), raws, pr.heal, trim, [d.open_end for d in raws])
        self.ahead.put(doc, entry, pending)
        return True

    def continue_ahead(self, doc: str, cancel: threading.Event | None = None) -> int:
        """Idle time after an answer: decode its best drafts further (the rest of a block the
        budget cut, or the next line) and keep the longer texts.  Returns drafts extended."""
        p = self.ahead.pending.pop(doc, None)
        cache = self.caches.caches.get(doc)
        if p is None or cache is None:
            return 0
        drafts = continue_drafts(cache, p, self.tok, cancel)
        if not drafts:
            return 0
        e = p.entry
        texts, replace = list(e.texts), list(e.replace)
        n = 0
        for i, d in enumerate(drafts):
            full = d.final_text(self.tok)
            if not full.startswith(p.heal):
                continue
            t = cut_loop(full[len(p.heal):].rstrip())
            if t is None or not t.startswith(texts[i]) or len(t) <= len(texts[i]):
                continue
            r = replace[i]
            raw = t
            if p.open_ends[i] and p.trim is not None:  # the budget cut its block: the rest of it
                got = p.trim(e.prefix, t, e.suffix)
                t, r = (got[0], got[1]) if got is not None else (texts[i], r)
            if len(t) <= len(texts[i]):  # its block is done: what follows as a draft for the next line
                ext = raw[len(texts[i]):]
                if not ext.startswith("\n"):
                    continue
                nxt = ext[1:]
                if p.trim is not None:
                    got = p.trim(e.prefix + texts[i] + "\n", nxt, e.suffix)
                    if got is None:
                        continue
                    nxt = got[0]
                t = texts[i] + "\n" + nxt
            cut = getattr(p.trim, "unfinished", None)
            if cut is not None:  # stopped by its token limit: only as far as it parses (a
                # docstring continued to `Suffel,\n       "`, one quote of its closing three)
                t = cut(e.prefix, t, e.suffix) or ""
            t = _sanitize(t)
            if len(t) > len(texts[i]) and t.startswith(texts[i]):
                texts[i], replace[i] = t, r
                n += 1
        if n:
            # the same entry with longer texts: what `reverify` and `reanswer` read (its raw
            # drafts, heal, prompt size) stays (a fresh Entry here lost them: no answer was
            # ever re-verified in the server after its drafts were continued)
            self.ahead.replace(doc, e, dataclasses.replace(e, texts=tuple(texts), replace=tuple(replace)))
        return n

    def _finish(self, pr: Prompt, drafts, trim) -> tuple[list[DraftOut], list[Draft]]:
        """Strip the healed text, cut what stopped mid-way back to whole lines, cut loops,
        trim, drop empties and duplicates (completion.junk), rank by probability.  Returns
        the drafts to show and the raw drafts they came from."""
        seen: set[str] = set()
        outs: list[DraftOut] = []
        raws: list[Draft] = []
        clean: list[bool] = []  # parses without new errors (when the trim can tell)
        for rank, d in enumerate(sorted(drafts, key=lambda d: -d.logprob)):
            full = d.final_text(self.tok)
            if not full.startswith(pr.heal):
                continue  # cannot happen with the heal guide; never emit misaligned text
            text = full[len(pr.heal):]
            partial = False
            if d.looped or (d.open_end and d.cut is None):
                # stopped mid-line (a loop, the hard deadline, the other drafts' early exit):
                # whole lines only; the best draft may show a first line it is still
                # writing, cut back to a word boundary
                text = whole_lines(text, partial_ok=rank == 0 and not d.looped)
                if text is None:
                    continue
                partial = not logical_line_ends(text.rstrip() + "\n")  # an unfinished statement
                cut = getattr(trim, "unfinished", None) if partial else None
                if cut is not None:  # only as far as it parses (`if not isinstance(` goes)
                    text = cut(pr.prefix, text, pr.suffix)
                    if text is None:
                        continue
            text = cut_loop(text.rstrip())
            if text is None:
                continue
            replace = 0
            ok = True
            if trim is not None and not partial:  # (a line being written has open brackets)
                r = trim(pr.prefix, text, pr.suffix)
                if r is None:
                    continue
                text, replace = r[0], r[1]
                ok = r[2] if len(r) > 2 else True
            text = _sanitize(text)
            key = "\n".join(ln.rstrip() for ln in text.rstrip().split("\n"))
            if not text.strip() or key in seen:
                continue
            seen.add(key)
            outs.append(DraftOut(text, replace, round(d.logprob, 4)))
            raws.append(d)
            clean.append(ok)
        # a draft that breaks the code where it goes is junk (an opener at its end counts as
        # a block to come: analysis.trim.adds_parse_errors)
        raws = [r for r, c in zip(raws, clean) if c]
        outs = [o for o, c in zip(outs, clean) if c]
        return outs, raws


_FORBIDDEN = {0} | set(range(0x202A, 0x202F)) | set(range(0x2066, 0x206A))


def _sanitize(text: str) -> str:
    """Suggestions are inert text: no NUL, no bidi controls (docs/reliability.md, P12)."""
    if any(ord(ch) in _FORBIDDEN for ch in text):
        text = "".join(ch for ch in text if ord(ch) not in _FORBIDDEN)
    return text
