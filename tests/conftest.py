"""Shared fixtures: tiny random-weight models (fast) and the real default model (once)."""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def stdlib_dir() -> Path:
    import json as _json

    return Path(_json.__file__).resolve().parents[1]


def stdlib_source(rel: str) -> str:
    return (stdlib_dir() / rel).read_text(encoding="utf-8")


def engine_without_clock(lm, **kw):
    """An Engine without monitors whose first line is never cut by the wall clock (what it
    decodes does not depend on this machine's speed); `kw` overrides EngineConfig fields."""
    from draftline.completion.engine import Engine, EngineConfig

    cfg = {"k": 3, "max_tokens": 48, "monitors": False, "first_line_ms": 600_000, **kw}
    return Engine(lm, EngineConfig(**cfg))


@pytest.fixture(scope="session")
def default_model_dir() -> Path:
    """The real SmolLM2-135M, converted into the user cache (fetched on first use)."""
    from draftline.completion import model as M

    return M.resolve(None)


@pytest.fixture(scope="session")
def default_tokenizer(default_model_dir):
    from draftline.completion.tokens import Tokenizer
    from draftline.completion.transformer import ModelConfig

    cfg = ModelConfig.from_hf(json.loads((default_model_dir / "config.json").read_text()))
    return Tokenizer.from_dir(default_model_dir, cfg)


@pytest.fixture(scope="session")
def default_model(default_model_dir):
    from draftline.completion import model as M

    return M.load(str(default_model_dir))


def make_tiny_dir(out: Path, tokenizer_dir: Path, arch: str = "llama", rope: dict | None = None,
                  seed: int = 0, **overrides) -> Path:
    """A random-weight HF checkpoint (safetensors) with the real tokenizer, for fast tests."""
    from transformers import AutoConfig, AutoModelForCausalLM

    tok = json.loads((tokenizer_dir / "config.json").read_text())
    cfg = dict(
        vocab_size=tok["vocab_size"], hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=8192,
        rms_norm_eps=1e-5, tie_word_embeddings=True, bos_token_id=1, eos_token_id=2,
    )
    if rope:
        cfg["rope_parameters"] = rope
    cfg.update(overrides)
    conf = AutoConfig.for_model(arch, **cfg)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(conf).float().eval()
    with torch.no_grad():  # larger weights than the init: attention patterns that matter
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.2)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out), safe_serialization=True)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        if (tokenizer_dir / f).exists():
            shutil.copy(tokenizer_dir / f, out / f)
    return out


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory, default_model_dir) -> Path:
    return make_tiny_dir(tmp_path_factory.mktemp("tiny") / "llama", default_model_dir)


@pytest.fixture(scope="session")
def tiny(tiny_dir):
    from draftline.completion import model as M

    return M.load(str(tiny_dir), quantize="none")  # fp32: the exactness tests need it


class ForwardCounter:
    """Counts forward passes and records each one's input shape (`shapes`); with `trigger`,
    sets the cancel flag while forward number `trigger` runs (as another thread would,
    mid-step) and records how many had started by then."""

    def __init__(self, net, trigger: int | None = None):
        self.net, self.trigger = net, trigger
        self.n = 0
        self.shapes: list[tuple[int, ...]] = []
        self.at_set: int | None = None
        self.cancel = threading.Event()
        self.orig = net.forward
        self.had_attr = "forward" in vars(net)

    def __enter__(self):
        def fwd(x, *a, **k):
            self.n += 1
            self.shapes.append(tuple(x.shape))
            if self.n == self.trigger:
                self.at_set = self.n
                self.cancel.set()
            return self.orig(x, *a, **k)

        self.net.forward = fwd
        return self

    def __exit__(self, *exc):
        if self.had_attr:
            self.net.forward = self.orig
        else:
            del self.net.forward

    @property
    def started_after_cancel(self) -> int:
        return self.n - self.at_set
