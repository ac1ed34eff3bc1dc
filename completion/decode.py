"""Decoding k drafts from one prompt cache: the entry point, which dispatches to a method.

- `greedy` (k = 1), `batched`: completion.batched (k drafts as a token tree; `sequential`
  samples them one after another);
- `superposed` (the default): completion.superposed, k drafts for about one greedy pass;
- `beam`: completion.beam.

All share one KV cache of batch size 1 and the machinery of completion.drafts.
"""

from __future__ import annotations

import time

import torch

from .batched import batched
from .beam import beam
from .drafts import DecodeSpec, DecodeStats, Draft, prompt_logits
from .kvcache import DocCache
from .superposed import superposed
from .tokens import Tokenizer

__all__ = ["decode"]


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
        logits = first_logits if first_logits is not None else prompt_logits(cache, prompt)
        st.first_ms = (time.perf_counter() - t0) * 1000
        method = spec.method if spec.k > 1 else "greedy"
        if method in ("greedy", "batched"):
            drafts = batched(cache, n, logits, tok, spec, st, k=1 if method == "greedy" else spec.k)
        elif method == "superposed":
            drafts = superposed(cache, n, logits, tok, spec, st, prompt=prompt)
        elif method == "beam":
            drafts = beam(cache, n, logits, tok, spec, st)
        elif method == "sequential":
            drafts = []
            for _ in range(spec.k):
                drafts += batched(cache, n, logits, tok, spec, st, k=1, sample=True)
        else:
            raise ValueError(f"unknown decode method {spec.method!r}")
        # forget the draft tokens: slots past the prompt are scratch space
    st.ms = (time.perf_counter() - t0) * 1000
    return drafts, st


