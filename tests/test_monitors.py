"""MonitorSet.at: which identifiers may come next, and never blocking what is valid."""

from __future__ import annotations

import os
import time
from dataclasses import replace

import pytest

from _analysis_fixtures import stdlib_member_sites
from draftline.analysis.constraint import StepConstraint
from draftline.analysis.jedi_client import PythonAnalyzer
from draftline.analysis.lexing import STRING_PREFIXES
from draftline.analysis.monitors import MonitorSet, MonitorSettings
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


def test_a_document_over_the_parse_budget_is_not_parsed():
    """P5 (docs/reliability.md): a document over ``MonitorSettings.max_parse_bytes`` never
    reaches tree-sitter (a 4 MB file takes it seconds, without a timeout): its names are
    unknown (None: nothing is masked), and that answer is immediate."""
    line = "x = [1, 2, 3]  # " + "y" * 60 + "\n"
    text = line * (DEFAULT_MAX_PARSE_BYTES // len(line) + 10)
    session = MonitorSet("python", analyzer=None).session(text + "z = ", "\n")
    t0 = time.perf_counter()
    assert session.python_names() is None
    assert time.perf_counter() - t0 < 1.0
    c_text = "int x = 1; /* " + "y" * 60 + " */\n"
    c_session = MonitorSet("c", analyzer=None).session(c_text * (DEFAULT_MAX_PARSE_BYTES // len(c_text) + 10), "")
    t0 = time.perf_counter()
    assert c_session.scope_names() is None
    assert time.perf_counter() - t0 < 1.0
    small = MonitorSet("python", analyzer=None).session("def f():\n    return 1\nz = ", "\n")
    assert "f" in small.python_names()
    assert "x" in MonitorSet("c", analyzer=None).session(c_text, "").scope_names()


class _SlowAnalyzer(PythonAnalyzer):
    """jedi stand-in: every members query takes ``delay`` s and is recorded."""

    def __init__(self, delay: float, budget_s: float = 0.01) -> None:
        super().__init__(budget_s=budget_s, isolated=False)  # a stand-in runs in this process
        self.delay = delay
        self.calls: list[str] = []
        self.backend.members = self._members  # the analysis the worker runs

    def _members(self, before, after, path):
        from draftline.analysis.jedi_backend import Completions

        self.calls.append(before[-20:])
        time.sleep(self.delay)
        return Completions(frozenset({"join", "sep", "dirname"}), frozenset({"join", "dirname"}))


def test_a_capped_step_does_not_wait_long_nor_keep_a_partial_answer():
    """The decoder caps the analysis wait for drafts other than the greedy one: such a step
    is answered without the slow fact, and that partial answer is not reused."""
    an = _SlowAnalyzer(delay=0.3, budget_s=5)
    s = MonitorSet("python", analyzer=an).session("import os\nx = os.path", "\n")
    t = time.perf_counter()
    c = s.at(".", budget_s=0.02)
    assert time.perf_counter() - t < 0.2
    assert c is None or c.candidates is None  # members unknown yet: not constrained to a list
    full = s.at(".")  # the greedy draft's step: waits for the answer
    assert full.candidates == {"join", "sep", "dirname"}
    assert an.calls == ["port os\nx = os.path."]  # one query (its last 20 characters), shared by both steps


def test_request_start_waits_for_the_members_after_a_healed_dot():
    """The known bug: the prompt heals the trailing ".", so step 0 sees `...os.path` and the token
    `.*` used to pass while the member query was not answered yet."""
    an = _SlowAnalyzer(delay=0.3)
    ms = MonitorSet("python", analyzer=an, settings=MonitorSettings(dot_lookahead="cached"))
    base = "import os\n\n\ndef start_case(p):\n    return os.path"
    s = ms.session(base, "\n", heal=".")
    t = time.perf_counter()
    c0 = s.at("")
    assert time.perf_counter() - t > 0.2  # waited (the per-query budget is 0.01 s)
    assert c0.allows(".") and c0.allows(".join") and not c0.allows(".*") and not c0.allows(".push")
    assert an.calls == ["\n    return os.path."]  # only the cursor's query, not the members of `os`
    t = time.perf_counter()
    c1 = s.at(".")  # the cursor itself: the same query, answered
    assert time.perf_counter() - t < 0.1 and c1.candidates == {"join", "sep", "dirname"} and not c1.other
    assert not c1.allows("*p") and c1.allows("join(")
    # past the heal: the step's own member query waits the per-query budget only, and no
    # lookahead query is started for a "." token (dot_lookahead="cached")
    t = time.perf_counter()
    c2 = s.at(".join(os.path")
    assert time.perf_counter() - t < 0.1
    assert c2 is not None and not c2.allows(".*") and c2.allows(".sep")
    time.sleep(0.5)
    assert an.calls[1:] == ["urn os.path.join(os."]


def test_session_prefetch_starts_the_cursor_query():
    an = _SlowAnalyzer(delay=0.2)
    ms = MonitorSet("python", analyzer=an, settings=MonitorSettings(start_budget_s=0.0))
    base = "import os\nprefetched = os.path"
    s = ms.session(base, "\n", heal=".")
    s.prefetch()
    time.sleep(0.5)
    c0 = s.at("")
    assert c0.after_dot is not None and c0.after_dot.candidates == {"join", "sep", "dirname"}
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


def test_session_repeat_queries_are_cheap(mset):
    import time
    s = mset.session("import os\nx = os.path.", "\n")
    s.at("")
    t = time.perf_counter()
    for _ in range(500):
        s.at("jo")
    per = (time.perf_counter() - t) / 500
    print(f"repeat step: {per * 1e6:.1f} us")
    assert per < 0.002


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
