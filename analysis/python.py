"""Python analysis: where the cursor is (lexically) and what jedi knows there (statically).

Two halves:

* A lexer + statement classifier (pure regex, no jedi) that tells, for the text before the
  cursor, whether the next identifier is a member after ``expr.``, a name at a load position,
  a keyword argument, a module path, or something no analysis should constrain (a binding
  position, inside a string or comment, inside brackets where a comprehension variable could
  be bound later).  It runs once per decode step, so it scans only what changed.

* A jedi front end that answers "members of this expression", "keyword parameters of this
  call", "modules/names importable here", "names visible here".  jedi runs in a child process
  (`_ProcessWorker`: off this process's GIL) with a sys.path stripped of the workspace
  (``InterpreterEnvironment``: no project interpreter is ever started), unsafe extension
  loading off, one query at a time (jedi is not thread-safe) with a time budget: when the budget runs out the caller gets None (no
  constraint) and the answer lands in the cache for later steps.  "Unknown" or dynamic
  (``__getattr__``, unresolved base classes, ``**kwargs``) is always None, never an empty set.
"""

from __future__ import annotations

import itertools
import json
import keyword
import logging
import os
import queue
import re
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass

log = logging.getLogger(__name__)

__all__ = [
    "LexState",
    "scan",
    "closers",
    "PyPosition",
    "classify",
    "HARD_KEYWORDS",
    "STRING_PREFIXES",
    "Completions",
    "PythonAnalyzer",
    "identifiers_in",
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


# =====================================================================================
# Lexer: brackets, strings (f-strings nest), comments, statement starts.
# =====================================================================================
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


# =====================================================================================
# Statement classifier.
# =====================================================================================
_TOKEN_RE = re.compile(
    r"""
    (?P<ws>[ \t\f]+|\\\r\n|\\[\r\n]|\r\n|[\r\n])
  | (?P<comment>\#[^\r\n]*)
  | (?P<string>(?:[rRbBuUfFtT]{1,2})?(?:'''(?:\\.|.)*?(?:'''|\Z)|\"\"\"(?:\\.|.)*?(?:\"\"\"|\Z)
                 |'(?:\\.|[^'\\\r\n])*(?:'|(?=[\r\n])|\Z)|"(?:\\.|[^"\\\r\n])*(?:"|(?=[\r\n])|\Z)))
  | (?P<number>0[xXoObB][\da-fA-F_]*|(?:\d[\d_]*(?:\.[\d_]*)?|\.\d[\d_]*)(?:[eE][+-]?[\d_]*)?[jJ]?)
  | (?P<name>[^\W\d]\w*)
  | (?P<op>\*\*=|//=|>>=|<<=|\.\.\.|->|:=|[-+*/%@&|^<>=!]=|\*\*|//|<<|>>|[-+*/%@&|^~<>=.,:;()\[\]{}])
  | (?P<other>.)
    """,
    re.X | re.S,
)

_AUGMENTED = frozenset({"+=", "-=", "*=", "/=", "//=", "%=", "**=", "@=", "&=", "|=", "^=", ">>=", "<<="})
_COMPOUND = frozenset({"if", "elif", "else", "for", "while", "with", "def", "class", "try", "except", "finally",
                       "async", "match", "case"})
_NAME_AFTER_KW = frozenset({"return", "yield", "await", "raise", "assert", "del", "not", "and", "or", "is", "in",
                            "else", "from", "with", "except"})
_FREE_AFTER_KW = frozenset({"lambda", "for", "def", "class", "as", "global", "nonlocal", "import", "async",
                            "pass", "break", "continue"})
_WALRUS_KW = frozenset({"if", "elif", "while"})
_EXPR_KEYWORDS = frozenset({"True", "False", "None"})

ASSIGN_FOLLOWERS = ("=", ",", ":")
#: receivers on which a member position may bind a new attribute
SELF_NAMES = frozenset({"self", "cls"})
CHAIN_FOLLOWERS = ("=", ",")
WALRUS_FOLLOWERS = (":=",)


@dataclass(frozen=True)
class _Tok:
    kind: str
    text: str
    start: int
    end: int
    depth: int  # bracket depth (within the statement) *before* this token


@dataclass(frozen=True)
class PyPosition:
    """What kind of identifier may come next at the end of the text.

    kind: "member" (after ``expr.``), "name" (a load position), "kwarg" (argument start in a
    call), "module" (import path), "import_name" (``from m import``), "after_expr" (only a
    keyword can follow), "free" (valid code, nothing to check: binding positions, brackets).
    prefix: identifier characters already written (possibly "").
    anchor: text offset the analysis query is about (after the dot, after the call's "(",
    at the start of the identifier for imports and names).
    followers: characters that, right after an identifier not in the candidates, still make
    it valid (assignment targets).
    expr_end: the text ends exactly with a complete expression (so a "." may follow).
    expr_tail: the last token's kind when expr_end ("name", "string", "close").
    """

    kind: str
    prefix: str = ""
    anchor: int = 0
    followers: tuple[str, ...] = ()
    expr_end: bool = False
    expr_tail: str = ""
    stmt_names: frozenset[str] = frozenset()
    from_import: bool = False


def _tokens(text: str, start: int, end: int) -> list[_Tok]:
    out: list[_Tok] = []
    depth = 0
    for m in _TOKEN_RE.finditer(text, start, end):
        kind = m.lastgroup
        if kind in ("ws", "comment"):
            continue
        s = m.group()
        if kind == "op" and s in ")]}":
            depth = max(depth - 1, 0)
            out.append(_Tok(kind, s, m.start(), m.end(), depth))
            continue
        out.append(_Tok(kind, s, m.start(), m.end(), depth))
        if kind == "op" and s in "([{":
            depth += 1
    return out


def _is_expr_end(t: _Tok) -> bool:
    if t.kind == "name":
        return t.text not in HARD_KEYWORDS or t.text in _EXPR_KEYWORDS
    return t.kind == "string" or (t.kind == "op" and t.text in (")", "]", "}"))


def classify(text: str, state: LexState, *, ident_is_prev: bool = False) -> PyPosition | None:
    """Classify the end of ``text`` (whose lexical state is ``state``); None inside strings/comments.

    With ``ident_is_prev`` a trailing identifier counts as finished: the position classified is
    the one *after* it (what a whitespace-led token would land on).
    """
    if not state.in_code:
        return None
    end = len(text)
    toks = _tokens(text, state.stmt_start, end)
    stmt_names = frozenset(t.text for t in toks if t.kind == "name")
    if toks and toks[-1].kind == "other":
        return PyPosition("free", stmt_names=stmt_names)
    prefix, anchor = "", end
    body = toks
    ws_end = bool(toks) and toks[-1].end < end
    if toks and toks[-1].kind == "name" and not ws_end and not ident_is_prev:
        prefix, anchor = toks[-1].text, toks[-1].start
        body = toks[:-1]
    elif toks and toks[-1].kind == "number" and not ws_end:
        return PyPosition("free", stmt_names=stmt_names)
    expr_end = False
    expr_tail = ""
    if not ws_end and toks and not ident_is_prev:
        last = toks[-1]
        if _is_expr_end(last) and not (last.kind == "name" and _soft_kw_at_start(toks, len(toks) - 1)):
            expr_end = True
            expr_tail = "name" if last.kind == "name" else "string" if last.kind == "string" else "close"

    def pos(kind: str, **kw) -> PyPosition:
        return PyPosition(kind, prefix=prefix, anchor=kw.pop("anchor", anchor), expr_end=expr_end,
                          expr_tail=expr_tail, stmt_names=stmt_names, **kw)

    prev = body[-1] if body else None
    first = toks[0] if toks else None
    open_depth = (prev.depth + (1 if prev.kind == "op" and prev.text in "([{" else 0)) if prev else 0
    import_stmt = first is not None and first.kind == "name" and first.text in ("import", "from")

    # ---- member access: `expr.` + prefix ---------------------------------------------------
    if prev is not None and prev.kind == "op" and prev.text == ".":
        before = body[-2] if len(body) >= 2 else None
        if import_stmt:
            if first.text == "import" or not any(t.text == "import" and t.kind == "name" for t in body):
                return pos("module", anchor=prev.end, from_import=first.text == "from")
            return pos("free")
        if before is None or not _is_expr_end(before):
            return pos("free")
        if first.text in ("for", "async") and _in_for_target(body):
            return pos("free")
        root = _chain_root(body, len(body) - 2)
        followers: tuple[str, ...] = ()
        # A new attribute may be bound only on `self.`/`cls.` (`self.count = 0`), in the methods
        # that define attributes (`__init__`, `setUp`, `reset`...; elsewhere pylint reports
        # attribute-defined-outside-init).  Binding a brand-new attribute anywhere else is legal
        # but rare, and allowing it would let every identifier through at every statement-start
        # member access: a model that has left the member list can then only extend the
        # identifier (or turn a call into an assignment to a name that does not exist).
        if body[root].depth == 0 and root == len(body) - 2 and body[root].kind == "name" \
                and body[root].text in SELF_NAMES and _may_define_attributes(text, state.stmt_start):
            rprev = body[root - 1] if root > 0 else None
            followers = _target_followers(body, root, rprev)
        return pos("member", anchor=prev.end, followers=followers)

    # ---- import statements --------------------------------------------------------------------
    if import_stmt:
        if prev is not None and prev.kind == "name" and prev.text == "as":
            return pos("free")
        if first.text == "import":
            if prev is None or (prev.kind == "name" and prev.text == "import") or (prev.text == "," and prev.depth == 0):
                return pos("module", from_import=False)
            return pos("after_expr") if prev is not None and _is_expr_end(prev) else pos("free")
        seen_import = any(t.kind == "name" and t.text == "import" for t in body)
        if not seen_import:
            if prev is first or (prev is not None and prev.text in (".", "...")):
                return pos("module", from_import=True)
            return pos("after_expr") if prev is not None and _is_expr_end(prev) else pos("free")
        if prev is not None and prev.text in ("import", ",", "("):
            return pos("import_name", from_import=True)
        return pos("after_expr") if prev is not None and _is_expr_end(prev) else pos("free")

    # ---- inside brackets: only keyword arguments are checked ----------------------------------
    if open_depth > 0:
        opener = _innermost_open(body)
        if opener is not None and body[opener].text == "(" and prev is not None and (
                prev is body[opener] or (prev.text == "," and prev.depth == open_depth)):
            if _is_call(body, opener):
                return pos("kwarg", anchor=body[opener].end)
        return pos("free")

    # ---- depth 0 -------------------------------------------------------------------------------
    if first is not None and first.kind == "name" and first.text in ("for", "async") and _in_for_target(body):
        return pos("free")
    if _in_lambda_header(body):
        return pos("free")
    if prev is None:
        return pos("name", followers=ASSIGN_FOLLOWERS)
    if prev.kind == "name":
        if prev.text in HARD_KEYWORDS and prev.text not in _EXPR_KEYWORDS:
            if prev.text in _WALRUS_KW:
                return pos("name", followers=WALRUS_FOLLOWERS)
            if prev.text in _NAME_AFTER_KW:
                return pos("name")
            return pos("free")
        if _soft_kw_at_start(body, len(body) - 1):
            return pos("name") if prev.text == "match" else pos("free")
        return pos("after_expr")
    if prev.kind in ("string", "number"):
        return pos("after_expr")
    t = prev.text
    if t in (")", "]", "}", "..."):
        return pos("after_expr")
    if t == ":":
        if first.kind == "name" and first.text in _COMPOUND:
            return pos("name", followers=ASSIGN_FOLLOWERS)  # inline suite: a new statement
        return pos("name")  # annotation or lambda body
    if t == "@" and len(body) == 1:
        return pos("name")
    if t == "=":
        # `a = b = 0` with a fresh `b` is the one valid form this blocks: allowing any name
        # followed by "=" here would let every identifier through until it ends.
        return pos("name")
    if t in _AUGMENTED:
        return pos("name")
    if t == ",":
        if first.kind == "name" and first.text in HARD_KEYWORDS:
            return pos("name")
        if any(x.depth == 0 and x.kind == "op" and (x.text == "=" or x.text in _AUGMENTED) for x in body):
            return pos("name")  # right-hand side tuple
        return pos("name", followers=CHAIN_FOLLOWERS)  # `a, b = ...` target list
    if t in ("*", "**"):
        before = body[-2] if len(body) >= 2 else None
        if before is None or (before.text == "," and not any(
                x.depth == 0 and x.kind == "op" and x.text == "=" for x in body)):
            return pos("name", followers=CHAIN_FOLLOWERS)  # `*rest` in a target list
        return pos("name")
    if t in (";",):
        return pos("name", followers=ASSIGN_FOLLOWERS)
    return pos("name")


#: methods where attributes are defined (pylint's defining-attr-methods, and the usual helpers)
ATTR_DEFINING_METHODS = frozenset({"__init__", "__new__", "__post_init__", "__init_subclass__", "__setstate__",
                                   "__enter__", "__aenter__", "setUp", "asyncSetUp", "setUpClass", "setup_method",
                                   "setup_class"})
_ATTR_DEFINING_PREFIXES = ("init", "_init", "reset", "_reset", "setup", "_setup", "set_up", "_set_up")
_DEF_RE = re.compile(r"[ \t]*(?:async[ \t]+)?def[ \t]+(\w+)")


def _may_define_attributes(text: str, stmt_start: int, max_lines: int = 400) -> bool:
    """Whether the statement at ``stmt_start`` may bind new attributes: it is in an attribute-
    defining method, or its enclosing function is not found (then: yes, conservatively)."""
    line_start = text.rfind("\n", 0, stmt_start) + 1
    head = text[line_start:stmt_start + 200]
    indent = len(head) - len(head.lstrip(" \t"))
    if indent == 0:
        return True  # module level (or a continuation line): nothing to say
    end = line_start - 1
    for _ in range(max_lines):
        if end < 0:
            return True
        start = text.rfind("\n", 0, end) + 1
        line = text[start:end]
        end = start - 1
        stripped = line.lstrip(" \t")
        if not stripped or stripped.startswith("#"):
            continue
        ind = len(line) - len(stripped)
        if ind >= indent:
            continue
        m = _DEF_RE.match(line)
        if m is not None:
            name = m.group(1)
            return name in ATTR_DEFINING_METHODS or name.lower().startswith(_ATTR_DEFINING_PREFIXES)
        if stripped.startswith("class ") or ind == 0:
            return True  # not inside a function: unknown, allow
        indent = ind  # an enclosing block (if/for/with...): keep looking outwards
    return True


def _soft_kw_at_start(toks: list[_Tok], i: int) -> bool:
    """``match``/``case``/``type`` as the first word of a statement act as keywords."""
    return i == 0 and toks[0].kind == "name" and toks[0].text in SOFT_KEYWORDS


def _in_for_target(body: list[_Tok]) -> bool:
    """True when the statement is a ``for`` and its depth-0 ``in`` has not been written yet."""
    for t in body:
        if t.depth == 0 and t.kind == "name" and t.text == "in":
            return False
    return True


def _in_lambda_header(body: list[_Tok]) -> bool:
    """A depth-0 ``lambda`` whose ``:`` has not been written: parameters are bindings."""
    open_lambdas = 0
    for t in body:
        if t.depth != 0:
            continue
        if t.kind == "name" and t.text == "lambda":
            open_lambdas += 1
        elif t.kind == "op" and t.text == ":" and open_lambdas:
            open_lambdas -= 1
    return open_lambdas > 0


def _innermost_open(body: list[_Tok]) -> int | None:
    stack: list[int] = []
    for i, t in enumerate(body):
        if t.kind == "op":
            if t.text in "([{":
                stack.append(i)
            elif t.text in ")]}" and stack:
                stack.pop()
    return stack[-1] if stack else None


def _is_call(body: list[_Tok], opener: int) -> bool:
    if opener == 0:
        return False
    callee = body[opener - 1]
    if callee.kind == "name":
        if callee.text in HARD_KEYWORDS:
            return False
        before = body[opener - 2] if opener >= 2 else None
        return not (before is not None and before.kind == "name" and before.text in ("def", "class"))
    return callee.kind == "op" and callee.text in (")", "]")


def _chain_root(body: list[_Tok], i: int) -> int:
    """Index of the first token of the primary expression ending at token ``i``."""
    while i >= 0:
        t = body[i]
        if t.kind == "op" and t.text in (")", "]", "}"):
            depth = 0
            j = i
            while j >= 0:
                if body[j].kind == "op" and body[j].text in (")", "]", "}"):
                    depth += 1
                elif body[j].kind == "op" and body[j].text in ("(", "[", "{"):
                    depth -= 1
                    if depth == 0:
                        break
                j -= 1
            i = j
            if i > 0 and (body[i - 1].kind in ("name", "string") or body[i - 1].text in (")", "]")) \
                    and not (body[i - 1].kind == "name" and body[i - 1].text in HARD_KEYWORDS
                             and body[i - 1].text not in _EXPR_KEYWORDS):
                i -= 1
                continue
            return max(i, 0)
        if t.kind in ("name", "string", "number"):
            if i > 0 and body[i - 1].kind == "op" and body[i - 1].text == ".":
                i -= 2
                continue
            return i
        return i + 1
    return 0


def _target_followers(body: list[_Tok], root: int, rprev: _Tok | None) -> tuple[str, ...]:
    """Followers that make a dotted chain starting at ``root`` an assignment target."""
    first = body[0]
    if rprev is None:
        return ASSIGN_FOLLOWERS
    if rprev.kind == "op" and rprev.text == ":" and first.kind == "name" and first.text in _COMPOUND:
        return ASSIGN_FOLLOWERS
    if rprev.kind == "op" and rprev.text in (",", "*") and rprev.depth == 0 and not (
            first.kind == "name" and first.text in HARD_KEYWORDS) and not any(
            x.depth == 0 and x.kind == "op" and x.text == "=" for x in body[:root]):
        return CHAIN_FOLLOWERS
    return ()


# =====================================================================================
# jedi
# =====================================================================================
@dataclass(frozen=True)
class Completions:
    """What jedi listed at a position: ``names`` (all), ``callables`` (functions/methods among them)."""

    names: frozenset[str]
    callables: frozenset[str] = frozenset()


_jedi_configured = False
_overlay = threading.local()


def _configure_jedi() -> None:
    """Process-wide jedi settings and the open-document overlay hook (idempotent)."""
    global _jedi_configured
    if _jedi_configured:
        return
    import jedi
    import jedi.inference.imports as jimports

    jedi.settings.auto_import_modules = []  # never import a module to analyse it
    jedi.settings.allow_unsafe_interpreter_executions = False
    jedi.settings.case_insensitive_completion = False
    jedi.settings.add_bracket_after_function = False
    # Bounded latency: "dynamic" inference searches every call site of a function (or every
    # `.append` of a list) in the module, which took 5-15 s per query on stdlib files; without
    # it those few answers become "unknown" (no constraint), the rest stay under ~200 ms.
    jedi.settings.dynamic_params = False
    jedi.settings.dynamic_params_for_other_modules = False
    jedi.settings.dynamic_array_additions = False
    original = jimports._load_python_module

    def load_python_module(inference_state, file_io, import_names=None, is_package=False):
        docs = getattr(_overlay, "docs", None)
        path = getattr(file_io, "path", None)
        if docs and path is not None:
            code = docs.get(os.path.normcase(os.path.abspath(str(path))))
            if code is not None:
                return _overlay_module(inference_state, file_io, code, import_names, is_package)
        return original(inference_state, file_io, import_names=import_names, is_package=is_package)

    jimports._load_python_module = load_python_module
    jimports.Importer._sys_path_with_modifications = _sys_path_within_project
    _jedi_configured = True


def _sys_path_within_project(self, is_completion):
    """jedi's import path, where the ``sys.path.insert/append(...)`` calls it finds in the
    document count only when they point inside the project root: jedi would otherwise read
    any directory a file names (``sys.path.insert(0, '/home/other')``), outside the workspace
    the editor opened.  Without a workspace root no such call counts."""
    if self._fixed_sys_path is not None:
        return self._fixed_sys_path
    from jedi.inference import sys_path as jsys_path

    base = self._inference_state.get_sys_path(add_init_paths=not is_completion)
    project = getattr(self._inference_state, "project", None)
    root = os.path.normcase(os.path.realpath(str(project.path))) if project is not None else None
    if root is None or root == os.path.abspath(os.sep):
        return base
    extra = []
    for p in jsys_path.check_sys_path_modifications(self._module_context):
        ap = os.path.normcase(os.path.realpath(str(p)))
        if ap == root or ap.startswith(root + os.sep):
            extra.append(str(p))
    return base + extra


def _overlay_module(inference_state, file_io, code, import_names, is_package):
    """An imported module whose text comes from an open (maybe unsaved) document, never cached."""
    from jedi.file_io import KnownContentFileIO
    from jedi.inference.value import ModuleValue
    from parso.utils import split_lines

    from parso.cache import _NodeCacheItem, parser_cache

    fio = KnownContentFileIO(file_io.path, code)
    node = inference_state.parse(file_io=fio, cache=False, diff_cache=False)
    lines = split_lines(code, keepends=True)
    # jedi's name filters look the module up in parso's cache by path: register the overlay
    # there for this query only (the worker restores the previous entry afterwards), with a
    # change time of 0 so a later load of the file on disk never mistakes it for fresh.
    bucket = parser_cache.setdefault(inference_state.grammar._hashed, {})
    restore = getattr(_overlay, "restore", None)
    if restore is not None and (id(bucket), file_io.path) not in restore:
        restore[(id(bucket), file_io.path)] = (bucket, bucket.get(file_io.path))
    bucket[file_io.path] = _NodeCacheItem(node, lines, change_time=0.0)
    return ModuleValue(inference_state, node, file_io=fio, string_names=import_names,
                       code_lines=lines, is_package=is_package)


def _safe_environment(workspace: str | None):
    """``InterpreterEnvironment`` (this process, no subprocess, no discovery) whose sys.path
    excludes the working directory and the workspace: jedi loads compiled extensions only from
    that path, so no workspace ``.so`` is ever imported."""
    import jedi

    import site

    def norm(p: str) -> str:
        return os.path.normcase(os.path.abspath(p))

    def under(p: str, roots: set[str]) -> bool:
        return any(p == r or p.startswith(r + os.sep) for r in roots)

    blocked = {norm(p) for p in ([os.getcwd()] + ([workspace] if workspace else []))}
    # The running interpreter's own installation is trusted (its code already runs here),
    # even when it lives inside the workspace (a project .venv used to run the server).
    trusted = {norm(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix)}
    try:
        trusted |= {norm(p) for p in site.getsitepackages()}
    except AttributeError:  # some virtualenv flavours
        pass

    def allowed(p: str) -> bool:
        if not p:
            return False
        ap = norm(p)
        return under(ap, trusted) or not under(ap, blocked)

    class _SafeEnvironment(jedi.InterpreterEnvironment):
        def get_sys_path(self):
            return [p for p in sys.path if allowed(p)]

    return _SafeEnvironment()


def _run_with_overlay(fn: Callable[[], object], docs: Mapping[str, str] | None) -> object:
    """Run one jedi call with the open documents' texts standing in for their files."""
    _overlay.docs = docs
    _overlay.restore = {}
    try:
        return fn()
    finally:
        for (_, path), (bucket, item) in _overlay.restore.items():
            if item is None:
                bucket.pop(path, None)
            else:
                bucket[path] = item
        _overlay.docs = None
        _overlay.restore = None


class _Worker:
    """One daemon thread running jedi calls in order (jedi is not thread-safe), in this
    process: used when ``DRAFTLINE_JEDI=thread`` and by tests that patch the analyzer."""

    def __init__(self) -> None:
        self._q: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="draftline-jedi", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            fn, fut, docs = self._q.get()
            if not fut.set_running_or_notify_cancel():
                continue
            try:
                fut.set_result(_run_with_overlay(fn, docs))
            except BaseException as e:  # noqa: BLE001 - report any jedi failure as "unknown"
                log.debug("jedi query failed: %r", e)
                fut.set_exception(e)

    def submit(self, fn: Callable[[], object], docs: Mapping[str, str] | None) -> Future:
        fut: Future = Future()
        self._q.put((fn, fut, docs))
        return fut

    def query(self, analyzer: "PythonAnalyzer", kind: str, before: str, after: str, path: str | None,
              docs: Mapping[str, str] | None) -> Future:
        fn = getattr(analyzer, "_" + kind)
        return self.submit(lambda: fn(before, after, path), docs)

    @property
    def backlog(self) -> int:
        return self._q.qsize()


class _ProcessWorker:
    """jedi in a child process (``python -P -m draftline.analysis.jedi_worker``), one query
    at a time, answers read by a thread that only waits on the pipe.

    Why not a thread: jedi is pure Python. In this process it holds the GIL while the
    decoder's torch calls want it back after every operation, so each of the ~1,000 small
    operations of a forward could wait for jedi's switch interval (5 ms): a 2k-token prefill
    took ~10 s instead of ~5 s while a query ran beside it. In a child process it only
    shares the cores (at a lower priority).  Messages are JSON lines (no pickle from a
    process that reads the workspace); open documents are sent once per version.
    A child that dies fails its pending queries (None for the caller) and is restarted by the
    next query; one stuck past HANG_S is killed.
    """

    HANG_S = 30.0

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._proc = None
        self._pending: dict[int, tuple[Future, float]] = {}
        self._ids = itertools.count()
        self._sent: dict[str, int] = {}  # path -> hash of the text the child holds

    def _ensure(self):
        """The live child (started or restarted here); called with the lock held."""
        import subprocess

        proc = self._proc
        if proc is not None and proc.poll() is None:
            oldest = min((t for _, t in self._pending.values()), default=None)
            if oldest is None or time.monotonic() - oldest < self.HANG_S:
                return proc
            log.warning("jedi worker stuck for %.0f s; restarting it", time.monotonic() - oldest)
            proc.kill()
        # the old child's queries die with it (its reader may not have seen the end yet:
        # left pending, they would count as backlog and as "stuck" against the new child)
        self._fail(list(self._pending.values()), "jedi worker restarted")
        self._pending.clear()
        proc = subprocess.Popen([sys.executable, "-P", "-m", "draftline.analysis.jedi_worker"],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, encoding="ascii")
        self._proc = proc
        self._sent = {}
        threading.Thread(target=self._read, args=(proc,), name="draftline-jedi-reader", daemon=True).start()
        return proc

    @staticmethod
    def _fail(pending: list[tuple[Future, float]], why: str) -> None:
        for f, _ in pending:
            if not f.done():
                f.set_exception(RuntimeError(why))

    def _read(self, proc) -> None:
        for line in proc.stdout:
            try:
                msg = json.loads(line)
            except ValueError:
                continue
            with self._lock:
                got = self._pending.pop(msg.get("q"), None)
            if got is None:
                continue
            fut = got[0]
            if "error" in msg:
                fut.set_exception(RuntimeError(f"jedi worker: {msg['error']}"))
            elif msg.get("names") is None:
                fut.set_result(None)
            else:
                fut.set_result(Completions(frozenset(msg["names"]), frozenset(msg.get("callables") or ())))
        # the child is gone: its pending queries are unknown (unless a restart failed them already)
        with self._lock:
            dead = list(self._pending.values()) if self._proc is proc else []
            if dead:
                self._pending.clear()
        self._fail(dead, "jedi worker exited")

    def query(self, analyzer: "PythonAnalyzer", kind: str, before: str, after: str, path: str | None,
              docs: Mapping[str, str] | None) -> Future:
        fut: Future = Future()
        fut.set_running_or_notify_cancel()
        with self._lock:
            qid = next(self._ids)
            try:
                proc = self._ensure()
                sent = {}
                for p, text in (docs or {}).items():
                    h = hash(text)
                    sent[p] = [h, None if self._sent.get(p) == h else text]
                    self._sent[p] = h
                msg = {"q": qid, "config": [analyzer.workspace_root, list(analyzer.added_sys_path)],
                       "kind": kind, "before": before, "after": after, "path": path, "docs": sent}
                self._pending[qid] = (fut, time.monotonic())
                proc.stdin.write(json.dumps(msg) + "\n")
                proc.stdin.flush()
            except (OSError, ValueError) as e:  # the child died under us: unknown, restart next time
                self._pending.pop(qid, None)
                self._sent = {}
                fut.set_exception(RuntimeError(f"jedi worker unavailable: {e}"))
        return fut

    @property
    def backlog(self) -> int:
        with self._lock:
            return max(0, len(self._pending) - 1)  # queued behind the one running


_workers: dict[bool, "_Worker | _ProcessWorker"] = {}
_worker_lock = threading.Lock()
#: jedi runs in a child process unless DRAFTLINE_JEDI=thread (see _ProcessWorker)
ISOLATED = os.environ.get("DRAFTLINE_JEDI", "process") != "thread"


def _get_worker(isolated: bool | None = None):
    iso = ISOLATED if isolated is None else isolated
    with _worker_lock:
        w = _workers.get(iso)
        if w is None:
            w = _workers[iso] = _ProcessWorker() if iso else _Worker()
        return w


def _line_col(code: str, offset: int) -> tuple[int, int]:
    from parso.utils import split_lines

    lines = split_lines(code[:offset])
    return len(lines), len(lines[-1])


class PythonAnalyzer:
    """jedi front end shared by all Python documents of one workspace.

    ``workspace_root``: the jedi project root (its modules become importable); ``added_sys_path``:
    extra import roots, from trusted (user-level) settings only.  ``budget_s``: how long one
    query may be waited for; a later query for the same key gets the answer for free.
    """

    MAX_BACKLOG = 2

    def __init__(self, workspace_root: str | None = None, added_sys_path: tuple[str, ...] = (),
                 budget_s: float = 0.3, cache_size: int = 512, isolated: bool | None = None) -> None:
        self.workspace_root = os.path.abspath(workspace_root) if workspace_root else None
        self.added_sys_path = tuple(added_sys_path)
        self.budget_s = budget_s
        self._cache: OrderedDict[tuple, tuple[Future, float]] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()
        self.isolated = isolated  # jedi in a child process (None: the module default, ISOLATED)
        self._env = None
        self._project = None
        self._type_members: dict[tuple, Completions | None] = {}  # see _members

    # --- plumbing ------------------------------------------------------------------------
    def _jedi_objects(self):
        if self._env is None:
            import jedi

            _configure_jedi()
            self._env = _safe_environment(self.workspace_root)
            self._project = jedi.Project(
                self.workspace_root or os.path.abspath(os.sep),
                environment_path=None,
                load_unsafe_extensions=False,
                added_sys_path=self.added_sys_path,
                smart_sys_path=self.workspace_root is not None,
            )
        return self._env, self._project

    def _script(self, code: str, path: str | None):
        import jedi

        env, project = self._jedi_objects()
        return jedi.Script(code, path=path, environment=env, project=project)

    @staticmethod
    def text_key(before: str, after: str, path: str | None, docs_key: object = None) -> tuple:
        """Cache key for a query on ``before`` + ``after`` (hashes: no big strings are kept)."""
        return (hash(before), len(before), hash(after), len(after), path, docs_key)

    def query(self, kind: str, before: str, after: str, *, path: str | None = None,
              open_documents: Mapping[str, str] | None = None, key: tuple | None = None,
              wait: bool = True, budget: float | None = None, urgent: bool = False,
              start: bool = True) -> object | None:
        """Run (or fetch) one analysis; None when unknown, dynamic, failed or over budget.

        ``kind``: "members" (``before`` ends right after a dot), "kwargs" (``before`` ends right
        after a call's ``(``), "complete" (names/modules jedi lists at the end of ``before``).
        ``wait=False`` only starts the query (prefetch) and returns what is already known; a
        prefetch is only queued when the worker has nothing queued (``urgent``: like a waited
        query), so speculative queries never crowd out the ones a decode step waits for.
        ``budget``: seconds to wait, counted from when the query was first started (default
        ``budget_s``).  ``start=False``: only look the answer up, never start a query.
        """
        if key is None:
            docs_key = tuple(sorted((p, hash(t)) for p, t in open_documents.items())) if open_documents else None
            key = (kind,) + self.text_key(before, after, path, docs_key)
        else:
            key = (kind,) + key
        now = time.monotonic()
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
        if hit is None:
            if not start:
                return None
            if kind not in ("members", "kwargs", "complete"):
                raise ValueError(f"unknown analysis {kind!r}")
            worker = _get_worker(self.isolated)
            if worker.backlog >= (self.MAX_BACKLOG if wait or urgent else 1):
                return None
            docs = None
            if open_documents:
                docs = {os.path.normcase(os.path.abspath(p)): t for p, t in open_documents.items()}
            fut = worker.query(self, kind, before, after, path, docs)
            hit = (fut, now)
            with self._lock:
                self._cache[key] = hit
                while len(self._cache) > self._cache_size:
                    self._cache.popitem(last=False)
        fut, started = hit
        if not fut.done():
            if not wait:
                return None
            remaining = (self.budget_s if budget is None else budget) - (now - started)
            if remaining <= 0:
                return None
            try:
                fut.result(timeout=remaining)
            except Exception:  # timeout or jedi failure
                return None
        if fut.exception() is not None:
            return None
        return fut.result()

    def pending(self, kind: str, key: tuple) -> bool:
        """Whether the query (kind, key) was started and has not finished yet."""
        with self._lock:
            hit = self._cache.get((kind,) + key)
        return hit is not None and not hit[0].done()

    #: receivers whose members are listed at warm-up: library types (see _members) cost
    #: 100-400 ms the first time (`[].` 199 ms, a stub function 396 ms, measured in
    #: bench/latency.py's server log) and ~0 after, so the first requests do not pay it
    WARM_RECEIVERS = ("import os\nos.path.", "[].", "{}.", "''.", "b''.", "().", "set().", "0 .", "0.5 .",
                      "None.", "''.join.", "[].append.", "object().", "import re\nre.compile('').",
                      "import re\nre.match('', '').", "import os\nos.")

    def warm_up(self) -> Future:
        """Load jedi and the builtins/typeshed stubs in the background (the first query is
        slow) and list the members of common library types, as one job of the worker."""
        return _get_worker(self.isolated).query(self, "warm", "", "", None, None)

    def _warm(self, before: str, after: str, path: str | None) -> None:
        for code in self.WARM_RECEIVERS:
            self._members(code, "", None)
        return None

    # --- the analyses (run on the worker thread) -----------------------------------------------
    def _members(self, before: str, after: str, path: str | None) -> Completions | None:
        code = before + after
        line, col = _line_col(code, len(before))
        script = self._script(code, path)
        # Members of a library type (a stub or compiled value: `[]`, `"".`, `re.`, an
        # attribute holding a list) are the same in every document: listing them is jedi's
        # slow part (~200 ms for a list: it filters the whole builtins stub), so they are
        # listed once per type.  Types from the user's code are always listed afresh.
        tkey = _library_type_key(script, line, col)
        if tkey is not None:
            with self._lock:
                hit = self._type_members.get(tkey, _MISSING)
            if hit is not _MISSING:
                return hit  # type: ignore[return-value]
        got = self._list_members(script, line, col)
        if tkey is not None:
            with self._lock:
                self._type_members[tkey] = got
                if len(self._type_members) > self._cache_size:
                    self._type_members.pop(next(iter(self._type_members)))
        return got

    @staticmethod
    def _list_members(script, line: int, col: int) -> Completions | None:
        comps = script.complete(line, col)
        if not comps:
            return None
        names = {c.name for c in comps if not c.name.endswith("=")}
        if "__getattr__" in names or _is_dynamic_receiver(script, line, col):
            return None
        callables = frozenset(c.name for c in comps if c.type == "function")
        return Completions(frozenset(names), callables)

    def _kwargs(self, before: str, after: str, path: str | None) -> Completions | None:
        code = before + after
        line, col = _line_col(code, len(before))
        script = self._script(code, path)
        sigs = script.get_signatures(line, col)
        if not sigs:
            return None
        out: set[str] = set()
        for sig in sigs:
            if _signature_is_opaque(sig):
                return None
            for p in sig.params:
                kind = getattr(p.kind, "name", str(p.kind))
                if kind == "VAR_KEYWORD":
                    return None
                if kind in ("POSITIONAL_OR_KEYWORD", "KEYWORD_ONLY"):
                    out.add(p.name)
        if not out:
            return None
        return Completions(frozenset(out))

    def _complete(self, before: str, after: str, path: str | None) -> Completions | None:
        code = before + after
        line, col = _line_col(code, len(before))
        script = self._script(code, path)
        comps = script.complete(line, col)
        names = {c.name for c in comps if not c.name.endswith("=")}
        if not names or "__getattr__" in names:
            return None
        return Completions(frozenset(names), frozenset(c.name for c in comps if c.type == "function"))


_MISSING = object()


def _receiver_values(script, line: int, col: int):
    """jedi's values for the expression before the dot ending at (line, col), or None."""
    from jedi.inference.helpers import infer_call_of_leaf

    module_context = script._get_module_context()
    leaf = module_context.tree_node.get_leaf_for_position((line, col), include_prefixes=True)
    while leaf is not None and leaf.start_pos >= (line, col):
        leaf = leaf.get_previous_leaf()
    if leaf is None or leaf.value != "." or leaf.end_pos != (line, col):
        return None
    previous = leaf.get_previous_leaf()
    context = module_context.create_context(previous)
    return infer_call_of_leaf(context, previous)


def _library_type_key(script, line: int, col: int) -> tuple | None:
    """A key naming the receiver's type when every value jedi infers for it comes from a
    stub or a compiled module (so its members do not depend on the document); else None.

    Uses jedi internals like `_is_dynamic_receiver`; any failure means "no key" (the
    members are then listed the slow way, never wrongly cached)."""
    try:
        values = _receiver_values(script, line, col)
        if not values:
            return None
        parts = []
        for v in values:
            root = v.get_root_context()
            if not (root.is_stub() or v.is_compiled()):
                return None
            node = getattr(v, "tree_node", None)
            parts.append((str(root.py__file__()), root.py__name__(), v.name.string_name if v.name else "",
                          v.is_instance(), v.is_class(), v.is_module(), v.is_function(),
                          getattr(node, "start_pos", None)))
        return tuple(sorted(parts, key=repr))
    except Exception as e:  # noqa: BLE001
        log.debug("library type key failed: %r", e)
        return None


def _is_dynamic_receiver(script, line: int, col: int) -> bool:
    """Whether the object before the dot at (line, col) can have attributes jedi cannot list:
    a class (or instance of one) with ``__getattr__`` or with a base class jedi cannot resolve.

    Uses jedi internals (the same calls ``Completion._complete_trailer`` makes); any failure
    counts as dynamic, so a jedi upgrade can only weaken masking, never block valid code.
    """
    try:
        values = _receiver_values(script, line, col)
        if not values:
            return True
        for v in values:
            if v.is_module():
                continue
            cls = v
            if v.is_instance():
                if v.get_function_slot_names("__getattr__"):
                    return True
                cls = getattr(v, "class_value", None)
                if cls is None:
                    continue
            if cls.is_class() and _has_unresolved_base(cls):
                return True
        return False
    except Exception as e:  # noqa: BLE001
        log.debug("dynamic-receiver check failed: %r", e)
        return True


def _has_unresolved_base(cls, limit: int = 64) -> bool:
    seen = 0
    stack = [cls]
    visited: set[int] = set()
    while stack and seen < limit:
        c = stack.pop()
        if id(c) in visited:
            continue
        visited.add(id(c))
        seen += 1
        try:
            bases = list(c.py__bases__())
        except Exception:
            return True
        for lazy in bases:
            inferred = lazy.infer()
            if not inferred:
                return True
            for b in inferred:
                if b.is_class():
                    stack.append(b)
                elif not b.is_module():
                    # e.g. a base that is a function call result jedi could not resolve to a class
                    return True
    return False


def _signature_is_opaque(sig) -> bool:
    """Signatures jedi reads from a class whose constructor a decorator or metaclass may rewrite."""
    try:
        if sig.type != "class":
            return False
        tree_name = sig._name.tree_name
        classdef = tree_name.get_definition() if tree_name is not None else None
        if classdef is None or classdef.type != "classdef":
            return False
        for dec in classdef.get_decorators():
            code = dec.get_code(include_prefix=False)
            if "dataclass" not in code:
                return True
        arglist = classdef.get_super_arglist()
        if arglist is not None and "metaclass" in arglist.get_code():
            return True
        return False
    except Exception:  # noqa: BLE001
        return True
