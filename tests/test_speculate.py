"""Guessed tokens (completion/lookup.py): fewer forwards, the greedy draft unchanged."""

from __future__ import annotations

import random

import pytest
import torch

from conftest import stdlib_source
from draftline.completion.decode import decode
from draftline.completion.drafts import DecodeSpec, DecodeStats, prompt_logits
from draftline.completion.kvcache import DocCache
from draftline.completion.lookup import Guesser
from draftline.completion.prompt import build_prompt
from draftline.completion.superposed import superposed
from draftline.completion.tokens import TokenizedText


def test_guesses_come_from_the_kept_drafts_first_then_the_prompt():
    prompt = [5, 1, 2, 3, 9, 9, 1, 2, 7, 8, 4, 4, 1, 2]
    g = Guesser(prompt, hints=[[1, 2, 3, 4, 5]], width=3)
    assert g.guess([1]) == [2, 3, 4]  # the kept draft, where the draft so far agrees with it
    assert g.guess([1, 2, 3, 4]) == [5]
    assert g.guess([6]) == [] and g.guess([2]) == []  # `1 2 6`, `2 6`, `2 2`: nowhere in the prompt
    # no kept draft: what followed the most recent earlier `1 2` (the prompt's own last
    # tokens have nothing after them)
    assert Guesser(prompt, width=3).guess([]) == [7, 8, 4]
    # the longest match wins: after the draft `9 1 2`, the 3-gram's 7 8, not the most recent `1 2`'s 5 6
    assert Guesser([9, 1, 2, 7, 8, 4, 0, 3, 1, 2, 5, 6], width=2).guess([9, 1, 2]) == [7, 8]
    assert Guesser([0, 1, 2, 5, 6, 7], width=2).guess([3, 1, 2]) == [5, 6]  # the 2-gram then


def _ready(net, prompt):
    c = DocCache(net)
    c.sync(prompt[:-1])
    return c


def _superposed(net, tok, prompt, spec):
    c = _ready(net, prompt)
    n = len(prompt)
    c.reserve(n + spec.max_tokens * spec.k + spec.guess + 1)
    st = DecodeStats()
    with c.lock:
        drafts = superposed(c, n, prompt_logits(c, prompt), tok, spec, st, prompt=prompt)
    assert c.tokens == prompt[:-1]  # guesses live in scratch slots: the prompt's cache is untouched
    return drafts, st


def test_a_right_guess_saves_forwards_and_a_wrong_one_changes_nothing(tiny):
    net, tok = tiny.net, tiny.tokenizer
    prompt = tok.encode("def area(w, h):\n    return w * h\n\ndef volume(w, h, d):\n    return")
    base = DecodeSpec(k=3, max_tokens=16, method="superposed", verify=False)
    plain, st0 = _superposed(net, tok, prompt, base)
    anchor = plain[0].tokens
    assert len(anchor) >= 6 and st0.guessed == 0
    spec = DecodeSpec(k=3, max_tokens=16, method="superposed", verify=False, guess=6, hints=(tuple(anchor),))
    right, st1 = _superposed(net, tok, prompt, spec)
    assert right[0].tokens == anchor  # the greedy draft, whatever was guessed
    assert st1.guessed >= len(anchor) // 2 and st1.steps < st0.steps
    rng = random.Random(0)
    wrong = tuple(rng.randrange(100, tok.vocab_size - 1) for _ in anchor)
    spec_w = DecodeSpec(k=3, max_tokens=16, method="superposed", verify=False, guess=6, hints=(wrong,))
    w, st2 = _superposed(net, tok, prompt, spec_w)
    assert w[0].tokens == anchor and st2.guessed == 0
    assert [d.text for d in w] == [d.text for d in plain]  # the other drafts too


@pytest.mark.real_model
def test_prompt_lookup_saves_steps_on_real_code_with_the_same_first_draft(default_model):
    """On the default model and real code: the same greedy drafts with and without guessing
    (compared token by token, up to ties), in fewer forwards."""
    net, tok = default_model.net, default_model.tokenizer
    text = stdlib_source("textwrap.py")
    lines = text.split("\n")
    starts = [i for i, ln in enumerate(lines) if ln.startswith("        ") and ln.strip() and i > 120][::12][:8]
    steps = {0: 0, 6: 0}
    guessed = ties = 0
    for ln in starts:
        cursor = sum(len(x) + 1 for x in lines[:ln]) + 8  # after the indentation
        pr = build_prompt(TokenizedText.full(tok, text), cursor, tok, 1024, heal=False)
        out = {}
        for g in (0, 6):
            c = _ready(net, pr.tokens)
            drafts, st = decode(c, pr.tokens, tok, DecodeSpec(k=3, max_tokens=24, method="superposed", guess=g))
            out[g] = drafts[0].tokens
            steps[g] += st.steps
            guessed += st.guessed
        if out[6] != out[0]:
            # a forward of several rows rounds differently from one of one row (bf16
            # activations: the logits of 7 rows vs 7 one-row forwards differ by 0.04-0.05 on
            # average, up to 0.7; 2026-12-05): the choice may flip where two tokens nearly
            # tie (textwrap: logits 22.77 vs 22.73; 29.91 vs 29.71), nowhere else
            j = next(i for i, (a, b) in enumerate(zip(out[0], out[6])) if a != b)
            seq = pr.tokens + out[0][:j]
            k, v = net.new_cache(len(seq) + 1)
            z = net.forward(torch.tensor(seq), torch.arange(len(seq)), k, v, 0)[0]
            assert abs(float(z[out[0][j]] - z[out[6][j]])) < 0.3, (lines[ln], j)
            ties += 1
    assert ties <= 2 and guessed > 0 and steps[6] < steps[0], (steps, guessed, ties)
