"""The workspace n-gram model that scores superposed drafts (docs/cache.md, "Several drafts").

Counts of token n-grams (n = 1..6, over the model tokenizer's ids) from the open documents
and the files under the workspace roots. The probability of a next token is the paper's
interpolation p = sum_n lambda_n * c(ctx_{n-1} + t) / c(ctx_{n-1}) over n = 2..6, orders
whose context was never seen contributing nothing (so p <= sum(lambda) = 0.5).

Storage, bounded and exact up to 64-bit hash collisions:
- every document's token ids (int32 arrays; the total is capped at `max_tokens`),
- a *base*: per order, the sorted unique 64-bit gram hashes and their counts (numpy), built
  from all documents at once ("compaction"),
- a *delta*: per order a small dict hash -> count change, fed by edits since the last
  compaction (an edit touches only the grams within 5 tokens of the changed span); when it
  grows past `max_delta` entries the base is rebuilt from the documents.
A count is base + delta. Queries are vectorized per order (one searchsorted each).

Threads: `update_text` (the LSP event loop) only stores the text; `flush` (called by the
decoding worker before it decodes) tokenizes and applies pending edits; `build` (a
background thread at startup) tokenizes files outside the lock and compacts under it.
Readers take a snapshot reference of the state and never block.

`scan_workspace` lists the files that feed it: under the roots, .gitignore respected
(nested files, negation, anchoring, `**`, directory-only patterns), hidden and vendored
directories skipped, binary (a NUL byte) and large (> 1 MB) files skipped, total capped.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

import numpy as np

from .workspace import doc_key, scan_workspace  # noqa: F401 (doc_key: the key of a document)

log = logging.getLogger(__name__)

LAMBDAS = (0.01, 0.04, 0.15, 0.18, 0.12)  # n = 2..6 (the paper's i_weights)
MAX_N = 6

_MASK = (1 << 64) - 1
_SEED = 0x9E3779B97F4A7C15
_B = 0x100000001B3  # multiplier of the rolling state
_C = 0xBF58476D1CE4E5B9  # mixer
_U_B, _U_C, _U_SEED = np.uint64(_B), np.uint64(_C), np.uint64(_SEED)
_U31, _U29 = np.uint64(31), np.uint64(29)


def _mix(x: int) -> int:
    x ^= x >> 31
    x = (x * _C) & _MASK
    return x ^ (x >> 29)


def gram_hash(gram) -> int:
    """Hash of a token n-gram (the same value `_hashes` computes in bulk)."""
    s = _SEED
    for t in gram:
        s = (s * _B + t + 1) & _MASK
    return _mix(s)


def _hashes(ids: np.ndarray, m: int) -> np.ndarray:
    """Hashes of all m-grams of `ids` (uint64, one per start position)."""
    L = len(ids) - m + 1
    if L <= 0:
        return np.zeros(0, dtype=np.uint64)
    u = ids.astype(np.uint64) + np.uint64(1)
    s = np.full(L, _U_SEED, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for j in range(m):
            s = s * _U_B + u[j : j + L]
        s ^= s >> _U31
        s = s * _U_C
        s ^= s >> _U29
    return s


def _counts_of(arrays: list[np.ndarray], m: int) -> tuple[np.ndarray, np.ndarray]:
    hs = [_hashes(a, m) for a in arrays if len(a) >= m]
    if not hs:
        return np.zeros(0, dtype=np.uint64), np.zeros(0, dtype=np.int32)
    keys, counts = np.unique(np.concatenate(hs), return_counts=True)
    return keys, counts.astype(np.int32)


@dataclass
class _State:
    """What readers see: swapped as one reference on compaction."""

    keys: list[np.ndarray]  # per order m = 1..MAX_N (index m-1): sorted unique gram hashes
    counts: list[np.ndarray]
    delta: list[dict[int, int]]


class NGram:
    """Interpolated n-gram counts over per-document token ids (see module doc)."""

    def __init__(self, tok=None, n: int = MAX_N, lambdas=LAMBDAS, max_tokens: int = 1_200_000,
                 max_delta: int = 100_000):
        assert 2 <= n <= MAX_N and len(lambdas) == n - 1
        self.tok = tok
        self.n = n
        self.lambdas = tuple(float(x) for x in lambdas)
        self.max_tokens = max_tokens
        self.max_delta = max_delta
        self.docs: dict[str, np.ndarray] = {}
        self.total_tokens = 0
        self.pending: dict[str, str | None] = {}  # key -> new text (None = remove)
        self.lock = threading.RLock()
        self._pending_lock = threading.Lock()
        self.state = _State([np.zeros(0, np.uint64)] * n, [np.zeros(0, np.int32)] * n, [{} for _ in range(n)])
        self.compactions = 0

    # -- size ----------------------------------------------------------------------------------
    @property
    def nbytes(self) -> int:
        st = self.state
        b = sum(k.nbytes + c.nbytes for k, c in zip(st.keys, st.counts))
        b += sum(len(d) for d in st.delta) * 100  # dict entries, roughly
        return b + sum(a.nbytes for a in self.docs.values())

    # -- documents -------------------------------------------------------------------------
    def set_document(self, key: str, ids, *, compact: bool = True) -> bool:
        """Make document `key` hold `ids`; only grams near the changed span are recounted.
        Returns False (and changes nothing) when the token cap would be exceeded."""
        new = np.asarray(ids, dtype=np.int32)
        with self.lock:
            old = self.docs.get(key)
            old_len = 0 if old is None else len(old)
            if self.total_tokens - old_len + len(new) > self.max_tokens and len(new) > old_len:
                return False
            if old is None:
                old = np.zeros(0, dtype=np.int32)
            lim = min(len(old), len(new))
            neq = np.flatnonzero(old[:lim] != new[:lim])
            p = int(neq[0]) if len(neq) else lim
            if p == len(old) == len(new):
                return True  # unchanged
            rest = lim - p
            ro, rn = old[len(old) - rest :][::-1], new[len(new) - rest :][::-1]
            neq = np.flatnonzero(ro != rn)
            s = int(neq[0]) if len(neq) else rest
            h = self.n - 1
            a = max(0, p - h)
            self._delta_add(old[a : min(len(old), len(old) - s + h)], -1)
            self._delta_add(new[a : min(len(new), len(new) - s + h)], +1)
            self.docs[key] = new
            self.total_tokens += len(new) - old_len
            if compact and sum(len(d) for d in self.state.delta) > self.max_delta:
                self.compact()
            return True

    def remove_document(self, key: str) -> None:
        with self.lock:
            old = self.docs.pop(key, None)
            if old is not None:
                self._delta_add(old, -1)
                self.total_tokens -= len(old)
                if sum(len(d) for d in self.state.delta) > self.max_delta:
                    self.compact()

    def set_text(self, key: str, text: str) -> bool:
        """Tokenize now and set (needs the tokenizer given at construction)."""
        return self.set_document(key, self.tok.encode(text))

    def update_text(self, key: str, text: str | None) -> None:
        """Record an edit (cheap, any thread); applied by the next `flush`."""
        with self._pending_lock:
            self.pending[doc_key(key)] = text

    def flush(self, current: tuple[str, list[int]] | None = None) -> int:
        """Tokenize and apply the pending edits (the decoding worker calls this before it
        decodes). `current`: (uri, ids) of the document being completed, whose tokens the
        engine already has: used as they are instead of re-tokenizing its text."""
        with self._pending_lock:
            pend, self.pending = self.pending, {}
        if current is not None:
            key = doc_key(current[0])
            pend.pop(key, None)
            self.set_document(key, current[1])
        for key, text in pend.items():
            if text is None:
                self.remove_document(key)
            else:
                self.set_text(key, text)
        return len(pend)

    def _delta_add(self, ids: np.ndarray, sign: int) -> None:
        delta = self.state.delta
        for m in range(1, self.n + 1):
            d = delta[m - 1]
            for hv in _hashes(ids, m).tolist():
                c = d.get(hv, 0) + sign
                if c:
                    d[hv] = c
                else:
                    del d[hv]

    def compact(self) -> None:
        """Rebuild the base from all documents; the delta starts empty."""
        with self.lock:
            arrays = list(self.docs.values())
            keys, counts = [], []
            for m in range(1, self.n + 1):
                k, c = _counts_of(arrays, m)
                keys.append(k)
                counts.append(c)
            self.state = _State(keys, counts, [{} for _ in range(self.n)])
            self.compactions += 1

    def add_files(self, files: list[tuple[str, str]]) -> int:
        """Documents from disk (key, text): tokenized outside the lock, skipped when the
        key is already present (an open document wins) or the cap is reached; then one
        compaction. Returns the number added."""
        toks = [(k, np.asarray(self.tok.encode(t), dtype=np.int32)) for k, t in files]
        added = 0
        with self.lock:
            for k, ids in toks:
                if k in self.docs or k in self.pending:
                    continue
                if self.total_tokens + len(ids) > self.max_tokens:
                    break
                self.docs[k] = ids
                self.total_tokens += len(ids)
                added += 1
            self.compact()
        return added

    def build(self, roots: list[str], **scan_kw) -> threading.Thread:
        """Scan the roots and add their files in a background thread."""

        def run():
            try:
                files = scan_workspace(roots, **scan_kw)
                n = self.add_files([(doc_key(str(p)), t) for p, t in files])
                log.info("n-gram model: %d files, %d tokens, %.1f MB", n, self.total_tokens, self.nbytes / 2**20)
            except Exception:  # the n-gram model is an aid: never take the server down
                log.exception("workspace n-gram build failed")

        t = threading.Thread(target=run, name="draftline-ngram", daemon=True)
        t.start()
        return t

    # -- queries ---------------------------------------------------------------------------
    def _count(self, st: _State, m: int, hs: list[int]) -> np.ndarray:
        keys, counts, d = st.keys[m - 1], st.counts[m - 1], st.delta[m - 1]
        q = np.array(hs, dtype=np.uint64)
        out = np.zeros(len(hs), dtype=np.int64)
        if len(keys):
            idx = np.searchsorted(keys, q)
            idx[idx >= len(keys)] = 0
            hit = keys[idx] == q
            out[hit] = counts[idx[hit]]
        if d:
            for i, hv in enumerate(hs):
                c = d.get(hv)
                if c:
                    out[i] += c
        return np.maximum(out, 0)

    def order_probs(self, ctx: list[int], cands: list[int], m: int) -> list[float] | None:
        """p_m(t | last m-1 tokens of ctx) for each candidate; None if the context is unseen."""
        r = self.score([ctx], [cands], orders=(m,), raw=True)[0]
        return r

    def score(self, ctxs: list[list[int]], cands: list[list[int]], orders=None, raw: bool = False):
        """Interpolated n-gram probability of each candidate token after each context.

        ctxs[i]: the tokens before the candidates (prompt tail + draft i); cands[i]: the
        candidate next tokens of draft i. Returns one list of floats per context (0.0 when
        no order supports a candidate). With `raw` and one order: that order's
        probabilities, or None for a context never seen."""
        st = self.state
        out = [[0.0] * len(c) for c in cands]
        orders = orders or range(2, self.n + 1)
        raw_out: list = [None] * len(ctxs)
        for m in orders:
            lam = self.lambdas[m - 2]
            ctx_h: list[int] = []
            gram_h: list[int] = []
            who: list[int] = []
            for i, (ctx, cs) in enumerate(zip(ctxs, cands)):
                if len(ctx) < m - 1 or not cs:
                    continue
                s = _SEED
                for t in ctx[len(ctx) - (m - 1):]:
                    s = (s * _B + t + 1) & _MASK
                ctx_h.append(_mix(s))
                sb = s * _B + 1
                gram_h.extend(_mix((sb + t) & _MASK) for t in cs)
                who.append(i)
            if not who:
                continue
            cc = self._count(st, m - 1, ctx_h)
            gc = self._count(st, m, gram_h)
            j = 0
            for r, i in enumerate(who):
                nc = len(cands[i])
                c0 = int(cc[r])
                if c0 > 0:
                    ps = np.minimum(gc[j : j + nc] / c0, 1.0).tolist()
                    if raw:
                        raw_out[i] = ps
                    o = out[i]
                    for q in range(nc):
                        o[q] += lam * ps[q]
                j += nc
        return raw_out if raw else out

    def prob(self, ctx: list[int], t: int) -> float:
        return self.score([ctx], [[t]])[0][0]
