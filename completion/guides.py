"""Monitors as decoding guides: the bridge from `draftline.analysis` (what identifiers are
valid here) to token masks over the model's vocabulary (`completion.mask`)."""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)


def warm_up(wait: float | None = None) -> None:
    """Load jedi and its stubs in the background (its first query takes ~1 s, longer than
    the per-query budget, so a cold first request would go unconstrained)."""
    from draftline.analysis.monitors import shared_analyzer

    fut = shared_analyzer(None).warm_up()
    if wait:
        try:
            fut.result(timeout=wait)
        except Exception:
            log.warning("jedi warm-up did not finish in %.0f s", wait)


def token_masker(engine):
    """The engine's vocabulary index for monitor masks (built once, ~0.1 s)."""
    from .mask import TokenMasker

    masker = getattr(engine, "_masker", None)
    if masker is None:
        masker = engine._masker = TokenMasker(engine.tok.pieces)
    return masker


def monitor_guides(engine, language: str, doc: str, prompt, others: dict[str, str], settings,
                   jedi: bool = True) -> list:
    """Guides for one request: empty when monitors are off or the language is unknown.
    `settings`: the monitor switches (None: all on); `jedi` False: tree-sitter scopes only."""
    if settings is not None and not getattr(settings, "enabled", True):
        return []
    from draftline.analysis.monitors import MonitorSet, MonitorSettings

    from .mask import MonitorGuide

    masker = token_masker(engine)
    ms = MonitorSettings(**{k: getattr(settings, k, True) for k in ("members", "names", "kwargs", "modules", "scopes")})
    kw = {} if jedi else {"analyzer": None}
    mon = MonitorSet(language=language, path=doc, settings=ms, other_documents=others, **kw)
    # the draft re-types the healed text first, so the monitor reads from the prompt's end
    before = prompt.prefix[: len(prompt.prefix) - len(prompt.heal)]
    # (making the guide starts the cursor's jedi query in the background)
    return [MonitorGuide(mon, masker, before, prompt.suffix, heal=prompt.heal)]


#: a document whose jedi waits in one request passed this many ms is analysed with
#: tree-sitter scopes only for SLOW_JEDI_S (its requests had waited 60-250 ms per query on
#: third-party code, issue 14); then jedi gets another chance
SLOW_JEDI_MS = 150
SLOW_JEDI_S = 60.0


class GuideFactory:
    """The engine's guides for a request, `(doc, prompt, DocContext) -> [Guide]`: monitors
    from the job's snapshot only (never the server's tables), jedi left out for documents
    too large for it or where it was slow lately."""

    def __init__(self, engine) -> None:
        self.engine = engine
        self.slow_until: dict[str, float] = {}

    def __call__(self, doc: str, prompt, ctx) -> list:
        import time

        jedi = getattr(ctx, "jedi", True) and self.slow_until.get(doc, 0.0) < time.monotonic()
        try:
            return monitor_guides(self.engine, ctx.language, doc, prompt, ctx.others, ctx.monitors, jedi=jedi)
        except Exception:  # analysis never blocks a completion: no monitor = no constraint
            log.exception("monitors unavailable for %s", doc)
            return []

    def note(self, doc: str, jedi_ms: float) -> None:
        """After a request: how long it waited for jedi."""
        import time

        if jedi_ms > SLOW_JEDI_MS:
            self.slow_until[doc] = time.monotonic() + SLOW_JEDI_S
            log.info("jedi waits of %.0f ms in %s: tree-sitter scopes only for %.0f s", jedi_ms, doc, SLOW_JEDI_S)


def make_trim(language_id: str):
    """Syntax-aware trimming of drafts (analysis.trim): `(prefix, draft, suffix) ->
    (text, replaced suffix chars, adds no parse errors)` or None for an empty draft."""
    try:
        from draftline.analysis.trim import adds_parse_errors, trim_draft, unfinished_cut
    except ImportError:
        return None

    def trim(prefix: str, draft: str, suffix: str):
        line_after = suffix.split("\n", 1)[0]
        r = trim_draft(language_id, prefix, draft, suffix, mid_line=bool(line_after.strip()))
        if r is None:
            return None
        ok = not adds_parse_errors(language_id, prefix, r.text, suffix[r.replace:])
        return r.text, r.replace, ok

    # a statement stopped mid-way by the hard deadline: its longest prefix that parses
    trim.unfinished = lambda prefix, draft, suffix: unfinished_cut(language_id, prefix, draft, suffix)
    return trim
