"""Cut a model draft to the unit being written, balance it, and never re-type what follows.

Why: a model keeps writing past the end of what the user wanted (the next function, the
code already below the cursor), and re-types closers the editor already has after the
cursor (``foo(|)`` -> ``x))``).  Users rate that worse than no suggestion (the most common
complaint about Copilot and llama.vim).  Rules, in order:

* mid-line cursor: only the rest of the line.
* otherwise Python: stop at a dedent below the cursor's block (a line indented less than
  the block being written; ``else``/``elif``/``except``/``finally`` continue a statement
  written in the draft) or at a blank line after a complete statement; brace languages:
  stop when the block the cursor is in would be closed, or at a blank line after a
  complete statement.
* never close more brackets than the text before the cursor opened; do not end inside
  brackets the draft opened (cut back to the last balanced point).
* drop trailing draft lines that repeat the lines after the cursor; an overlap of the
  draft's end with the rest of the cursor's line becomes a replace range
  (``replace_suffix`` characters of the suffix are replaced by the draft).
* strip trailing whitespace; an empty result is None.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

from . import lexing
from .syntax import language_for, new_parser, walk

log = logging.getLogger(__name__)

__all__ = ["TrimmedDraft", "trim_draft", "adds_parse_errors", "parse_error_count"]


@dataclass(frozen=True)
class TrimmedDraft:
    """``text`` goes in at the cursor, replacing the first ``replace_suffix`` characters after it."""

    text: str
    replace_suffix: int = 0

    @property
    def replace(self) -> int:
        """Alias of ``replace_suffix``."""
        return self.replace_suffix

    @property
    def insert_only(self) -> str:
        """The same edit as a pure insertion (the overlapping tail dropped)."""
        return self.text[: len(self.text) - self.replace_suffix] if self.replace_suffix else self.text


_CLOSE_OF = {"(": ")", "[": "]", "{": "}"}
_CONTINUATION_KW = re.compile(r"(else|elif|except|finally|case)\b")
_LINE_BREAK = re.compile(r"\r\n|\r|\n")


def _lines_with_ends(s: str) -> list[tuple[int, int]]:
    """(start, end-without-terminator) of each line of ``s`` (LSP line breaks)."""
    out = []
    pos = 0
    for m in _LINE_BREAK.finditer(s):
        out.append((pos, m.start()))
        pos = m.end()
    out.append((pos, len(s)))
    return out


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" \t"))


# =====================================================================================
# Generic (C-family) lexing: strings, comments, bracket depth
# =====================================================================================
_C_EVENT = re.compile(r"//|/\*|\"|'|`|[()\[\]{}]")


@dataclass
class _CState:
    mode: str = "code"  # code | line_comment | block_comment | string
    quote: str = ""
    stack: list | None = None

    def __post_init__(self) -> None:
        if self.stack is None:
            self.stack = []


def _c_scan(text: str, st: _CState, language: str, start: int = 0, end: int | None = None,
            stop_at_close: int | None = None) -> int | None:
    """Lex text[start:end] from ``st`` (mutated).  With ``stop_at_close`` = d, stop before a closer
    that would bring the bracket depth below d and return its index."""
    i, n = start, len(text) if end is None else end
    while i < n:
        if st.mode == "line_comment":
            j = text.find("\n", i, n)
            if j < 0:
                return None
            st.mode = "code"
            i = j + 1
            continue
        if st.mode == "block_comment":
            j = text.find("*/", i, n)
            if j < 0:
                return None
            st.mode = "code"
            i = j + 2
            continue
        if st.mode == "string":
            q = st.quote
            j = i
            while j < n:
                c = text[j]
                if c == "\\":
                    j += 2
                    continue
                if c == q or (c == "\n" and q != "`"):
                    break
                j += 1
            if j >= n:
                return None
            st.mode = "code"
            i = j + 1
            continue
        m = _C_EVENT.search(text, i, n)
        if m is None:
            return None
        tok, j = m.group(), m.start()
        if tok == "//":
            st.mode = "line_comment"
        elif tok == "/*":
            st.mode = "block_comment"
        elif tok in ("\"", "`") or (tok == "'" and language != "rust"):
            st.mode, st.quote = "string", tok
        elif tok == "'":
            ch = re.match(r"'(\\.|[^\\'])'", text[j:j + 4])
            if ch:  # a Rust char literal; a lone ' is a lifetime
                i = j + len(ch.group())
                continue
        elif tok in _CLOSE_OF:
            st.stack.append(tok)
        else:
            if stop_at_close is not None and len(st.stack) <= stop_at_close:
                return j
            if st.stack:
                st.stack.pop()
        i = m.end()
    return None


def _brace_trim(language: str, prefix: str, draft: str, suffix: str, mid_line: bool) -> str:
    window = _prefix_window(prefix)
    st = _CState()
    _c_scan(window, st, language)
    base_depth = len(st.stack)
    lines = _lines_with_ends(draft)
    if mid_line:
        draft = draft[: lines[0][1]]
        lines = lines[:1]
    cut = len(draft)
    finish_line = False
    for idx, (ls, le) in enumerate(lines):
        line = draft[ls:le]
        if idx > 0:
            if finish_line:
                cut = lines[idx - 1][1]
                break
            if line.strip() == "" and st.mode == "code" and len(st.stack) <= base_depth:
                cut = lines[idx - 1][1]
                break
        nxt = lines[idx + 1][0] if idx + 1 < len(lines) else len(draft)
        stop = _c_scan(draft, st, language, start=ls, end=nxt, stop_at_close=base_depth)
        if stop is not None:
            closer = draft[stop]
            if suffix.lstrip().startswith(closer):
                cut = stop  # the editor already has this closer after the cursor
                break
            # close the enclosing construct and finish that line
            if st.stack:
                st.stack.pop()
            base_depth = len(st.stack)
            finish_line = True
            rest = _c_scan(draft, st, language, start=stop + 1, end=nxt, stop_at_close=base_depth)
            if rest is not None:
                cut = rest
                break
    out = draft[:cut]
    chk = _CState()
    _c_scan(window, chk, language)
    depth0 = len(chk.stack)
    _c_scan(out, chk, language)
    if len(chk.stack) > depth0 or chk.mode in ("string", "block_comment"):
        best = 0
        s2 = _CState()
        _c_scan(window, s2, language)
        pos = 0
        for i, ch in enumerate(out):
            if ch in "\n;,)]}":
                cand = i if ch == "\n" else i + 1
                _c_scan(out, s2, language, start=pos, end=cand)
                pos = cand
                if len(s2.stack) <= depth0 and s2.mode in ("code", "line_comment"):
                    best = cand
        out = out[:best]
    return out


# =====================================================================================
# Python
# =====================================================================================
def _prefix_window(prefix: str, limit: int = 20_000) -> str:
    """The last ``limit`` characters of the prefix, starting at a line start."""
    if len(prefix) <= limit:
        return prefix
    window = prefix[-limit:]
    nl = window.find("\n")
    return window[nl + 1:] if nl >= 0 else window


def _py_trim(prefix: str, draft: str, mid_line: bool) -> str:
    window = _prefix_window(prefix)
    base = lexing.scan(window)
    prefix_open = len(base.brackets)
    cur_line = window[max(window.rfind("\n"), window.rfind("\r")) + 1:]
    blank_before_cursor = cur_line.strip() == ""
    header = not blank_before_cursor and not base.brackets and base.in_code and cur_line.rstrip().endswith(":")

    lines = _lines_with_ends(draft)
    headers: set[int] = set()
    if blank_before_cursor:
        block_indent = len(cur_line) + _indent(draft[: lines[0][1]])
    elif header:
        block_indent = _indent(cur_line) + 1
        headers.add(_indent(cur_line))
    else:
        block_indent = _indent(cur_line)

    full = window + draft
    state = base
    cut = len(draft)
    for idx, (ls, le) in enumerate(lines):
        line = draft[ls:le]
        if idx > 0:
            if mid_line:
                cut = lines[idx - 1][1]
                break
            at_code = state.in_code and len(state.brackets) <= prefix_open and not state.continuation
            if line.strip() == "":
                if at_code and not _ends_with_opener(full[: len(window) + ls]):
                    cut = lines[idx - 1][1]
                    break
            elif at_code and not state.brackets and _indent(line) < block_indent:
                if not (_CONTINUATION_KW.match(line.lstrip()) and _indent(line) in headers):
                    cut = lines[idx - 1][1]
                    break
            if at_code and line.rstrip().endswith(":"):
                headers.add(_indent(line))
        stop = _py_overclose(full, state, len(window) + ls, len(window) + le)
        if stop is not None:
            cut = stop - len(window)
            break
        nxt = lines[idx + 1][0] if idx + 1 < len(lines) else le
        state = lexing.scan(full, state, len(window) + nxt)
    out = draft[:cut]
    end_state = lexing.scan(window + out, base)
    if len(end_state.brackets) > prefix_open or (base.in_code and not end_state.in_code):
        out = _cut_back_balanced(window, base, out, prefix_open)
    return out


def _ends_with_opener(text: str) -> bool:
    """The code so far cannot end a statement here (open header, operator, continuation)."""
    t = text.rstrip()
    return t.endswith((":", "\\", ",", "(", "[", "{", "=", "+", "-", "*", "/", "%", "|", "&", "@"))


_CLOSER_RE = re.compile(r"[)\]}]")


def _py_overclose(text: str, state: lexing.LexState, start: int, end: int) -> int | None:
    """Index of the first closer in text[start:end] that has no open bracket to close."""
    st = state
    pos = start
    while True:
        m = _CLOSER_RE.search(text, pos, end)
        if m is None:
            return None
        st = lexing.scan(text, st, m.start())
        if st.in_code and not st.brackets:
            return m.start()
        st = lexing.scan(text, st, m.end())
        pos = m.end()


def _cut_back_balanced(window: str, base: lexing.LexState, out: str, prefix_open: int) -> str:
    """Longest prefix of ``out`` that ends at a line end or after a comma/closer, in code, with no
    bracket the draft opened still open."""
    full = window + out
    best = 0
    st = base
    for i, ch in enumerate(out):
        if ch in "\n,)]}":
            cand = i if ch == "\n" else i + 1
            st = lexing.scan(full, st, len(window) + cand)
            if st.in_code and len(st.brackets) <= prefix_open:
                best = cand
    return out[:best]


# =====================================================================================
# Overlap with the text after the cursor
# =====================================================================================
def _drop_repeated_lines(text: str, suffix: str) -> str:
    """Cut the draft where it starts re-typing the code that follows the cursor's line."""
    nl = suffix.find("\n")
    if nl < 0:
        return text
    following = [ln.strip() for ln in suffix[nl + 1:].splitlines()[:50]]
    following = [ln for ln in following if ln]
    if not following:
        return text
    target = following[0]
    if len(target) < 3:
        return text
    lines = _lines_with_ends(text)
    for idx in range(1, len(lines)):
        ls, le = lines[idx]
        if text[ls:le].strip() == target:
            # require the next lines to match too when they exist (avoid cutting at a lone `return x`)
            ok = True
            for j in range(1, 3):
                if idx + j < len(lines) and j < len(following):
                    a, b = lines[idx + j]
                    if text[a:b].strip() and text[a:b].strip() != following[j]:
                        ok = False
            if ok:
                return text[: lines[idx - 1][1]]
    return text


def _bracket_excess(s: str) -> int:
    depth = 0
    worst = 0
    for ch in s:
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
            worst = min(worst, depth)
    return -worst


def _suffix_overlap(text: str, suffix: str) -> int:
    """How many characters at the start of the cursor's rest-of-line the draft's end re-types."""
    m = _LINE_BREAK.search(suffix)
    line_suffix = suffix[: m.start()] if m else suffix
    if not line_suffix.strip():
        return 0
    last_line = text[max(text.rfind("\n"), text.rfind("\r")) + 1:] if ("\n" in text or "\r" in text) else text
    best = 0
    for k in range(min(len(line_suffix), len(text)), 0, -1):
        piece = line_suffix[:k]
        if not text.endswith(piece) or not piece.strip():
            continue
        if piece[-1] in " \t":
            continue
        whole = piece.rstrip() == line_suffix.rstrip() and len(piece.strip()) >= 2
        has_bracket = any(c in "()[]{}" for c in piece)
        if has_bracket:
            # the draft closed brackets that the suffix closes again
            if _bracket_excess(last_line + line_suffix[k:]) <= _bracket_excess(line_suffix) < _bracket_excess(
                    last_line + line_suffix) or whole:
                best = k
                break
            continue
        if whole or not any(c.isalnum() or c == "_" for c in piece):
            best = k
            break
    return best


# =====================================================================================
# Public API
# =====================================================================================
def trim_draft(language: str | None, prefix: str, draft: str, suffix: str, mid_line: bool) -> TrimmedDraft | None:
    """Cut ``draft`` (model output at the cursor between ``prefix`` and ``suffix``) to the unit
    being written; None when nothing useful remains."""
    if not draft:
        return None
    lang = language_for(language) or language
    draft = draft.replace("\x00", "")
    try:
        if lang == "python":
            out = _py_trim(prefix, draft, mid_line)
        elif lang in ("javascript", "typescript", "tsx", "go", "rust", "java", "c", "cpp"):
            out = _brace_trim(lang, prefix, draft, suffix, mid_line)
        else:
            lines = _lines_with_ends(draft)
            if mid_line:
                out = draft[: lines[0][1]]
            else:
                out = draft
                for idx in range(1, len(lines)):
                    if draft[lines[idx][0]:lines[idx][1]].strip() == "":
                        out = draft[: lines[idx - 1][1]]
                        break
    except Exception:  # a trimming bug must not lose the suggestion entirely
        log.exception("trim failed; falling back to the first line")
        out = draft[: _lines_with_ends(draft)[0][1]]
    out = _drop_repeated_lines(out, suffix)
    out = "\n".join(ln.rstrip() for ln in out.split("\n")).rstrip() if "\n" in out else out.rstrip()
    if not out.strip():
        return None
    k = _suffix_overlap(out, suffix)
    if k and k >= len(out):
        return None  # the draft only re-types what is already there
    return TrimmedDraft(out, k)


def parse_error_count(language: str | None, text: str) -> int | None:
    """ERROR/MISSING nodes in ``text`` (None when the language has no parser)."""
    parser = new_parser(language_for(language) or language)
    if parser is None:
        return None
    tree = parser.parse(text.encode("utf-8", "surrogatepass"))
    root = tree.root_node
    if not root.has_error:
        return 0
    return sum(1 for n in walk(root, lambda n: n.has_error) if n.is_error or n.is_missing)


_TOP = re.compile(r"(def|class|async\s+def|@|import|from|if __name__)\b|[A-Za-z_][A-Za-z_0-9]*\s*=")


def _top_level(line: str) -> bool:
    """A line that starts a top-level statement: a definition, import or assignment at
    column 0.  Any unindented line would do in code, but a docstring's or string's inner
    lines are often unindented too, and a window starting inside a string turned a draft
    that completes `def has(` correctly into 35 parse errors (attrs' _funcs.py)."""
    return bool(line) and line[0] not in " \t" and _TOP.match(line) is not None


def _window(prefix: str, suffix: str, lines_before: int = 200, lines_after: int = 100,
            python: bool = True) -> tuple[str, str]:
    """A region around the cursor that starts and ends at top-level lines (cheap to parse twice)."""
    top = _top_level if python else (lambda line: bool(line) and line[0] not in " \t")
    end_at = _top_level if python else (lambda line: bool(line) and line[0] not in " \t}")
    pre_lines = prefix[-200_000:].split("\n")
    if len(prefix) > 200_000:
        pre_lines = pre_lines[1:]
    start = max(0, len(pre_lines) - 1 - lines_before)
    while start > 0 and not top(pre_lines[start]):
        start -= 1
    suf_lines = suffix[:200_000].split("\n")
    end = min(len(suf_lines), lines_after)
    while end < len(suf_lines) and not end_at(suf_lines[end]):
        end += 1
    return "\n".join(pre_lines[start:]), "\n".join(suf_lines[:end])


def _close_open_block(language: str | None, prefix: str, draft: str, open_ok: bool = False) -> str:
    """A draft that ends by opening a block (``if x:``, ``{``) with a placeholder body (and
    with ``open_ok``, one that ends inside brackets it opened with them closed): the
    request's budget answers a block's first line first (or a long statement's first
    lines), and the rest is not an error yet."""
    d = draft.rstrip()
    if not d:
        return draft
    if (language_for(language) or language) == "python":
        st = lexing.scan(d)
        if open_ok and st.frames:  # brackets or a string (a docstring's first lines) still open
            return d + lexing.closers(st)
        if d.endswith(":"):
            line = (prefix + d).rsplit("\n", 1)[-1]
            return d + "\n" + line[: len(line) - len(line.lstrip())] + "    pass"
    elif d.endswith("{"):
        return d + "\n}"
    return draft


def adds_parse_errors(language: str | None, prefix: str, draft: str, suffix: str, open_ok: bool = False) -> bool:
    """Whether inserting ``draft`` at the cursor gives the surrounding code more parse errors
    than it has without it (the engine drops such drafts).  A block opened at the draft's
    end counts as closed, and with ``open_ok`` brackets too (see `_close_open_block`)."""
    check = _parse_checker(language, prefix, suffix)
    return check is not None and check(_close_open_block(language, prefix, draft, open_ok))


def _parse_checker(language: str | None, prefix: str, suffix: str):
    """draft -> whether it adds parse errors where it goes (None: the code around the cursor
    does not parse as this language at all)."""
    pre, suf = _window(prefix, suffix, python=(language_for(language) or language) == "python")
    without = parse_error_count(language, pre + suf)
    if without is None:
        return None

    def check(draft: str) -> bool:
        with_draft = parse_error_count(language, pre + draft + suf)
        return bool(with_draft is not None and with_draft > without)

    return check


_PIECE = re.compile(r"[A-Za-z_0-9]+|\s+|.", re.S)
#: cut points tried, from the end (each a parse of ~300 lines, ~1-2 ms)
UNFINISHED_TRIES = 12


def unfinished_cut(language: str | None, prefix: str, draft: str, suffix: str) -> str | None:
    """A statement the request's hard deadline stopped mid-way, cut back to its longest
    prefix (at a word or punctuation boundary) that adds no parse errors once the brackets
    it opened are closed: ``x = f(a, b`` stays whole, ``get_hint(self.`` loses its dot, and
    ``if not isinstance(`` goes (no cut of it parses without its ``:``).  The replay counted
    such unfinished first lines as its only junk (2026-12-05: one in 16 after_indent
    answers, two in the run without guessing).  None: no cut is worth showing."""
    d = draft.rstrip()
    check = _parse_checker(language, prefix, suffix)
    if check is None:
        return d or None
    ends = [m.end() for m in _PIECE.finditer(d) if not m.group().isspace()]
    for e in reversed(ends[-UNFINISHED_TRIES:]):
        cand = d[:e]
        if not cand.strip():
            break
        if not check(_close_open_block(language, prefix, cand, open_ok=True)):
            return cand
    return None
