"""Beam search with k beams over one shared prompt cache, as a token tree.

The beams' tokens live at scratch slots >= n; each beam keeps the list of slots holding its
tokens, and a step feeds the k beams' last tokens as one forward of k rows whose mask lets
row i see the prompt and beam i's own slots (the token tree of `drafts.tree_step`).
Re-ranking beams never copies K/V: a child inherits its parent's slot list.

Each step expands every beam by its top k tokens (after its guide mask), ranks the k x k
candidates by total log-probability and keeps the best k with distinct text; a candidate that
hits the stop rule or a stop token is moved to the finished list. The search ends when no
beam is left, or k drafts are finished and the best live beam can no longer beat the k-th
finished one (scores only decrease).
"""

from __future__ import annotations

import torch

from .drafts import (DecodeSpec, DecodeStats, Draft, apply_mask, check_cancel, extend, mask_for,
                     text_key, tree_mask)
from .kvcache import DocCache
from .tokens import Tokenizer


def beam(cache: DocCache, n: int, logits: torch.Tensor, tok: Tokenizer, spec: DecodeSpec,
         st: DecodeStats) -> list[Draft]:
    k = max(1, spec.k)
    net = cache.net
    finished: list[Draft] = []
    taken: set[str] = set()

    def select(parents: list[tuple[Draft, list[int]]], outs: list[torch.Tensor]) -> list[tuple[Draft, list[int]]]:
        cands: list[tuple[float, int, int, float]] = []
        for pi, ((d, _), z) in enumerate(zip(parents, outs)):
            lp = torch.log_softmax(apply_mask(z, mask_for(spec, d.text)), -1)
            v, i = torch.topk(lp, min(k + 1, lp.shape[0]))
            for lv, t in zip(v.tolist(), i.tolist()):
                if lv != float("-inf"):
                    cands.append((d.logprob + lv, pi, t, lv))
        cands.sort(key=lambda c: -c[0])
        alive: list[tuple[Draft, list[int]]] = []
        seen: set[str] = set()
        for sc, pi, t, lv in cands:
            if len(alive) >= k:
                break
            d, slots = parents[pi]
            child = Draft(tokens=list(d.tokens), text=d.text, logprob=d.logprob)
            extend(child, t, lv, tok, spec)
            kk = text_key(child)
            if child.done:
                if kk not in taken:
                    taken.add(kk)
                    finished.append(child)
                continue
            if kk in seen:
                continue
            seen.add(kk)
            alive.append((child, slots))
        return alive

    alive = select([(Draft(), [])], [logits])
    nxt = n
    while alive:
        finished.sort(key=lambda d: -d.logprob)
        if len(finished) >= k and alive[0][0].logprob <= finished[k - 1].logprob:
            break
        check_cancel(spec)
        T = len(alive)
        S = nxt + T
        rows = [(d, slots + [nxt + r]) for r, (d, slots) in enumerate(alive)]
        mask = tree_mask(T, S, n, [slots for _, slots in rows])
        cache.reserve(S + 1)  # (every slot kept: the prompt, the last prompt token, the beams)
        ids = torch.tensor([d.tokens[-1] for d, _ in rows])
        pos = torch.tensor([n + len(d.tokens) - 1 for d, _ in rows])
        out = net.forward(ids, pos, cache.k, cache.v, nxt, mask=mask if T > 1 or nxt > n else None,
                          logits_rows=slice(None))
        nxt = S
        st.steps += 1
        alive = select(rows, list(out))
    drafts = sorted(finished + [d for d, _ in alive], key=lambda d: -d.logprob)[:k]
    st.tokens += sum(len(d.tokens) for d in drafts)
    return drafts
