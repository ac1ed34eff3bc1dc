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


def monitor_guides(engine, language: str, doc: str, prompt, others: dict[str, str], settings) -> list:
    """Guides for one request: empty when monitors are off or the language is unknown."""
    if not getattr(settings, "enabled", True):
        return []
    from draftline.analysis.monitors import MonitorSet, MonitorSettings

    from .mask import MonitorGuide

    masker = token_masker(engine)
    ms = MonitorSettings(**{k: getattr(settings, k) for k in ("members", "names", "kwargs", "modules", "scopes")})
    mon = MonitorSet(language=language, path=doc, settings=ms, other_documents=others)
    # the draft re-types the healed text first, so the monitor reads from the prompt's end
    before = prompt.prefix[: len(prompt.prefix) - len(prompt.heal)]
    # (making the guide starts the cursor's jedi query in the background)
    return [MonitorGuide(mon, masker, before, prompt.suffix, heal=prompt.heal)]
