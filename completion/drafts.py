"""The machinery every decoding method shares: drafts, the spec of a request's decoding,
the guide masks of a step, extending a draft by a token (stop rule, loops, the budget),
and the token tree (several drafts as rows of one forward over one shared cache).

The methods (`batched`, `superposed`, `beam`) import this; `decode` dispatches to them.
Layout of the shared cache: the prompt (minus its last token) in slots [0, n-1), the last
prompt token at slot n-1 (fed with the request), draft tokens after it in scratch slots
that the next sync overwrites.
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
    guessed: int = 0  # steps whose distribution came with an earlier forward (completion.lookup)


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
    # superposed: the n-gram model's weight in a candidate's score (the engine passes its
    # `ngram_weight`, 0 by default: bench/drafts.py found the true line more often without it)
    alpha: float = 0.0
    verify: bool = True  # superposed: exact log-probabilities of the alternatives, incoherent ones dropped
    # The request's budget (time.perf_counter() values).  After `deadline` a draft stops at
    # the end of its next complete line (the first line always comes whole: an editor shows a
    # line, and half of one is worse than none); after `hard_deadline` every draft stops where
    # it is.  Analyses never wait past the deadline (`mask_for`).
    deadline: float | None = None
    hard_deadline: float | None = None
    # tokens ruled out after given texts, applied like `heal` (completion.rescue.BanGuide)
    ban: Guide | None = None
    # as if the deadline had passed, for the stop only: a draft ends at its first complete
    # line (`ahead.reverify`: a kept answer stopped there by its own request's deadline)
    first_line: bool = False
    # superposed: tokens the greedy draft's next steps are guessed ahead per forward
    # (completion.lookup; 0 = none), and the drafts kept for this place to guess from
    guess: int = 0
    hints: tuple = ()


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


def mask_for(spec: DecodeSpec, draft: str, anchor: bool = True) -> torch.Tensor | None:
    """AND of every guide's mask for this draft; healing always applies, a monitor mask that
    leaves nothing allowed is dropped (analysis must never block all continuations).
    ``anchor`` False: a draft other than the greedy one (see `analysis_budget`)."""
    heal = spec.heal.allowed(draft) if spec.heal is not None else None
    ban = spec.ban.allowed(draft) if spec.ban is not None else None
    if ban is not None:
        both = ban if heal is None else (ban & heal)
        heal = both if bool(both.any()) else heal
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


def prefetch(spec: DecodeSpec, drafts: list[str]) -> None:
    """Let the guides start the analyses the next step's masks need (before its forward)."""
    for g in spec.guides:
        pre = getattr(g, "prefetch", None)
        if pre is not None:
            for text in drafts:
                pre(text)


def apply_mask(logits: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    if mask is None:
        return logits
    return logits.masked_fill(~mask, float("-inf"))


def check_cancel(spec: DecodeSpec) -> None:
    if spec.cancel is not None and spec.cancel.is_set():
        raise Cancelled()


def extend(d: Draft, tok_id: int, lp: float, tok: Tokenizer, spec: DecodeSpec) -> None:
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
    if (spec.deadline is not None or spec.first_line) and len(d.tokens) > 1:
        now = time.perf_counter()
        if spec.hard_deadline is not None and now >= spec.hard_deadline:
            d.done = d.open_end = True
            return
        if (spec.first_line or now >= spec.deadline) and spec.stop is not None:
            c = spec.stop.line_cut(d.text)  # the end of the last complete line, if any
            if c is not None:
                d.cut = c
                d.done = d.open_end = True
                return
    if len(d.tokens) >= spec.max_tokens:
        d.done = d.open_end = True


def prompt_logits(cache: DocCache, prompt: list[int]) -> torch.Tensor:
    n = len(prompt)
    cache.reserve(n)
    return cache.net.forward(torch.tensor([prompt[-1]]), torch.tensor([n - 1]), cache.k, cache.v, n - 1)[0]


def tree_mask(rows: int, width: int, n: int, visible: list[list[int]]) -> torch.Tensor:
    """The attention mask of a token tree written after a prompt of n slots: row r sees the
    prompt [0, n) and the slots in visible[r] (its own branch, itself included); [rows, width]."""
    mask = torch.zeros(rows, width, dtype=torch.bool)
    mask[:, :n] = True
    for r, slots in enumerate(visible):
        mask[r, slots] = True
    return mask


def tree_step(cache: DocCache, drafts: list[Draft], active: list[int], slots_of: list[list[int]],
              n: int, nxt: int, masked: bool = True) -> tuple[torch.Tensor, int]:
    """One forward of the active drafts' last tokens, written at slots [nxt, nxt+T); row r
    sees the prompt [0, n) and draft active[r]'s own slots only (None mask when there is a
    single draft). Returns the rows' logits [T, vocab] and the next free slot."""
    T = len(active)
    for r, i in enumerate(active):
        slots_of[i].append(nxt + r)
    S = nxt + T
    mask = tree_mask(T, S, n, [slots_of[i] for i in active]) if masked else None
    ids = torch.tensor([drafts[i].tokens[-1] for i in active])
    pos = torch.tensor([n + len(drafts[i].tokens) - 1 for i in active])
    out = cache.net.forward(ids, pos, cache.k, cache.v, nxt, mask=mask, logits_rows=slice(None))
    return out, S


def text_key(d: Draft) -> str:
    """A draft's text as its stop rule cut it (what two drafts are compared by)."""
    return d.text[: d.cut] if d.cut is not None else d.text
