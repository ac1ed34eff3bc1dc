"""Cursor classification: what kind of identifier may come next at the end of a text.

For Python (`classify`, regex tokens over the current statement, no jedi): a member after
``expr.``, a name at a load position, a keyword argument, a module path, a name after
``from m import``, "only a keyword can follow", or "free": a position no analysis should
constrain (a binding position, inside brackets where a comprehension variable could be bound
later).  Inside a string or comment there is no position at all (None).  Why so cautious:
a monitor that constrains a binding position would block a correct new name, so every
doubtful position is "free".  It runs once per decode step on the statement at the cursor
only (`LexState.stmt_start` says where it begins).

For the C family (`classify_generic`): only "a name right after ``return``, ``=`` or a binary
operator", the one kind of position the tree-sitter scopes monitor constrains.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .lexing import HARD_KEYWORDS, SOFT_KEYWORDS, LexState

__all__ = [
    "PyPosition",
    "classify",
    "ASSIGN_FOLLOWERS",
    "CHAIN_FOLLOWERS",
    "WALRUS_FOLLOWERS",
    "SELF_NAMES",
    "ATTR_DEFINING_METHODS",
    "GenericPosition",
    "classify_generic",
]

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


# -------------------------------------------------------------------------------------
# Generic (non-Python) lexical position, used only by the scopes monitor
# -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class GenericPosition:
    """A C-family position (same fields as `PyPosition` where the monitors read them)."""

    kind: str
    prefix: str = ""
    followers: tuple[str, ...] = ()
    stmt_names: frozenset[str] = frozenset()
    expr_end: bool = False
    anchor: int = 0


_C_TOKEN = re.compile(
    r"""(?P<ws>\s+)|(?P<comment>//[^\n]*|/\*.*?(?:\*/|\Z))|(?P<string>"(?:\\.|[^"\\\n])*(?:"|$)|'(?:\\.|[^'\\\n])*(?:'|$)|`(?:\\.|[^`\\])*(?:`|\Z))
    |(?P<number>\d[\w.]*)|(?P<name>[^\W\d]\w*)|(?P<op>&&|\|\||==|!=|<=|>=|->|::|[-+*/%&|^!~<>=?:;,.(){}\[\]])|(?P<other>.)""",
    re.X | re.S,
)
_GENERIC_LOAD_OPS = frozenset({"+", "-", "/", "%", "==", "!=", "<=", ">=", "&&", "||", "!", "~", "^", "|", "?", "["})


def classify_generic(text: str, window: int = 4000) -> GenericPosition | None:
    """A conservative C-family classifier: a name right after ``return`` or a binary operator."""
    start = max(0, len(text) - window)
    start = text.find("\n", start) + 1 if start else 0
    toks = [(m.lastgroup, m.group(), m.start()) for m in _C_TOKEN.finditer(text, start)]
    toks = [t for t in toks if t[0] != "ws"]
    if not toks:
        return None
    last = toks[-1]
    if last[0] == "comment" or (last[0] == "string" and (len(last[1]) < 2 or last[1][-1] != last[1][0])):
        return None  # inside a comment or an unterminated string
    names = frozenset(t[1] for t in toks if t[0] == "name")
    prefix = ""
    body = toks
    if last[0] == "name" and last[2] + len(last[1]) == len(text):
        prefix, body = last[1], toks[:-1]
    prev = body[-1] if body else None
    if prev is None:
        return GenericPosition("free", prefix, stmt_names=names)
    if prev[0] == "name" and prev[1] == "return":
        return GenericPosition("scope_name", prefix, stmt_names=names)
    if prev[0] == "op" and prev[1] == "=":
        return GenericPosition("scope_name", prefix, followers=("=",), stmt_names=names)
    if prev[0] == "op" and prev[1] in _GENERIC_LOAD_OPS:
        return GenericPosition("scope_name", prefix, stmt_names=names)
    return GenericPosition("free", prefix, stmt_names=names)
