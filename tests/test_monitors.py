"""MonitorSet.at: which identifiers may come next, and never blocking what is valid."""

from __future__ import annotations

import os
import threading
from dataclasses import replace

import pytest

from _analysis_fixtures import stdlib_member_sites
from draftline.analysis import jedi_client
from draftline.analysis.constraint import StepConstraint
from draftline.analysis.jedi_client import PythonAnalyzer
from draftline.analysis.lexing import STRING_PREFIXES
from draftline.analysis.monitors import MonitorSet, MonitorSettings
from draftline.analysis.scopes import world_is_closed
from draftline.analysis.syntax import DEFAULT_MAX_PARSE_BYTES


@pytest.fixture(scope="module")
def analyzer():
    an = PythonAnalyzer(budget_s=20)
    an.warm_up().result(timeout=60)
    return an


@pytest.fixture
def mset(analyzer):
    return MonitorSet("python", analyzer=analyzer)


def allows_text(c: StepConstraint, text: str) -> bool:
    """Whether ``text`` is acceptable as the next token (the mask's scalar semantics)."""
    return c.allows(text)


# --------------------------------------------------------------------------------------------
# StepConstraint semantics (the masker must agree with these; see test_mask.py)
# --------------------------------------------------------------------------------------------
def test_constraint_semantics_member_position():
    c = StepConstraint(prefix="", candidates=frozenset({"append", "extend"}), other=False)
    assert c.allows("app") and c.allows("append") and c.allows("append(") and c.allows("extend)")
    assert not c.allows("push") and not c.allows("appendx") and not c.allows("(") and not c.allows(" append")
    mid = StepConstraint(prefix="app", candidates=frozenset({"append"}), other=False)
    assert mid.allows("end") and mid.allows("end(") and not mid.allows("(") and not mid.allows("ly")


def test_constraint_semantics_followers_and_string_prefixes():
    target = StepConstraint(prefix="", candidates=frozenset({"x"}), followers=(("=", None),))
    assert target.allows("new_name") and target.allows("new_name =") and target.allows("new =")
    assert not target.allows("new_name(") and not target.allows("new ==") and target.allows("x(")
    kw = StepConstraint(prefix="", candidates=None, followers=(("=", frozenset({"key"})),))
    assert kw.allows("key=") and not kw.allows("kee=") and kw.allows("kee)") and kw.allows("kee ==")
    s = StepConstraint(prefix="", candidates=frozenset({"x"}), followers=(('"', STRING_PREFIXES),))
    assert s.allows('f"') and s.allows('rb"') and not s.allows('q"') and not s.allows('x"')
    # a quote after a space is a new string, not a prefix: `return "..."`
    assert s.allows('x "') and not s.allows('f "') and not s.allows('q "')
    ret = StepConstraint(prefix="return", candidates=frozenset({"return"}), followers=s.followers)
    assert ret.allows(' "') and ret.allows(" ''.") and replace(ret, closed=True).allows('"abc"')
    assert not replace(ret, prefix="retur").allows(' "')


def test_constraint_semantics_dot_and_space_tokens():
    dot = StepConstraint(prefix="lst", candidates=frozenset({"lst"}),
                         after_dot=StepConstraint(candidates=frozenset({"append"}), other=False))
    assert dot.allows(".append") and dot.allows(".") and dot.allows(".app") and not dot.allows(".push")
    assert not StepConstraint(prefix="lsx", candidates=frozenset({"lst"}), after_dot=dot.after_dot).allows(".append")
    sp = StepConstraint(prefix="return", candidates=frozenset({"return"}),
                        after_space=StepConstraint(candidates=frozenset({"value"})))
    assert sp.allows(" value") and sp.allows(" val") and not sp.allows(" valve") and sp.allows(" ")
    closed = StepConstraint(prefix="count", candidates=frozenset({"size"}), closed=True, followers=(("=", None),),
                            after_space=StepConstraint(candidates=frozenset({"if"})))
    assert closed.allows("=") and closed.allows("= 0") and not closed.allows("(") and not closed.allows("if")


# --------------------------------------------------------------------------------------------
# positions
# --------------------------------------------------------------------------------------------
def test_member_position(mset):
    c = mset.at("import os\nx = os.path.", "\n")
    assert c.prefix == "" and not c.other and {"join", "dirname"} <= c.candidates
    assert c.allows("join") and c.allows("join(") and not c.allows("push") and not c.allows(" join")
    c2 = mset.at("import os\nx = os.path.jo", "\n")
    assert c2.prefix == "jo" and c2.allows("in(") and not c2.allows("x(")


def test_dot_token_after_an_expression(analyzer):
    ms = MonitorSet("python", analyzer=analyzer, settings=MonitorSettings(dot_lookahead="wait"))
    c = ms.at("import os\nx = os", "\n")
    assert c.after_dot is not None and "path" in c.after_dot.candidates
    assert c.allows(".path") and c.allows(".") and not c.allows(".append")
    # a name that is not bound: no analysis, dot tokens unconstrained
    c3 = ms.at("x = undefined_thing", "\n")
    assert c3.allows(".anything") if c3 is not None else True


def test_after_expr_dot_only_an_identifier_even_when_members_are_unknown():
    """Syntax alone: `expr.` is followed by an identifier.  No jedi here (analyzer=None)."""
    ms = MonitorSet("python", analyzer=None)
    c = ms.at("x = foo()", "\n")
    assert c is not None and c.allows(".") and c.allows(".bar") and c.allows(".bar(")
    assert not c.allows(".*") and not c.allows(".(") and not c.allows(". ") and not c.allows("..")
    m = ms.at("x = foo.", "\n")
    assert m is not None and m.allows("bar") and m.allows("bar(") and m.allows("_x")
    assert not m.allows("*") and not m.allows("(") and not m.allows(" ") and not m.allows("\n")
    p = ms.at("x = foo.ba", "\n")  # a written prefix with unknown members: any identifier
    assert p is None or (p.candidates is None and p.allows("r(") and p.allows("rbaz") and p.allows(" if"))
    for text, ok in (("x = 1", ".5"), ("x = 1", "."), ("from .", "."), ("from .", "mod"), ("from .", " import")):
        c = ms.at(text, "\n")
        assert c is None or c.allows(ok), (text, ok)
    off = MonitorSet("python", analyzer=None, settings=MonitorSettings(dot_lookahead="off"))
    assert not off.at("import os\nx = os.path", "\n").allows(".*")
    nomem = MonitorSet("python", analyzer=None, settings=MonitorSettings(members=False))
    c = nomem.at("x = foo()", "\n")
    assert c is None or c.allows(".*")  # the members monitor off: dots are not checked at all


def test_a_document_over_the_parse_budget_is_not_parsed(monkeypatch):
    """P5 (docs/reliability.md): a document over ``MonitorSettings.max_parse_bytes`` never
    reaches tree-sitter (a 4 MB file takes it seconds, without a timeout): its names are
    unknown (None: nothing is masked).  Every parser the session makes is recorded: none for
    the big documents, one for each small one (so the recorder does see the session's parsers)."""
    from draftline.analysis import session as session_module

    made: list[str] = []
    real_new_parser = session_module.new_parser
    monkeypatch.setattr(session_module, "new_parser", lambda name: made.append(name) or real_new_parser(name))
    line = "x = [1, 2, 3]  # " + "y" * 60 + "\n"
    text = line * (DEFAULT_MAX_PARSE_BYTES // len(line) + 10)
    session = MonitorSet("python", analyzer=None).session(text + "z = ", "\n")
    assert session.python_names() is None
    assert made == []
    c_text = "int x = 1; /* " + "y" * 60 + " */\n"
    big_c = c_text * (DEFAULT_MAX_PARSE_BYTES // len(c_text) + 10)
    assert world_is_closed(big_c, "c")  # so only the size keeps it from being parsed
    assert MonitorSet("c", analyzer=None).session(big_c, "").scope_names() is None
    assert made == []
    small = MonitorSet("python", analyzer=None).session("def f():\n    return 1\nz = ", "\n")
    assert "f" in small.python_names()
    assert "x" in MonitorSet("c", analyzer=None).session(c_text, "").scope_names()
    assert made == ["python", "c"]
    # the budget is the setting's: the same small document over a smaller budget is not parsed
    tight = MonitorSettings(max_parse_bytes=len(c_text) - 1)
    assert MonitorSet("c", analyzer=None, settings=tight).session(c_text, "").scope_names() is None
    assert made == ["python", "c"]


#: Only so that a step which wrongly waits for a blocked analysis fails (the gate opens, the
#: step then gets the full answer, and the checks below see that) instead of hanging the run.
#: Nothing is timed: a correct step returns without this ever firing.
_HANG_GUARD_S = 30.0


class _GatedAnalyzer(PythonAnalyzer):
    """jedi stand-in: every members query is recorded (``calls``), sets ``entered``, and is
    then blocked until the test opens ``gate``."""

    def __init__(self, budget_s: float) -> None:
        super().__init__(budget_s=budget_s, isolated=False)  # a stand-in runs in this process
        self.calls: list[str] = []
        self.gate = threading.Event()
        self.entered = threading.Event()
        self.backend.members = self._members  # the analysis the worker runs

    def _members(self, before, after, path):
        from draftline.analysis.jedi_backend import Completions

        self.calls.append(before[-20:])
        self.entered.set()
        self.gate.wait()
        return Completions(frozenset({"join", "sep", "dirname"}), frozenset({"join", "dirname"}))

    def guard(self) -> threading.Timer:
        """Open the gate after _HANG_GUARD_S (see there); cancel it when the step returned."""
        t = threading.Timer(_HANG_GUARD_S, self.gate.set)
        t.daemon = True
        t.start()
        return t


def _drain_thread_worker() -> None:
    """Wait until the in-process jedi worker has run everything queued so far (it runs in order)."""
    jedi_client._get_worker(isolated=False).submit(lambda: None, None).result(timeout=120)


@pytest.fixture
def gated():
    """Makes _GatedAnalyzer; at the end every gate is opened and the shared worker drained,
    so no blocked analysis outlives its test."""
    made: list[_GatedAnalyzer] = []

    def make(budget_s: float) -> _GatedAnalyzer:
        an = _GatedAnalyzer(budget_s)
        made.append(an)
        return an

    yield make
    for an in made:
        an.gate.set()
    _drain_thread_worker()


def test_a_capped_step_does_not_wait_nor_keep_a_partial_answer(gated):
    """The decoder caps the analysis wait for drafts other than the greedy one: such a step
    is answered without the slow fact, and that partial answer is not reused."""
    an = gated(budget_s=600)  # an uncapped step would wait for the blocked analysis
    s = MonitorSet("python", analyzer=an).session("import os\nx = os.path", "\n")
    guard = an.guard()
    c = s.at(".", budget_s=0.02)
    guard.cancel()
    assert not an.gate.is_set()  # the step returned while its analysis was still blocked
    assert c is None or c.candidates is None  # members unknown yet: not constrained to a list
    an.gate.set()
    full = s.at(".")  # the greedy draft's step: waits for the answer
    assert full.candidates == {"join", "sep", "dirname"}
    assert an.calls == ["port os\nx = os.path."]  # one query (its last 20 characters), shared by both steps


def test_request_start_waits_for_the_members_after_a_healed_dot(gated):
    """The known bug: the prompt heals the trailing ".", so step 0 sees `...os.path` and the token
    `.*` used to pass while the member query was not answered yet.  The per-query budget is 0
    (a step that is not the request start never waits), the start's budget is large: the
    start's answer is there only because it waited."""
    an = gated(budget_s=0.0)
    ms = MonitorSet("python", analyzer=an, settings=MonitorSettings(dot_lookahead="cached", start_budget_s=600))
    base = "import os\n\n\ndef start_case(p):\n    return os.path"
    s = ms.session(base, "\n", heal=".")
    opener = threading.Thread(target=lambda: an.entered.wait(_HANG_GUARD_S) and an.gate.set(), daemon=True)
    opener.start()  # opens the gate once the query is running (blocked)
    c0 = s.at("")
    opener.join()
    assert c0.allows(".") and c0.allows(".join") and not c0.allows(".*") and not c0.allows(".push")
    assert an.calls == ["\n    return os.path."]  # only the cursor's query, not the members of `os`
    c1 = s.at(".")  # the cursor itself: the same query, answered from the cache
    assert c1.candidates == {"join", "sep", "dirname"} and not c1.other
    assert not c1.allows("*p") and c1.allows("join(")
    assert an.calls == ["\n    return os.path."]
    # past the heal: the step's own member query waits the per-query budget only (here none),
    # and no lookahead query is started for a "." token (dot_lookahead="cached")
    an.gate.clear()
    guard = an.guard()
    c2 = s.at(".join(os.path")
    guard.cancel()
    assert not an.gate.is_set()  # returned while its query was blocked
    assert c2 is not None and not c2.allows(".*") and c2.allows(".sep")
    an.gate.set()
    _drain_thread_worker()  # whatever the step queued has run (and was recorded) now
    assert an.calls[1:] == ["urn os.path.join(os."]


def test_session_prefetch_starts_the_cursor_query(gated):
    an = gated(budget_s=0.0)  # no step waits: what a step knows comes from the prefetch
    an.gate.set()
    ms = MonitorSet("python", analyzer=an, settings=MonitorSettings(start_budget_s=0.0))
    base = "import os\nprefetched = os.path"
    s = ms.session(base, "\n", heal=".")
    s.prefetch()
    _drain_thread_worker()  # the prefetched query has been answered
    assert an.calls == ["refetched = os.path."]  # the cursor's query (its last 20 characters)
    c0 = s.at("")
    assert c0.after_dot is not None and c0.after_dot.candidates == {"join", "sep", "dirname"}
    an.gate.clear()  # the cold session's query stays unanswered
    cold = ms.session("import os\nnot_prefetched = os.path", "\n", heal=".").at("")
    assert cold.after_dot is not None and cold.after_dot.candidates is None  # no wait: any identifier
    assert not cold.allows(".*")


def test_new_attributes_only_on_self(mset):
    code = "import http.client\nconn = http.client.HTTPConnection('h')\nconn."
    c = mset.at(code, "\n")
    assert c.allows("putheader(") and c.allows("timeout =")
    assert not c.allows("brand_new =") and not c.allows("postrequest_on_multipart")


def test_same_file_class_and_init_attributes(mset):
    code = ("class Account:\n    def __init__(self, owner):\n        self.owner = owner\n        self.balance = 0\n\n"
            "    def deposit(self, amount):\n        self.")
    c = mset.at(code, "\n")
    assert {"owner", "balance", "deposit"} <= c.candidates
    # outside the attribute-defining methods only existing attributes (pylint W0201)
    assert c.allows("balance =") and c.allows("balance") and not c.allows("new_attr =") and not c.allows("new_attr(")
    # statement start in __init__: `self.new_attr = ...` creates an attribute, new names may be assigned
    c_init = mset.at(code[: code.index("\n\n")] + "\n        self.", "\n")
    assert c_init.allows("new_attr =") and c_init.allows("owner") and not c_init.allows("new_attr(")
    c_load = mset.at(code + "balance += amount\n        return self.", "\n")
    assert c_load.allows("balance") and not c_load.allows("new_attr") and not c_load.allows("new_attr =")


def test_name_in_another_open_document(tmp_path):
    (tmp_path / "util.py").write_text("def old(): pass\n")
    docs = {str(tmp_path / "util.py"): "def fresh_helper():\n    pass\n"}
    an = PythonAnalyzer(workspace_root=str(tmp_path), budget_s=20)
    ms = MonitorSet("python", path=str(tmp_path / "main.py"), analyzer=an, open_documents=lambda: docs)
    c = ms.at("import util\nutil.", "\n")
    assert c.allows("fresh_helper(") and not c.allows("old(")


def test_names_allow_builtins_keywords_later_definitions_and_draft_names(mset):
    text = "def f(items):\n    total = 0\n    return "
    after = "\n\ndef helper_defined_later():\n    pass\n"
    c = mset.at(text, after)
    for ok in ("items", "total", "len(", "helper_defined_later(", "None", "not", "lambda", 'f"', "self" if False else "f("):
        assert c.allows(ok), ok
    assert not c.allows("totl ") and not c.allows("undefined_name(")
    # a name the draft itself introduced is allowed later
    d = mset.at(text[: text.index("return ")] + "for row in items:\n        print(", "")
    assert d is None or d.candidates is None or True  # inside brackets: free
    e = mset.at("def f(items):\n    for row in items:\n        x = ", "")
    assert e.allows("row") and e.allows("items") and not e.allows("rowx)")


def test_statement_start_allows_new_names_only_as_targets(mset):
    c = mset.at("def f(a):\n    ", "")
    assert c.allows("brand_new =") and c.allows("a") and c.allows("return") and c.allows("brand_new")
    assert c.allows("x, ") and not c.allows("brand_new(") and not c.allows("brand_new.")


def test_keyword_arguments(mset):
    text = "def connect(host, port=80, *, timeout=None):\n    pass\nconnect('h', "
    c = mset.at(text, ")\n")
    assert c.allows("timeout=") and c.allows("port=") and not c.allows("tiemout=") and c.allows("some_var)")
    assert c.allows(" timeout=")  # a space-led token lands on the same position
    assert mset.at("def g(**kw): pass\ng(", ")\n") is None or mset.at("def g(**kw): pass\ng(", ")\n").allows("anything=")


def test_modules(mset):
    c = mset.at("import ", "\n")
    assert c.allows("os") and c.allows("collections") and not c.allows("nonexistent_module_xyz")
    c2 = mset.at("from collections import ", "\n")
    assert c2.allows("OrderedDict") and not c2.allows("NoSuchThing") and c2.allows("(")


def test_no_constraint_in_strings_comments_brackets_and_binding_positions(mset):
    for text in ("x = 'os.", "# see foo.", "def f(new_param", "for brand_new", "x = lambda new", '"""doc\n'):
        c = mset.at(text, "")
        assert c is None or c.candidates is None, text
    c = mset.at("x = [y for y in range(3) if ", "]")
    assert c is None or c.allows("y") and c.allows("anything")


def test_strings_after_keywords_and_names(mset):
    """`return "x"`: the quote after the space starts a string; it is not a string prefix."""
    for text, tok in (("def f(x):\n    return", ' "'), ("def f(x):\n    return", " ''."), ("def f(x):\n    return ", '"'),
                      ("def f(x):\n    y = x if x else", ' "'), ("def f(x):\n    y = f", '"')):
        c = mset.at(text, "\n")
        assert c is None or c.allows(tok), (text, tok)
    c = mset.at("def f(x):\n    y = q", "\n")
    assert not c.allows('"') and c.allows(" ")  # `q"` is no string prefix


def test_after_expression_only_keywords(mset):
    c = mset.at("x = foo() ", "")
    assert c.allows("if") and c.allows("for") and not c.allows("bar") and c.allows("+")


def test_settings_switch_monitors_off(analyzer):
    off = MonitorSet("python", analyzer=analyzer, settings=MonitorSettings(members=False, names=False))
    assert off.at("import os\nos.path.", "") is None
    c = off.at("x = ", "")
    assert c is None or c.candidates is None


def test_unknown_language_and_open_world_languages(analyzer):
    assert MonitorSet("cobol").at("MOVE A TO ", "") is None
    js = MonitorSet("javascript")
    assert js.at("function f(a) { return ", "}") is None  # browser/node globals: open world
    c = MonitorSet("c").at("int f(int a) { int bb = 1; return ", "; }")
    assert c is not None and c.allows("bb") and c.allows("a") and not c.allows("undefined_c;")


def test_session_repeat_steps_are_answered_once(mset):
    """A decode step asked again (the decoder asks while one identifier is written) gets the
    constraint computed the first time: the same object, and no further jedi query."""
    s = mset.session("import os\nx = os.path.", "\n")
    s.at("")
    first = s.at("jo")
    assert first is not None and first.prefix == "jo" and first.allows("in(") and not first.allows("x(")
    queries = s.queries
    for _ in range(50):
        assert s.at("jo") is first
    assert s.queries == queries
    other = s.at("di")  # a new draft is computed (so the identity above is the cache's doing)
    assert other is not first and other.allows("rname(")


def test_monitor_set_at_reuses_sessions(mset):
    before = "def f(value):\n    return "
    first = mset.at(before, "\n")
    again = mset.at(before + "val", "\n")
    assert first is not None and again is not None and again.prefix == "val" and again.allows("ue")


# --------------------------------------------------------------------------------------------
# ground truth: real stdlib member accesses must never be blocked
# --------------------------------------------------------------------------------------------
def test_ground_truth_stdlib_members_are_never_blocked(analyzer):
    sites = stdlib_member_sites(50)
    assert len(sites) >= 45
    constrained = 0
    for path, src, dot, end, member in sites:
        ms = MonitorSet("python", path=path, analyzer=analyzer)
        c = ms.at(src[: dot + 1], src[end:])
        if c is None:
            continue
        constrained += 1
        follow = src[end : end + 2]
        assert c.allows(member + follow), (os.path.basename(path), src[dot - 40 : end + 2], member)
        for k in range(1, len(member)):
            assert c.allows(member[:k]), (member, k)
        # the rest of the identifier, written one token later
        c2 = ms.at(src[: dot + 1] + member[:2], src[end:])
        if c2 is not None and len(member) > 2:
            assert c2.allows(member[2:] + follow), (member, follow)
    print(f"{constrained}/{len(sites)} stdlib member sites constrained, none blocked")
    assert constrained >= 0.8 * len(sites)
