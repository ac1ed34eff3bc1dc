"""When a draft is complete: end of line for a mid-line cursor, end of the statement or
block otherwise. Textual and cheap (it runs after every token); the syntax-aware trim in
`draftline.analysis.trim` refines the result afterwards."""

from __future__ import annotations

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
    single_line: bool
    base_indent: int

    def __call__(self, draft: str) -> int | None:
        h = len(self.heal)
        if len(draft) < h:
            return None
        c = draft[h:]
        cut = self.cut(c)
        return None if cut is None else h + cut

    def cut(self, c: str) -> int | None:
        if "\n" not in c:
            return None
        if self.single_line:
            return c.index("\n")
        lines = c.split("\n")
        # the first line is the statement at the cursor; later lines belong to it only while
        # indented deeper (its block body, or a continuation line). lines[-1] may still grow.
        pos = len(lines[0])
        for i, line in enumerate(lines[1:-1], start=1):
            if line.strip() == "" or _indent(line) <= self.base_indent or i > MAX_LINES:
                return pos
            pos += 1 + len(line)
        return None


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
        return StopRule(heal, True, 0)
    return StopRule(heal, False, _indent(line_before))
