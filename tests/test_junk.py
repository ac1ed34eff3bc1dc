"""No junk reaches the client: loops cut or dropped, duplicates merged, empty drafts dropped
(completion.junk), on strings and on the real model's own outputs."""

from __future__ import annotations

import pytest

from draftline.completion.junk import clean_drafts, cut_loop, junk_reason, text_loop, token_loop


def test_text_loops_seen_on_third_party_code_are_caught():
    # both reached the client before (issue 14's replay)
    assert cut_loop("type_completions_completion_completion_completion") is None  # first line: dropped
    assert cut_loop("return [\n(\n(\n(\n(\n(\n(") == "return [\n("
    assert cut_loop("    self.a()\n    self.b()\n    self.a()\n    self.b()") == "    self.a()\n    self.b()"
    assert junk_reason("x = 1\nx = 1", []) == "loop"


def test_code_that_repeats_a_little_is_not_a_loop():
    for ok in ("x = [0, 0, 0, 0]", "print('-' * 40 + '--------------------------------')", "a = b\nb = a",
               "foo(None, None, None)", "    )\n)", "x[:, :, :]", "if a:\n    pass\nelse:\n    pass"):
        assert text_loop(ok) is None, ok
        assert cut_loop(ok) == ok


def test_token_loops_stop_where_they_start():
    one = lambda t: 4  # noqa: E731 - four characters a token
    assert token_loop([1, 2, 3, 4, 5], one) is None
    assert token_loop([9, 1, 2, 1, 2, 1, 2], one) == 1  # 24 characters repeated: a loop
    assert token_loop([9, 1, 2, 1, 2, 1, 2], lambda t: 1) is None  # `a,a,a,` is code
    assert token_loop([9] + [7] * 6, lambda t: 1) == 1  # six in a row: a loop at any length


def test_duplicates_and_empties_are_dropped_in_rank_order():
    texts = ["a = 1", "a = 1   ", "", "   ", "b = 2\n", "b = 2", "c"]
    assert clean_drafts(texts) == [0, 4, 6]
    assert junk_reason("a = 1  ", ["a = 1"]) == "duplicate"
    assert junk_reason(" \n ", []) == "empty"


@pytest.mark.real_model
def test_real_model_drafts_on_repetitive_code_pass_the_junk_rules(default_model):
    """SmolLM2 continues a run of identical lines with more of them (its raw draft loops);
    what reaches the client is the line once, never the run."""
    from draftline.completion.engine import Engine, EngineConfig
    from draftline.completion.guides import make_trim

    eng = Engine(default_model, EngineConfig(k=3, max_tokens=48, monitors=False, latency_budget_ms=0, ahead=False))
    raw_loops = 0
    cases = [
        "def setup(app):\n" + "    app.register(handler)\n" * 6 + "    app.register(",
        "values = [\n" + "    (\n" * 5,
        "def f():\n    return [\n" + "        (1, 2),\n" * 8,
    ]
    for i, text in enumerate(cases):
        orig = eng._finish

        def spy(pr, drafts, trim):
            nonlocal raw_loops
            raw_loops += sum(d.looped for d in drafts)
            return orig(pr, drafts, trim)

        eng._finish = spy
        try:
            res = eng.complete(f"file:///junk{i}.py", text, len(text), trim=make_trim("python"))
        finally:
            eng._finish = orig
        shown = [d.text for d in res.drafts]
        for j, t in enumerate(shown):
            assert junk_reason(t, shown[:j]) is None, (text[-40:], shown)
    assert raw_loops >= 1  # the model did loop: the rules had something to do
