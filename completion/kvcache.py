"""Per-document KV cache kept in step with the document by Positional Integrity Encoding.

`DocCache.sync(new_tokens)` turns the cached prompt into the new one with the least work:
the common prefix stays bitwise as it is; token runs that survive the edit are moved to their
new slots and their keys re-rotated by R(d) (values do not depend on position); only
inserted or changed tokens (widened by a token or two: BPE boundaries and the tokens right
next to an edit are the ones whose context changed most) go through the model, attending to
the cache before them with their true positions. Tokens after an edit keep K/V computed
against the old context: that is PIE's approximation, tracked as `stale` and removed by
`refresh()` (exact re-encoding of the stale tail) when the editor is idle.

Slot i always holds the prompt token at position i, so draft tokens can be appended after
the prompt and dropped again without touching the prompt.
"""

from __future__ import annotations

import bisect
import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field

import torch

from .rope import shift_keys
from .transformer import Transformer

log = logging.getLogger(__name__)

CHUNK = 256  # prefill chunk: bounds the latency of one uninterruptible forward
# background refresh chunk: a completion request that interrupts a refresh waits for the
# chunk in flight: 32 tokens at 2k context ~64 ms here, 64 ~92 ms, 16 ~45 ms (2026-12-05,
# after attention's contiguous queries and the GEMM from 10 rows; 64 had taken ~250 ms and
# 256 ~550 ms before, measured as queueing delay in bench/latency.py)
REFRESH_CHUNK = 32
MOVE_CHUNK = 128  # slots per piece of a PIE move (see DocCache._apply)
# chunk of a front encoded apart before a sync changes the cache (`DocCache._encode_front`,
# `rebuild`): a request waits for the chunk in flight.  Measured when a window was still grown
# back at its front, 832 tokens to 2k: in steps of 192 tokens 757-768 ms in chunks of 192 (91
# ms each), 835-897 in chunks of 96 (58 ms); in steps of 384, 725-753 ms in chunks of 128 (71
# ms each), 665-683 in chunks of 192 (three runs each, 2026-12-05, default model, 2 threads)
FRONT_CHUNK = 128


class Cancelled(Exception):
    """A newer edit or request superseded this work."""


@dataclass(frozen=True)
class Block:
    """A run of tokens that survives an edit: old slots [old, old+size) -> [new, new+size)."""

    old: int
    new: int
    size: int

    @property
    def shift(self) -> int:
        return self.new - self.old


@dataclass
class SyncStats:
    mode: str  # "noop" | "pie" | "conflict-fast" | "full" | "exact-fallback"
    kept: int = 0  # tokens reused without moving
    moved: int = 0  # tokens reused and re-rotated
    computed: int = 0  # tokens run through the model
    dropped: int = 0
    ms: float = 0.0
    stale: int = 0  # tokens whose K/V were computed against text that has since changed
    # logits after `tail` when sync() was given one and ran a forward to fill a gap: the
    # tail rode along in the gap's last forward (one forward fewer for the request)
    tail_logits: torch.Tensor | None = field(default=None, repr=False)
    more: bool = False  # Engine.prepare: the window is still short, another step is due


def plan_blocks(old: list[int], new: list[int], min_run: int = 4, gram: int = 8) -> list[Block]:
    """Matching token runs between the cached and the new prompt, in order.

    Common prefix and suffix first (the usual single edit); for the middle (multi-place
    edits, a moved context window) a patience-style diff: token 8-grams that occur once in
    each sequence anchor the match, the longest chain of anchors in order is kept, and each
    anchor is extended both ways. O(n log n), robust to the repetitive tokens of code where
    difflib's junk heuristic fragments the match. Runs shorter than `min_run` are cheaper
    to recompute than to keep.
    """
    n, m = len(old), len(new)
    p = 0
    lim = min(n, m)
    while p < lim and old[p] == new[p]:
        p += 1
    s = 0
    while s < lim - p and old[n - 1 - s] == new[m - 1 - s]:
        s += 1
    blocks: list[Block] = [Block(0, 0, p)] if p else []
    a, b = old[p : n - s], new[p : m - s]
    for i, j, size in _anchored_matches(a, b, gram):
        if size >= min_run:
            blocks.append(Block(p + i, p + j, size))
    if s:
        blocks.append(Block(n - s, m - s, s))
    return blocks


def _anchored_matches(a: list[int], b: list[int], gram: int) -> list[tuple[int, int, int]]:
    if len(a) < gram or len(b) < gram:
        return []

    def unique_grams(x: list[int]) -> dict[tuple, int]:
        seen: dict[tuple, int] = {}
        dup: set[tuple] = set()
        for i in range(len(x) - gram + 1):
            g = tuple(x[i : i + gram])
            if g in seen:
                dup.add(g)
            else:
                seen[g] = i
        for g in dup:
            del seen[g]
        return seen

    ua, ub = unique_grams(a), unique_grams(b)
    pairs = sorted((i, ub[g]) for g, i in ua.items() if g in ub)
    # longest chain increasing in both (patience sorting on the b index)
    tails: list[int] = []  # index into pairs of the chain end for each length
    tails_b: list[int] = []  # their b indexes, increasing
    prev: list[int] = [-1] * len(pairs)
    for k, (_, j) in enumerate(pairs):
        lo = bisect.bisect_left(tails_b, j)
        if lo > 0:
            prev[k] = tails[lo - 1]
        if lo == len(tails):
            tails.append(k)
            tails_b.append(j)
        else:
            tails[lo] = k
            tails_b[lo] = j
    chain: list[tuple[int, int]] = []
    k = tails[-1] if tails else -1
    while k >= 0:
        chain.append(pairs[k])
        k = prev[k]
    chain.reverse()
    out: list[tuple[int, int, int]] = []
    for i, j in chain:
        lo_a = out[-1][0] + out[-1][2] if out else 0
        lo_b = out[-1][1] + out[-1][2] if out else 0
        if i < lo_a or j < lo_b:
            continue  # covered by (or crossing) the run extended before
        s0 = 0
        while i - s0 - 1 >= lo_a and j - s0 - 1 >= lo_b and a[i - s0 - 1] == b[j - s0 - 1]:
            s0 += 1
        e = gram
        while i + e < len(a) and j + e < len(b) and a[i + e] == b[j + e]:
            e += 1
        out.append((i - s0, j - s0, s0 + e))
    return out


def widen(blocks: list[Block], widen_by: int, total: int) -> list[Block]:
    """Shrink every block by `widen_by` tokens next to each recomputed gap (never the
    start of the prefix block nor the end of the text), so the tokens right at an edit
    boundary get recomputed with the new context."""
    out: list[Block] = []
    for i, bl in enumerate(blocks):
        cut_left = widen_by if (bl.new > 0 and (i == 0 or blocks[i - 1].new + blocks[i - 1].size < bl.new)) else 0
        nxt = blocks[i + 1] if i + 1 < len(blocks) else None
        end = bl.new + bl.size
        gap_right = end < (nxt.new if nxt is not None else total)
        cut_right = widen_by if gap_right else 0
        size = bl.size - cut_left - cut_right
        if size > 0:
            out.append(Block(bl.old + cut_left, bl.new + cut_left, size))
    return out


class DocCache:
    """One document's prompt tokens and their K/V, all layers in two tensors."""

    def __init__(self, net: Transformer, capacity: int = 0):
        self.net = net
        self.tokens: list[int] = []
        self.k, self.v = net.new_cache(max(capacity, CHUNK))
        self.exact = 0  # tokens [0, exact) carry exactly computed K/V
        self.lock = threading.Lock()
        # a front encoded apart by a cancelled sync: (its tokens so far, K, V), resumed by
        # the next sync whose front starts with them
        self._front: tuple[list[int], torch.Tensor, torch.Tensor] | None = None

    # -- bookkeeping ---------------------------------------------------------------------
    @property
    def capacity(self) -> int:
        return self.k.shape[2]

    @property
    def stale(self) -> int:
        return len(self.tokens) - self.exact

    @property
    def nbytes(self) -> int:
        f = self._front  # (read once: the worker may clear it meanwhile)
        return self.k.nbytes + self.v.nbytes + (2 * f[1].nbytes if f is not None else 0)

    def reserve(self, n: int) -> None:
        """Make room for n slots (prompt + draft tokens); grows in whole chunks."""
        if n <= self.capacity:
            return
        cap = ((n + CHUNK - 1) // CHUNK) * CHUNK
        k, v = self.net.new_cache(cap)
        # every old slot, not just the prompt's: a decode may hold scratch tokens (the last
        # prompt token fed with the request, draft tokens) past len(self.tokens)
        old = self.capacity
        k[:, :, :old] = self.k
        v[:, :, :old] = self.v
        self.k, self.v = k, v

    def shrink(self, extra: int) -> None:
        """Give back capacity beyond the prompt plus `extra` slots (after a big deletion)."""
        want = ((len(self.tokens) + extra + CHUNK - 1) // CHUNK) * CHUNK
        if self.capacity > 2 * want:
            k, v = self.net.new_cache(want)
            used = len(self.tokens)
            k[:, :, :used] = self.k[:, :, :used]
            v[:, :, :used] = self.v[:, :, :used]
            self.k, self.v = k, v

    # -- model work ----------------------------------------------------------------------
    def encode(self, tokens: list[int], a: int, b: int, cancel: threading.Event | None = None,
               on_chunk=None, chunk: int = CHUNK, tail: tuple[int, int] | None = None) -> torch.Tensor | None:
        """Run tokens[a:b] at slots/positions [a, b), attending to slots [0, b), in chunks.

        `tail` = (token, slot), slot >= b: one more input run with the last chunk at that
        slot/position (attending to every slot before it); returns its logits (else None)."""
        i = a
        out = None
        while i < b:
            if cancel is not None and cancel.is_set():
                raise Cancelled()
            j = min(b, i + chunk)
            if tail is not None and j == b:
                ids = torch.tensor(tokens[i:j] + [tail[0]], dtype=torch.long)
                pos = torch.tensor(list(range(i, j)) + [tail[1]])
                out = self.net.forward(ids, pos, self.k, self.v, i, slots=None if tail[1] == j else pos)[0]
            else:
                ids = torch.tensor(tokens[i:j], dtype=torch.long)
                pos = torch.arange(i, j)
                self.net.forward(ids, pos, self.k, self.v, i, logits_rows=None)
            i = j
            if on_chunk is not None:
                on_chunk(i)
        return out

    def sync(self, new: list[int], mode: str = "pie", cancel: threading.Event | None = None,
             widen_by: int = 1, extra: int = 0, tail: int | None = None,
             cancel_front: threading.Event | None = None) -> SyncStats:
        """Make the cache hold `new` (see module doc). mode: "pie", "conflict-fast", "full".

        On cancellation between chunks the cache stays consistent: it then holds a prefix of
        `new` (everything computed so far), never a mix of old and new slots.
        `cancel_front`: checked only where a cancel loses nothing the cache held: while
        the tokens in front of the kept ones (a window grown at its front) are encoded
        apart, in chunks of FRONT_CHUNK, before anything moves (the cache is then left as
        it was and the work done kept for the next sync), or between chunks when the cache
        holds a prefix of `new` (empty, or a cancelled prefill's).  Not otherwise in "full" mode or for a rope that cannot shift (they
        re-encode from the start: a cancel would drop the window held).  Idle-time work passes it
        (`Engine.prepare`).
        `tail`: the token a decode will feed next (the prompt's last); when the sync runs a
        forward anyway it also runs the tail at slot len(new) (scratch, as for a decode)
        and returns its logits in `SyncStats.tail_logits`.
        """
        t0 = time.perf_counter()
        with self.lock:
            old = self.tokens
            if old == new:
                return SyncStats("noop", kept=len(new), stale=self.stale)
            self.reserve(len(new) + extra + (tail is not None))
            tl = (tail, len(new)) if tail is not None else None
            if new[:len(old)] == old and (not old or mode != "full"):  # a cancel between chunks leaves a prefix of `new`
                cancel = cancel or cancel_front
            if mode == "full":
                return self._recompute_from(0, new, t0, "full", cancel, tl)
            blocks = plan_blocks(old, new)
            if mode == "pie" and not self.net.rope.shiftable:
                # length-dependent rope: only an untouched prefix is reusable exactly
                p = blocks[0].size if blocks and blocks[0].old == 0 and blocks[0].new == 0 else 0
                return self._recompute_from(p, new, t0, "exact-fallback", cancel, tl)
            blocks = widen(blocks, widen_by, len(new))
            return self._apply(old, new, blocks, rotate=(mode == "pie"), t0=t0, cancel=cancel, mode=mode, tail=tl,
                               cancel_front=cancel_front)

    def _recompute_from(self, p: int, new: list[int], t0: float, mode: str,
                        cancel: threading.Event | None, tail: tuple[int, int] | None = None) -> SyncStats:
        dropped = max(0, len(self.tokens) - p)
        self.tokens = new[:p]
        self.exact = min(self.exact, p)
        logits = self._encode_tracked(new, p, len(new), cancel, tail)
        return SyncStats(mode, kept=p, computed=len(new) - p, dropped=dropped,
                         ms=(time.perf_counter() - t0) * 1000, stale=self.stale, tail_logits=logits)

    def _encode_tracked(self, new: list[int], a: int, b: int, cancel,
                        tail: tuple[int, int] | None = None) -> torch.Tensor | None:
        """Encode new[a:b] appending to self.tokens chunk by chunk (so a cancel leaves a
        consistent prefix). Only valid when self.tokens == new[:a]."""
        exact_before = self.exact == a

        def done(i: int) -> None:
            self.tokens = new[:i]
            if exact_before:
                self.exact = i

        return self.encode(new, a, b, cancel, on_chunk=done, tail=tail)

    def _apply(self, old: list[int], new: list[int], blocks: list[Block], rotate: bool,
               t0: float, cancel: threading.Event | None, mode: str,
               tail: tuple[int, int] | None = None, cancel_front: threading.Event | None = None) -> SyncStats:
        K, V = self.k, self.v
        rope = self.net.rope
        kept = moved = 0
        # 0) the gaps, in order; a gap at the front of kept tokens attends only to itself:
        #    encoded apart first, so a cancel while it runs leaves the cache as it was
        gaps: list[tuple[int, int]] = []
        pos = 0
        for b in blocks:
            if b.new > pos:
                gaps.append((pos, b.new))
            pos = b.new + b.size
        if pos < len(new):
            gaps.append((pos, len(new)))
        front = None
        if blocks and gaps and gaps[0][0] == 0 and ((cancel or cancel_front) is not None or self._front is not None):
            front, _ = self._encode_front(new[:gaps[0][1]], cancel or cancel_front,
                                       FRONT_CHUNK if cancel_front is not None else CHUNK)
        # 1) move surviving runs: left moves ascending, then right moves descending (no
        #    move overwrites a source that has not been read yet; see module doc)
        left = [b for b in blocks if b.shift < 0]
        right = [b for b in blocks if b.shift > 0]
        for b in left + right[::-1]:
            # in pieces of MOVE_CHUNK slots, in the same order as the blocks (a left move
            # ascending, a right one descending), each piece's source copied first (a move
            # overlaps its own destination): whole-run copies of a 2k-token cache were 23-44
            # MB each, above glibc's largest mmap threshold, so fresh pages from the OS on
            # every sync (16-21k page faults); pieces of ~3 MB are reused from the heap
            starts = range(0, b.size, MOVE_CHUNK)
            for o in (starts if b.shift < 0 else reversed(starts)):
                c = min(MOVE_CHUNK, b.size - o)
                src = slice(b.old + o, b.old + o + c)
                dst = slice(b.new + o, b.new + o + c)
                if rotate:
                    shift_keys(K[:, :, src].clone(), b.shift, rope, out=K[:, :, dst])
                else:
                    K[:, :, dst] = K[:, :, src].clone()
                V[:, :, dst] = V[:, :, src].clone()
            moved += b.size
        kept = sum(b.size for b in blocks if b.shift == 0)
        # 2) exactness: a kept run stays exact only if nothing before it changed
        first_gap = blocks[0].size if blocks and blocks[0].new == 0 and blocks[0].old == 0 else 0
        exact = min(self.exact, first_gap)
        # 3) compute the gaps in order, each attending to everything placed before it
        computed = 0
        self.tokens = new  # slots now hold `new` except the gaps, which we fill next
        ready = {"upto": gaps[0][0] if gaps else len(new)}  # slots [0, upto) are consistent

        def progress(i: int) -> None:
            ready["upto"] = i

        logits = None
        try:
            for gi, (a, b) in enumerate(gaps):
                ready["upto"] = a
                if front is not None and gi == 0:  # encoded apart in step 0: copied in
                    K[:, :, :b] = front[0][:, :, :b]
                    V[:, :, :b] = front[1][:, :, :b]
                    front = None
                    computed += b
                    if exact == a:
                        exact = b
                    if tail is not None and gi == len(gaps) - 1:  # the tail's forward of its own
                        logits = self.net.forward(torch.tensor([tail[0]]), torch.tensor([tail[1]]), K, V,
                                                  tail[1])[0]
                    continue
                out = self.encode(new, a, b, cancel, on_chunk=progress,
                                  tail=tail if gi == len(gaps) - 1 else None)
                if out is not None:
                    logits = out
                computed += b - a
                if exact == a:
                    exact = b
        except Cancelled:
            # gaps not yet computed hold garbage: keep only the consistent prefix
            upto = ready["upto"]
            self.tokens = new[:upto]
            self.exact = upto if exact == a else min(exact, upto)
            raise
        self.exact = exact
        return SyncStats(mode, kept=kept, moved=moved, computed=computed,
                         dropped=len(old) - kept - moved, ms=(time.perf_counter() - t0) * 1000,
                         stale=self.stale, tail_logits=logits)

    def _encode_front(self, ids: list[int], cancel: threading.Event | None,
                      chunk: int) -> tuple[tuple[torch.Tensor, torch.Tensor], int]:
        """((K, V), tokens resumed): K/V of the tokens `ids` at slots/positions [0,
        len(ids)) attending only to each other, in scratch tensors, in chunks; a cancel
        stops the chunk in flight within a layer and keeps the chunks done (`_front`): the
        next call whose tokens start with those resumes there.  Why: a window encoded anew in idle time (`rebuild`), or a front
        a request's sync adds, encoded in place could not stop (the cache would lose the
        window it held), and the replay's edit-far requests queued 63-150 ms behind such
        work (2026-12-05 08:40)."""
        n = len(ids)
        saved, self._front = self._front, None
        done = 0
        if saved is not None:
            sids, k, v = saved
            while done < min(len(sids), n) and sids[done] == ids[done]:
                done += 1
            if k.shape[2] < n:
                k2, v2 = self.net.new_cache(n)
                k2[:, :, :done], v2[:, :, :done] = k[:, :, :done], v[:, :, :done]
                k, v = k2, v2
        else:
            k, v = self.net.new_cache(n)
        i = done
        while i < n:
            if cancel is not None and cancel.is_set():
                if i > 0:
                    self._front = (ids[:i], k, v)
                raise Cancelled()
            j = min(n, i + chunk)
            self.net.forward(torch.tensor(ids[i:j], dtype=torch.long), torch.arange(i, j), k, v, i,
                             logits_rows=None, stop=cancel)  # (a cancel stops it within a layer)
            if cancel is not None and cancel.is_set():
                continue  # the chunk is redone by the call that resumes
            i = j
        return (k, v), done

    def rebuild(self, new: list[int], cancel: threading.Event | None = None, extra: int = 0) -> SyncStats:
        """Make the cache hold `new` encoded from scratch, exactly: apart, in chunks of
        FRONT_CHUNK (`_encode_front`: a cancel leaves the cache as it was and keeps the
        chunks done for the next call), then put in place.

        Why: a short window grown back at its front (a gap the new tokens fill attending
        only to each other) leaves every token it held computed without that front, and the
        exact refresh of those took longer than encoding the whole window again
        (bench/idle.py, 8 files: exact after 1580 vs 2678 ms p50, 2026-12-05).
        Meanwhile the cache keeps the window it answered from."""
        t0 = time.perf_counter()
        with self.lock:
            old = self.tokens
            if old == new and self.exact == len(new):
                return SyncStats("noop", kept=len(new), stale=0)
            (k, v), resumed = self._encode_front(new, cancel, FRONT_CHUNK)
            n = len(new)
            self.reserve(n + extra)
            self.k[:, :, :n] = k[:, :, :n]
            self.v[:, :, :n] = v[:, :, :n]
            self.tokens, self.exact = list(new), n
            return SyncStats("rebuild", computed=n - resumed, dropped=len(old),
                             ms=(time.perf_counter() - t0) * 1000, stale=0)

    def refresh(self, cancel: threading.Event | None = None) -> int:
        """Re-encode the stale tail exactly, chunk by chunk; returns tokens recomputed.

        A cancel between chunks keeps what is done: `exact` only ever grows here.
        """
        with self.lock:
            a, b = self.exact, len(self.tokens)
            if a >= b:
                return 0
            toks = self.tokens

            def done(i: int) -> None:
                self.exact = i

            self.encode(toks, a, b, cancel, on_chunk=done, chunk=REFRESH_CHUNK)
            return b - a


@dataclass
class CacheStore:
    """Caches of all open documents under one byte budget, least recently used evicted."""

    net: Transformer
    budget_bytes: int
    caches: "OrderedDict[str, DocCache]" = field(default_factory=OrderedDict)

    def get(self, doc: str) -> DocCache:
        c = self.caches.get(doc)
        if c is None:
            c = DocCache(self.net)
            self.caches[doc] = c
        self.caches.move_to_end(doc)
        return c

    def drop(self, doc: str) -> None:
        self.caches.pop(doc, None)

    def clear(self) -> int:
        """Drop every cache (after an out-of-memory fault); returns the bytes released."""
        freed = self.nbytes
        self.caches.clear()
        return freed

    @property
    def nbytes(self) -> int:
        return sum(c.nbytes for c in self.caches.values())

    def enforce(self, keep: str | None = None) -> list[str]:
        """Evict least recently used caches until under budget; never `keep`."""
        evicted = []
        for doc in list(self.caches):
            if self.nbytes <= self.budget_bytes:
                break
            if doc == keep:
                continue
            del self.caches[doc]
            evicted.append(doc)
            log.info("evicted KV cache of %s (budget %d bytes)", doc, self.budget_bytes)
        return evicted
