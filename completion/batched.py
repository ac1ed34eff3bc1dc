"""Batched ("tree") decoding: the k best first tokens start k drafts, then each continues
greedily (or sampled: `sequential`), all k advanced by one forward of k rows per step whose
mask lets row i see the prompt and draft i's own tokens only.  On a memory-bound CPU k rows
cost about what one row costs."""

from __future__ import annotations

import torch

from .drafts import DecodeSpec, DecodeStats, Draft, apply_mask, check_cancel, extend, mask_for, tree_step
from .kvcache import DocCache
from .tokens import Tokenizer


def batched(cache: DocCache, n: int, logits: torch.Tensor, tok: Tokenizer, spec: DecodeSpec,
             st: DecodeStats, k: int, sample: bool = False) -> list[Draft]:
    """k drafts from the k best first tokens, then greedy (or sampled) per draft, advanced
    together one forward per step (see module doc)."""
    lp0 = torch.log_softmax(apply_mask(logits, mask_for(spec, "")), -1)
    if sample:
        first = torch.multinomial(lp0.exp(), 1)
    else:
        first = torch.topk(lp0, k).indices
    drafts: list[Draft] = []
    for t in first.tolist():
        if lp0[t] == float("-inf"):
            continue
        d = Draft()
        extend(d, t, float(lp0[t]), tok, spec)
        drafts.append(d)
    slots_of: list[list[int]] = [[] for _ in drafts]  # scratch slots holding draft i's tokens
    nxt = n  # next free slot
    while True:
        active = [i for i, d in enumerate(drafts) if not d.done]
        if not active:
            break
        check_cancel(spec)
        out, nxt = tree_step(cache, drafts, active, slots_of, n, nxt, masked=len(drafts) > 1)
        st.steps += 1
        for r, i in enumerate(active):
            d = drafts[i]
            lp = torch.log_softmax(apply_mask(out[r], mask_for(spec, d.text)), -1)
            t = int(torch.multinomial(lp.exp(), 1)) if sample else int(lp.argmax())
            extend(d, t, float(lp[t]), tok, spec)
    st.tokens += sum(len(d.tokens) for d in drafts)
    return drafts

