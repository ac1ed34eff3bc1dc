"""What a short window misses: this file's own lines from above it, as a header.

A request in a newly opened file (or after a far jump) reads a *short window*: the
`request_cap` tokens nearest the cursor (`completion.window`), because a full 2k window is
~1.4 s of prefill on this machine.  The lines it misses are often the ones the cursor's line
copies: the same call in a sibling test, the same `if filter is not None and ...` in a
sibling function.  So the short window gets a small header of the file's snippets from
above it that are most similar to the text around the cursor (Jaccard over identifier
sets, `completion.context.select`, as for project context), plus the signatures of what
the cursor's lines use that the file defines above the window; the header goes first and
the window after it.  When `Engine.prepare` encodes the full window in idle time, the
header is dropped (the full window holds those lines itself).
"""

from __future__ import annotations

from .context import defined_names, index_file, select

#: the text above the window that is searched (a huge file's window: its last ~16k tokens)
FAR_MAX_CHARS = 64 * 1024
QUERY_CHARS = 4096  # the text before the cursor whose last lines are the query


def far_header(above: str, window: str, prefix: str, tok, budget: int) -> str:
    """The header for a short window: `above` the document text before the window (its
    last FAR_MAX_CHARS are searched), `window` the window's text, `prefix` the text
    before the cursor; at most `budget` tokens (about; `select`'s count).  "" if nothing
    above is similar enough to be picked."""
    above = above[:above.rfind("\n") + 1]  # a window starting mid-line: not that line's start
    if budget <= 0 or not above.strip():
        return ""
    text = above[-FAR_MAX_CHARS:]
    if len(text) < len(above):  # from a whole line
        text = text[text.find("\n") + 1:]
    fi = index_file("", "", text)
    picked, sigs, _ = select(prefix[-QUERY_CHARS:], defined_names(window), [fi], tok, budget)
    if not picked and not sigs:
        return ""
    # in the file's order and without separators: a marker line ("# ---- d.py ----") was
    # copied into drafts at a line start (`# ---- c.py ----`)
    parts = [c.text + "\n" for c in sorted(picked, key=lambda c: c.line)]
    parts += [sig + "\n" for sig in sigs]
    return "".join(parts)
