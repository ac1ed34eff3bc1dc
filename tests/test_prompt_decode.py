"""Prompt building (token healing, budget) and decoding (greedy, k drafts, cancel)."""

from __future__ import annotations


import pytest
import torch

from conftest import ForwardCounter
from draftline.completion.decode import decode
from draftline.completion.drafts import DecodeSpec, HealGuide, PieceIndex
from draftline.completion.kvcache import Cancelled, DocCache
from draftline.completion.prompt import build_prompt
from draftline.completion.stops import make_stop
from draftline.completion.tokens import TokenizedText


def test_healing_backs_off_indentation(default_tokenizer):
    tok = default_tokenizer
    text = "def f(x):\n    return x\n"
    cursor = text.index("return")  # after the indentation
    pr = build_prompt(TokenizedText.full(tok, text), cursor, tok, 2048)
    assert pr.heal.startswith("\n") and pr.heal.endswith("    ")
    assert tok.decode(pr.tokens) + pr.heal == text[:cursor]


def test_healing_mid_word(default_tokenizer):
    tok = default_tokenizer
    text = "import os\nos.pa"
    pr = build_prompt(TokenizedText.full(tok, text), len(text), tok, 2048)
    assert pr.heal.endswith("pa") and tok.decode(pr.tokens) + pr.heal == text


def test_budget_moves_window_in_steps(default_tokenizer):
    tok = default_tokenizer
    text = "x = 1\n" * 3000
    tt = TokenizedText.full(tok, text)
    pr = build_prompt(tt, len(text) - 6, tok, 512)
    assert len(pr.tokens) <= 512 and pr.window_start % 128 == 0 and pr.window_start > 0


def test_heal_guide_masks(default_tokenizer):
    idx = PieceIndex(default_tokenizer)
    g = HealGuide(idx, "\n    ")
    m = g.allowed("")
    pieces = default_tokenizer.pieces
    allowed = [pieces[i] for i in torch.nonzero(m).flatten().tolist()]
    assert allowed and all(p.startswith("\n    ") or "\n    ".startswith(p) for p in allowed)
    assert g.allowed("\n    ") is None


def _greedy_reference(net, ids, steps):
    out = list(ids)
    for _ in range(steps):
        k, v = net.new_cache(len(out) + 1)
        logits = net.forward(torch.tensor(out), torch.arange(len(out)), k, v, 0)[0]
        out.append(int(logits.argmax()))
    return out[len(ids):]


def test_greedy_equals_uncached_reference(tiny):
    net, tok = tiny.net, tiny.tokenizer
    prompt = tok.encode("def add(a, b):\n    return")
    c = DocCache(net)
    c.sync(prompt[:-1])
    drafts, st = decode(c, prompt, tok, DecodeSpec(k=1, max_tokens=8, method="greedy"))
    ref = _greedy_reference(net, prompt, 8)
    assert drafts[0].tokens == [t for t in ref[: len(drafts[0].tokens)]]
    assert c.tokens == prompt[:-1]  # draft tokens were scratch


def test_batched_drafts_each_equal_their_own_greedy(tiny):
    net, tok = tiny.net, tiny.tokenizer
    prompt = tok.encode("class A:\n    def m(self):")
    c = DocCache(net)
    c.sync(prompt[:-1])
    drafts, st = decode(c, prompt, tok, DecodeSpec(k=3, max_tokens=6, method="batched"))
    assert len(drafts) == 3 and len({d.tokens[0] for d in drafts}) == 3
    for d in drafts:  # every row decoded as if it were alone
        ref = _greedy_reference(net, prompt + d.tokens[:1], 5)
        assert d.tokens[1:] == ref[: len(d.tokens) - 1]


def test_cancel_stops_within_one_step(tiny):
    net, tok = tiny.net, tiny.tokenizer
    prompt = tok.encode("x = [")
    c = DocCache(net)
    c.sync(prompt[:-1])
    with ForwardCounter(net, trigger=3) as fc:
        with pytest.raises(Cancelled):
            decode(c, prompt, tok, DecodeSpec(k=2, max_tokens=40, cancel=fc.cancel))
    assert fc.n == 3  # no forward after the one during which cancel was set


def test_stop_rules():
    r = make_stop("x = foo(", ")\n", "")
    assert r("a, b)\nmore") == len("a, b)")
    blk = make_stop("def f():\n    ", "\n", "")
    assert blk("return 1\n\nx") == len("return 1")
    assert blk("if x:\n        y()\n    z()\n") == len("if x:\n        y()")
    opener = make_stop("    if x:", "\n", "")
    assert opener("\n        a()\n        b()\n    c()\n") == len("\n        a()\n        b()")


def test_fim_prompt_for_models_with_fim_tokens(default_model_dir):
    """A tokenizer with StarCoder-style FIM tokens gets prefix/suffix/middle prompts."""
    from tokenizers import AddedToken
    from tokenizers import Tokenizer as HF

    from draftline.completion.tokens import Tokenizer

    hf = HF.from_file(str(default_model_dir / "tokenizer.json"))
    hf.add_special_tokens([AddedToken(t, special=True) for t in ("<fim_prefix>", "<fim_suffix>", "<fim_middle>")])
    tok = Tokenizer(hf)
    assert tok.fim is not None
    text = "def f(x):\n    return x + 1\n\nprint(f(2))\n"
    cursor = text.index("x + 1")
    pr = build_prompt(TokenizedText.full(tok, text), cursor, tok, 512, suffix_budget=64)
    assert pr.fim and pr.tokens[0] == tok.fim.prefix and pr.tokens[-1] == tok.fim.middle
    i = pr.tokens.index(tok.fim.suffix)
    assert tok.decode(pr.tokens[1:i]) + pr.heal == text[:cursor]
    assert tok.decode(pr.tokens[i + 1:-1]) == text[cursor:]
    # a literal FIM marker in the file stays text
    assert tok.fim.prefix not in tok.encode("s = '<fim_prefix>'")


def test_finish_drops_drafts_that_add_parse_errors(tiny):
    from draftline.completion.drafts import Draft
    from draftline.completion.engine import Engine
    from draftline.completion.prompt import Prompt
    from draftline.completion.guides import make_trim

    eng = Engine(tiny)
    tok = tiny.tokenizer
    pr = Prompt([1], "", "def f(x):\n    return ", "\n", 0, False)
    drafts = [Draft(tokens=tok.encode(t), logprob=-i) for i, t in enumerate(["x + 1", "x +* )(", "x * 2"])]
    outs = eng._finish(pr, drafts, make_trim("python"))[0]
    assert [o.text for o in outs] == ["x + 1", "x * 2"]
    # even when every draft adds errors: a draft that breaks the code is junk
    assert eng._finish(pr, drafts[1:2], make_trim("python"))[0] == []
    # a block opened at the end is not an error yet (the budget answers its first line first)
    pr2 = Prompt([1], "", "def f(x):\n    ", "\n", 0, False)
    opener = [Draft(tokens=tok.encode("if x > 1:"), logprob=0.0)]
    assert [o.text for o in eng._finish(pr2, opener, make_trim("python"))[0]] == ["if x > 1:"]


def test_release_memory_drops_every_cache_and_they_rebuild(tiny):
    from draftline.completion.engine import Engine, EngineConfig

    eng = Engine(tiny, EngineConfig(k=1, max_tokens=4))
    for i in range(3):
        eng.prepare(f"doc{i}", f"def f{i}(x):\n    return x + {i}\n", 10)
    assert len(eng.caches.caches) == 3 and eng.caches.nbytes > 0
    before = eng.caches.nbytes
    assert eng.release_memory() == before
    assert eng.caches.nbytes == 0 and not eng.caches.caches
    r = eng.complete("doc1", "def f1(x):\n    return x + 1\n", 10)
    assert r.drafts is not None and eng.cache_of("doc1") is not None
