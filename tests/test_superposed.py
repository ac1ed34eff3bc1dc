"""Superposed decoding (completion/superposed.py) and beam search (completion/beam.py)."""

from __future__ import annotations


import pytest
import torch

from conftest import ForwardCounter
from draftline.completion.decode import decode
from draftline.completion.drafts import DecodeSpec, DecodeStats, HealGuide, PieceIndex, prompt_logits
from draftline.completion.kvcache import Cancelled, DocCache
from draftline.completion.ngram import NGram
from draftline.completion.prompt import build_prompt
from draftline.completion.stops import StopRule
from draftline.completion.superposed import superposed
from draftline.completion.tokens import TokenizedText


def _ready(net, prompt):
    c = DocCache(net)
    c.sync(prompt[:-1])
    return c


def _run_superposed(net, tok, prompt, spec):
    """What decode() does around a method, calling superposed directly (decode() maps
    k=1 to greedy)."""
    c = _ready(net, prompt)
    n = len(prompt)
    c.reserve(n + spec.max_tokens * spec.k + 1)
    st = DecodeStats()
    with c.lock:
        logits = prompt_logits(c, prompt)
        drafts = superposed(c, n, logits, tok, spec, st, prompt=prompt)
    assert c.tokens == prompt[:-1]
    return drafts, st


def _exact_logprob(net, prompt, tokens):
    k, v = net.new_cache(len(prompt) + len(tokens) + 1)
    seq = prompt + tokens
    logits = net.forward(torch.tensor(seq), torch.arange(len(seq)), k, v, 0, logits_rows=slice(None))
    lp = torch.log_softmax(logits, -1)
    return sum(float(lp[len(prompt) - 1 + i, t]) for i, t in enumerate(tokens))


def _greedy_ref(net, ids, steps):
    out = list(ids)
    for _ in range(steps):
        k, v = net.new_cache(len(out) + 1)
        out.append(int(net.forward(torch.tensor(out), torch.arange(len(out)), k, v, 0)[0].argmax()))
    return out[len(ids):]


def test_superposed_k1_equals_greedy(tiny):
    net, tok = tiny.net, tiny.tokenizer
    prompt = tok.encode("def add(a, b):\n    return")
    sp, _ = _run_superposed(net, tok, prompt, DecodeSpec(k=1, max_tokens=10, method="superposed"))
    gr, _ = decode(_ready(net, prompt), prompt, tok, DecodeSpec(k=1, max_tokens=10, method="greedy"))
    assert len(sp) == 1 and sp[0].tokens == gr[0].tokens
    assert sp[0].logprob == pytest.approx(gr[0].logprob, abs=1e-4)


@pytest.mark.parametrize("with_ngram", [False, True])
def test_superposed_drafts_distinct_one_row_per_step(tiny, with_ngram):
    net, tok = tiny.net, tiny.tokenizer
    text = "class A:\n    def m(self):\n        return self.x + self.y\n    def n(self):\n        return"
    prompt = tok.encode(text)
    ng = None
    if with_ngram:
        ng = NGram(tok)
        ng.set_text("doc", text)
    with ForwardCounter(net) as fc:
        drafts, st = _run_superposed(net, tok, prompt, DecodeSpec(k=3, max_tokens=8, method="superposed", ngram=ng,
                                                                  verify=False))
    rows = fc.shapes
    texts = [d.text for d in drafts]
    assert len(drafts) == 3 and len(set(texts)) == 3
    steps = rows[2:]  # (rows 0, 1: the prompt's sync, its last token) one input row per step:
    # the anchor's token, or once the anchor is done the mix of the others' embeddings
    assert steps and all(r in ((1,), (1, net.cfg.dim)) for r in steps) and len(steps) == st.steps
    assert st.steps < 8  # all drafts ran in the same pass, the longest one bounds it


def test_anchor_is_the_greedy_draft_and_early_exit_bounds_the_pass(tiny):
    net, tok = tiny.net, tiny.tokenizer
    text = "def area(w, h):\n    return w * h\n\ndef volume(w, h, d):\n    return"
    prompt = tok.encode(text)
    ng = NGram(tok)
    ng.set_text("doc", text)
    spec = DecodeSpec(k=3, max_tokens=16, method="superposed", ngram=ng, verify=False)
    drafts, st = decode(_ready(net, prompt), prompt, tok, spec)
    greedy, gst = decode(_ready(net, prompt), prompt, tok, DecodeSpec(k=1, max_tokens=16, method="greedy"))
    assert drafts[0].tokens == greedy[0].tokens  # draft 1 is bitwise greedy (the anchor)
    assert [d.logprob for d in drafts] == sorted((d.logprob for d in drafts), reverse=True)
    L = len(greedy[0].tokens) - 1  # greedy's passes after the first distribution
    assert st.steps <= L + max(2, -(-L * 3 // 10)) + 1


def test_verification_gives_exact_logprobs_and_drops_improbable_alternatives(tiny, monkeypatch):
    import draftline.completion.superposed as SP

    net, tok = tiny.net, tiny.tokenizer
    text = "def area(w, h):\n    return w * h\n\ndef volume(w, h, d):\n    return"
    prompt = tok.encode(text)
    spec = DecodeSpec(k=3, max_tokens=10, method="superposed")
    monkeypatch.setattr(SP, "VERIFY_MIN_P", 0.0)  # keep every alternative: check the numbers
    with ForwardCounter(net) as fc:
        drafts, st = _run_superposed(net, tok, prompt, spec)
    rows = fc.shapes
    assert len(drafts) == 3
    ref = _greedy_ref(net, prompt, len(drafts[0].tokens))
    assert drafts[0].tokens == ref  # the anchor is untouched
    verify_rows = [r for r in rows[1:] if len(r) == 1 and r[0] > 1]  # the one token-tree forward (rows[0]: prompt)
    assert len(verify_rows) == 1 and verify_rows[0][0] <= 2 * SP.VERIFY_TOKENS
    means = []  # alternatives rank by the exact mean log-probability of their checked tokens
    for d in drafts[1:]:
        j = 0
        while j < min(len(d.tokens), len(drafts[0].tokens)) and d.tokens[j] == drafts[0].tokens[j]:
            j += 1
        m = min(len(d.tokens), j + SP.VERIFY_TOKENS + 1)
        means.append(_exact_logprob(net, prompt, d.tokens[:m]) / m)
    assert means == sorted(means, reverse=True)
    assert [d.logprob for d in drafts] == sorted((d.logprob for d in drafts), reverse=True)
    # an alternative with a checked token under the bound is dropped; the anchor stays
    monkeypatch.setattr(SP, "VERIFY_MIN_P", 1.0)
    drafts2, _ = _run_superposed(net, tok, prompt, spec)
    assert [d.tokens for d in drafts2] == [drafts[0].tokens] or all(
        len(d.tokens) <= 1 + next((j for j, (a, b) in enumerate(zip(d.tokens, drafts[0].tokens)) if a != b), 0)
        for d in drafts2[1:])


def test_superposed_respects_healing_and_stop(tiny):
    net, tok = tiny.net, tiny.tokenizer
    text = "def f(x):\n    y = x\n    return y\n"
    cursor = text.index("return")
    pr = build_prompt(TokenizedText.full(tok, text), cursor, tok, 2048)
    assert pr.heal.endswith("    ")
    spec = DecodeSpec(k=3, max_tokens=12, method="superposed", heal=HealGuide(PieceIndex(tok), pr.heal),
                      stop=StopRule(pr.heal, True, 0))
    drafts, _ = decode(_ready(tiny.net, pr.tokens), pr.tokens, tok, spec)
    assert drafts
    for d in drafts:
        full = d.final_text(tok)
        assert full.startswith(pr.heal)
        assert "\n" not in full[len(pr.heal):]  # cut at the end of the line


def test_superposed_cancel_within_one_step(tiny):
    net, tok = tiny.net, tiny.tokenizer
    prompt = tok.encode("x = [")
    c = _ready(net, prompt)
    with ForwardCounter(net, trigger=3) as fc:
        with pytest.raises(Cancelled):
            decode(c, prompt, tok, DecodeSpec(k=3, max_tokens=40, cancel=fc.cancel, method="superposed"))
    assert fc.n == 3


def test_growing_the_cache_keeps_the_last_prompt_token(tiny):
    """A method that needs more scratch slots than decode() reserved grows the cache
    (`DocCache.reserve`): slot n-1 (the last prompt token, not in `cache.tokens`) survives."""
    from draftline.completion.kvcache import CHUNK

    net, tok = tiny.net, tiny.tokenizer
    ids = tok.encode("values = [" + ", ".join(str(i) for i in range(400)))
    prompt = ids[: CHUNK - 10]
    c = _ready(net, prompt)
    n = len(prompt)
    c.k[:, :, n - 1] = 7.0
    c.reserve(4 * CHUNK)
    assert c.capacity >= 4 * CHUNK and bool((c.k[:, :, n - 1] == 7.0).all())


def test_beam_logprobs_exact_and_drafts_distinct(tiny):
    net, tok = tiny.net, tiny.tokenizer
    prompt = tok.encode("def main():\n    args =")
    drafts, st = decode(_ready(net, prompt), prompt, tok, DecodeSpec(k=3, max_tokens=6, method="beam"))
    assert len(drafts) == 3 and len({d.text for d in drafts}) == 3
    for d in drafts:  # the tree mask gives every beam its own exact context
        assert d.logprob == pytest.approx(_exact_logprob(net, prompt, d.tokens), abs=1e-3)
    greedy, _ = decode(_ready(net, prompt), prompt, tok, DecodeSpec(k=1, max_tokens=6, method="greedy"))
    assert drafts[0].logprob >= greedy[0].logprob - 1e-4


class _FakeTok:
    pieces = ["a", "b", "c", "d", "e", ""]
    stop_ids = frozenset({5})

    def decode(self, ids):
        return "".join(self.pieces[i] for i in ids)


class _FakeNet:
    """Next-token distribution given only the last token: greedy's first choice (a, p=.5)
    leads to a flat distribution, the runner-up (b, p=.4) to a sure c."""

    def __init__(self):
        P = torch.full((6, 6), 1e-6)
        P[4, 0], P[4, 1] = 0.5, 0.4  # after the prompt (e)
        P[0, 2] = P[0, 3] = P[0, 4] = 0.33  # after a
        P[1, 2] = 0.95  # after b
        P[2:4, 4] = 0.9
        self.table = torch.log(P / P.sum(-1, keepdim=True))

    def new_cache(self, capacity):
        return torch.zeros(1, 1, capacity, 1), torch.zeros(1, 1, capacity, 1)

    def forward(self, x, positions, k, v, start, mask=None, logits_rows=slice(-1, None)):
        if logits_rows is None:
            return None
        return self.table[x][logits_rows]


def test_beam_beats_greedy_on_a_constructed_case():
    net, tok = _FakeNet(), _FakeTok()
    c = DocCache(net)
    spec = DecodeSpec(k=2, max_tokens=2, method="beam")
    drafts, _ = decode(c, [4], tok, spec)
    greedy, _ = decode(DocCache(net), [4], tok, DecodeSpec(k=1, max_tokens=2, method="greedy"))
    assert greedy[0].tokens[0] == 0  # greedy takes a, then at most .33
    assert drafts[0].tokens == [1, 2]  # beam finds b c: .4 * .95 > .5 * .33
    assert drafts[0].logprob > greedy[0].logprob + 0.5


@pytest.mark.real_model
def test_superposed_real_model_with_workspace_ngram(default_model):
    """On real code: k distinct drafts that re-type the healed text and stop at the end of
    the line, for about the passes of one greedy draft."""
    from conftest import stdlib_source

    net, tok = default_model.net, default_model.tokenizer
    src = stdlib_source("json/decoder.py")
    at = src.index("        if nextchar == '}':")  # a line inside JSONObject
    cursor = at + 8
    doc = src[:cursor] + src[src.index("\n", cursor):]
    ng = NGram(tok)
    ng.set_text("json/decoder.py", doc)
    pr = build_prompt(TokenizedText.full(tok, doc), cursor, tok, 256)
    heal = HealGuide(PieceIndex(tok), pr.heal)
    stop = StopRule(pr.heal, True, 0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a shared 2-core machine: one thread is the faster one under load
    try:
        c = _ready(net, pr.tokens)
        sp, st = decode(c, pr.tokens, tok, DecodeSpec(k=3, max_tokens=16, method="superposed", ngram=ng,
                                                       heal=heal, stop=stop, verify=False))
        vsp, vst = decode(c, pr.tokens, tok, DecodeSpec(k=3, max_tokens=16, method="superposed", ngram=ng,
                                                         heal=heal, stop=stop))
        gr, gst = decode(c, pr.tokens, tok, DecodeSpec(k=1, max_tokens=16, method="greedy", heal=heal, stop=stop))
    finally:
        torch.set_num_threads(threads)
    lines = [d.final_text(tok) for d in sp]
    assert len(sp) == 3 and len(set(lines)) == 3
    assert all(x.startswith(pr.heal) and "\n" not in x[len(pr.heal):] for x in lines)
    assert lines[0] == gr[0].final_text(tok)  # the anchor
    assert st.steps <= gst.steps + max(2, -(-gst.steps * 3 // 10)) + 1  # about one greedy pass
    # verified (the default): the anchor stays, the alternatives kept are a subset, ranked by
    # their exact log-probability, and verification is one more forward
    assert vsp[0].final_text(tok) == lines[0]
    assert {d.final_text(tok) for d in vsp} <= set(lines)
    assert vst.steps <= st.steps + 1
