"""Server settings: one dataclass, read from initializationOptions and
workspace/didChangeConfiguration (jedi-language-server style).

Trust: `model` (what gets loaded) and how it is loaded count only from the command line and
initializationOptions, which the editor builds from user-level settings; a workspace's
didChangeConfiguration cannot switch the model (docs/reliability.md, threat model)."""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

# the team engine too: a workspace must not send its documents to another address
TRUSTED_ONLY = {"model", "dtype", "quantize", "engine", "engine_token", "engine_user"}


@dataclass
class MonitorSettings:
    enabled: bool = True
    members: bool = True
    names: bool = True
    kwargs: bool = True
    modules: bool = True
    scopes: bool = True


@dataclass
class Settings:
    model: str | None = None  # None = the default SmolLM2-135M; a HF dir or a .gguf path
    dtype: str | None = None  # auto: fp32 on CPU, bf16 on CUDA
    quantize: str = "auto"  # auto = weight-only int4 where exact, else int8, on CPU (bench/decode.py); "none" = fp32
    drafts: int = 3  # k drafts per request
    max_tokens: int = 48  # per draft
    context_tokens: int = 2048
    debounce_ms: int = 50  # idle time after an edit before the cache is synced
    idle_refresh_ms: int = 1500  # idle time before the stale cache is re-encoded exactly
    stale_limit: int = 512
    cache_budget_mb: int = 4096
    method: str = "superposed"  # bench/drafts.py: k=3 at ~1.15-1.2x greedy
    ngram_weight: float = 0.0  # superposed scoring: weight of the workspace n-gram (0 = model only)
    pie: bool = True
    # ms from a request's arrival to its answer: past it drafts end at their next line end
    # (the first line comes whole) and analyses stop waiting (0 = no budget)
    latency_budget_ms: int = 300
    # tokens a request may encode for a cold or far-moved cursor (the rest of the window
    # is encoded in idle time): the first answer after opening waits for them
    request_cap: int = 832  # (completion.engine.EngineConfig: why 832)
    # tokens of the file's own lines from above such a short window, most like the
    # cursor's, put before it until idle time has the whole window (completion.far; 0 = off)
    far_tokens: int = 256
    # the greedy draft's next tokens guessed per forward and checked by it (0 = off;
    # completion.lookup: bench/speculate.py)
    speculate: int = 6
    ahead: bool = True  # answer typed-ahead characters from the last drafts; continue them when idle
    project_context: bool = False  # a header of related code from the project before the file (completion.context)
    monitors: MonitorSettings = field(default_factory=MonitorSettings)
    log_level: str = "INFO"
    # a team engine (`draftline engine serve`, docs/team.md): its URL, e.g.
    # http://box:8000/draftline; None = the model runs in this process (the default)
    engine: str | None = None
    engine_token: str | None = None  # the engine's token (else DRAFTLINE_ENGINE_TOKEN)
    engine_user: str | None = None  # who the documents belong to on the engine (default user@host)

    def update(self, data: Any, trusted: bool) -> list[str]:
        """Apply a dict of settings (camelCase or snake_case); returns what was ignored."""
        ignored: list[str] = []
        if not isinstance(data, dict):
            return ignored
        if "draftline" in data and isinstance(data["draftline"], dict):
            data = data["draftline"]
        names = {f.name: f for f in dataclasses.fields(self)}
        for key, value in data.items():
            name = _snake(key)
            if name == "k":
                name = "drafts"
            if name not in names:
                ignored.append(key)
                continue
            if name in TRUSTED_ONLY and not trusted:
                log.warning("setting %r ignored: only user-level settings may choose the model", key)
                ignored.append(key)
                continue
            if name == "monitors":
                self._monitors(value)
                continue
            cur = getattr(self, name)
            try:
                if isinstance(cur, bool) or names[name].type == "bool":
                    value = bool(value)
                elif isinstance(cur, float):
                    value = float(value)
                    if not 0.0 <= value <= 1.0:
                        raise ValueError("expected 0..1")
                elif isinstance(cur, int):
                    value = int(value)
                    if value < 0:
                        raise ValueError("negative")
                elif value is not None and not isinstance(value, str):
                    raise ValueError("expected a string")
            except (TypeError, ValueError) as e:
                log.warning("setting %r=%r ignored: %s", key, value, e)
                ignored.append(key)
                continue
            setattr(self, name, value)
        self.drafts = max(1, min(self.drafts, 8))
        self.max_tokens = max(1, min(self.max_tokens, 512))
        self.speculate = min(self.speculate, 16)
        # a cap of 0 answered from an empty window; the bounds are the VS Code manifest's
        self.request_cap = max(64, min(self.request_cap, 4096))
        self.far_tokens = min(self.far_tokens, 1024)
        return ignored

    def _monitors(self, value: Any) -> None:
        if isinstance(value, bool):
            self.monitors.enabled = value
        elif isinstance(value, dict):
            for k, v in value.items():
                if hasattr(self.monitors, _snake(k)):
                    setattr(self.monitors, _snake(k), bool(v))


def _snake(key: str) -> str:
    out = []
    for ch in str(key):
        if ch.isupper():
            out.append("_" + ch.lower())
        else:
            out.append(ch)
    return "".join(out)
