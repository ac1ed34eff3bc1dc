"""Answers ahead of the user: the drafts of the last requests, kept per document, continued
when the editor is idle, and served again when the user types what they predicted.

Typing a line is a request per keystroke; most keystrokes type what a shown draft already
said.  Tabby's typed-ahead cache and llama.vim's follow-up request after a shown suggestion
answer those from memory; so does draftline: `AheadStore.lookup` runs on the event loop
(string comparisons, no model, well under a millisecond: measured in the replay's
`typing` kind as the `ahead` source) and returns, for a document whose text before the
cursor extends a kept request's text by characters a draft predicted (the text after the
cursor unchanged), the rest of those drafts.  Accepting a draft, whole or a word of it,
is the same case.

`Pending` is what the idle-time continuation needs: a request cut by its budget left its
drafts open (`Draft.open_end`), and a draft that ended its line naturally will likely be
followed by the user pressing Enter.  `continue_drafts` (a worker job of its own, run
before any cache maintenance and cancelled by an edit the drafts did not predict) feeds the
drafts' tokens back as one token tree after the prompt (its KV stays untouched: draft
tokens live in scratch slots) and decodes each greedily, up to the end of its block or one
line more, then `AheadStore` holds the longer texts.  The per-document KV cache is never
changed here: if the cache no longer holds the request's prompt (an edit synced it since),
the continuation is dropped.
"""

from __future__ import annotations

import dataclasses
import math
import threading
import time
from dataclasses import dataclass, field

import torch

from .drafts import DecodeSpec, DecodeStats, Draft, apply_mask, extend, mask_for, tree_mask, tree_step
from .kvcache import Cancelled, DocCache
from .stops import logical_line_ends, make_stop
from .tokens import Tokenizer

MAX_ENTRIES = 4  # kept requests per document
CONTINUE_TOKENS = 32  # at most this many tokens more per draft
CONTINUE_DRAFTS = 2  # the best this many drafts are continued


@dataclass(frozen=True)
class Entry:
    """A request's answer: the document text around its cursor and what its drafts say
    from there (`texts` may run past what was shown once continued)."""

    prefix: str
    suffix: str
    texts: tuple[str, ...]
    replace: tuple[int, ...]  # characters of `suffix` each draft replaces
    created: float = field(default_factory=time.monotonic)
    # the drafts as decoded (heal included), for `reverify`: their tokens, and whether each
    # ended by its stop rule or a stop token (not cut by the budget, a loop or max_tokens)
    heal: str = ""
    raw: tuple[tuple[int, ...], ...] = ()
    natural: tuple[bool, ...] = ()
    prompt_len: int = 0  # tokens of the request's prompt
    exact: bool = True  # decoded on a cache without stale tokens (see Engine.reanswer)
    # decoded with words ruled out (completion.rescue): a re-verification, which asks for
    # what decoding without the ban writes, would fail
    rescued: bool = False

    @property
    def checkable(self) -> bool:
        """Its anchor draft ended naturally: worth one `reverify` forward.  Whatever the
        prompt's size: the check once also asked for a prompt within 128 tokens of the kept
        one's (a window grown from 640 to 2k tokens had changed the answer in 14 of 16 replay
        cases), but checking each anchor only up to its first line, the replay's edit_far
        re-verified 8 of 16 kept answers without that bound vs 3 of 16 with it, p50 345 vs
        464 ms (2026-12-05, dev split, the same hour), a failed check costing 50-110 ms."""
        return bool(self.raw and self.natural and self.natural[0]) and not self.rescued


@dataclass
class Pending:
    """What the idle-time continuation of an entry needs (worker thread only)."""

    entry: Entry
    prompt: list[int]
    drafts: list[Draft]  # raw drafts, heal included, in the entry's order
    heal: str
    trim: object = None  # (prefix, text, suffix) -> (text, replace, ok) | None
    open_ends: list[bool] = field(default_factory=list)


class AheadStore:
    """Entries per document.  Written by the worker thread (whole tuples replaced at once),
    read by the event loop."""

    def __init__(self) -> None:
        self._by_doc: dict[str, tuple[Entry, ...]] = {}
        self.pending: dict[str, Pending] = {}  # worker only

    def put(self, doc: str, entry: Entry, pending: Pending | None = None) -> None:
        old = self._by_doc.get(doc, ())
        self._by_doc[doc] = (entry,) + tuple(e for e in old if e.prefix != entry.prefix
                                             or e.suffix != entry.suffix)[: MAX_ENTRIES - 1]
        if pending is not None:
            self.pending[doc] = pending
        else:
            self.pending.pop(doc, None)

    def replace(self, doc: str, old: Entry, new: Entry) -> None:
        cur = self._by_doc.get(doc, ())
        self._by_doc[doc] = tuple(new if e is old else e for e in cur)

    def entries(self, doc: str) -> tuple[Entry, ...]:
        """The document's kept answers, newest first (a team replica sends the newest to the
        editor's edge, whose own store answers its keystrokes)."""
        return self._by_doc.get(doc, ())

    def drop(self, doc: str) -> None:
        self._by_doc.pop(doc, None)
        self.pending.pop(doc, None)

    def lookup(self, doc: str, text: str, cursor: int) -> list[tuple[str, int]] | None:
        """Drafts for the cursor from a kept answer: [(text, replace)], or None.

        The text after the cursor must be the entry's, the text before it the entry's plus
        what the user typed since; each draft that starts with the typed text gives its
        rest, cut where a request at this cursor would stop (one line mid-line, the block
        otherwise)."""
        entries = self._by_doc.get(doc)
        if not entries:
            return None
        suffix_len = len(text) - cursor
        for e in entries:
            if len(e.suffix) != suffix_len or cursor < len(e.prefix):
                continue
            if not text.startswith(e.prefix) or not text.endswith(e.suffix):
                continue
            typed = text[len(e.prefix):cursor]
            out: list[tuple[str, int]] = []
            for t, r in zip(e.texts, e.replace):
                if len(t) <= len(typed) or not t.startswith(typed):
                    continue
                rest = stop_here(text[:cursor], e.suffix, t[len(typed):])
                if rest.strip() and all(rest != o for o, _ in out):
                    out.append((rest, r))
            if out:
                return out
        return None


    def at_place(self, doc: str, prefix: str, suffix: str, heal: str) -> Entry | None:
        """The newest kept answer for the same place: the same LOCAL characters before and
        after the cursor and the same healed text."""
        for e in self._by_doc.get(doc, ()):
            if e.heal == heal and prefix[-LOCAL:] == e.prefix[-LOCAL:] and suffix[:LOCAL] == e.suffix[:LOCAL]:
                return e
        return None


#: characters around the cursor that must be unchanged for a kept answer to be re-verified
LOCAL = 400
#: how many tokens a kept answer's prompt may differ from a whole window's before the place is
#: answered again from the whole window (`Engine.reanswer`)
PROMPT_DRIFT = 128


def reverify(cache: DocCache, prompt: list[int], e: Entry, tok: Tokenizer, spec: DecodeSpec,
             first: torch.Tensor | None, st: DecodeStats) -> list[Draft] | None:
    """The answer kept for this place, checked against the prompt as it is now in ONE
    forward: its drafts fed as a token tree after the prompt.  The anchor is kept only if
    every one of its tokens is the argmax of the (guide-masked) distribution before it, i.e.
    exactly what greedy decoding would write now, and its stop rule (or the budget) ends it
    within them;
    the others get their exact log-probabilities and are dropped when a token's probability
    is under VERIFY_MIN_P (as superposed decoding's own verification does).  None: the anchor
    changed, decode as usual.

    Why: after an edit far above the cursor the same request comes again (VS Code asks
    again, the user comes back), and its answer is nearly always the same; a tree forward of
    ~40 rows costs a fraction of the ~15 sequential steps of the first line.  The cache's
    prompt is untouched: the tree lives in scratch slots after it."""
    from .superposed import VERIFY_MIN_P

    # Each draft is checked up to its first complete line, whatever time is left: a kept
    # answer was often stopped there by its own request's deadline, after decoding a few
    # tokens of the next line that were cut; with time left now the anchor "would go on"
    # and the replay's edit_far (2026-12-05) re-verified 4 of 13 kept answers: the three
    # rejections looked at were this, their first line unchanged.  More lines come from
    # the continuation, as after any answer.
    spec = dataclasses.replace(spec, first_line=True)
    n = len(prompt)
    seqs = [t[:checked_len(t, tok, spec)] for t in e.raw if t]
    if not seqs or cache.tokens != prompt[:-1]:
        return None
    net = cache.net
    rows: list[int] = []
    pos: list[int] = []
    visible: list[list[int]] = []
    if first is None:  # the prompt's last token is not in yet: it leads the tree (slot n-1)
        rows, pos, visible = [prompt[-1]], [n - 1], [[]]
    start = n - len(rows)  # the slot of the tree's first row
    # the drafts as a token trie: a prefix two drafts share is one row (an alternative
    # mostly leaves the anchor after a few tokens), each row seeing its own branch
    node: dict[tuple[int, int], int] = {}
    paths: list[list[int]] = []  # each draft's rows
    for t in seqs:
        path: list[int] = []
        parent = -1
        for j, tid in enumerate(t[:-1]):  # (the last token's row would only say what follows it)
            r = node.get((parent, tid))
            if r is None:
                r = node[(parent, tid)] = len(rows)
                rows.append(tid)
                pos.append(n + j)
                visible.append((visible[parent] if parent >= 0 else []) + [start + r])
            path.append(r)
            parent = r
        paths.append(path)
    R = len(rows)
    cache.reserve(start + R + 1)
    mask = tree_mask(R, start + R, n, visible)  # every row sees the prompt [0, n), drafts their own rows
    out: torch.Tensor | None = None
    if R:  # (none: one-token drafts checked on the prompt's own logits)
        with cache.lock:
            out = net.forward(torch.tensor(rows), torch.tensor(pos), cache.k, cache.v, start, mask=mask,
                              logits_rows=slice(None))
        st.steps += 1
    z0 = first if first is not None else out[0]
    drafts: list[Draft] = []
    for i, t in enumerate(seqs):
        d = Draft()
        ok = True
        for j, tid in enumerate(t):
            z = z0 if j == 0 else out[paths[i][j - 1]]  # type: ignore[index]
            lp = torch.log_softmax(apply_mask(z, mask_for(spec, d.text, anchor=i == 0)), -1)
            if i == 0 and int(lp.argmax()) != tid:
                return None  # the anchor would be written differently now
            if i > 0 and float(lp[tid]) < math.log(VERIFY_MIN_P):
                ok = False
                break
            extend(d, tid, float(lp[tid]), tok, spec)
            if d.done:  # its stop rule, or the request's budget, ends it here now
                break
        if i == 0 and not d.done:
            return None  # the anchor would go on now
        if ok:
            drafts.append(d)
    st.tokens += sum(len(d.tokens) for d in drafts)
    return drafts


def checked_len(t: list[int], tok: Tokenizer, spec: DecodeSpec) -> int:
    """How many of a kept draft's tokens `reverify` reads: up to where its stop rule, a loop
    or its first complete line ends it (`spec.first_line`), else all.  Why: kept drafts
    carry the tokens their continuation decoded past the first line, and each token is a
    row of the check's forward (~4 ms a row at 2k here, the output head half of it)."""
    sim = dataclasses.replace(spec, deadline=None, hard_deadline=None)
    d = Draft()
    for j, tid in enumerate(t):
        extend(d, tid, 0.0, tok, sim)
        if d.done:
            return j + 1
    return len(t)


def stop_here(prefix: str, suffix: str, rest: str) -> str:
    """`rest` cut where a request at this cursor would end its drafts (`stops.make_stop`)."""
    rule = make_stop(prefix, suffix, "")
    c = rule(rest)
    if c is None and rule.single_line:
        return rest.split("\n", 1)[0].rstrip()
    if c is None and rule.statement:
        ends = logical_line_ends(rest + "\n")
        c = ends[0] if ends else None
    return (rest if c is None else rest[:c]).rstrip()


def continue_drafts(cache: DocCache, p: Pending, tok: Tokenizer, cancel: threading.Event | None = None) -> list[Draft] | None:
    """Decode the pending drafts further (see module doc); None when the cache no longer
    holds the request's prompt.  Returns the continued drafts (tokens and text extended)."""
    prompt = p.prompt
    n = len(prompt)
    if cache.tokens != prompt[:-1]:
        return None
    seqs = [d for d in p.drafts[:CONTINUE_DRAFTS] if d.tokens]
    if not seqs:
        return []
    net = cache.net
    with cache.lock:
        cache.reserve(n + sum(len(d.tokens) for d in seqs) + len(seqs) * (CONTINUE_TOKENS + 1) + 2)
        # one forward: the prompt's last token (slot n-1), then every draft's tokens, each
        # row seeing the prompt and its own draft's earlier rows (a token tree)
        rows = [prompt[-1]]
        pos = [n - 1]
        slots_of: list[list[int]] = []
        last_row: list[int] = []
        for d in seqs:
            own = []
            for j, t in enumerate(d.tokens):
                own.append(n - 1 + len(rows))
                rows.append(t)
                pos.append(n + j)
            slots_of.append(own)
            last_row.append(len(rows) - 1)
        R = len(rows)
        S = n - 1 + R
        visible = [[]] + [own[: q + 1] for own in slots_of for q in range(len(own))]
        mask = tree_mask(R, S, n, visible)
        if cancel is not None and cancel.is_set():
            raise Cancelled()
        out = net.forward(torch.tensor(rows), torch.tensor(pos), cache.k, cache.v, n - 1, mask=mask,
                          logits_rows=torch.tensor(last_row))
        drafts = [Draft(tokens=list(d.tokens), text=d.text, logprob=d.logprob) for d in seqs]
        spec = DecodeSpec(k=len(drafts), max_tokens=10**6, stop=None)
        limits = []
        for d, src in zip(drafts, seqs):
            limits.append(len(src.tokens) + CONTINUE_TOKENS)
        rules = [_ContinueRule(p.heal, src.text[len(p.heal):], open_end)
                 for src, open_end in zip(seqs, p.open_ends[: len(seqs)] or [False] * len(seqs))]
        z = {i: out[i] for i in range(len(drafts))}
        nxt = S
        st = DecodeStats()
        while True:
            for i, d in enumerate(drafts):
                if d.done or i not in z:
                    continue
                t = int(z[i].argmax())
                spec.stop = rules[i]
                extend(d, t, 0.0, tok, spec)
                if len(d.tokens) >= limits[i]:
                    d.done = True
            active = [i for i, d in enumerate(drafts) if not d.done]
            if not active:
                break
            if cancel is not None and cancel.is_set():
                raise Cancelled()
            o, nxt = tree_step(cache, drafts, active, slots_of, n, nxt)
            st.steps += 1
            z = {i: o[r] for r, i in enumerate(active)}
    return drafts


class _ContinueRule:
    """Stop a continued draft after the block it was writing (it was cut by the request's
    budget) or after one more line than it had (it ended its line: the next one)."""

    def __init__(self, heal: str, had: str, open_end: bool):
        self.heal = heal
        self.lines = had.count("\n") + (3 if open_end else 1)

    def __call__(self, draft: str) -> int | None:
        h = len(self.heal)
        c = draft[h:]
        if c.count("\n") < self.lines:
            return None
        at = -1
        for _ in range(self.lines):
            at = c.index("\n", at + 1)
        return h + at

    def line_cut(self, draft: str) -> int | None:
        return None
