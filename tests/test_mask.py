"""TokenMasker: vectorised masks that agree with StepConstraint.allows, fast on a 49k vocabulary."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from _analysis_fixtures import (  # noqa: F401  (fixtures)
    analysis_tokenizer, encode_ids, real_masker, stdlib_member_sites, vocab_strings)
from draftline.analysis.constraint import StepConstraint
from draftline.analysis.jedi_client import PythonAnalyzer
from draftline.analysis.lexing import STRING_PREFIXES
from draftline.analysis.monitors import MonitorSet
from draftline.completion.mask import MonitorGuide, TokenMasker

SMALL_VOCAB = [
    "self", ".", "count", " =", " ", "0", "\n", " x", ".append", "append", "(", ")", "jo", "in", "join", "join(",
    ".join", " self", "path", "pa", "th", "ep", "sep", "pathsep", "=", "==", " ==", "f", '"', 'f"', "rb'", "return",
    " return", "value", " value", "._", ".__", "\ufffd", "1", "12", " if", "if", "ret", "urn", "x", ".path", "ke",
    "y", "y=", "key", "key=", " key", "key =", ":=", " :=", ",", ":", "\t", "\tx", "  ", "...", "..", ".5", "",
    "<|endoftext|>", "é", "été", "x1", "_", "__init__", "def", " def", "\n    ", "a_b", " a_b(", "ab.c",
    ' "', " 'x", 'return "', "f '", "rb '", " \"\"", "x ,", " :",
]
NAMES = ["self", "count", "append", "join", "path", "pathsep", "sep", "value", "key", "x", "x1", "if", "return",
         "def", "a_b", "été", "_", "__init__", "in"]


def _sets():
    return st.one_of(st.none(), st.frozensets(st.sampled_from(NAMES), max_size=8))


def _leaf():
    return st.builds(
        StepConstraint,
        prefix=st.sampled_from(["", "", "jo", "se", "x", "pa", "ret", "ke", "é", "_"]),
        candidates=_sets(),
        followers=st.lists(st.tuples(st.sampled_from(["=", ":", ":=", ",", '"', "'"]), _sets()), max_size=3,
                           unique_by=lambda f: f[0]).map(tuple),
        other=st.booleans(),
        closed=st.booleans(),
    )


constraints = st.builds(
    lambda c, d, s: StepConstraint(c.prefix, c.candidates, c.followers, c.other, c.closed and bool(c.prefix), d, s),
    _leaf(),
    st.one_of(st.none(), _leaf().map(lambda x: StepConstraint("", x.candidates, x.followers, x.other))),
    st.one_of(st.none(), _leaf().map(lambda x: StepConstraint("", x.candidates, x.followers, x.other))),
)

_small = TokenMasker(SMALL_VOCAB)


@settings(max_examples=400, deadline=None)
@given(constraints)
def test_mask_matches_reference_semantics_on_small_vocab(c):
    mask = _small.mask(c)
    assert mask.dtype == torch.bool and mask.shape == (len(SMALL_VOCAB),)
    want = [c.allows(t) for t in SMALL_VOCAB]
    got = mask.tolist()
    assert got == want, [(t, g, w) for t, g, w in zip(SMALL_VOCAB, got, want) if g != w]


def test_hand_checked_member_mask():
    c = StepConstraint(prefix="", candidates=frozenset({"append", "join"}), other=False)
    allowed = {t for t, ok in zip(SMALL_VOCAB, _small.mask(c).tolist()) if ok}
    assert allowed == {"append", "jo", "join", "join("}
    c2 = StepConstraint(prefix="lst", candidates=frozenset({"lst"}),
                        after_dot=StepConstraint(candidates=frozenset({"append"}), other=False))
    allowed2 = {t for t, ok in zip(SMALL_VOCAB, _small.mask(c2).tolist()) if ok}
    assert {".", ".append", " =", "(", ")"} <= allowed2 and not {".join", ".path", "._", "count"} & allowed2


def test_none_means_no_mask_and_results_are_copies():
    assert _small.mask(None) is None
    c = StepConstraint(candidates=frozenset({"x"}))
    m1 = _small.mask(c)
    m1[:] = False
    assert _small.mask(c).any()


def test_byte_fallback_and_special_tokens_are_non_identifiers():
    c = StepConstraint(candidates=frozenset({"x"}), other=False)
    m = dict(zip(SMALL_VOCAB, _small.mask(c).tolist()))
    assert not m["\ufffd"] and not m["<|endoftext|>"] and not m[""] and m["x"]


# --------------------------------------------------------------------------------------------
# the real default vocabulary
# --------------------------------------------------------------------------------------------
def _realistic_constraints():
    import builtins
    import keyword
    names = frozenset(dir(builtins)) | frozenset(keyword.kwlist) | frozenset(
        f"local_{i}" for i in range(150)) | {"self", "items", "result", "total"}
    members = frozenset({"append", "extend", "insert", "pop", "remove", "index", "count", "sort", "reverse", "copy",
                         "clear", "__init__", "__len__", "__iter__"})
    strings = (('"', STRING_PREFIXES), ("'", STRING_PREFIXES))
    return [
        StepConstraint(candidates=names, followers=(("=", None), (",", None), (":", None)) + strings,
                       after_space=StepConstraint(candidates=names, followers=strings),
                       after_dot=StepConstraint(candidates=frozenset(), other=True)),
        StepConstraint(prefix="res", candidates=names, followers=strings,
                       after_space=StepConstraint(candidates=frozenset(keyword.kwlist)),
                       after_dot=StepConstraint(candidates=members, other=False)),
        StepConstraint(candidates=members, other=False),
        StepConstraint(prefix="app", candidates=members, other=False),
        StepConstraint(prefix="count", candidates=members, closed=True, followers=(("=", None),),
                       after_space=StepConstraint(candidates=frozenset(keyword.kwlist))),
        StepConstraint(candidates=None, followers=(("=", frozenset({"timeout", "check", "cwd", "env"})),)),
    ]


@pytest.mark.real_model
def test_real_vocab_masks_match_reference(real_masker, vocab_strings):
    rng = random.Random(0)
    sample = rng.sample(range(len(vocab_strings)), 8000)
    for c in _realistic_constraints():
        mask = real_masker.mask(c)
        assert mask.shape == (len(vocab_strings),)
        bad = [vocab_strings[i] for i in sample if mask[i].item() != c.allows(vocab_strings[i])]
        assert not bad, (c.prefix, bad[:10])
        assert mask.any()
        if c.candidates is not None:
            assert not mask.all()


def _count_core(monkeypatch, masker: TokenMasker) -> list[StepConstraint]:
    """Record every mask computation of ``masker`` (its ``_core``, recursive calls included)."""
    calls: list[StepConstraint] = []
    core = masker._core
    monkeypatch.setattr(masker, "_core", lambda c, v, top: calls.append(c) or core(c, v, top))
    return calls


@pytest.mark.real_model
def test_real_vocab_masks_are_cached_and_a_cold_computation_agrees(real_masker, monkeypatch):
    """The decoder asks for the same constraint again and again while one identifier is
    written: the mask is computed once and then served from the cache (the same array, no
    computation); computed cold (every cache emptied) it is the same mask."""
    cs = _realistic_constraints()
    computed = _count_core(monkeypatch, real_masker)
    warm = [real_masker.mask_array(c) for c in cs]
    computed.clear()
    for _ in range(20):
        for c, w in zip(cs, warm):
            assert real_masker.mask_array(c) is w
            m = real_masker.mask(c)
            assert np.array_equal(m.numpy(), w) and not np.shares_memory(m.numpy(), w)  # a copy
    assert computed == []
    for c, w in zip(cs, warm):
        for cache in (real_masker._cache, real_masker._sets, real_masker._subs, real_masker._rems):
            cache.clear()
        cold = real_masker.mask_array(c)
        assert computed and cold is not w and np.array_equal(cold, w), c.prefix
        computed.clear()


@pytest.mark.real_model
def test_real_vocab_tokens_of_the_true_member_are_allowed(real_masker, analysis_tokenizer):
    """Ground truth through the whole path: monitor -> mask -> the tokenizer's own first token."""
    an = PythonAnalyzer(budget_s=20)
    sites = stdlib_member_sites(50)[::3]
    checked = 0
    for path, src, dot, end, member in sites:
        ms = MonitorSet("python", path=path, analyzer=an)
        guide = MonitorGuide(ms, real_masker, src[: dot + 1], src[end:])
        mask = guide.allowed("")
        if mask is None:
            continue
        ids = encode_ids(analysis_tokenizer, member + src[end:end + 1])
        first = analysis_tokenizer.decode([ids[0]])
        assert mask[ids[0]], (member, first)
        # and after the first token, the next one
        if len(ids) > 1 and first and len(first) < len(member):
            mask2 = guide.allowed(first)
            assert mask2 is None or mask2[ids[1]], (member, first)
        checked += 1
    assert checked >= 0.7 * len(sites)


@pytest.mark.real_model
def test_monitor_guide_end_to_end(real_masker, analysis_tokenizer, vocab_strings, monkeypatch):
    an = PythonAnalyzer(budget_s=20)
    ms = MonitorSet("python", analyzer=an)
    guide = MonitorGuide(ms, real_masker, "import os\nresult = os.path.", "\n")
    mask = guide.allowed("")
    allowed = {vocab_strings[i] for i in mask.nonzero().flatten().tolist()}
    assert {"join", "dirname", "exists"} <= allowed
    assert "append" not in allowed and " join" not in allowed and "\n" not in allowed
    assert guide.allowed("jo")[vocab_strings.index("in")]
    # a repeated step: the session's constraint and the masker's mask, neither computed again
    first, step = guide.allowed(""), guide.last_constraint
    queries, computed = guide.session.queries, _count_core(monkeypatch, real_masker)
    for _ in range(50):
        assert torch.equal(guide.allowed(""), first) and guide.last_constraint is step
    assert computed == [] and guide.session.queries == queries
    # equivalent to masker.mask(monitor_set.at(...))
    assert torch.equal(guide.allowed(""), real_masker.mask(ms.at("import os\nresult = os.path.", "\n")))
    # name position: undefined names are masked, a space-led defined name is allowed
    g2 = MonitorGuide(ms, real_masker, "def f(items):\n    total = 0\n    return", "\n")
    m2 = g2.allowed("")
    assert m2[encode_ids(analysis_tokenizer, " total")[0]]
    bad = encode_ids(analysis_tokenizer, " undefined_xyz")[0]
    assert not m2[bad] or vocab_strings[bad].strip() in ("undefined", "und")


@pytest.mark.real_model
def test_healed_dot_admits_only_member_tokens(real_masker, vocab_strings):
    """The prompt heals the "." typed before the cursor, so the first token must start with it:
    on the real vocabulary, every allowed dot-led token continues a member of os.path."""
    an = PythonAnalyzer(budget_s=20)
    ms = MonitorSet("python", analyzer=an)
    guide = MonitorGuide(ms, real_masker, "import os\n\n\ndef base(p):\n    return os.path", "\n", heal=".")
    mask = guide.allowed("")
    members = ms.at("import os\n\n\ndef base(p):\n    return os.path.", "\n").candidates
    assert {"join", "dirname", "sep"} <= members
    dot_led = [vocab_strings[i] for i in mask.nonzero().flatten().tolist() if vocab_strings[i].startswith(".")]
    assert "." in dot_led
    for t in dot_led:
        lead = t[1:len(t) - len(t[1:].lstrip("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_"))]
        assert t == "." or (lead[:1].isidentifier() and any(m.startswith(lead) for m in members)), t
    blocked = [t for t in (".*", ".(", ". ", ".\n", "..", "...", ".__") if t in vocab_strings]
    for t in blocked:
        if t == ".__":
            assert mask[vocab_strings.index(t)] == any(m.startswith("__") for m in members)
        else:
            assert not mask[vocab_strings.index(t)], t
