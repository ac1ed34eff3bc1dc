"""When a draft is complete: end of line for a mid-line cursor, end of the statement or
block otherwise. Textual and cheap (it runs after every token); the syntax-aware trim in
`draftline.analysis.trim` refines the result afterwards."""

from __future__ import annotations

import re
from dataclasses import dataclass

OPENERS = (":", "{", "(", "[", "=>", "->")
MAX_LINES = 12


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" \t"))


@dataclass(frozen=True)
class StopRule:
    """stop(continuation) -> cut length or None. `heal` is the backed-off text the draft
    re-types first; the rule looks at the continuation after the cursor only."""

    heal: str
    single_line: bool  # the rest of the cursor's physical line (text after the cursor on it)
    base_indent: int
    statement: bool = False  # the statement the line before the cursor began: one logical line

    def __call__(self, draft: str) -> int | None:
        h = len(self.heal)
        if len(draft) < h:
            return None
        c = draft[h:]
        cut = self.cut(c)
        return None if cut is None else h + cut

    def line_cut(self, draft: str) -> int | None:
        """Where to cut `draft` to end with its last complete logical line (the request's
        budget ran out): the offset of the last line break after the healed text outside
        brackets and strings the continuation opened, or None while the first such line is
        still being written."""
        h = len(self.heal)
        if len(draft) <= h:
            return None
        ends = logical_line_ends(draft[h:])
        while ends and not draft[h:h + ends[-1]].strip():
            ends.pop()
        return h + ends[-1] if ends else None

    def cut(self, c: str) -> int | None:
        """Lines here are logical lines (`logical_line_ends`): a call's arguments or a
        closing bracket on lines of their own belong to the statement that opened them."""
        if "\n" not in c:
            return None
        if self.single_line:  # the rest of the cursor's line
            return c.index("\n")
        ends = logical_line_ends(c)
        if not ends:
            return c.index("\n") if c.count("\n") > MAX_LINES else None
        if self.statement:
            return ends[0]
        # the first logical line is the statement at the cursor; later ones belong to it only
        # while indented deeper (its block body); the last one may still grow
        pos = ends[0]
        for k, nxt in enumerate(ends[1:], start=1):
            first = c[pos + 1: nxt].split("\n", 1)[0]
            if not first.strip() or _indent(first) <= self.base_indent or k > MAX_LINES:
                return pos
            pos = nxt
        return None


def logical_line_ends(c: str) -> list[int]:
    """Offsets of the line breaks in `c` that end a logical line: outside the brackets and
    string literals `c` itself opens, not after a backslash (a rough lexer: drafts are short)."""
    out: list[int] = []
    depth = 0
    quote = ""
    i, n = 0, len(c)
    while i < n:
        ch = c[i]
        if quote:
            if ch == "\\":
                i += 2
                continue
            if c.startswith(quote, i):
                i += len(quote)
                quote = ""
                continue
            if ch == "\n" and len(quote) == 1:
                quote = ""  # an unterminated one-line string ends with its line
        elif ch in "\"'":
            quote = c[i:i + 3] if c[i:i + 3] in ('"""', "'''") else ch
            i += len(quote)
            continue
        elif ch == "#":
            j = c.find("\n", i)
            i = n if j < 0 else j
            continue
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth = max(0, depth - 1)
        if ch == "\n" and depth == 0 and not quote and not (i > 0 and c[i - 1] == "\\"):
            out.append(i)
        i += 1
    return out


def make_stop(prefix: str, suffix: str, heal: str) -> StopRule:
    """Pick the rule from the cursor's line: see module doc."""
    line_before = prefix.rsplit("\n", 1)[-1]
    line_after = suffix.split("\n", 1)[0]
    if line_after.strip():
        return StopRule(heal, True, 0)
    if line_before.strip():
        stripped = line_before.rstrip()
        if stripped.endswith(OPENERS):
            # the line opens a block: continue into it, stop when it closes
            return StopRule(heal, False, _indent(line_before))
        # the statement begun on this line, to its logical end (a call may wrap: `min(` then
        # its arguments on the next lines; cutting at the line break left unbalanced text)
        return StopRule(heal, False, _indent(line_before), statement=True)
    return StopRule(heal, False, _indent(line_before))


def whole_lines(text: str, partial_ok: bool) -> str | None:
    """`text` up to its last complete logical line (`logical_line_ends`): a draft stopped
    mid-line (a loop, the hard deadline, the other drafts' early exit).  With `partial_ok`
    an unfinished first line is kept, without the identifier it is in the middle of (None:
    nothing left)."""
    ends = [i for i in logical_line_ends(text) if text[:i].strip()]
    if ends:
        return text[:ends[-1]]
    if not partial_ok:
        return None
    i = text.rfind("\n")
    if i >= 0 and text[:i].strip():  # a long statement's first lines (its brackets still open)
        return text[:i]
    cut = re.sub(r"[A-Za-z_0-9]+$", "", text)
    return cut if cut.strip() else (text if text.strip() else None)
