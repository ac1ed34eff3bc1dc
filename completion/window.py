"""How much of the context window a request can afford to encode now.

A cold document (just opened) or a cursor that jumped far (a thousand new tokens enter the
window at its start) needs seconds of prefill on this CPU: a 2k-token window cost 5-7 s,
and the request waited for all of it (issue 14: ~15 s to the first answer in a newly opened
file).  The tokens nearest the cursor matter most, and PIE can splice the rest in later:
a request encodes at most `cap` tokens, so its prompt starts as late as it must (a *short
window*: the full window's end, a later start), and `Engine.prepare` encodes the full
window anew in the background (`DocCache.rebuild`: apart, cancellable between chunks,
exact; growing it at its front left every cached token stale, and their exact refresh
took longer than the whole window: bench/idle.py).

Measured on this machine (2026-12-05, default model): 256 tokens at the start of a window
encode in ~0.11 s, 256 more behind 1k cached ones in ~0.18 s, behind 1.5k in ~0.23 s
(0.27 / 0.30 / 0.68 s before the query rows were made contiguous for attention); the cap
of a request is `Engine.request_cap` tokens.
"""

from __future__ import annotations

from .kvcache import plan_blocks, widen
from .prompt import WINDOW_STEP, Prompt

START_STEP = 32  # a short window's start is a multiple of this: typing does not move it


def sync_cost(cached: list[int], prompt: list[int]) -> int:
    """Tokens the sync to `prompt` would run through the model (its last token rides with
    the request and is not counted): the prompt minus the runs reusable from `cached`."""
    new = prompt[:-1]
    if not cached:
        return len(new)
    blocks = widen(plan_blocks(cached, new), 1, len(new))
    return len(new) - sum(b.size for b in blocks)


def affordable(cached: list[int], full: Prompt, make, cap: int) -> Prompt:
    """The prompt with the earliest window start whose sync costs at most `cap` tokens.

    `full`: the full window's prompt; `make(start)`: the prompt with its window starting at
    document token `start`.  The cost falls as the start moves towards the cursor (fewer
    tokens, and those the cache lacks are mostly at the front), so the start is found by
    bisection over multiples of START_STEP; at worst the window holds the `cap` tokens
    before the cursor."""
    if sync_cost(cached, full.tokens) <= cap:
        return full
    end = full.body_end
    lo = full.window_start // START_STEP + 1  # candidate starts lo * START_STEP .. hi * START_STEP
    hi = max(lo, -(-(end - cap) // START_STEP))  # cap tokens before the cursor: always affordable
    if hi * START_STEP >= end:
        return make(end)
    best = make(hi * START_STEP)
    while lo < hi:
        mid = (lo + hi) // 2
        p = make(mid * START_STEP)
        if sync_cost(cached, p.tokens) <= cap:
            best, hi = p, mid
        else:
            lo = mid + 1
    return best


#: Documents longer than this are tokenized in a window around the cursor only: a 3 MB file
#: took 44 s to its first answer, most of it tokenizing and analysing text the model never
#: reads (its window is 2k tokens, ~8 KB of code).  The window (HUGE_BEFORE characters before
#: the cursor, HUGE_AFTER after, edges on a HUGE_GRID grid moved to line starts, so typing
#: does not move it) is re-tokenized when the cursor leaves it.
HUGE_CHARS = 512 * 1024
HUGE_BEFORE = 48 * 1024
HUGE_AFTER = 16 * 1024
HUGE_GRID = 16 * 1024


def huge_window(text: str, cursor: int) -> tuple[int, int]:
    """[a, b) of a huge document's text that the engine tokenizes for a cursor."""
    a = max(0, (cursor - HUGE_BEFORE) // HUGE_GRID * HUGE_GRID)
    if a:
        a = text.find("\n", a) + 1 or a
    a = min(a, cursor)
    b = min(len(text), ((cursor + HUGE_AFTER) // HUGE_GRID + 1) * HUGE_GRID)
    if b < len(text):
        nl = text.find("\n", b)
        b = len(text) if nl < 0 else nl + 1
    return a, max(b, cursor)


__all__ = ["HUGE_CHARS", "START_STEP", "WINDOW_STEP", "affordable", "huge_window", "sync_cost"]
