"""Monitors as decoding guides: the bridge from `draftline.analysis` (what identifiers are
valid here) to token masks over the model's vocabulary (`completion.mask`)."""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)


def monitor_guides(engine, language: str, doc: str, prompt, others: dict[str, str], settings) -> list:
    """Guides for one request: empty when monitors are off or the language is unknown."""
    if not getattr(settings, "enabled", True):
        return []
    from draftline.analysis.monitors import MonitorSet, MonitorSettings

    from .mask import MonitorGuide, TokenMasker

    masker = getattr(engine, "_masker", None)
    if masker is None:
        masker = engine._masker = TokenMasker(engine.tok.pieces)
    ms = MonitorSettings(**{k: getattr(settings, k) for k in ("members", "names", "kwargs", "modules", "scopes")})
    mon = MonitorSet(language=language, path=doc, settings=ms, other_documents=others)
    return [MonitorGuide(mon, masker, prompt.prefix, prompt.suffix)]
