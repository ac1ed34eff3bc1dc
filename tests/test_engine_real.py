"""Capabilities on the real default model (SmolLM2-135M)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from conftest import stdlib_dir, stdlib_source
from draftline.completion.engine import Engine, EngineConfig
from draftline.completion.kvcache import DocCache
from draftline.completion.prompt import build_prompt
from draftline.completion.tokens import TokenizedText

pytestmark = pytest.mark.real_model


def _indent_cursors(text: str, n: int) -> list[int]:
    lines = text.split("\n")
    out, off = [], 0
    for l in lines:
        s = l.lstrip()
        if l.startswith("        ") and s and not s.startswith(("#", '"', "'", ")", "]", "}")):
            out.append(off + len(l) - len(s))
        off += len(l) + 1
    step = max(1, len(out) // n)
    return out[step // 2 :: step][:n]


def test_token_healing_gives_drafts_after_indentation(default_model):
    """Without healing the model answers a cursor after indentation with empty drafts far
    more often (docs/cache.md, "Token healing"); with it, drafts continue the code."""
    text = stdlib_source("textwrap.py")
    cursors = _indent_cursors(text, 6)
    res = {}
    for heal in (True, False):
        eng = Engine(default_model, EngineConfig(k=1, max_tokens=10, token_healing=heal, context_tokens=512))
        res[heal] = [eng.complete("t", text, c).drafts for c in cursors]
    nonempty = {h: sum(bool(d) and bool(d[0].text.strip()) for d in r) for h, r in res.items()}
    assert nonempty[True] >= 5, nonempty
    assert nonempty[True] > nonempty[False], nonempty


def test_pie_close_to_full_reencode_far_closer_than_conflict_fast(default_model):
    net, tok = default_model.net, default_model.tokenizer
    kl = {"pie": [], "conflict-fast": []}
    for rel in ("json/decoder.py", "textwrap.py", "shlex.py"):
        text = stdlib_source(rel)[:5000]
        cut = text.rindex("\n", 0, 4800) + 1
        cursor = cut + len(text[cut:]) - len(text[cut:].lstrip(" "))
        ins_at = text.index("\n", 1500) + 1
        edited = text[:ins_at] + "    value = compute(value)  # inserted\n" + text[ins_at:]
        c_new = cursor + len(edited) - len(text)
        p_old = build_prompt(TokenizedText.full(tok, text), cursor, tok, 4096).tokens
        p_new = build_prompt(TokenizedText.full(tok, edited), c_new, tok, 4096).tokens
        full = DocCache(net)
        full.sync(p_new[:-1], mode="full")
        last = lambda c: torch.log_softmax(net.forward(torch.tensor([p_new[-1]]), torch.tensor([len(p_new) - 1]),  # noqa: E731
                                                        c.k, c.v, len(p_new) - 1)[0], -1)
        ref = last(full)
        for mode in kl:
            c = DocCache(net)
            c.sync(p_old[:-1], mode="full")
            st = c.sync(p_new[:-1], mode=mode)
            assert st.computed < 30
            lp = last(c)
            kl[mode].append(float((ref.exp() * (ref - lp)).sum()))
    pie, cf = sum(kl["pie"]) / 3, sum(kl["conflict-fast"]) / 3
    assert pie < 0.05 and pie * 10 < cf, kl


def test_complete_cli_json(default_model_dir):
    path = stdlib_dir() / "textwrap.py"
    lines = path.read_text().split("\n")
    ln = next(i for i, l in enumerate(lines) if l.startswith("        chunks = self._split_chunks(text)"))
    out = subprocess.run([sys.executable, "-m", "draftline.lsp.cli", "complete", f"{path}:{ln + 1}:9", "--json", "-k", "2"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    data = json.loads(out.stdout.strip().splitlines()[-1])
    assert data["drafts"] and data["drafts"][0]["text"].strip()
    assert {"sync", "decode", "total"} <= set(data["timings_ms"])


def test_model_info_cli(default_model_dir):
    out = subprocess.run([sys.executable, "-m", "draftline.lsp.cli", "model", "info", "--json"],
                         capture_output=True, text=True, timeout=300)
    info = json.loads(out.stdout.strip().splitlines()[-1])
    assert info["architecture"] == "llama" and info["layers"] == 30 and info["kv_heads"] == 3
    assert info["rope_type"] == "default" and info["rope_theta"] == 100000.0
    assert info["weight_bytes"] > 100e6 and info["load_ms"] < 5000
