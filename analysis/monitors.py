"""Monitors: at each decode step, which identifiers may come next (plain strings, no torch).

The decoder asks ``MonitorSet.at(text_before, text_after)`` once per generated token, where
``text_before`` is the document before the cursor plus the draft so far.  The answer is a
:class:`StepConstraint` (or None: nothing known, mask nothing) that ``completion.mask``
turns into a vocabulary mask.

Why the constraint has more than "prefix + candidates": BPE tokens do not stop at identifier
boundaries.  A token may *finish* an identifier and go on (``append(``), start with the dot
of a member access (``.append``), or start with whitespace before the next word (`` self``;
in SmolLM2's vocabulary two thirds of all tokens start with a space).  So the constraint
also says what may follow a finished identifier (``followers``), and carries the
constraints that apply after a leading ``.`` (``after_dot``) or after leading spaces/tabs
(``after_space``) inside the same token.

Never block a correct continuation: every candidate set is a superset of what is valid
(names defined later in the file, attributes assigned in ``__init__``, keywords, builtins,
names the draft itself introduced), positions where a *new* name can be bound (assignment
targets, ``for`` targets, lambda parameters, comprehension variables inside brackets) are
either unconstrained or allow any name followed by ``=``, and "unknown" is always None.
"""

from __future__ import annotations

import logging
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Protocol

from . import python as py
from .scopes import builtin_names, open_document_names, visible_names, world_is_closed
from .syntax import DEFAULT_MAX_PARSE_BYTES, SyntaxDocument, language_for, new_parser

log = logging.getLogger(__name__)

__all__ = [
    "StepConstraint",
    "MonitorSettings",
    "Monitor",
    "Query",
    "MonitorSet",
    "MonitorSession",
    "MembersMonitor",
    "NamesMonitor",
    "KwargsMonitor",
    "ModulesMonitor",
    "ScopesMonitor",
]

Followers = tuple[tuple[str, frozenset[str] | None], ...]


@dataclass(frozen=True)
class StepConstraint:
    """Which next tokens are valid, described on strings.

    prefix: identifier characters already written at the end of the text ("" = the next
        token starts an identifier, if it starts with an identifier character at all).
    candidates: the valid full identifiers here; None = any identifier.
    followers: ``(text, names)`` pairs: an identifier *outside* ``candidates`` is still valid
        when what follows it (after spaces/tabs; for a quote: directly) starts with ``text`` and it is in ``names``
        (None = any name).  ``"="`` never matches ``"=="`` and ``":"`` never matches
        ``":="``.  Used for assignment targets (``self.count = 0`` creates ``count``), keyword
        arguments (``f(key=`` needs ``key`` among the parameters while ``f(key`` may be a
        positional expression) and string prefixes (``f"``).  When the follower matches, the
        identifier must be in ``names`` even if it is a candidate.
    other: with prefix "", whether a token that does not start an identifier (operator,
        quote, digit, newline) is allowed.  False right after ``expr.``.
    closed: the identifier ``prefix`` is finished (whitespace was written after it): the
        whole next token is "what follows it".
    after_dot: for a token starting with ``.`` written when the text ends exactly with a
        complete expression: the constraint for the rest of the token after that dot (the
        members of the expression).  None = unconstrained.  ``prefix`` must first be a
        valid complete identifier for a dot to follow it.
    after_space: for a token starting with spaces/tabs: the constraint for the rest of the
        token after them (e.g. names after ``return``, only keywords after ``x = foo``).
        None = unconstrained.  When ``closed`` it applies to the whole next token.
    """

    prefix: str = ""
    candidates: frozenset[str] | None = None
    followers: Followers = ()
    other: bool = True
    closed: bool = False
    after_dot: StepConstraint | None = None
    after_space: StepConstraint | None = None

    def allows(self, token: str) -> bool:
        """Reference (scalar) semantics of the mask for one decoded token string."""
        return _allows(self, token, top=True)


# ----------------------------------------------------------------------------------------
# Scalar reference semantics (the vectorised masker in completion/mask.py must agree).
# ----------------------------------------------------------------------------------------
def is_ident_start(ch: str) -> bool:
    return ch.isidentifier()


def is_ident_char(ch: str) -> bool:
    return ("a" + ch).isidentifier()


def split_lead(s: str) -> tuple[str, str]:
    """(leading identifier characters, rest)."""
    i = 0
    while i < len(s) and is_ident_char(s[i]):
        i += 1
    return s[:i], s[i:]


def follower_kind(r2: str) -> str | None:
    """Which follower text ``r2`` (already stripped of leading spaces/tabs) begins with."""
    if r2.startswith(":="):
        return ":="
    if r2.startswith("=="):
        return None
    for f in ("=", ":", ",", '"', "'"):
        if r2.startswith(f):
            return f
    return None


FOLLOWER_KINDS = ("=", ":", ":=", ",", '"', "'")
#: followers that apply only right after the identifier (string prefixes), never after a space
QUOTE_KINDS = ('"', "'")


def _in(names: frozenset[str] | None, word: str) -> bool:
    return names is None or word in names


def _could_continue(c: StepConstraint, word: str) -> bool:
    if c.candidates is None or any(x.startswith(word) for x in c.candidates):
        return True
    return any(n is None or any(x.startswith(word) for x in n) for _, n in c.followers)


def _could_end(c: StepConstraint, word: str, quotes: bool = True) -> bool:
    return _in(c.candidates, word) or any(_in(n, word) for f, n in c.followers if quotes or f not in QUOTE_KINDS)


def _ends_ok(c: StepConstraint, word: str, rest: str, closed: bool = False) -> bool:
    """Whether ``word`` is acceptable as finished with ``rest`` after it.  A quote makes it a
    string prefix only when it follows the word directly (``f"``, not ``return "``)."""
    r2 = rest.lstrip(" \t")
    spaced = closed or len(r2) != len(rest)
    if r2 == "":
        return _could_end(c, word, quotes=not spaced)
    kind = follower_kind(r2)
    if spaced and kind in QUOTE_KINDS:
        kind = None
    for f, names in c.followers:
        if f == kind:
            return _in(names, word)
    return _in(c.candidates, word)


def _allows(c: StepConstraint, t: str, top: bool) -> bool:
    p = c.prefix
    if p and c.closed:
        if not _ends_ok(c, p, t, closed=True):
            return False
        if c.after_space is not None and top:
            rest = t.lstrip(" \t")
            return rest == "" or _allows(c.after_space, rest, top=False)
        return True
    lead, rest = split_lead(t)
    if p:
        if lead:
            full = p + lead
            return _could_continue(c, full) if rest == "" else _ends_ok(c, full, rest)
        if not _ends_ok(c, p, t):
            return False
    elif lead and is_ident_start(lead[0]):
        return _could_continue(c, lead) if rest == "" else _ends_ok(c, lead, rest)
    elif t == "":
        return c.other
    # t does not start an identifier (or p is complete and t goes on after it)
    if top and t.startswith(".") and c.after_dot is not None:
        return _allows(c.after_dot, t[1:], top=False) if t[1:] else True
    if top and t[:1] in (" ", "\t") and c.after_space is not None:
        rest = t.lstrip(" \t")
        return rest == "" or _allows(c.after_space, rest, top=False)
    return True if p else c.other


# ----------------------------------------------------------------------------------------
# Settings, protocol
# ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MonitorSettings:
    """Per-monitor switches (from user/workspace configuration).

    members: Python members after ``expr.`` (jedi).  names: Python names at load positions
    (tree-sitter scopes + builtins; jedi for star imports) and "only a keyword can follow an
    expression".  kwargs: keyword-argument names in calls (jedi signatures).  modules: import
    paths and ``from m import`` names (jedi).  scopes: names in other languages from
    tree-sitter scopes, only in files whose name world is closed (see
    ``scopes.world_is_closed``).
    dot_lookahead: how ``after_dot`` is computed when the text ends with an expression:
    "wait" (query jedi within the budget), "prefetch" (use it if known, else start the query
    and allow any identifier after the dot this step), "cached" (use it if known, never start
    a query for it), "off" (any identifier after the dot).  "auto" = "wait", or "cached" when
    the masker says the vocabulary has almost no ``.identifier`` tokens (SmolLM2: the dot is
    its own token, so the member list is asked for one step later anyway; a speculative
    query would only compete with the decoder for the CPU and the GIL).
    Whatever the setting, syntax alone says a dot after an expression is followed by an
    identifier, so ``.*`` or ``.(`` is blocked even when the members are unknown.
    start_budget_s: how long the steps that re-type the healed text (the request start: the
    cursor's own query, already started when the session was made) wait for jedi at least;
    later steps wait the analyzer's per-query budget (``PythonAnalyzer.budget_s``) at most.
    max_statement_chars: a statement longer than this (a giant literal) is not classified.
    """

    members: bool = True
    names: bool = True
    kwargs: bool = True
    modules: bool = True
    scopes: bool = True
    dot_lookahead: str = "auto"
    start_budget_s: float = 2.0
    max_statement_chars: int = 20_000
    max_parse_bytes: int = DEFAULT_MAX_PARSE_BYTES


@dataclass
class Query:
    """What a monitor gets: the session (document facts) and the classified position."""

    session: MonitorSession
    text: str
    position: object  # python.PyPosition or _GenericPosition
    wait: bool = True
    start: bool = True  # False: use a cached answer only, start no query


class Monitor(Protocol):
    """One source of constraints.  ``handles`` says which position kinds it answers;
    ``constraint`` returns the constraint for the identifier at that position, or None."""

    name: str
    handles: frozenset[str]

    def constraint(self, q: Query) -> StepConstraint | None: ...


def _string_followers() -> Followers:
    return (('"', py.STRING_PREFIXES), ("'", py.STRING_PREFIXES))


class MembersMonitor:
    name = "members"
    handles = frozenset({"member"})

    def constraint(self, q: Query) -> StepConstraint | None:
        pos = q.position
        res = q.session.python_query("members", q.text, pos.anchor, wait=q.wait, start=q.start)
        if res is None:
            # members unknown (dynamic, over budget, not analysable): syntax still says that
            # right after `expr.` only an identifier can come (any identifier).
            return _IDENT_ONLY if not pos.prefix else None
        return StepConstraint(prefix=pos.prefix, candidates=res.names,
                              followers=tuple((f, None) for f in pos.followers), other=False)


class NamesMonitor:
    name = "names"
    handles = frozenset({"name", "after_expr"})

    def constraint(self, q: Query) -> StepConstraint | None:
        pos = q.position
        if pos.kind == "after_expr":
            return StepConstraint(prefix=pos.prefix, candidates=py.HARD_KEYWORDS, followers=_string_followers())
        names = q.session.python_names()
        if names is None:
            return None
        cands = names | pos.stmt_names | q.session.draft_identifiers(q.text)
        followers = tuple((f, None) for f in pos.followers) + _string_followers()
        return StepConstraint(prefix=pos.prefix, candidates=frozenset(cands), followers=followers)


class KwargsMonitor:
    name = "kwargs"
    handles = frozenset({"kwarg"})

    def constraint(self, q: Query) -> StepConstraint | None:
        pos = q.position
        res = q.session.python_query("kwargs", q.text, pos.anchor, wait=q.wait)
        if res is None:
            return None
        return StepConstraint(prefix=pos.prefix, candidates=None, followers=(("=", res.names),))


class ModulesMonitor:
    name = "modules"
    handles = frozenset({"module", "import_name"})

    def constraint(self, q: Query) -> StepConstraint | None:
        pos = q.position
        res = q.session.python_query("complete", q.text, pos.anchor, wait=q.wait)
        if res is None:
            return None
        cands = set(res.names)
        if pos.kind == "module" and pos.from_import:
            cands.add("import")
        # `from . import x`, `from m import (`, `from m import *`: dots, brackets, star are fine.
        other = pos.kind == "import_name" or pos.from_import
        return StepConstraint(prefix=pos.prefix, candidates=frozenset(cands), other=other)


class ScopesMonitor:
    name = "scopes"
    handles = frozenset({"scope_name"})

    def constraint(self, q: Query) -> StepConstraint | None:
        pos = q.position
        names = q.session.scope_names()
        if names is None:
            return None
        cands = names | q.session.draft_identifiers(q.text) | pos.stmt_names
        return StepConstraint(prefix=pos.prefix, candidates=frozenset(cands),
                              followers=tuple((f, None) for f in pos.followers))


DEFAULT_MONITORS: tuple[Monitor, ...] = (MembersMonitor(), NamesMonitor(), KwargsMonitor(), ModulesMonitor(),
                                         ScopesMonitor())


# ----------------------------------------------------------------------------------------
# Generic (non-Python) lexical position, used only by the scopes monitor
# ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _GenericPosition:
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


def _generic_classify(text: str, window: int = 4000) -> _GenericPosition | None:
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
        return _GenericPosition("free", prefix, stmt_names=names)
    if prev[0] == "name" and prev[1] == "return":
        return _GenericPosition("scope_name", prefix, stmt_names=names)
    if prev[0] == "op" and prev[1] == "=":
        return _GenericPosition("scope_name", prefix, followers=("=",), stmt_names=names)
    if prev[0] == "op" and prev[1] in _GENERIC_LOAD_OPS:
        return _GenericPosition("scope_name", prefix, stmt_names=names)
    return _GenericPosition("free", prefix, stmt_names=names)


# ----------------------------------------------------------------------------------------
# Sessions: one per (text before the cursor, text after it); the decoder's steps extend it.
# ----------------------------------------------------------------------------------------
_UNSET = object()
_NO_IDENTIFIER = StepConstraint(candidates=frozenset(), other=True)
#: right after `expr.`: any identifier, nothing else (members unknown).
_IDENT_ONLY = StepConstraint(candidates=None, other=False)


class PythonKey:
    """Cache keys for jedi queries: hashes and lengths, never the (large) texts themselves."""

    @staticmethod
    def of(before: str, after: str, path: str | None, docs_key: object) -> tuple:
        return py.PythonAnalyzer.text_key(before, after, path, docs_key)


class MonitorSession:
    """Facts about one document + cursor, reused by every decode step of one request.

    The lexical state at the cursor, the names in scope there, and cache keys are computed
    once; each step only lexes and classifies the draft.

    ``heal``: text the draft re-types first (token healing backed it off the prompt; the
    decoder's heal guide forces it).  ``before`` then ends where the prompt ends, and the
    steps whose draft is a prefix of ``heal`` are the request start: their queries concern
    the user's own code at the cursor, so they wait up to ``start_budget_s`` (or the
    analyzer's per-query budget if longer; the later, speculative steps never wait longer
    than that per-query budget).  Where the
    rest of the heal starts with ".", the next token must start with that dot, so only the
    members after it matter and they are asked for even when a plain step would not look
    ahead.  :meth:`prefetch` starts the cursor's query early (e.g. while the prompt is being
    encoded).
    """

    def __init__(self, mset: MonitorSet, before: str, after: str, dot_lookahead: str | None = None, *,
                 heal: str = "", start_budget_s: float | None = None) -> None:
        self.mset = mset
        self.base = before
        self.after = after
        self.language = mset.language
        self.dot_lookahead = dot_lookahead or mset.settings.dot_lookahead
        if self.dot_lookahead == "auto":
            self.dot_lookahead = "wait"
        self.heal = heal
        self.start_budget_s = mset.settings.start_budget_s if start_budget_s is None else start_budget_s
        self._start = False  # the step being computed re-types the heal
        self._no_wait = False  # set while prefetch() runs a step's analysis
        self._cap: float | None = None  # the wait budget of the step being computed (at(budget_s=))
        self._missed = False  # that step gave up on a query still running
        self._heal_rest = ""  # what of the heal that step still has to type
        #: seconds spent inside jedi queries (waiting included) by this session
        self.query_s = 0.0
        self.queries = 0
        self._docs_key = mset.docs_key()
        self._keys: dict[object, tuple] = {}
        self._base_state = mset.lex(before) if self.language == "python" else None
        self._names: object = _UNSET
        self._scope_names: object = _UNSET
        self._steps: OrderedDict[str, StepConstraint | None] = OrderedDict()
        self._draft_ids: dict[str, frozenset[str]] = {}

    # --- cached facts -----------------------------------------------------------------------
    def _analysis_text(self) -> tuple[str, int]:
        """The document for parsing: cursor line closed with the brackets open at the cursor,
        so an unfinished call does not swallow the rest of the file into an ERROR node."""
        close = py.closers(self._base_state) if self._base_state is not None else ""
        if not close:
            return self.base + self.after, len(self.base)
        nl = self.after.find("\n")
        rest = self.after[nl:] if nl >= 0 else ""
        return self.base + close + rest, len(self.base)

    def python_names(self) -> frozenset[str] | None:
        """Names visible at the cursor (file scopes + builtins + star imports), or None."""
        if self._names is _UNSET:
            self._names = self._compute_python_names()
        return self._names  # type: ignore[return-value]

    def _compute_python_names(self) -> frozenset[str] | None:
        full = self.base + self.after
        if "globals()" in full:  # names injected at run time: the visible set is open
            return None
        text, cursor = self._analysis_text()
        source = text.encode("utf-8", "surrogatepass")
        if len(source) > self.mset.settings.max_parse_bytes:
            return None
        syntax = self.mset.syntax
        if syntax is not None and syntax.tree is not None and syntax.text == text:
            tree = syntax.tree
        else:
            parser = new_parser("python")
            if parser is None:
                return None
            tree = parser.parse(source)
        byte = len(text[:cursor].encode("utf-8", "surrogatepass"))
        names = set(visible_names(tree, source, byte, "python")) | builtin_names("python")
        if re.search(r"^[ \t]*from[ \t]+\S+[ \t]+import[ \t]*\*", full, re.M):
            # star imports: ask jedi what it can see here (it resolves them); unknown -> None
            res = self.python_query("complete", self.base, len(self.base), wait=True)
            if res is None:
                return None
            names |= res.names
        return frozenset(names)

    def scope_names(self) -> frozenset[str] | None:
        if self._scope_names is _UNSET:
            self._scope_names = self._compute_scope_names()
        return self._scope_names  # type: ignore[return-value]

    def _compute_scope_names(self) -> frozenset[str] | None:
        lang = self.language
        full = self.base + self.after
        if lang is None or not world_is_closed(full, lang):
            return None
        if len(full) > self.mset.settings.max_parse_bytes:
            return None
        parser = new_parser(lang)
        if parser is None:
            return None
        source = full.encode("utf-8", "surrogatepass")
        tree = parser.parse(source)
        byte = len(self.base.encode("utf-8", "surrogatepass"))
        names = set(visible_names(tree, source, byte, lang)) | builtin_names(lang)
        docs = self.mset.open_documents()
        if docs:
            names |= open_document_names((t, language_for(None, p)) for p, t in docs.items())
        return frozenset(names)

    def draft_identifiers(self, text: str) -> frozenset[str]:
        draft = text[len(self.base):] if text.startswith(self.base) else text[-2000:]
        got = self._draft_ids.get(draft)
        if got is None:
            got = py.identifiers_in(draft)
            if len(self._draft_ids) > 64:
                self._draft_ids.clear()
            self._draft_ids[draft] = got
        return got

    def python_query(self, kind: str, text: str, anchor: int, *, wait: bool = True, urgent: bool = False,
                     start: bool = True):
        """jedi query about ``text[:anchor]`` + the text after the cursor (cached by key)."""
        analyzer = self.mset.analyzer
        if analyzer is None:
            return None
        # Keys hash the text up to the anchor (so a new request for the same code hits the
        # cache); the hash is memoised per anchor within the session (each decode step asks again).
        rel = text[len(self.base):anchor] if anchor >= len(self.base) else anchor - len(self.base)
        key = self._keys.get(rel)
        before = text[:anchor]
        if key is None:
            key = PythonKey.of(before, self.after, self.mset.path, self._docs_key)
            if len(self._keys) > 256:
                self._keys.clear()
            self._keys[rel] = key
        if self._no_wait:  # a prefetch: start what the step will wait for
            wait, urgent = False, True
        budget = max(self.start_budget_s, analyzer.budget_s) if self._start else self._cap
        if self._cap is not None and budget is not None:  # the request's deadline bounds every wait
            budget = min(budget, self._cap)
        t = time.perf_counter()
        try:
            got = analyzer.query(kind, before, self.after, path=self.mset.path,
                                 open_documents=self.mset.open_documents(), key=key,
                                 wait=wait, budget=budget, urgent=urgent, start=start)
            if got is None and self._cap is not None and analyzer.pending(kind, key):
                self._missed = True
            return got
        finally:
            self.query_s += time.perf_counter() - t
            self.queries += 1

    def prefetch(self, draft: str | None = None) -> None:
        """Start the jedi queries the position after ``before + draft`` will need, without
        waiting (default: the cursor, ``before + heal``).  The decoder calls it for each
        draft before the forward whose output that position's mask will filter, so jedi
        (in its own process) answers while the model runs.  For a draft it runs the step's
        own analysis with every wait turned into a start (so exactly the queries the step
        will wait for are started, no speculative extra) and keeps no result."""
        if self.language != "python" or self.mset.analyzer is None:
            return
        try:
            if draft is None:
                text = self.base + self.heal
                pos, _ = self._classify(text)
                if pos is None:
                    return
                kind = {"member": ("members", "members"), "kwarg": ("kwargs", "kwargs"),
                        "module": ("complete", "modules"), "import_name": ("complete", "modules")}.get(pos.kind)
                if kind is not None and self.mset.enabled(kind[1]):
                    self.python_query(kind[0], text, pos.anchor, wait=False, urgent=True)
                return
            if draft not in self._steps:
                self._step(draft, no_wait=True)
        except Exception:  # analysis must never break decoding
            log.exception("monitor prefetch failed")

    # --- the per-step query ---------------------------------------------------------------------
    def at(self, draft: str, budget_s: float | None = None) -> StepConstraint | None:
        """Constraint for the token after ``base + draft``.  ``budget_s``: wait at most this
        long (counted from each query's start) for jedi, instead of the analyzer's per-query
        budget; an answer still missing then leaves the step unconstrained on that point,
        and such a partial result is not kept (a later call may know more)."""
        if self.language is None:
            return None
        hit = self._steps.get(draft, _UNSET)
        if hit is not _UNSET:
            return hit  # type: ignore[return-value]
        self._missed = False
        try:
            result = self._step(draft, cap=budget_s)
        except Exception:  # analysis must never break decoding
            log.exception("monitor failed; not constraining")
            result = None
        if self._missed:
            return result
        self._steps[draft] = result
        if len(self._steps) > 256:
            self._steps.popitem(last=False)
        return result

    def _step(self, draft: str, *, cap: float | None = None, no_wait: bool = False) -> StepConstraint | None:
        """The analysis of the position after ``base + draft``, with the per-step state
        (request start, heal still to type, wait cap, prefetch mode) set for its queries."""
        self._start = self.heal.startswith(draft)
        self._heal_rest = self.heal[len(draft):] if self._start else ""
        self._cap = None if self._start else cap
        self._no_wait = no_wait
        try:
            return self._compute(self.base + draft)
        finally:
            self._start, self._heal_rest, self._cap, self._no_wait = False, "", None, False

    def _classify(self, text: str, *, ident_is_prev: bool = False):
        if self.language == "python":
            state = py.scan(text, self._base_state) if text.startswith(self.base) else self.mset.lex(text)
            if len(text) - state.stmt_start > self.mset.settings.max_statement_chars:
                return None, state
            return py.classify(text, state, ident_is_prev=ident_is_prev), state
        if not self.mset.settings.scopes:
            return None, None
        # (a trailing identifier is the prefix only when nothing follows it, so the text with a
        # space appended already classifies the position after it)
        return _generic_classify(text), None

    def _constraint_for(self, text: str, pos, *, wait: bool = True) -> StepConstraint | None:
        if pos is None:
            return None
        for mon in self.mset.monitors:
            if pos.kind in mon.handles and self.mset.enabled(mon.name):
                return mon.constraint(Query(self, text, pos, wait=wait))
        return None

    def _compute(self, text: str) -> StepConstraint | None:
        pos, state = self._classify(text)
        if pos is None:
            return None
        if self._heal_rest.startswith(".") and pos.expr_end:
            # the heal guide admits only tokens starting with that dot: only what follows the
            # dot matters (the identifier before it is the user's own, already written)
            dot = self._after_dot(text, pos)
            return StepConstraint(prefix=pos.prefix, after_dot=dot) if dot is not None else None
        stripped = text.rstrip(" \t")
        closed = stripped != text and bool(stripped) and is_ident_char(stripped[-1]) and not pos.prefix
        if closed:
            # `word ` + next token: check `word` as finished, and the next word at its own position
            ipos, _ = self._classify(stripped)
            main = self._constraint_for(stripped, ipos) if ipos is not None and ipos.prefix else None
            npos, _ = self._classify(text, ident_is_prev=True)
            nxt = self._constraint_for(text, npos)
            if main is None:
                if nxt is None:
                    return None
                return replace(nxt, after_dot=None, after_space=None)
            return replace(main, closed=True, after_dot=None,
                           after_space=replace(nxt, after_dot=None, after_space=None) if nxt else None)
        main = self._constraint_for(text, pos)
        dot = self._after_dot(text, pos)
        if pos.prefix:
            npos, _ = self._classify(text + " ", ident_is_prev=True)
            space = self._constraint_for(text + " ", npos)
        elif pos.kind == "member":
            space = None  # `x. y` is legal but never meant: whitespace tokens stay blocked (other=False)
        else:
            space = main
        if space is not None:
            space = replace(space, after_dot=None, after_space=None, closed=False)
        if main is None and dot is None and space is None:
            return None
        if main is None:
            main = StepConstraint(prefix=pos.prefix)
        return replace(main, after_dot=dot, after_space=space)

    def _after_dot(self, text: str, pos) -> StepConstraint | None:
        if self.language != "python":
            return None
        if not pos.expr_end:
            # No expression to take a member of: after a dot only a number (`.5`) or more dots
            # (`...`) can follow, never an identifier (imports excepted: `from .mod`).
            if pos.kind in ("module", "import_name", "member") or not self.mset.enabled("names"):
                return None
            return _NO_IDENTIFIER
        if not self.mset.enabled("members"):
            return None
        # `expr.` is followed by an identifier: that much holds without knowing the members.
        got = self._dot_members(text, pos)
        return got if got is not None else _IDENT_ONLY

    def _dot_members(self, text: str, pos) -> StepConstraint | None:
        """The members of the expression ending ``text`` (for tokens starting with "."), or None."""
        known_dot = self._heal_rest.startswith(".")  # the user typed that dot
        lookahead = "wait" if known_dot else self.dot_lookahead
        if lookahead == "off":
            return None
        # Only query when the expression can plausibly have known members: a call/subscript/
        # literal result, a known name, or a known non-callable member.
        if pos.expr_tail == "name" and not known_dot:
            if pos.kind in ("name", "free", "kwarg"):
                names = self.python_names()
                if names is None or pos.prefix not in names or pos.prefix in py.HARD_KEYWORDS - {"True", "False", "None"}:
                    return None
            elif pos.kind == "member":
                res = self.python_query("members", text, pos.anchor, wait=False, start=lookahead != "cached")
                if res is None or pos.prefix not in res.names or pos.prefix in res.callables:
                    return None
            else:
                return None
        dtext = text + "."
        wait = lookahead == "wait"
        dpos, _ = self._classify(dtext)
        if dpos is None or dpos.kind != "member":
            return None
        c = self.mset.monitor("members")
        if c is None:
            return None
        got = c.constraint(Query(self, dtext, dpos, wait=wait, start=lookahead != "cached"))
        return replace(got, after_dot=None, after_space=None) if got is not None else None


def uri_to_path(uri: str | None) -> str | None:
    """A filesystem path for a ``file://`` URI or a plain path; None for other schemes (untitled:)."""
    if not uri:
        return None
    if uri.startswith("file:"):
        from urllib.parse import unquote, urlparse

        parsed = urlparse(uri)
        path = unquote(parsed.path)
        if re.match(r"^/[A-Za-z]:", path):  # file:///C:/x on Windows
            path = path[1:]
        return path
    if re.match(r"^[A-Za-z][A-Za-z0-9+.-]+:", uri) and not re.match(r"^[A-Za-z]:[\\/]", uri):
        return None
    return uri


_shared: dict[str | None, py.PythonAnalyzer] = {}


def shared_analyzer(workspace_root: str | None = None) -> py.PythonAnalyzer:
    """One PythonAnalyzer per workspace root for the process (its cache outlives requests)."""
    an = _shared.get(workspace_root)
    if an is None:
        an = _shared[workspace_root] = py.PythonAnalyzer(workspace_root=workspace_root)
    return an


class MonitorSet:
    """The monitors of one document (language, path) with per-monitor switches.

    ``analyzer``: the shared jedi front end (None: no jedi-based monitor answers);
    ``open_documents``: other open documents as ``{path: text}`` (or a callable returning it);
    ``syntax``: the document's SyntaxDocument, reused when its text matches.
    """

    def __init__(self, language: str | None, *, path: str | None = None, settings: MonitorSettings | None = None,
                 analyzer: py.PythonAnalyzer | None | str = "auto",
                 open_documents: Mapping[str, str] | Callable[[], Mapping[str, str]] | None = None,
                 other_documents: Mapping[str, str] | Callable[[], Mapping[str, str]] | None = None,
                 syntax: SyntaxDocument | None = None, workspace_root: str | None = None,
                 monitors: tuple[Monitor, ...] = DEFAULT_MONITORS) -> None:
        path = uri_to_path(path)
        self.language = language_for(language, path) or language_for(None, path)
        self.path = path
        self.settings = settings or MonitorSettings()
        if analyzer == "auto":
            analyzer = shared_analyzer(workspace_root) if self.language == "python" else None
        self.analyzer = analyzer  # type: ignore[assignment]
        self._open_documents = open_documents if open_documents is not None else other_documents
        self.syntax = syntax
        self.monitors = monitors
        self._sessions: OrderedDict[int, MonitorSession] = OrderedDict()
        self._lex_memo: tuple[str, py.LexState] | None = None
        self._docs_key_memo: tuple[int, object] | None = None

    def enabled(self, name: str) -> bool:
        return bool(getattr(self.settings, name, True))

    def monitor(self, name: str) -> Monitor | None:
        for m in self.monitors:
            if m.name == name:
                return m
        return None

    def open_documents(self) -> Mapping[str, str]:
        """Other open documents as {filesystem path: text} (URIs converted, non-files dropped)."""
        docs = self._open_documents
        if callable(docs):
            docs = docs()
        if not docs:
            return {}
        out = {}
        for p, t in docs.items():
            fp = uri_to_path(p)
            if fp is not None and fp != self.path:
                out[fp] = t
        return out

    def docs_key(self) -> object:
        docs = self.open_documents()
        if not docs:
            return None
        return tuple(sorted((p, hash(t), len(t)) for p, t in docs.items()))

    def lex(self, text: str) -> py.LexState:
        """Lexical state at the end of ``text``, continuing from the last text it extends."""
        memo = self._lex_memo
        if memo is not None and len(text) >= len(memo[0]) and text.startswith(memo[0]):
            state = py.scan(text, memo[1])
        else:
            state = py.scan(text)
        self._lex_memo = (text, state)
        return state

    def session(self, text_before: str, text_after: str, *, dot_lookahead: str | None = None,
                heal: str = "") -> MonitorSession:
        """A session for one request: the decoder then calls ``session.at(draft)`` per step
        (``heal``: text the draft re-types first, see MonitorSession)."""
        return MonitorSession(self, text_before, text_after, dot_lookahead, heal=heal)

    def at(self, text_before: str, text_after: str) -> StepConstraint | None:
        """Constraint for the next token after ``text_before`` (document before the cursor + draft)."""
        if self.language is None:
            return None
        for sid, s in reversed(self._sessions.items()):
            if (s.after is text_after or s.after == text_after) and text_before.startswith(s.base):
                self._sessions.move_to_end(sid)
                return s.at(text_before[len(s.base):])
        s = self.session(text_before, text_after)
        self._sessions[id(s)] = s
        while len(self._sessions) > 4:
            self._sessions.popitem(last=False)
        return s.at("")
