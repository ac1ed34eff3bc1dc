"""Vocabulary masks from monitor constraints (the bridge from ``analysis`` strings to tokens).

Why precompute: a constraint speaks of identifiers ("one of these 300 names, after ``pri``"),
the decoder needs one boolean per vocabulary token every step.  Each token's decoded string
is split once into its leading identifier characters and the rest; tokens are indexed by
that identifier part, so a constraint costs O(total candidate length) dictionary lookups plus
a few vectorised boolean operations over the vocabulary, then the mask is cached per
constraint (the decoder asks again and again while one identifier is written).

The arithmetic is numpy on boolean arrays (a final zero-copy ``torch.from_numpy``): on a
loaded 2-core machine every small torch op pays ~10 ms of intra-op thread-pool wake-up,
numpy pays microseconds.

Three views of the vocabulary are precomputed: the token itself, the token after a leading
``.`` (``.append`` continues a member access), and the token after leading spaces/tabs
(`` self`` starts the next word).  Byte-fallback tokens decode to ``\\ufffd`` and count as
non-identifier tokens.  ``StepConstraint.allows`` (analysis/constraint.py) is the scalar
reference the masks are tested against.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import torch

from draftline.analysis.constraint import (
    FOLLOWER_KINDS,
    QUOTE_KINDS,
    StepConstraint,
    follower_kind,
    is_ident_start,
    split_lead,
)
from draftline.analysis.monitors import MonitorSet
from draftline.analysis.session import MonitorSession

log = logging.getLogger(__name__)

__all__ = ["TokenMasker", "MonitorGuide"]


@dataclass
class _View:
    """One reading of every token: ``s`` = the token, or what follows its leading "." / spaces.

    Per token (tensors of length V): applicable (the view exists for it), empty (s == ""),
    lead_start (s starts an identifier), has_lead (s starts with identifier characters),
    pure (s is only identifier characters), blank_rest (after the identifier only spaces),
    rest_kind[k] (what follows the identifier starts with follower kind k), whole_blank /
    whole_kind[k] (the same, for s itself, when s is "what follows" a finished identifier),
    and dictionaries lead -> token ids for pure tokens and for tokens with a rest.
    """

    applicable: np.ndarray
    empty: np.ndarray
    lead_start: np.ndarray
    has_lead: np.ndarray
    pure: np.ndarray
    blank_rest: np.ndarray
    rest_kind: dict[str, np.ndarray]
    whole_blank: np.ndarray
    whole_kind: dict[str, np.ndarray]
    pure_ids: dict[str, list[int]]
    rest_ids: dict[str, list[int]]
    starts_dot: np.ndarray
    starts_space: np.ndarray
    pure_arrays: dict[str, np.ndarray] = None  # type: ignore[assignment]
    rest_arrays: dict[str, np.ndarray] = None  # type: ignore[assignment]
    max_pure_len: int = 0

    def __post_init__(self) -> None:
        self.pure_arrays = {k: np.array(v, dtype=np.int64) for k, v in self.pure_ids.items()}
        self.rest_arrays = {k: np.array(v, dtype=np.int64) for k, v in self.rest_ids.items()}
        self.max_pure_len = max((len(k) for k in self.pure_ids), default=0)


def _build_view(strings: list[str | None]) -> _View:
    n = len(strings)
    cols = {k: [False] * n for k in ("applicable", "empty", "lead_start", "has_lead", "pure", "blank_rest",
                                       "whole_blank", "starts_dot", "starts_space")}
    rest_kind = {k: [False] * n for k in FOLLOWER_KINDS}
    whole_kind = {k: [False] * n for k in FOLLOWER_KINDS}
    pure_ids: dict[str, list[int]] = {}
    rest_ids: dict[str, list[int]] = {}
    for i, s in enumerate(strings):
        if s is None:
            continue
        cols["applicable"][i] = True
        if s == "":
            cols["empty"][i] = True
            cols["whole_blank"][i] = True
            continue
        cols["starts_dot"][i] = s[0] == "."
        cols["starts_space"][i] = s[0] in " \t"
        w2 = s.lstrip(" \t")
        if w2 == "":
            cols["whole_blank"][i] = True
        else:
            k = follower_kind(w2)
            if k is not None and not (k in QUOTE_KINDS and len(w2) != len(s)):  # `f"` yes, `f "` no
                whole_kind[k][i] = True
        lead, rest = split_lead(s)
        if not lead:
            continue
        cols["has_lead"][i] = True
        cols["lead_start"][i] = is_ident_start(lead[0])
        if rest == "":
            cols["pure"][i] = True
            pure_ids.setdefault(lead, []).append(i)
            continue
        rest_ids.setdefault(lead, []).append(i)
        r2 = rest.lstrip(" \t")
        if r2 == "":
            cols["blank_rest"][i] = True
        else:
            k = follower_kind(r2)
            if k is not None and not (k in QUOTE_KINDS and len(r2) != len(rest)):
                rest_kind[k][i] = True

    def t(xs: list[bool]) -> np.ndarray:
        return np.array(xs, dtype=bool)

    return _View(
        applicable=t(cols["applicable"]), empty=t(cols["empty"]), lead_start=t(cols["lead_start"]),
        has_lead=t(cols["has_lead"]), pure=t(cols["pure"]), blank_rest=t(cols["blank_rest"]),
        rest_kind={k: t(v) for k, v in rest_kind.items()}, whole_blank=t(cols["whole_blank"]),
        whole_kind={k: t(v) for k, v in whole_kind.items()}, pure_ids=pure_ids, rest_ids=rest_ids,
        starts_dot=t(cols["starts_dot"]), starts_space=t(cols["starts_space"]),
    )


class TokenMasker:
    """Masks over a vocabulary given as decoded token strings (index = token id).

    ``mask(step)`` -> BoolTensor [vocab] (True = allowed), or None when ``step`` is None.
    The returned tensor is a fresh copy: callers may modify it.
    """

    def __init__(self, token_strings: list[str], cache_size: int = 64) -> None:
        self.vocab_size = len(token_strings)
        strs = [s if isinstance(s, str) else "" for s in token_strings]
        self._v0 = _build_view(strs)
        self._vd = _build_view([s[1:] if s.startswith(".") else None for s in strs])
        self._vs = _build_view([s.lstrip(" \t") if s[:1] in (" ", "\t") else None for s in strs])
        # A view of every token with leading spaces/tabs stripped (for `closed` constraints).
        self._vl = _build_view([s.lstrip(" \t") for s in strs])
        self._ones = np.ones(self.vocab_size, dtype=bool)
        self._ones.setflags(write=False)
        self._cache: OrderedDict[StepConstraint, np.ndarray] = OrderedDict()
        self._sets: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}
        self._subs: dict[tuple, np.ndarray] = {}
        self._rems: dict[tuple, tuple[set[str], set[str]]] = {}
        self._max_pure_len = max(v.max_pure_len for v in (self._v0, self._vd, self._vs, self._vl))
        self._cache_size = cache_size
        dot_ident = int((self._vd.lead_start & self._vd.applicable).sum())
        #: share of the vocabulary that are ``.identifier`` tokens; near zero means monitors
        #: need not look member lists up for a "." token (see MonitorSettings.dot_lookahead).
        self.dot_identifier_fraction = dot_ident / max(1, self.vocab_size)

    # --- public ---------------------------------------------------------------------------
    def mask(self, step: StepConstraint | None) -> torch.Tensor | None:
        if step is None:
            return None
        return torch.from_numpy(self.mask_array(step).copy())

    def mask_array(self, step: StepConstraint) -> np.ndarray:
        """The mask as a numpy bool array (cached; do not modify)."""
        hit = self._cache.get(step)
        if hit is None:
            hit = self._core(step, self._v0, top=True)
            hit.setflags(write=False)
            self._cache[step] = hit
            if len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(step)
        return hit

    # --- internals -----------------------------------------------------------------------------
    def _name_sets(self, v: _View, prefix: str, names: frozenset[str] | None) -> tuple[np.ndarray, np.ndarray]:
        """(pure tokens whose prefix+lead is a prefix of a name, rest tokens whose prefix+lead is a name).

        Cached per (view, prefix, names): within a request the same name set recurs at every
        name position, with and without a leading space.
        """
        if names is None:
            return self._ones, self._ones
        key = (id(v), prefix, names)
        hit = self._sets.get(key)
        if hit is not None:
            return hit
        rems, prefs = self._remainders(prefix, names)
        pure = v.pure_arrays
        pref_keys = prefs & pure.keys()
        exact_keys = rems & v.rest_arrays.keys()
        rest = v.rest_arrays
        out = (self._gather(pure, pref_keys), self._gather(rest, exact_keys))
        for a in out:
            a.setflags(write=False)
        self._sets[key] = out
        if len(self._sets) > 16:
            self._sets.pop(next(iter(self._sets)))
        return out

    def _remainders(self, prefix: str, names: frozenset[str]) -> tuple[set[str], set[str]]:
        """Remainders of the names after ``prefix``, and all their non-empty prefixes (view-independent)."""
        key = (prefix, names)
        hit = self._rems.get(key)
        if hit is None:
            lp = len(prefix)
            rems = {n[lp:] for n in names if n.startswith(prefix) and len(n) > lp} if lp else set(names)
            maxlen = self._max_pure_len
            prefs = {r[:k] for r in rems for k in range(1, min(len(r), maxlen) + 1)}
            hit = (rems, prefs)
            self._rems[key] = hit
            if len(self._rems) > 8:  # name sets of a big file: ~1 MB of prefix strings each
                self._rems.pop(next(iter(self._rems)))
        return hit

    def _gather(self, arrays: dict[str, np.ndarray], keys) -> np.ndarray:
        m = np.zeros(self.vocab_size, dtype=bool)
        if keys:
            m[np.concatenate([arrays[k] for k in keys])] = True
        return m

    def _ends(self, c: StepConstraint, word: str, v: _View, closed: bool = False) -> np.ndarray:
        """For tokens that are "what follows" the finished identifier ``word`` (their whole string).

        A quote follower (string prefix) applies only to a quote right after the word: not
        after blanks, and not at all when the text already has whitespace after it (``closed``).
        """
        in_c = c.candidates is None or word in c.candidates
        fol = {f: (n is None or word in n) for f, n in c.followers if not (closed and f in QUOTE_KINDS)}
        could_end = in_c or any(fol.values())
        could_end_spaced = in_c or any(ok for f, ok in fol.items() if f not in QUOTE_KINDS)
        out = np.full(self.vocab_size, in_c, dtype=bool)
        for f, ok in fol.items():
            if ok != in_c:
                out[v.whole_kind[f]] = ok
        if could_end_spaced != in_c:
            out[v.whole_blank] = could_end_spaced
        if could_end != could_end_spaced:  # the empty token: nothing written after the word yet
            out[v.empty] = could_end
        return out

    def _lead(self, c: StepConstraint, v: _View) -> np.ndarray:
        """For tokens with leading identifier characters: is prefix + lead (+ rest) acceptable."""
        pref_c, exact_c = self._name_sets(v, c.prefix, c.candidates)
        could_continue = pref_c
        could_end = exact_c  # before blanks: a string-prefix follower no longer applies
        res = exact_c
        for f, names in c.followers:
            pref_n, exact_n = self._name_sets(v, c.prefix, names)
            could_continue = could_continue | pref_n
            if f not in QUOTE_KINDS:
                could_end = could_end | exact_n
            res = np.where(v.rest_kind[f], exact_n, res)
        return np.where(v.pure, could_continue, np.where(v.blank_rest, could_end, res))

    def _core(self, c: StepConstraint, v: _View, top: bool) -> np.ndarray:
        p = c.prefix
        if p and c.closed:
            m = self._ends(c, p, v, closed=True)
            if top and c.after_space is not None:
                nxt = self._core(c.after_space, self._vl, top=False)
                m &= self._vl.empty | nxt
            return m
        lead = self._lead(c, v)
        if p:
            non = self._ends(c, p, v)
            has = v.has_lead
        else:
            non = np.full(self.vocab_size, c.other, dtype=bool)
            has = v.lead_start
        if top:
            if c.after_dot is not None:
                d = self._sub(c.after_dot, self._vd)
                non = np.where(v.starts_dot, (non & d) if p else d, non)
            if c.after_space is not None:
                s = self._sub(c.after_space, self._vs)
                non = np.where(v.starts_space, (non & s) if p else s, non)
        return np.where(has, lead, non)

    def _sub(self, c: StepConstraint, v: _View) -> np.ndarray:
        """The mask for what follows a token's leading "." / spaces (cached: the same
        ``after_dot``/``after_space`` recurs at every step of an identifier)."""
        key = (id(v), c)
        hit = self._subs.get(key)
        if hit is None:
            hit = v.empty | self._core(c, v, top=False)
            hit.setflags(write=False)
            self._subs[key] = hit
            if len(self._subs) > self._cache_size:
                self._subs.pop(next(iter(self._subs)))
        return hit


class MonitorGuide:
    """What the decode loop calls each step: ``allowed(draft)`` -> mask or None.

    Equivalent to ``masker.mask(monitor_set.at(text_before_cursor + draft, text_after_cursor))``,
    but holds one MonitorSession so the document is analysed once per request.

    ``heal``: the text the draft re-types first (token healing); ``text_before_cursor`` then
    ends where the prompt ends.  Making the guide starts the cursor's jedi query (it runs
    while the prompt is encoded); the steps re-typing the heal wait for it up to
    ``MonitorSettings.start_budget_s``.

    Timing: ``time_s`` is the time spent in ``allowed`` (analysis + masking), ``analysis_s``
    the analysis part (``session.at``), ``query_s`` the part of that spent in jedi queries
    (waits included), ``steps`` the number of calls.
    """

    def __init__(self, monitor_set: MonitorSet, masker: TokenMasker, text_before_cursor: str,
                 text_after_cursor: str, heal: str = "", prefetch: bool = True) -> None:
        self.monitor_set = monitor_set
        self.masker = masker
        lookahead = monitor_set.settings.dot_lookahead
        if lookahead == "auto":
            lookahead = "cached" if masker.dot_identifier_fraction < 0.001 else "wait"
        self.session: MonitorSession = monitor_set.session(text_before_cursor, text_after_cursor,
                                                            dot_lookahead=lookahead, heal=heal)
        self.last_constraint: StepConstraint | None = None
        self.time_s = 0.0
        self.analysis_s = 0.0
        self.steps = 0
        if prefetch:
            self.session.prefetch()

    @property
    def query_s(self) -> float:
        return self.session.query_s

    def prefetch(self, draft: str) -> None:
        """Start the analysis the step after ``draft`` will need (see MonitorSession.prefetch)."""
        t = time.perf_counter()
        self.session.prefetch(draft)
        self.time_s += time.perf_counter() - t

    def allowed(self, draft: str, budget_s: float | None = None) -> torch.Tensor | None:
        """The mask after ``draft``; ``budget_s`` caps the wait for analyses (see
        MonitorSession.at): the decoder passes it for drafts other than the greedy one."""
        t = time.perf_counter()
        step = self.session.at(draft, budget_s)
        t1 = time.perf_counter()
        self.last_constraint = step
        out = self.masker.mask(step)
        self.time_s += time.perf_counter() - t
        self.analysis_s += t1 - t
        self.steps += 1
        return out
