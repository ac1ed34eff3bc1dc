"""Decoding k drafts from one prompt cache: greedy, batched ("tree") and superposed.

All methods share one KV cache of batch size 1. The prompt (minus its last token) is in
slots [0, n-1); the last prompt token is fed at slot n-1 to get the first distribution.
Draft tokens are written after the prompt and forgotten afterwards (the cache length is
the prompt's again), so the per-document cache stays the document's.

- `batched`: the k best first tokens start k drafts; each step feeds the k drafts' last
  tokens as one forward of k rows with a mask that lets row i see the prompt and draft i's
  own tokens only. On a memory-bound CPU k rows cost about what one row costs.
- `superposed` (Superposed Decoding): one row per step, whose input is the probability-
  weighted mix of the k drafts' last-token embeddings; k x 3k candidates scored with the
  draft probability interpolated with the workspace n-gram model, best k kept.

Guides (token healing, monitors) return a boolean mask over the vocabulary per draft
and step; masks are AND-ed; a monitor mask that would forbid everything is ignored.
"""

from __future__ import annotations

import bisect
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Protocol

import torch

from .junk import text_loop, token_loop
from .kvcache import Cancelled, DocCache
from .tokens import Tokenizer


class Guide(Protocol):
    """Something that restricts the next token given the draft text so far.  ``budget_s``:
    how long the guide may wait for slow facts (None: its own default)."""

    def allowed(self, draft: str, budget_s: float | None = None) -> torch.Tensor | None: ...


class HealGuide:
    """Token healing: the draft must start with `heal` (text backed off the prompt)."""

    def __init__(self, index: "PieceIndex", heal: str):
        self.index = index
        self.heal = heal

    def allowed(self, draft: str, budget_s: float | None = None) -> torch.Tensor | None:
        if len(draft) >= len(self.heal):
            return None
        return self.index.compatible(self.heal[len(draft):])


class PieceIndex:
    """Token pieces sorted for prefix queries (token healing), built once per tokenizer."""

    def __init__(self, tok: Tokenizer):
        pieces = tok.pieces
        self.vocab = len(pieces)
        order = sorted((p, i) for i, p in enumerate(pieces) if p and i not in tok.special_ids)
        self.sorted_pieces = [p for p, _ in order]
        self.sorted_ids = [i for _, i in order]
        self.by_piece: dict[str, list[int]] = {}
        for p, i in order:
            self.by_piece.setdefault(p, []).append(i)
        self._cache: dict[str, torch.Tensor] = {}

    def compatible(self, rest: str) -> torch.Tensor:
        """Tokens whose piece is a prefix of `rest` or starts with `rest`."""
        m = self._cache.get(rest)
        if m is not None:
            return m
        m = torch.zeros(self.vocab, dtype=torch.bool)
        ids: list[int] = []
        for n in range(1, len(rest)):
            ids.extend(self.by_piece.get(rest[:n], ()))
        lo = bisect.bisect_left(self.sorted_pieces, rest)
        hi = bisect.bisect_left(self.sorted_pieces, rest + "\U0010ffff")
        ids.extend(self.sorted_ids[lo:hi])
        m[torch.tensor(ids, dtype=torch.long)] = True
        if len(self._cache) > 4096:
            self._cache.clear()
        self._cache[rest] = m
        return m


StopFn = Callable[[str], "int | None"]
"""stop(draft_text) -> length to cut the draft at when it is complete, else None."""


@dataclass
class Draft:
    tokens: list[int] = field(default_factory=list)
    text: str = ""  # concatenated pieces (exact text is decoded at the end)
    logprob: float = 0.0
    done: bool = False
    cut: int | None = None  # where the stop rule cut the text
    # stopped before its natural end (the request's deadline, max_tokens, the early exit of
    # the other drafts): the text may continue (`completion.ahead` decodes the rest when idle)
    open_end: bool = False
    looped: bool = False  # cut where it started repeating itself (completion.junk)

    def final_text(self, tok: Tokenizer) -> str:
        t = tok.decode(self.tokens)
        return t[: self.cut] if self.cut is not None else t


@dataclass
class DecodeStats:
    steps: int = 0  # forward passes after the prompt
    tokens: int = 0  # tokens generated over all drafts
    ms: float = 0.0
    first_ms: float = 0.0


@dataclass
class DecodeSpec:
    k: int = 3
    max_tokens: int = 48
    stop: StopFn | None = None
    guides: list[Guide] = field(default_factory=list)
    heal: HealGuide | None = None
    cancel: threading.Event | None = None
    method: str = "batched"  # "greedy" (k=1), "batched", "superposed", "sequential", "beam"
    ngram: object | None = None  # completion.ngram.NGram for superposed scoring
    alpha: float = 0.25  # superposed: n-gram weight (paper 0.54; bench/drafts.py measured 0.25 better on code)
    reset_after: int = 0  # superposed: continue drafts exactly after this many steps (0 = never)
    verify: bool = True  # superposed: exact log-probabilities of the alternatives, incoherent ones dropped
    # The request's budget (time.perf_counter() values).  After `deadline` a draft stops at
    # the end of its next complete line (the first line always comes whole: an editor shows a
    # line, and half of one is worse than none); after `hard_deadline` every draft stops where
    # it is.  Analyses never wait past the deadline (`_mask_for`).
    deadline: float | None = None
    hard_deadline: float | None = None


#: how long an analysis may take, from its start, before the mask of a draft other than the
#: greedy anchor goes without it: the anchor's step waits the analyzer's own budget, but an
#: alternative is often an incoherent mix (superposed decoding) whose queries jedi answers
#: slowly (200 ms measured for `patsearch = lambda.compile(`), and the request waited for them.
#: The queries were started a forward earlier (guides' prefetch), so most answers are in.
ALT_ANALYSIS_BUDGET_S = 0.05


def analysis_budget(spec: DecodeSpec, anchor: bool) -> float | None:
    """How long a step's analyses may wait (from each query's start): the analyzer's own
    budget for the anchor (None), ALT_ANALYSIS_BUDGET_S for the others, and never more than
    half of what is left before the request's deadline (0 after it: only answers already in
    constrain the step, a late one does not hold the request)."""
    cap = None if anchor else ALT_ANALYSIS_BUDGET_S
    if spec.deadline is not None:
        left = max(0.0, (spec.deadline - time.perf_counter()) / 2)
        cap = left if cap is None else min(cap, left)
    return cap


def _mask_for(spec: DecodeSpec, draft: str, anchor: bool = True) -> torch.Tensor | None:
    """AND of every guide's mask for this draft; healing always applies, a monitor mask that
    leaves nothing allowed is dropped (analysis must never block all continuations).
    ``anchor`` False: a draft other than the greedy one (see `analysis_budget`)."""
    heal = spec.heal.allowed(draft) if spec.heal is not None else None
    mon: torch.Tensor | None = None
    cap = analysis_budget(spec, anchor) if spec.guides else None
    for g in spec.guides:
        m = g.allowed(draft) if cap is None else g.allowed(draft, cap)
        if m is not None:
            mon = m if mon is None else (mon & m)
    if mon is not None:
        both = mon if heal is None else (mon & heal)
        if bool(both.any()):
            return both
    return heal


def _prefetch(spec: DecodeSpec, drafts: list[str]) -> None:
    """Let the guides start the analyses the next step's masks need (before its forward)."""
    for g in spec.guides:
        pre = getattr(g, "prefetch", None)
        if pre is not None:
            for text in drafts:
                pre(text)


def _apply(logits: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    if mask is None:
        return logits
    return logits.masked_fill(~mask, float("-inf"))


def _check_cancel(spec: DecodeSpec) -> None:
    if spec.cancel is not None and spec.cancel.is_set():
        raise Cancelled()


def _extend(d: Draft, tok_id: int, lp: float, tok: Tokenizer, spec: DecodeSpec) -> None:
    d.tokens.append(tok_id)
    d.logprob += lp
    if tok_id in tok.stop_ids:
        d.tokens.pop()
        d.done = True
        return
    pieces = tok.pieces
    d.text += pieces[tok_id]
    if spec.stop is not None:
        c = spec.stop(d.text)
        if c is not None:
            d.cut = c
            d.done = True
            return
    at = token_loop(d.tokens, lambda t: len(pieces[t]))
    if at is not None:  # repeating itself: cut where the loop starts (completion.junk)
        d.cut = sum(len(pieces[t]) for t in d.tokens[:at])
        d.done = d.looped = True
        return
    if "\n" in pieces[tok_id]:  # a line just ended: lines repeating (completion.junk)
        h = len(spec.stop.heal) if spec.stop is not None else 0
        at = text_loop(d.text[h:])
        if at is not None:
            d.cut = h + at
            d.done = d.looped = True
            return
    if spec.deadline is not None and len(d.tokens) > 1:
        now = time.perf_counter()
        if spec.hard_deadline is not None and now >= spec.hard_deadline:
            d.done = d.open_end = True
            return
        if now >= spec.deadline and spec.stop is not None:
            c = spec.stop.line_cut(d.text)  # the end of the last complete line, if any
            if c is not None:
                d.cut = c
                d.done = d.open_end = True
                return
    if len(d.tokens) >= spec.max_tokens:
        d.done = d.open_end = True


def _first_logits(cache: DocCache, prompt: list[int]) -> torch.Tensor:
    n = len(prompt)
    cache.reserve(n)
    return cache.net.forward(torch.tensor([prompt[-1]]), torch.tensor([n - 1]), cache.k, cache.v, n - 1)[0]


def decode(cache: DocCache, prompt: list[int], tok: Tokenizer, spec: DecodeSpec,
           first_logits: torch.Tensor | None = None) -> tuple[list[Draft], DecodeStats]:
    """Generate drafts after `prompt`; the cache must hold prompt[:-1] (see module doc).
    `first_logits`: the logits after prompt[-1] when the sync already ran it (its K/V are
    then in slot len(prompt) - 1)."""
    assert cache.tokens == prompt[:-1], "cache not synced to the prompt"
    t0 = time.perf_counter()
    st = DecodeStats()
    n = len(prompt)
    cache.reserve(n + spec.max_tokens * max(1, spec.k) + 1)
    with cache.lock:
        logits = first_logits if first_logits is not None else _first_logits(cache, prompt)
        st.first_ms = (time.perf_counter() - t0) * 1000
        method = spec.method if spec.k > 1 else "greedy"
        if method in ("greedy", "batched"):
            drafts = _batched(cache, n, logits, tok, spec, st, k=1 if method == "greedy" else spec.k)
        elif method == "superposed":
            from .superposed import superposed

            drafts = superposed(cache, n, logits, tok, spec, st, prompt=prompt)
        elif method == "beam":
            from .beam import beam

            drafts = beam(cache, n, logits, tok, spec, st)
        elif method == "sequential":
            drafts = []
            for _ in range(spec.k):
                drafts += _batched(cache, n, logits, tok, spec, st, k=1, sample=True)
        else:
            raise ValueError(f"unknown decode method {spec.method!r}")
        # forget the draft tokens: slots past the prompt are scratch space
    st.ms = (time.perf_counter() - t0) * 1000
    return drafts, st


def tree_step(cache: DocCache, drafts: list[Draft], active: list[int], slots_of: list[list[int]],
              n: int, nxt: int, masked: bool = True) -> tuple[torch.Tensor, int]:
    """One forward of the active drafts' last tokens, written at slots [nxt, nxt+T); row r
    sees the prompt [0, n) and draft active[r]'s own slots only (None mask when there is a
    single draft). Returns the rows' logits and the next free slot."""
    T = len(active)
    for r, i in enumerate(active):
        slots_of[i].append(nxt + r)
    S = nxt + T
    mask = None
    if masked:
        mask = torch.zeros(T, S, dtype=torch.bool)
        mask[:, :n] = True
        for r, i in enumerate(active):
            mask[r, slots_of[i]] = True
    ids = torch.tensor([drafts[i].tokens[-1] for i in active])
    pos = torch.tensor([n + len(drafts[i].tokens) - 1 for i in active])
    out = cache.net.forward(ids, pos, cache.k, cache.v, nxt, mask=mask, logits_rows=slice(None))
    return out, S


def _batched(cache: DocCache, n: int, logits: torch.Tensor, tok: Tokenizer, spec: DecodeSpec,
             st: DecodeStats, k: int, sample: bool = False) -> list[Draft]:
    """k drafts from the k best first tokens, then greedy (or sampled) per draft, advanced
    together one forward per step (see module doc)."""
    lp0 = torch.log_softmax(_apply(logits, _mask_for(spec, "")), -1)
    if sample:
        first = torch.multinomial(lp0.exp(), 1)
    else:
        first = torch.topk(lp0, k).indices
    drafts: list[Draft] = []
    for t in first.tolist():
        if lp0[t] == float("-inf"):
            continue
        d = Draft()
        _extend(d, t, float(lp0[t]), tok, spec)
        drafts.append(d)
    slots_of: list[list[int]] = [[] for _ in drafts]  # scratch slots holding draft i's tokens
    nxt = n  # next free slot
    while True:
        active = [i for i, d in enumerate(drafts) if not d.done]
        if not active:
            break
        _check_cancel(spec)
        out, nxt = tree_step(cache, drafts, active, slots_of, n, nxt, masked=len(drafts) > 1)
        st.steps += 1
        for r, i in enumerate(active):
            d = drafts[i]
            lp = torch.log_softmax(_apply(out[r], _mask_for(spec, d.text)), -1)
            t = int(torch.multinomial(lp.exp(), 1)) if sample else int(lp.argmax())
            _extend(d, t, float(lp[t]), tok, spec)
    st.tokens += sum(len(d.tokens) for d in drafts)
    return drafts

