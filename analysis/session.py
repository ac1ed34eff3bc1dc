"""A monitor session: the facts of one request (document + cursor) that every decode step
of it reuses, and the per-step analysis (`MonitorSession.at`).

Why a session: the decoder asks for a constraint once per generated token, and most of
what the answer depends on does not change within a request: the lexical state at the
cursor, the names in scope there, the jedi cache keys.  The session computes those once;
each step only lexes and classifies the draft (`lexing`, `classify`), asks the monitor that
handles the position (`monitors`), and adds what a token may carry past the identifier
(``after_dot``, ``after_space``; see `constraint`).  It also decides how long a step may wait
for jedi: the request start (re-typing the healed text) waits longest, capped steps never
past the request's deadline, prefetches never (`python_query`).

Never block a correct continuation: every candidate set is a superset of what is valid
(names defined later in the file, attributes assigned in ``__init__``, keywords, builtins,
names the draft itself introduced), positions where a *new* name can be bound (assignment
targets, ``for`` targets, lambda parameters, comprehension variables inside brackets) are
either unconstrained or allow any name followed by ``=``, and "unknown" is always None.
A document over the parse budget (``MonitorSettings.max_parse_bytes``) is not parsed: its
names are unknown (docs/reliability.md, P5).
"""

from __future__ import annotations

import logging
import re
import time
from collections import OrderedDict
from dataclasses import dataclass, replace

from .classify import classify, classify_generic
from .constraint import IDENT_ONLY, NO_IDENTIFIER, StepConstraint, is_ident_char
from .lexing import HARD_KEYWORDS, closers, identifiers_in, scan
from .positions import byte_offset
from .scopes import builtin_names, open_document_names, visible_names, world_is_closed
from .syntax import language_for, new_parser

log = logging.getLogger(__name__)

__all__ = ["Query", "MonitorSession"]


@dataclass
class Query:
    """What a monitor gets: the session (document facts) and the classified position."""

    session: MonitorSession
    text: str
    position: object  # classify.PyPosition or classify.GenericPosition
    wait: bool = True
    start: bool = True  # False: use a cached answer only, start no query


_UNSET = object()


class MonitorSession:
    """Facts about one document + cursor, reused by every decode step of one request.

    ``mset``: the document's `monitors.MonitorSet` (its language, path, settings, analyzer,
    open documents and monitors; left unannotated so that this module never imports
    `monitors`, which imports it).  The lexical state at the cursor, the names in scope
    there, and cache keys are computed once; each step only lexes and classifies the draft.

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

    def __init__(self, mset, before: str, after: str, dot_lookahead: str | None = None, *,
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
        close = closers(self._base_state) if self._base_state is not None else ""
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
        parser = new_parser("python")
        if parser is None:
            return None
        tree = parser.parse(source)
        byte = byte_offset(text, cursor)
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
        byte = byte_offset(full, len(self.base))
        names = set(visible_names(tree, source, byte, lang)) | builtin_names(lang)
        docs = self.mset.open_documents()
        if docs:
            names |= open_document_names((t, language_for(None, p)) for p, t in docs.items())
        return frozenset(names)

    def draft_identifiers(self, text: str) -> frozenset[str]:
        draft = text[len(self.base):] if text.startswith(self.base) else text[-2000:]
        got = self._draft_ids.get(draft)
        if got is None:
            got = identifiers_in(draft)
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
            key = analyzer.text_key(before, self.after, self.mset.path, self._docs_key)
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
            state = scan(text, self._base_state) if text.startswith(self.base) else self.mset.lex(text)
            if len(text) - state.stmt_start > self.mset.settings.max_statement_chars:
                return None, state
            return classify(text, state, ident_is_prev=ident_is_prev), state
        if not self.mset.settings.scopes:
            return None, None
        # (a trailing identifier is the prefix only when nothing follows it, so the text with a
        # space appended already classifies the position after it)
        return classify_generic(text), None

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
            return NO_IDENTIFIER
        if not self.mset.enabled("members"):
            return None
        # `expr.` is followed by an identifier: that much holds without knowing the members.
        got = self._dot_members(text, pos)
        return got if got is not None else IDENT_ONLY

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
                if names is None or pos.prefix not in names or pos.prefix in HARD_KEYWORDS - {"True", "False", "None"}:
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
