"""Superposed Decoding: k drafts from one decoding pass over one KV-cache sequence.

Every step feeds ONE input row, written at the next scratch slot (slots >= n, positions
n, n+1, ...; the cache holds one sequence of batch size 1, exactly like greedy): the mix
sum_i gamma_i * emb(last token of draft i) of the embedding module's outputs. The single
next-token distribution serves all drafts: each draft takes its top 3k tokens (after its own
guide mask: token healing, monitors), so k x 3k candidates, each scored

    score(draft + t) = score(draft) + (1 - alpha) * logp_model(t) + alpha * log p_ngram(t | draft)

with p_ngram the workspace n-gram model (completion.ngram, n = 2..6 interpolated) over the
prompt tail + the draft, a candidate no n-gram order supports floored at NGRAM_FLOOR (the
paper's "large penalty"). The best candidates with distinct text fill the k draft slots.
The first step scores the top 3k tokens of the exact distribution after the prompt.

The anchor: draft 1 is the greedy draft, always extended by the model's argmax, and the
input row is the anchor's own token, so draft 1 is bitwise the greedy draft and the k - 1
others are the best-scoring branches that the same pass (model distribution + n-gram)
supports.  Why: measured on next-line tasks (bench/drafts.py, dev split) free mixing
(gamma = softmax(scores)) let the superposed state and the n-gram pull draft 1 away from
the model's choice - best-of-3 exact match fell below greedy's at the paper's alpha = 0.54;
the paper's own code gets near one-hot weights too (its temperature 0.06 on the model
term).  Once the anchor is finished, the alternatives still running are mixed by the
softmax of their scores.  (The switches of those experiments - partial anchoring, the
temperatures, the reset to exact decoding after m steps - are gone: no setting reached
them and the default beat them.)

Guessed tokens (`spec.guess`, completion/lookup.py): while the anchor runs, its step's row
comes with up to `guess` guessed next tokens in the same forward (causal rows after it);
each guess the anchor's own argmax then confirms gives the next step's distribution without
a forward.  The steps, the mix and the drafts are the same; only the forwards are fewer.

Stops and early exit: per draft, the stop rule (`spec.stop`: end of line / statement /
block) or a stop token ends it; a finished draft keeps its slot and leaves the mix. Once the
anchor (without anchor: the best-scoring draft) is finished at step s, the others get
max(2, ceil(EXIT_SLACK * s)) more steps and are then cut where they are (draft-level early
exit), which bounds the pass at about (1 + EXIT_SLACK) x the greedy draft's length.

Returned drafts: anchor first, then by score; `Draft.logprob` is the search's score, made
non-increasing in that order so that rankers sorting by it keep it.
"""

from __future__ import annotations

import math

import torch

from .drafts import (DecodeSpec, DecodeStats, Draft, apply_mask, check_cancel, extend, mask_for,
                     prefetch, text_key, tree_mask)
from .kvcache import DocCache
from .lookup import Guesser
from .tokens import Tokenizer

CANDIDATES_PER_DRAFT = 3  # x k: tokens each draft takes from the shared distribution
NGRAM_FLOOR = 1e-8  # n-gram probability of a candidate no order supports
PREFETCH = True  # start the next step's analyses (guides' prefetch) before each forward
EXIT_SLACK = 0.3  # > 0: once the anchor / best draft is done at step s, the rest get s * slack more steps
CTX = 5  # n-gram context tokens (n = 6)
VERIFY_MIN_P = 0.05  # verification: an alternative with a later token below this exact probability is dropped
VERIFY_TOKENS = 2  # verification: tokens checked after the one where an alternative leaves the anchor


class _D:
    """A draft under search: the Draft (logprob: the model's log-probability while searching)
    and its score."""

    __slots__ = ("d", "score", "anchor")

    def __init__(self, d: Draft, score: float, anchor: bool = False):
        self.d, self.score, self.anchor = d, score, anchor


def superposed(cache: DocCache, n: int, logits: torch.Tensor, tok: Tokenizer, spec: DecodeSpec,
               st: DecodeStats, prompt: list[int] | None = None) -> list[Draft]:
    """k drafts after the prompt in `cache` (slots [0, n)); `logits` follow its last token.
    `prompt` (its tail) gives the n-gram model the context before the drafts."""
    k = max(1, spec.k)
    ng = spec.ngram
    alpha = float(spec.alpha) if ng is not None else 0.0
    tail = list(prompt[-CTX:]) if prompt is not None else list(cache.tokens[-CTX:])
    net = cache.net
    cache.reserve(n + spec.max_tokens + max(0, spec.guess) + 1)
    ncand = CANDIDATES_PER_DRAFT * k
    log_floor = math.log(NGRAM_FLOOR)

    def expand(parents: list[_D], z: torch.Tensor, slots: int, taken: set[str]) -> list[_D]:
        """Score k x 3k candidates from distribution logits `z`, keep the best `slots`
        (the anchor's child first: its argmax, whatever the score)."""
        shared = None
        tops: list[tuple[list[int], list[float]]] = []
        for p in parents:
            m = mask_for(spec, p.d.text, anchor=p.anchor)
            if m is None:
                if shared is None:
                    shared = torch.log_softmax(z, -1)
                lp = shared
            else:
                lp = torch.log_softmax(apply_mask(z, m), -1)
            v, i = torch.topk(lp, min(ncand, lp.shape[0]))
            keep = torch.isfinite(v)
            tops.append((i[keep].tolist(), v[keep].tolist()))
        if ng is not None and alpha > 0:
            png = ng.score([tail + p.d.tokens for p in parents], [t for t, _ in tops])
        else:
            png = [None] * len(parents)
        cands: list[tuple[float, int, int, float, bool]] = []
        for pi, (p, (ts, lps), pn) in enumerate(zip(parents, tops, png)):
            for q, (t, lpv) in enumerate(zip(ts, lps)):
                inc = lpv
                if pn is not None:
                    pv = pn[q]
                    inc = (1 - alpha) * inc + alpha * (math.log(pv) if pv > 0 else log_floor)
                cands.append((p.score + inc, pi, t, lpv, p.anchor and q == 0))
        cands.sort(key=lambda c: (not c[4], -c[0]))  # the anchor's argmax child first
        out: list[_D] = []
        for sc, pi, t, lpv, is_anchor in cands:
            if len(out) >= slots:
                break
            p = parents[pi]
            child = Draft(tokens=list(p.d.tokens), text=p.d.text, logprob=p.d.logprob)
            extend(child, t, lpv, tok, spec)
            key = text_key(child)
            if key in taken:
                continue
            taken.add(key)
            out.append(_D(child, sc, is_anchor))
        return out

    finished: list[_D] = []
    zs: list[torch.Tensor] = []  # zs[s]: the exact distribution after anchor token s
    alive = expand([_D(Draft(), 0.0, True)], logits, k, set())
    finished += [x for x in alive if x.d.done]
    alive = [x for x in alive if not x.d.done]
    step = 0
    exit_at = None
    guesser = Guesser(prompt or cache.tokens, spec.hints, spec.guess) if spec.guess > 0 else None
    queued: list[tuple[int, torch.Tensor]] = []  # (a guessed anchor token, the distribution after it)
    while alive:
        check_cancel(spec)
        if EXIT_SLACK > 0 and exit_at is None and any(x.anchor for x in finished):
            exit_at = step + max(2, math.ceil(step * EXIT_SLACK))
        if exit_at is not None and step >= exit_at:
            for x in alive:  # draft-level early exit: cut where they are (whole lines kept, Engine._finish)
                x.d.done = x.d.open_end = True
            finished += alive
            break
        if PREFETCH:
            prefetch(spec, [x.d.text for x in alive])  # jedi works while the model runs
        slot = n + step
        if queued and alive[0].anchor and alive[0].d.tokens[-1] == queued[0][0]:
            # the last forward guessed this anchor token right: its distribution is exact,
            # and its K/V already sit in this slot
            z = queued.pop(0)[1]
            st.guessed += 1
        elif alive[0].anchor:  # the anchor's own token: draft 1 is the greedy draft
            guess = guesser.guess(alive[0].d.tokens) if guesser is not None else []
            ids = [alive[0].d.tokens[-1]] + guess
            out = net.forward(torch.tensor(ids), torch.arange(slot, slot + len(ids)), cache.k, cache.v, slot,
                              logits_rows=slice(None))
            z, queued = out[0], list(zip(guess, out[1:]))
            st.steps += 1
        else:  # the anchor is done: the rest mixed by their scores
            w = torch.softmax(torch.tensor([x.score for x in alive]), 0)
            e = net.embed_tokens(torch.tensor([x.d.tokens[-1] for x in alive]))
            xin = (e * w.to(e.dtype)[:, None]).sum(0, keepdim=True)
            z = net.forward(xin, torch.tensor([slot]), cache.k, cache.v, slot)[0]
            st.steps += 1
        if alive[0].anchor and len(zs) == step:
            zs.append(z)
        step += 1
        taken = {text_key(x.d) for x in finished}
        new = expand(alive, z, k - len(finished), taken)
        finished += [x for x in new if x.d.done]
        alive = [x for x in new if not x.d.done]
    finished.sort(key=lambda x: (not x.anchor, -x.score))
    if spec.verify and len(finished) > 1:
        check_cancel(spec)
        head = [x for x in finished if x.anchor]
        alts = _verify(cache, n, n + step, head[0].d if head else Draft(), [x for x in finished if not x.anchor],
                       zs, logits, tok, spec, st)
        finished = head + sorted(alts, key=lambda x: -x.d.logprob)
        for x in finished:
            x.score = x.d.logprob
    drafts = [x.d for x in finished]
    prev = math.inf
    for x in finished:  # logprob := score, non-increasing in the returned order
        prev = min(x.score, prev - 1e-6)
        x.d.logprob = prev
    st.tokens += sum(len(d.tokens) for d in drafts)
    return drafts


def _verify(cache: DocCache, n: int, nxt: int, anchor: Draft, alts: list[_D], zs: list[torch.Tensor],
            first: torch.Tensor, tok: Tokenizer, spec: DecodeSpec, st: DecodeStats) -> list[_D]:
    """The alternatives' exact log-probabilities, from one tree forward; drops the incoherent.

    Under the anchor, every alternative takes its tokens from the distribution that follows
    the *anchor's* text: after its first own token it may continue the anchor's line on a
    different prefix (" _in_current_chunk is True:" after the anchor chose
    "if len_words_in_current_chunk is True:").  The VERIFY_TOKENS tokens after the one
    where it left the anchor (that one was scored on its true context already) are fed as a
    token tree (row j of draft i sees the prompt, the anchor slots they share and its own
    rows): one forward of at most (k-1) x VERIFY_TOKENS rows gives each its exact
    probability.  The join is where incoherence shows, hence the short window: checking
    whole drafts cost ~0.25x greedy, 4 tokens 0.18x, 2 tokens 0.13x (bench/drafts.py, 60 tasks).  A
    draft with a checked token under VERIFY_MIN_P is dropped; the rest are ranked by the
    mean exact log-probability of their checked tokens (guide masks applied, as when
    decoding).
    """
    net = cache.net
    fed = len(zs)  # anchor tokens [0, fed) sit in slots [n, n + fed) as exact context
    plans: list[tuple[_D, int, int, int]] = []  # (draft, shared prefix j, first row, last checked token)
    rows: list[int] = []
    pos: list[int] = []
    for x in alts:
        t = x.d.tokens
        j = 0
        while j < min(len(t), len(anchor.tokens), fed) and t[j] == anchor.tokens[j]:
            j += 1
        end = min(len(t) - 1, j + int(VERIFY_TOKENS))  # rows j..end-1 give tokens j+1..end
        plans.append((x, j, len(rows), end))
        rows += t[j:end]
        pos += [n + q for q in range(j, end)]
    out = None
    if rows:
        R = len(rows)
        cache.reserve(nxt + R + 1)
        visible: list[list[int]] = []  # row r: the anchor slots its draft shares, its own rows so far
        for x, j, r0, end in plans:
            for r in range(r0, r0 + max(0, end - j)):
                visible.append(list(range(n, n + j)) + list(range(nxt + r0, nxt + r + 1)))
        mask = tree_mask(R, nxt + R, n, visible)
        out = net.forward(torch.tensor(rows), torch.tensor(pos), cache.k, cache.v, nxt, mask=mask,
                          logits_rows=slice(None))
        st.steps += 1
    kept: list[_D] = []
    min_lp = math.log(VERIFY_MIN_P) if VERIFY_MIN_P > 0 else -math.inf
    for x, j, r0, end in plans:
        replay = Draft()
        total, ok = 0.0, True
        for q, t in enumerate(x.d.tokens[: end + 1]):
            if q <= j:
                z = first if q == 0 else zs[q - 1]
            else:
                z = out[r0 + q - j - 1]
            lp = float(torch.log_softmax(apply_mask(z, mask_for(spec, replay.text)), -1)[t])
            if q > j and lp < min_lp:
                ok = False
                break
            total += lp
            extend(replay, t, lp, tok, spec)
        if ok:  # ranked by the exact log-probability of the checked tokens, per token
            x.d.logprob = total / max(1, min(len(x.d.tokens), end + 1))
            kept.append(x)
    return kept
