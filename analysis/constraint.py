"""The step constraint: which next tokens are valid, described on strings (no torch).

This is the contract between the monitors (`analysis.monitors`, `analysis.session`), which
say what identifiers may come next, and the masker (`completion.mask`), which turns that
into one boolean per vocabulary token.  `StepConstraint.allows` is the scalar reference
semantics; the vectorised masker must agree with it token for token (tests/test_mask.py).

Why the constraint has more than "prefix + candidates": BPE tokens do not stop at identifier
boundaries.  A token may *finish* an identifier and go on (``append(``), start with the dot
of a member access (``.append``), or start with whitespace before the next word (`` self``;
in SmolLM2's vocabulary two thirds of all tokens start with a space).  So the constraint
also says what may follow a finished identifier (``followers``), and carries the
constraints that apply after a leading ``.`` (``after_dot``) or after leading spaces/tabs
(``after_space``) inside the same token.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "Followers",
    "StepConstraint",
    "IDENT_ONLY",
    "NO_IDENTIFIER",
    "FOLLOWER_KINDS",
    "QUOTE_KINDS",
    "follower_kind",
    "is_ident_char",
    "is_ident_start",
    "split_lead",
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


#: right after `expr.`: any identifier, nothing else (the members are unknown).
IDENT_ONLY = StepConstraint(candidates=None, other=False)
#: where no identifier can follow (after a dot that follows no expression: `.5`, `...`).
NO_IDENTIFIER = StepConstraint(candidates=frozenset(), other=True)


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
