"""What makes a draft junk, and the cut that removes it.

A user judges a suggestion in a glance; a draft that repeats itself (`completion_completion_
completion`, nine lines of `(`), says the same as the draft before it, is empty, or does not
even parse where it goes, costs them that glance for nothing and teaches them to ignore the
ghost text.  Measured before these rules on third-party code (issue 14's replay): loops and
fragments reached the client and most looping drafts ran to `maxTokens` (48 steps, ~1 s of
decoding on this machine) because nothing stopped them.

Two levels, both cheap enough to run after every token:
- `token_loop(tokens)`: the draft's last n tokens repeat the n before them LOOP_REPEATS - 1
  times (n <= LOOP_MAX_N): decoding stops there (see `drafts.extend`) and the text is cut
  where the loop starts.
- `text_loop(text)`: on the decoded text, a line equal to the one before it (indentation
  included), a block of 2-4 lines that repeats at once, or a unit of 2+ characters (not one
  repeated character: `----` and `    ` are code) repeated three times in a row.

`clean_drafts` applies the rules to a ranked list of draft texts: a loop on the first line
drops the draft (what is left is a fragment); a loop further down cuts the draft before
the looping line; identical drafts (per line, trailing blanks ignored) are merged into the
first; drafts left empty are dropped.  Parse errors are the trim's business
(`analysis.trim.adds_parse_errors`), used by the engine and by `bench/replay.py`'s junk
count with `parses_in_place`.
"""

from __future__ import annotations

import re

LOOP_MAX_N = 8  # token n-grams checked for repetition
LOOP_REPEATS = 3  # an n-gram seen this many times in a row is a loop ...
LOOP_MIN_CHARS = 24  # ... when the repeated run spans this many characters (`[0, 0, 0, 0]`,
#                      `(None, None, None)` are code), or at any length after LOOP_ANY_LEN repeats
LOOP_ANY_LEN = 6
LINE_BLOCK_MAX = 4  # line blocks of up to this many lines checked for an immediate repeat

_UNIT = re.compile(r"([^\n]{2,}?)\1{2,}")


def token_loop(tokens: list[int], piece_len) -> int | None:
    """Index where a repeating tail starts (its first occurrence), or None.

    [.., a, b, a, b, a, b] with n=2 -> the index of the first `a`; the tokens from there
    are the loop.  `piece_len(token)`: characters of a token.  Only the tail is checked:
    this runs once per generated token."""
    m = len(tokens)
    for n in range(1, LOOP_MAX_N + 1):
        tail = tokens[m - n:]
        r = 1
        while m - (r + 1) * n >= 0 and tokens[m - (r + 1) * n: m - r * n] == tail:
            r += 1
        if r < LOOP_REPEATS:
            continue
        span = r * n
        chars = sum(piece_len(t) for t in tokens[m - span:])
        if r >= LOOP_ANY_LEN or chars >= LOOP_MIN_CHARS:
            return m - span
    return None


def text_loop(text: str) -> int | None:
    """Offset where a loop's repetition starts in `text` (see module doc), or None."""
    lines = text.split("\n")
    offs = [0]
    for ln in lines[:-1]:
        offs.append(offs[-1] + len(ln) + 1)
    for j in range(len(lines)):
        for p in range(1, LINE_BLOCK_MAX + 1):
            if j + 2 * p > len(lines):
                break
            block = lines[j: j + p]
            if block == lines[j + p: j + 2 * p] and any(x.strip() for x in block):
                return offs[j + p]
    for i, ln in enumerate(lines):
        for m in _UNIT.finditer(ln):
            unit = m.group(1)
            if unit.strip() and len(set(unit)) > 1 and len(m.group(0)) >= LOOP_MIN_CHARS:
                return offs[i] + m.start()
    return None


def _norm(text: str) -> str:
    return "\n".join(ln.rstrip() for ln in text.rstrip().split("\n"))


def cut_loop(text: str) -> str | None:
    """The draft without its loop: None when the loop starts on the first line (the rest
    would be a fragment), else the lines before the looping line (or the text unchanged)."""
    at = text_loop(text)
    if at is None:
        return text
    line_start = text.rfind("\n", 0, at) + 1
    if line_start == 0:
        return None
    kept = text[:line_start].rstrip()
    return kept if kept.strip() else None


def clean_drafts(texts: list[str]) -> list[int]:
    """Indexes of the drafts to keep, in order, after the loop and duplicate rules (the
    caller has applied `cut_loop` to each text already)."""
    seen: set[str] = set()
    keep: list[int] = []
    for i, t in enumerate(texts):
        if t is None or not t.strip():
            continue
        key = _norm(t)
        if key in seen:
            continue
        seen.add(key)
        keep.append(i)
    return keep


def junk_reason(text: str, earlier: list[str]) -> str | None:
    """Why a draft shown to the user is junk ("empty", "loop", "duplicate"), or None; for
    benchmarks and tests.  `earlier`: the drafts ranked before it in the same answer."""
    if not text.strip():
        return "empty"
    if text_loop(text) is not None:
        return "loop"
    key = _norm(text)
    if any(_norm(e) == key for e in earlier):
        return "duplicate"
    return None
