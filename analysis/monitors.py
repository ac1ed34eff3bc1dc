"""Monitors: at each decode step, which identifiers may come next (plain strings, no torch).

The decoder asks ``MonitorSet.at(text_before, text_after)`` once per generated token (or,
per request, ``MonitorSet.session(...)`` and then ``session.at(draft)`` per step: see
`session`), where ``text_before`` is the document before the cursor plus the draft so far.
The answer is a `constraint.StepConstraint` (or None: nothing known, mask nothing) that
``completion.mask`` turns into a vocabulary mask.

This module holds what is per document and per workspace: the monitors themselves (one per
kind of position, each answering from jedi or tree-sitter scopes), their switches
(`MonitorSettings`), the monitor set of one document (`MonitorSet`), and the jedi client
shared by the whole process (`shared_analyzer`: its cache outlives requests).  Each monitor
returns None whenever its source does not know ("unknown" never blocks anything).
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

from pygls.uris import to_fs_path

from .constraint import IDENT_ONLY, Followers, StepConstraint
from .jedi_client import PythonAnalyzer
from .lexing import HARD_KEYWORDS, STRING_PREFIXES, LexState, scan
from .session import MonitorSession, Query
from .syntax import DEFAULT_MAX_PARSE_BYTES, language_for

__all__ = [
    "MonitorSettings",
    "Monitor",
    "MonitorSet",
    "MembersMonitor",
    "NamesMonitor",
    "KwargsMonitor",
    "ModulesMonitor",
    "ScopesMonitor",
    "DEFAULT_MONITORS",
    "shared_analyzer",
]


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


class Monitor(Protocol):
    """One source of constraints.  ``handles`` says which position kinds it answers;
    ``constraint`` returns the constraint for the identifier at that position, or None."""

    name: str
    handles: frozenset[str]

    def constraint(self, q: Query) -> StepConstraint | None: ...


def _string_followers() -> Followers:
    return (('"', STRING_PREFIXES), ("'", STRING_PREFIXES))


class MembersMonitor:
    name = "members"
    handles = frozenset({"member"})

    def constraint(self, q: Query) -> StepConstraint | None:
        pos = q.position
        res = q.session.python_query("members", q.text, pos.anchor, wait=q.wait, start=q.start)
        if res is None:
            # members unknown (dynamic, over budget, not analysable): syntax still says that
            # right after `expr.` only an identifier can come (any identifier).
            return IDENT_ONLY if not pos.prefix else None
        return StepConstraint(prefix=pos.prefix, candidates=res.names,
                              followers=tuple((f, None) for f in pos.followers), other=False)


class NamesMonitor:
    name = "names"
    handles = frozenset({"name", "after_expr"})

    def constraint(self, q: Query) -> StepConstraint | None:
        pos = q.position
        if pos.kind == "after_expr":
            return StepConstraint(prefix=pos.prefix, candidates=HARD_KEYWORDS, followers=_string_followers())
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


_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+:")
_DRIVE = re.compile(r"^[A-Za-z]:[\\/]")  # C:\x is a Windows path, not a URI


def _fs_path(uri: str | None) -> str | None:
    """A filesystem path for a ``file://`` URI or a plain path; None for other schemes
    (``untitled:``): the monitors name documents as jedi and the open-document table do."""
    if not uri:
        return None
    if _SCHEME.match(uri) and not _DRIVE.match(uri):
        return to_fs_path(uri)  # None unless file:
    return uri


_shared: dict[str | None, PythonAnalyzer] = {}


def shared_analyzer(workspace_root: str | None = None) -> PythonAnalyzer:
    """One PythonAnalyzer per workspace root for the process (its cache outlives requests)."""
    an = _shared.get(workspace_root)
    if an is None:
        an = _shared[workspace_root] = PythonAnalyzer(workspace_root=workspace_root)
    return an


class MonitorSet:
    """The monitors of one document (language, path) with per-monitor switches.

    ``analyzer``: the shared jedi client (None: no jedi-based monitor answers);
    ``open_documents``: other open documents as ``{path: text}`` (or a callable returning it).
    """

    def __init__(self, language: str | None, *, path: str | None = None, settings: MonitorSettings | None = None,
                 analyzer: PythonAnalyzer | None | str = "auto",
                 open_documents: Mapping[str, str] | Callable[[], Mapping[str, str]] | None = None,
                 other_documents: Mapping[str, str] | Callable[[], Mapping[str, str]] | None = None,
                 workspace_root: str | None = None,
                 monitors: tuple[Monitor, ...] = DEFAULT_MONITORS) -> None:
        path = _fs_path(path)
        self.language = language_for(language, path) or language_for(None, path)
        self.path = path
        self.settings = settings or MonitorSettings()
        if analyzer == "auto":
            analyzer = shared_analyzer(workspace_root) if self.language == "python" else None
        self.analyzer = analyzer  # type: ignore[assignment]
        self._open_documents = open_documents if open_documents is not None else other_documents
        self.monitors = monitors
        self._sessions: OrderedDict[int, MonitorSession] = OrderedDict()
        self._lex_memo: tuple[str, LexState] | None = None

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
            fp = _fs_path(p)
            if fp is not None and fp != self.path:
                out[fp] = t
        return out

    def docs_key(self) -> object:
        docs = self.open_documents()
        if not docs:
            return None
        return tuple(sorted((p, hash(t), len(t)) for p, t in docs.items()))

    def lex(self, text: str) -> LexState:
        """Lexical state at the end of ``text``, continuing from the last text it extends."""
        memo = self._lex_memo
        if memo is not None and len(text) >= len(memo[0]) and text.startswith(memo[0]):
            state = scan(text, memo[1])
        else:
            state = scan(text)
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
