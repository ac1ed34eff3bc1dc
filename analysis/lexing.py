"""Python lexing: brackets, strings (f-strings nest), comments and statement starts.

Why a hand-written lexer and not ``tokenize``: the text before the cursor is unfinished code
(an open bracket, an unterminated string, half an f-string field), ``tokenize`` raises on it,
and this runs once per decode step.  So ``scan`` resumes from a saved :class:`LexState` and
lexes only what the step added; an unterminated single-quoted string ends at its line end
(the next line is code again).  `classify` reads the statement this state says the cursor
is in; `trim` and the monitor session use the same state to close what is open
(`closers`).
"""

from __future__ import annotations

import itertools
import keyword
import re
from dataclasses import dataclass

__all__ = [
    "HARD_KEYWORDS",
    "SOFT_KEYWORDS",
    "STRING_PREFIXES",
    "identifiers_in",
    "LexState",
    "scan",
    "closers",
]

HARD_KEYWORDS = frozenset(keyword.kwlist)
SOFT_KEYWORDS = frozenset(keyword.softkwlist)
#: identifiers that may sit directly before a quote (string prefixes), lower and upper case.
STRING_PREFIXES = frozenset(
    "".join(chars)
    for base in ("r", "u", "b", "f", "t", "br", "rb", "fr", "rf", "tr", "rt")
    for chars in itertools.product(*[(c, c.upper()) for c in base])
)

_IDENT_RE = re.compile(r"[^\W\d]\w*")


def identifiers_in(text: str) -> frozenset[str]:
    """Every identifier-shaped word in ``text`` (used for names the draft itself introduced)."""
    return frozenset(_IDENT_RE.findall(text))


@dataclass(frozen=True)
class LexState:
    """Lexical state after scanning ``pos`` characters.

    frames: open constructs, innermost last: ``("(", offset)`` brackets, ``("s", quote, fstring,
    offset)`` strings, ``("fx", offset)`` f-string replacement fields, ``("fs", offset)`` the
    format spec of a field (after its top-level ``:``; literal text up to ``}``, ``{`` nests).
    stmt_start: offset where the current logical statement (line) began.
    """

    pos: int = 0
    frames: tuple = ()
    stmt_start: int = 0
    in_comment: bool = False
    continuation: bool = False

    @property
    def in_code(self) -> bool:
        return not self.in_comment and not any(f[0] in ("s", "fx", "fs") for f in self.frames)

    @property
    def brackets(self) -> tuple:
        return tuple(f for f in self.frames if f[0] in "([{")


_CODE_EVENT = re.compile(r"\r\n|[\r\n#'\"()\[\]{};\\]")
# inside an f-string replacement field (not nested in brackets): also `!r` and the spec's `:`
_FIELD_EVENT = re.compile(r"\r\n|[\r\n#'\"()\[\]{};\\:!]")
_SPEC_EVENT = re.compile(r"\r\n|[\r\n{}]")
_EOL = re.compile(r"[\r\n]")
_STR_PREFIX_CHARS = set("rRbBuUfFtT")
_string_res: dict[tuple[str, bool], re.Pattern] = {}


def _string_re(quote: str, fstring: bool) -> re.Pattern:
    key = (quote, fstring)
    pat = _string_res.get(key)
    if pat is None:
        parts = [r"\\(?:\r\n|.)", re.escape(quote)]
        if len(quote) == 1:
            parts.append(r"\r\n|\r|\n")
        if fstring:
            parts.append(r"\{\{|\}\}|\{|\}")
        pat = re.compile("|".join(parts), re.S)
        _string_res[key] = pat
    return pat


def scan(text: str, state: LexState | None = None, end: int | None = None) -> LexState:
    """Continue lexing ``text`` from ``state`` (default: the beginning) up to ``end``."""
    st = state or LexState()
    n = len(text) if end is None else end
    i, stmt, in_comment, cont = st.pos, st.stmt_start, st.in_comment, st.continuation
    frames = list(st.frames)
    while i < n:
        if in_comment:
            m = _EOL.search(text, i, n)
            if m is None:
                i = n
                break
            in_comment = False
            i = m.start()
            continue
        top = frames[-1] if frames else None
        if top is not None and top[0] == "fs":
            m = _SPEC_EVENT.search(text, i, n)
            if m is None:
                i = n
                break
            tok = m.group()
            if tok == "}":
                frames.pop()  # the spec ends the field
                if frames and frames[-1][0] == "fx":
                    frames.pop()
            elif tok == "{":
                frames.append(("fx", m.start()))  # a nested field: `{x:>{width}}`
            else:
                s_at = max((k for k, f in enumerate(frames) if f[0] == "s"), default=None)
                if s_at is not None and len(frames[s_at][1]) == 1:
                    del frames[s_at:]  # unterminated single-quoted f-string: recover at the line end
                    i = m.start()
                    continue
            i = m.end()
            continue
        if top is not None and top[0] == "s":
            quote, fstring = top[1], top[2]
            m = _string_re(quote, fstring).search(text, i, n)
            if m is None:
                i = n
                break
            tok = m.group()
            if tok == quote:
                frames.pop()
            elif tok in ("\r\n", "\r", "\n"):
                frames.pop()  # unterminated single-quoted string: recover at the line end
                i = m.start()
                continue
            elif tok == "{":
                frames.append(("fx", m.start()))
            # "{{", "}}", escapes and a stray "}" are literal text
            i = m.end()
            continue
        in_field = top is not None and top[0] == "fx"
        m = (_FIELD_EVENT if in_field else _CODE_EVENT).search(text, i, n)
        if m is None:
            cont = False
            i = n
            break
        j, tok = m.start(), m.group()
        if in_field and tok in ":!":
            if tok == "!" and text.startswith("!=", j):
                i = j + 2  # the operator
            elif tok == ":":
                frames.append(("fs", j))  # `{x:>10}`: the format spec is text, not code (`#x`)
                i = j + 1
            else:
                i = j + 1  # `!r` conversion
            continue
        if tok in ("\r\n", "\r", "\n"):
            if not frames and not cont:
                stmt = m.end()
            cont = False
            i = m.end()
            continue
        cont = False
        if tok == "\\":
            cont = True
            i = j + 1
            continue
        if tok == "#":
            in_comment = True
            i = j + 1
            continue
        if tok == ";":
            if not frames:
                stmt = j + 1
            i = j + 1
            continue
        if tok in "([{":
            frames.append((tok, j))
            i = j + 1
            continue
        if tok in ")]}":
            if frames and frames[-1][0] in "([{":
                frames.pop()
            elif tok == "}" and frames and frames[-1][0] == "fx":
                frames.pop()
            i = j + 1
            continue
        # a quote: find its prefix (up to two letters directly before, not part of a longer name)
        k = j
        while k > 0 and j - k < 2 and text[k - 1] in _STR_PREFIX_CHARS:
            k -= 1
        if k > 0 and (text[k - 1].isalnum() or text[k - 1] == "_"):
            k = j  # e.g. `buf"`: not a prefix (invalid code anyway)
        prefix = text[k:j].lower()
        quote = tok * 3 if text.startswith(tok * 3, j) else tok
        fstring = "f" in prefix or "t" in prefix
        frames.append(("s", quote, fstring, j))
        i = j + len(quote)
    return LexState(pos=max(i, n), frames=tuple(frames), stmt_start=stmt, in_comment=in_comment, continuation=cont)


_CLOSE = {"(": ")", "[": "]", "{": "}"}


def closers(state: LexState) -> str:
    """Text that closes every open bracket (and string) so the code up to here parses."""
    out = []
    for f in reversed(state.frames):
        if f[0] in _CLOSE:
            out.append(_CLOSE[f[0]])
        elif f[0] == "s":
            out.append(f[1])
        elif f[0] == "fx":
            out.append("}")  # (an open "fs" spec is closed by its field's "}")
    return "".join(out)
