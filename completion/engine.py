"""The model side's one entry point: documents in, drafts out. Knows nothing of LSP.

Not thread-safe by design: the LSP scheduler calls it from a single worker thread. Each
document keeps its token state (`TokenizedText`) and its KV cache (`DocCache`); a request
diffs the new text against the last seen text, re-tokenizes the changed window, builds the
prompt for the cursor, syncs the cache to it (PIE) and decodes k drafts.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import asdict, dataclass, field
from types import MappingProxyType
from typing import Any, Mapping

from .decode import DecodeSpec, HealGuide, PieceIndex, decode
from .kvcache import CacheStore, DocCache, SyncStats
from .model import LoadedModel
from .prompt import Prompt, build_prompt
from .stops import make_stop
from .tokens import TokenizedText

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
    # superposed scoring: weight of the workspace n-gram model; 0 (the default) scores by the
    # model alone: bench/drafts.py found the true line more often without it (k=3: 0.333 vs
    # 0.267 on 30 tasks, 0.233 vs 0.200 on 60) at a lower cost
    ngram_weight: float = 0.0


@dataclass(frozen=True)
class DocContext:
    """What a request's analysis reads besides its own text, copied on the event loop when
    the job is queued: a job never reads the server's live tables (the monitors once walked
    the open-document table on the worker thread, and a didOpen / didClose at that moment
    failed the completion with "dictionary changed size during iteration")."""

    language: str = ""
    others: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))  # uri -> text
    monitors: Any = None  # a copy of the monitor settings (None: the defaults)


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

    def to_json(self) -> dict:
        return {"drafts": [asdict(d) for d in self.drafts], "timings_ms": self.timings, "tokens": self.tokens}


def _common_affixes(a: str, b: str) -> tuple[int, int]:
    """Lengths of the common prefix and suffix (non-overlapping), in C-speed slices."""
    lim = min(len(a), len(b))
    lo, hi = 0, lim
    while lo < hi:  # binary search on slice equality: O(n log n) in C, not a Python loop
        mid = (lo + hi + 1) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid - 1
    p = lo
    lo, hi = 0, lim - p
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if a[len(a) - mid :] == b[len(b) - mid :]:
            lo = mid
        else:
            hi = mid - 1
    return p, lo


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
        self.pieces = PieceIndex(self.tok)
        self.guide_factory = None  # set by the server: (doc, prompt, DocContext) -> list[Guide]
        self.ngram = None  # completion.ngram.NGram of the workspace, set by the server
        self.retokenized_chars = 0

    # -- documents -------------------------------------------------------------------------
    def update(self, doc: str, text: str) -> TokenizedText:
        """Bring the document's tokens to `text`, re-tokenizing only the changed window."""
        tt = self.texts.get(doc)
        if tt is None:
            tt = TokenizedText.full(self.tok, text)
            self.texts[doc] = tt
            self.retokenized_chars += len(text)
            return tt
        if tt.text != text:
            p, s = _common_affixes(tt.text, text)
            self.retokenized_chars += tt.edit(self.tok, p, len(tt.text) - s, text[p : len(text) - s])
        return tt

    def close(self, doc: str) -> None:
        self.texts.pop(doc, None)
        self.caches.drop(doc)

    def release_memory(self) -> int:
        """Free every document's KV cache (they are rebuilt on demand): called after a
        MemoryError so the next request does not fail the same way.  Returns bytes freed."""
        import gc

        freed = self.caches.clear()
        gc.collect()
        return freed

    def prompt_for(self, doc: str, text: str, cursor: int) -> Prompt:
        tt = self.update(doc, text)
        cfg = self.config
        return build_prompt(tt, cursor, self.tok, self.context_tokens, cfg.suffix_tokens, heal=cfg.token_healing)

    def prepare(self, doc: str, text: str, cursor: int, cancel: threading.Event | None = None) -> SyncStats:
        """Sync the document's cache for a cursor (the idle-time work after an edit)."""
        pr = self.prompt_for(doc, text, cursor)
        return self._sync(doc, pr, cancel)

    def _sync(self, doc: str, pr: Prompt, cancel: threading.Event | None, with_tail: bool = False) -> SyncStats:
        """Sync the cache to the prompt (all but its last token); `with_tail`: a request
        follows, so the last token rides along in the sync's forward when it runs one."""
        cache = self.caches.get(doc)
        st = cache.sync(pr.tokens[:-1], mode="pie" if self.config.pie else "full", cancel=cancel,
                        extra=self.config.max_tokens * self.config.k + 1,
                        tail=pr.tokens[-1] if with_tail else None)
        self.caches.enforce(keep=doc)
        return st

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
                 context: DocContext | None = None) -> Result:
        """Drafts for the cursor at character offset `cursor` of `text`; `context`: the
        snapshot the monitors read (language, other open documents)."""
        cfg = self.config
        t0 = time.perf_counter()
        pr = self.prompt_for(doc, text, cursor)
        if guides is None and self.guide_factory is not None and cfg.monitors:
            guides = self.guide_factory(doc, pr, context or DocContext())  # starts the cursor's jedi query: it runs during the sync
        t1 = time.perf_counter()
        st = self._sync(doc, pr, cancel, with_tail=True)
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
        )
        cache = self.caches.get(doc)
        drafts, ds = decode(cache, pr.tokens, self.tok, spec, first_logits=st.tail_logits)
        st.tail_logits = None  # (SyncStats is kept in the Result: not the logits)
        outs = self._finish(pr, drafts, trim)
        t3 = time.perf_counter()
        timings = {"tokenize": round((t1 - t0) * 1000, 2), "sync": round((t2 - t1) * 1000, 2),
                   "first_token": round(ds.first_ms, 2), "decode": round(ds.ms, 2),
                   "total": round((t3 - t0) * 1000, 2)}
        if spec.guides:  # monitors: their time inside the decode, and the part spent waiting on jedi
            timings["guides"] = round(sum(getattr(g, "time_s", 0.0) for g in spec.guides) * 1000, 2)
            timings["jedi"] = round(sum(getattr(g, "query_s", 0.0) for g in spec.guides) * 1000, 2)
        return Result(
            drafts=outs,
            timings=timings,
            tokens={"prompt": len(pr.tokens), "generated": ds.tokens, "steps": ds.steps,
                    "computed": st.computed, "stale": cache.stale, "sync_mode": st.mode},
            sync=st,
        )

    def _finish(self, pr: Prompt, drafts, trim) -> list[DraftOut]:
        """Strip the healed text, trim, drop empties and duplicates, rank by probability."""
        seen: set[str] = set()
        outs: list[DraftOut] = []
        clean: list[bool] = []  # parses without new errors (when the trim can tell)
        for d in sorted(drafts, key=lambda d: -d.logprob):
            full = d.final_text(self.tok)
            if not full.startswith(pr.heal):
                continue  # cannot happen with the heal guide; never emit misaligned text
            text = full[len(pr.heal):].rstrip()
            replace = 0
            ok = True
            if trim is not None:
                r = trim(pr.prefix, text, pr.suffix)
                if r is None:
                    continue
                text, replace = r[0], r[1]
                ok = r[2] if len(r) > 2 else True
            text = _sanitize(text)
            if not text.strip() or text in seen:
                continue
            seen.add(text)
            outs.append(DraftOut(text, replace, round(d.logprob, 4)))
            clean.append(ok)
        if any(clean):  # drop drafts that add parse errors when another draft does not
            outs = [o for o, c in zip(outs, clean) if c]
        return outs


_FORBIDDEN = {0} | set(range(0x202A, 0x202F)) | set(range(0x2066, 0x206A))


def _sanitize(text: str) -> str:
    """Suggestions are inert text: no NUL, no bidi controls (RELIABILITY P12)."""
    if any(ord(ch) in _FORBIDDEN for ch in text):
        text = "".join(ch for ch in text if ord(ch) not in _FORBIDDEN)
    return text
