"""An answer whose drafts were all junk is decoded once more without the first word each of
them chose (completion.rescue): the user gets a line instead of nothing."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import engine_without_clock, stdlib_source


def engine(lm, **kw):
    return engine_without_clock(lm, **{"ahead": False, **kw})


def test_the_first_word_after_the_healed_text_is_what_gets_ruled_out(default_model_dir):
    from draftline.completion.drafts import Draft
    from draftline.completion.rescue import BanGuide, first_choices
    from draftline.completion.tokens import Tokenizer

    tok = Tokenizer.from_dir(Path(default_model_dir))
    heal = "\n"
    a = Draft(tokens=tok.encode("\n        with pytest.raises(None)"))
    b = Draft(tokens=tok.encode("\n        return (\n        ("))
    c = Draft(tokens=tok.encode("\n        #"))
    got = first_choices([a, b, c], tok, heal)
    # each draft's first token past the newline and indentation, keyed by the text before it
    assert sum(len(v) for v in got.values()) == 3
    for before, ids in got.items():
        assert before.strip() == "" and before.startswith(heal)
        for i in ids:
            assert tok.pieces[i].strip() in ("with", "return", "#")
    guide = BanGuide(got, len(tok.pieces))
    for before, ids in got.items():
        m = guide.allowed(before)
        assert not any(bool(m[i]) for i in ids) and int(m.sum()) == len(tok.pieces) - len(ids)
    assert guide.allowed(next(iter(got)) + "x") is None  # anywhere else: no constraint


@pytest.mark.real_model
def test_an_answer_whose_drafts_were_all_junk_is_decoded_again_without_their_first_word(default_model):
    """The real model at a stdlib place; the junk rule is the real trim plus one more: a draft
    starting with a word the model's drafts chose first there is junk (as `return (` followed
    by lines of `(` was on the replay).  The answer is then a line starting otherwise."""
    from draftline.completion.guides import make_trim

    src = stdlib_source("textwrap.py")
    text = src[: src.index("        chunks = self._split_chunks(text)")]
    trim = make_trim("python")
    first = engine(default_model).complete("file:///r0.py", text, len(text), trim=trim)
    assert first.drafts and not first.tokens["rescued"]
    words = {d.text.split()[0] for d in first.drafts}

    def banned(draft: str) -> bool:
        return bool(draft.split()) and draft.split()[0] in words

    def strict(prefix: str, draft: str, suffix: str):
        return None if banned(draft) else trim(prefix, draft, suffix)

    # (a first line stopped mid-way goes through the trim's unfinished-statement cut instead)
    strict.unfinished = lambda prefix, draft, suffix: None if banned(draft) else trim.unfinished(prefix, draft, suffix)

    again_engine = engine(default_model, ahead=True)
    again = again_engine.complete("file:///r1.py", text, len(text), trim=strict)
    assert again.tokens["rescued"] and again.drafts
    assert not again.tokens["reused"]
    # kept for typed-ahead keystrokes, but not re-verified: the check would ask for what
    # decoding without the ban writes
    heal = again_engine.prompt_for("file:///r1.py", text, len(text)).heal
    entry = again_engine.ahead.at_place("file:///r1.py", text, "", heal)
    assert entry is not None and not entry.checkable
    # without time left before the hard deadline there is no second try: nothing to show
    late = engine(default_model, first_line_ms=0, latency_budget_ms=1).complete(
        "file:///r2.py", text, len(text), trim=strict)
    assert not late.tokens["rescued"] and not late.drafts
