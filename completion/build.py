"""The engine assembles itself: model, config, guides, trim, n-gram, warm-up.

The LSP edge only wires (`lsp.server.build_server(settings, engine_factory)`); this is the
default factory.  `settings` is read by attribute name (the server's `Settings`, or
anything with the same fields): the model side never imports the protocol side.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

from .engine import Engine, EngineConfig

log = logging.getLogger(__name__)

Progress = Callable[[str, int], None]


def engine_config(s: Any) -> EngineConfig:
    return EngineConfig(k=s.drafts, max_tokens=s.max_tokens, context_tokens=s.context_tokens,
                        method=s.method, pie=s.pie, cache_budget_mb=s.cache_budget_mb, ngram_weight=s.ngram_weight,
                        stale_limit=s.stale_limit, monitors=s.monitors.enabled,
                        latency_budget_ms=s.latency_budget_ms, ahead=s.ahead, speculate=s.speculate, request_cap=max(64, s.request_cap),
                        far_tokens=s.far_tokens, project_context=s.project_context)


def build_engine(settings: Any, progress: Progress | None = None, workspace_roots: list[str] | tuple = ()) -> Engine:
    """Load the model and everything a request uses.  Runs on the worker thread."""
    from . import model as M
    from .guides import GuideFactory, make_trim, token_masker, warm_up

    lm = M.load(settings.model, progress=progress or M._noop, dtype=settings.dtype, quantize=settings.quantize)
    eng = Engine(lm, engine_config(settings))
    eng.trim_for = make_trim
    if settings.monitors.enabled:
        token_masker(eng)
        eng.guide_factory = GuideFactory(eng)
        try:
            warm_up()  # jedi and its stubs, in its own process
        except Exception:
            log.exception("monitor warm-up failed")
    if settings.project_context:  # context from the rest of the project (completion.context)
        from .context import Headers, ProjectIndex

        index = ProjectIndex()
        index.build(list(workspace_roots))
        eng.headers = Headers(index, eng.tok, eng.config.header_tokens)
    if settings.ngram_weight > 0:
        # the workspace scan tokenizes up to 4 MB on 2 cores: only when the scoring uses it
        try:
            from .ngram import NGram

            eng.ngram = NGram(eng.tok)
            eng.ngram.build(list(workspace_roots))
        except Exception:  # an aid only: decoding works without it
            log.exception("workspace n-gram model unavailable")
    if progress is not None:
        progress("warming up", 100)
    log.info("forward shapes warmed up in %.0f ms", eng.warm_up() * 1000)
    return eng
