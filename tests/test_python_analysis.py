"""Python: lexical classification of the cursor, and jedi answers (static, safe, budgeted)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import threading
import time

import pytest

from draftline.analysis import jedi_client
from draftline.analysis.classify import ASSIGN_FOLLOWERS, CHAIN_FOLLOWERS, WALRUS_FOLLOWERS, classify
from draftline.analysis.jedi_backend import Completions, JediBackend
from draftline.analysis.jedi_client import PythonAnalyzer
from draftline.analysis.lexing import closers, scan


def pos(text: str, **kw):
    return classify(text, scan(text), **kw)


# --------------------------------------------------------------------------------------------
# lexer + classifier
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("text, kind, prefix", [
    ("import os\nos.path.", "member", ""),
    ("x = foo(os.path.jo", "member", "jo"),
    ("x = [i for i in y if i.", "member", ""),
    ("a.b.c().d[0].", "member", ""),
    ("return va", "name", "va"),
    ("x = foo ", "after_expr", ""),
    ("x = foo()", "after_expr", ""),
    ("x = f(a, ke", "kwarg", "ke"),
    ("x = f(", "kwarg", ""),
    ("def f(a", "free", "a"),
    ("class A(B", "free", "B"),
    ("for x", "free", "x"),
    ("for x in ra", "name", "ra"),
    ("x = lambda q", "free", "q"),
    ("x = lambda q: q", "name", "q"),
    ("with open(f) as fh", "free", "fh"),
    ("import o", "module", "o"),
    ("import os.pa", "module", "pa"),
    ("from os import pa", "import_name", "pa"),
    ("from os.path import (jo", "import_name", "jo"),
    ("x = 1.", "free", ""),
    ("@dec", "name", "dec"),
    ("match x", "name", "x"),
    ("case Foo", "free", "Foo"),
    ("y = x if c else ", "name", ""),
    ("x = [a, b", "free", "b"),  # inside brackets: a comprehension may bind later
])
def test_classify(text, kind, prefix):
    p = pos(text)
    assert p is not None and (p.kind, p.prefix) == (kind, prefix)


@pytest.mark.parametrize("text", ["s = 'abc", "s = f'{x.", "# comment x.", '"""doc\nstring x.', "s = '''a\n'''  # x."])
def test_no_position_inside_strings_and_comments(text):
    assert pos(text) is None


def test_followers_mark_assignment_targets():
    assert pos("    self.cou").followers == ASSIGN_FOLLOWERS
    assert pos("    cls.cou").followers == ASSIGN_FOLLOWERS
    # a brand-new attribute is only expected on self/cls: other receivers take their members
    assert pos("    conn.put").followers == () and pos("    self.conn.put").followers == ()
    assert pos("a, self.b").followers == CHAIN_FOLLOWERS and pos("a, conn.b").followers == ()
    # ... and only in methods that define attributes (elsewhere: pylint's attribute-defined-outside-init)
    cls = "class A:\n    def {}(self):\n        x = 1\n        if x:\n            self.cou"
    for name in ("__init__", "setUp", "reset", "_init_state", "__post_init__"):
        assert pos(cls.format(name)).followers == ASSIGN_FOLLOWERS, name
    for name in ("run", "connect", "__call__"):
        assert pos(cls.format(name)).followers == (), name
    nested = "class A:\n    def __init__(self):\n        def cb():\n            pass\n        self.cou"
    assert pos(nested).followers == ASSIGN_FOLLOWERS
    assert pos("x = self.cou").followers == ()
    assert pos("a, b").followers == CHAIN_FOLLOWERS
    assert pos("a, b = c, d").followers == ()
    assert pos("while ch").followers == WALRUS_FOLLOWERS
    assert pos("total").followers == ASSIGN_FOLLOWERS


def test_after_identifier_position():
    assert pos("return", ident_is_prev=True).kind == "name"
    assert pos("x = foo", ident_is_prev=True).kind == "after_expr"
    assert pos("import os", ident_is_prev=True).kind == "after_expr"


@pytest.mark.parametrize("code", [
    "x = f'{a!r}'\n", "x = f'{a:#x}'\n", "x = f'<{type(self).__name__} at {id(self):#x} {self._format()}>'\n",
    "x = f'{a!=b}'\n", "x = f'{a:>{w}} {b}'\n", "x = f'{(lambda q: q)(1)}'\n", "x = f'{d[\"a\"]:{w}.{p}f}'\n",
    'x = f"""{a:\n}"""\n', "x = f'{a:#x\n",  # (unterminated: recover at the line end)
])
def test_lexer_fstring_format_specs_are_text(code):
    """A format spec is text: `{id(self):#x}` must not open a comment (asyncio/queues.py)."""
    st = scan(code + "if self.")
    assert st.in_code and st.frames == ()
    p = classify(code + "if self.", st)
    assert p is not None and p.kind == "member"
    inside = scan("x = f'{a:>10")
    assert not inside.in_code and closers(inside) == "}'"


def test_closers_and_statement_start():
    text = "x = {'a': [f(1, \"s"
    st = scan(text)
    assert closers(st) == '")]}'
    st2 = scan("a = 1\nb = (2,\n  3)\nc = ")
    assert "c = " == "a = 1\nb = (2,\n  3)\nc = "[st2.stmt_start:]


def test_lexer_fstrings_nest_and_continue_incrementally():
    text = 'x = f"{d["k"]} and {y}" + foo('
    st = scan(text)
    assert st.in_code and [f[0] for f in st.frames] == ["("]
    half = scan(text[:10])
    assert scan(text, half) == st


# --------------------------------------------------------------------------------------------
# jedi
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def analyzer(tmp_path_factory):
    root = tmp_path_factory.mktemp("ws")
    (root / "helpers.py").write_text("def on_disk():\n    pass\n")
    an = PythonAnalyzer(workspace_root=str(root), budget_s=20)
    an.warm_up().result(timeout=60)
    an.root = root  # type: ignore[attr-defined]
    return an


def members(an: PythonAnalyzer, code: str, after: str = "", **kw):
    res = an.query("members", code, after, **kw)
    return None if res is None else res.names


def test_members_of_module_and_submodule(analyzer):
    names = members(analyzer, "import os\nx = os.path.")
    assert {"join", "dirname", "exists", "sep"} <= names and "append" not in names
    assert {"path", "getcwd", "environ"} <= members(analyzer, "import os\nos.")


def test_members_of_call_result(analyzer):
    names = members(analyzer, "import collections\nd = collections.OrderedDict().")
    assert {"move_to_end", "popitem", "keys", "items"} <= names and "append" not in names


def test_members_of_class_in_same_file_include_init_attributes_and_later_code(analyzer):
    code = "class Box:\n    def __init__(self):\n        self.size = 1\n    def grow(self):\n        pass\n"
    names = members(analyzer, code + "b = Box()\nb.")
    assert {"size", "grow", "__init__"} <= names
    # the class is defined *after* the cursor
    names2 = members(analyzer, "def use():\n    return Late().", "\nclass Late:\n    def later_method(self): pass\n")
    assert "later_method" in names2


def test_members_from_another_open_document_use_its_unsaved_text(analyzer):
    path = str(analyzer.root / "helpers.py")
    names = members(analyzer, "import helpers\nhelpers.", path=str(analyzer.root / "main.py"),
                    open_documents={path: "def unsaved_func():\n    pass\n"})
    assert "unsaved_func" in names and "on_disk" not in names
    # without the overlay jedi reads the file on disk, and the overlay did not stick in a cache
    names_disk = members(analyzer, "import helpers\nhelpers.", path=str(analyzer.root / "main.py"))
    assert "on_disk" in names_disk and "unsaved_func" not in names_disk


@pytest.mark.parametrize("code", [
    "class G:\n    def __getattr__(self, name):\n        return 1\nG().",
    "class H(NotDefinedAnywhere):\n    pass\nH().",
    "import argparse\nargs = argparse.ArgumentParser().parse_args()\nargs.",
    "x = unknown_function()\nx.",
    "def f(**kw):\n    kw['a'].",
])
def test_dynamic_or_unknown_receivers_give_no_constraint(analyzer, code):
    assert members(analyzer, code) is None


def test_keyword_arguments(analyzer):
    kw = analyzer.query("kwargs", "def f(a, b=1, /, c=2, *, d):\n    pass\nf(", "")
    assert kw.names == {"c", "d"}
    dc = "import dataclasses\n@dataclasses.dataclass\nclass P:\n    x: int\n    y: str = ''\nP("
    assert analyzer.query("kwargs", dc, "").names == {"x", "y"}
    assert analyzer.query("kwargs", "def g(a, **extra):\n    pass\ng(", "") is None
    assert analyzer.query("kwargs", "dict(", "") is None
    assert analyzer.query("kwargs", "import subprocess\nsubprocess.run(", "").names >= {"check", "capture_output", "cwd"}


def test_modules_and_from_import(analyzer):
    mods = analyzer.query("complete", "import ", "").names
    assert {"os", "json", "collections", "helpers"} <= mods
    assert "path" in analyzer.query("complete", "import os.", "").names
    assert {"OrderedDict", "defaultdict"} <= analyzer.query("complete", "from collections import ", "").names


def test_library_type_members_are_listed_once_user_types_every_time(monkeypatch):
    analyzer = PythonAnalyzer(budget_s=20, isolated=False)  # patched in this process
    listed = []
    orig = JediBackend.list_members
    monkeypatch.setattr(JediBackend, "list_members",
                        staticmethod(lambda *a: listed.append(1) or orig(*a)))
    first = members(analyzer, "items = [1]\nitems.")
    assert {"append", "extend", "sort"} <= first and len(listed) == 1
    # another document, another spelling of a list: the same type, no second listing
    assert members(analyzer, "def f():\n    return [].", "\nx = 1\n") == first
    assert len(listed) == 1
    assert {"join", "split"} <= members(analyzer, "s = 'a'\ns.") and len(listed) == 2
    # a class of the user's code is listed afresh for each document (its members change)
    a = members(analyzer, "class Box:\n    def grow(self): pass\nBox().")
    b = members(analyzer, "class Box:\n    def shrink(self): pass\nBox().")
    assert "grow" in a and "shrink" not in a and "shrink" in b and "grow" not in b
    assert len(listed) == 4


def test_jedi_runs_in_a_child_process_that_is_restarted_when_it_dies(analyzer):
    worker = jedi_client._get_worker(True)
    assert members(analyzer, "import os\nos.path.") >= {"join"}
    proc = worker._proc
    assert proc is not None and proc.pid != os.getpid() and proc.poll() is None
    proc.kill()
    proc.wait(timeout=10)
    # the next query (a new text: not cached) gets a new child and an answer
    assert {"append", "pop"} <= members(analyzer, "import collections\ncollections.deque().")
    assert worker._proc is not proc and worker._proc.poll() is None


def test_warm_up_lists_common_library_types_ahead_of_the_first_request(monkeypatch):
    an = PythonAnalyzer(budget_s=20, isolated=False)  # patched in this process
    an.warm_up().result(timeout=120)
    listed = []
    orig = JediBackend.list_members
    monkeypatch.setattr(JediBackend, "list_members", staticmethod(lambda *a: listed.append(1) or orig(*a)))
    assert {"append", "pop"} <= members(an, "def f(items=[]):\n    x = [items]\n    return x.")
    assert {"keys", "items"} <= members(an, "d = {1: 2}\nd.")
    assert listed == []  # both types were listed at warm-up


def test_a_stuck_child_is_replaced_and_its_queries_do_not_linger(analyzer):
    """A query older than HANG_S makes the next query restart the child; the old child's
    queries fail at once (left pending they would count as backlog and as stuck forever)."""
    from concurrent.futures import Future

    worker = jedi_client._get_worker(True)
    assert members(analyzer, "import os\nos.sep.") is not None  # a live child
    old = worker._proc
    stuck: Future = Future()
    stuck.set_running_or_notify_cancel()
    with worker._lock:
        worker._pending[-1] = (stuck, time.monotonic() - worker.HANG_S - 1)
    assert {"append"} <= members(analyzer, "import collections\nq = collections.deque()\nq.")
    assert worker._proc is not old and old.wait(timeout=10) is not None
    assert stuck.done() and isinstance(stuck.exception(), RuntimeError)
    assert -1 not in worker._pending and worker.backlog == 0


def test_repeat_queries_are_answered_from_the_cache(analyzer, monkeypatch):
    """A query asked again (every decode step asks) is the cached answer: the same object,
    and the worker is not asked again; a new text is."""
    code = "import os\nos.path."
    first = analyzer.query("members", code, "")
    assert first is not None and "join" in first.names
    asked = []
    get_worker = jedi_client._get_worker
    monkeypatch.setattr(jedi_client, "_get_worker", lambda *a: asked.append(a) or get_worker(*a))
    for _ in range(200):
        assert analyzer.query("members", code, "") is first
    assert asked == []
    assert "sep" in members(analyzer, "import os\nrepeat_probe = os.")  # a new text: goes to the worker
    assert len(asked) == 1


class _Gate:
    """A stand-in analysis that records its calls and blocks until the test opens it."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.open = threading.Event()

    def members(self, before, after, path):
        self.calls.append(before)
        self.open.wait()
        return Completions(frozenset({"late"}))


def _drain_thread_worker() -> None:
    """Wait until the in-process worker has run everything queued so far (it runs in order)."""
    jedi_client._get_worker(isolated=False).submit(lambda: None, None).result(timeout=120)


#: Only so that a query which wrongly waits for a blocked analysis fails (the gate opens, it
#: then gets the answer, and the checks see that) instead of hanging the run; nothing is timed.
_HANG_GUARD_S = 30.0


def test_budget_returns_none_and_the_answer_lands_later():
    an = PythonAnalyzer(budget_s=0.05, isolated=False)  # patched in this process
    gate = _Gate()
    an.backend.members = gate.members  # type: ignore[method-assign]
    guard = threading.Timer(_HANG_GUARD_S, gate.open.set)
    guard.start()
    try:
        assert an.query("members", "x.", "") is None  # over budget: unknown
        assert an.query("members", "x.", "") is None  # still running: unknown, not started again
        assert not gate.open.is_set()  # both returned while the analysis was blocked
    finally:
        guard.cancel()
        gate.open.set()
    _drain_thread_worker()
    assert an.query("members", "x.", "").names == {"late"}  # the answer landed in the cache
    assert gate.calls == ["x."]


def test_prefetches_never_queue_behind_work_and_start_budgets_wait_longer(monkeypatch):
    """Speculative queries (wait=False) are queued only on an idle worker, so the query a decode
    step waits for is never refused; ``budget`` extends one wait; ``start=False`` only looks up.
    The per-query budget is 0 (no wait at all), so an answer a query returns is one it waited for."""
    an = PythonAnalyzer(budget_s=0.0, isolated=False)  # patched in this process
    calls = []

    def answer(before, after, path):
        calls.append(before)
        return Completions(frozenset({"late"}))

    an.backend.members = answer  # type: ignore[method-assign]
    worker = jedi_client._get_worker(isolated=False)
    running, release, waiting = threading.Event(), threading.Event(), threading.Event()

    def watched(*args):
        """The worker's query, whose future tells when someone waits on pre_b's answer."""
        fut = worker_query(*args)
        if args[2] == "pre_b.":
            result = fut.result

            def result_seen(timeout=None):
                waiting.set()
                return result(timeout)

            fut.result = result_seen  # type: ignore[method-assign]
        return fut

    worker_query = worker.query
    monkeypatch.setattr(worker, "query", watched)
    blocker = worker.submit(lambda: running.set() or release.wait(_HANG_GUARD_S), None)
    try:
        running.wait(_HANG_GUARD_S)  # the blocker is running, nothing is queued
        assert an.query("members", "pre_a.", "", wait=False) is None  # queued (backlog 0 -> 1)
        assert an.query("members", "pre_b.", "", wait=False) is None  # refused: something is queued
        assert an.query("members", "pre_c.", "", wait=False, start=False) is None
        assert an.query("members", "pre_b.", "") is None  # queued, but the budget (0) allows no wait
        # the same query with a budget: released only once it waits for its answer, it has it
        opener = threading.Thread(target=lambda: waiting.wait(_HANG_GUARD_S) and release.set(), daemon=True)
        opener.start()
        got = an.query("members", "pre_b.", "", budget=600)
        opener.join()
        assert got is not None and got.names == {"late"}
    finally:
        release.set()
    blocker.result(timeout=120)
    assert calls == ["pre_a.", "pre_b."]  # pre_c was never started, pre_b once
    assert an.query("members", "pre_a.", "", start=False).names == {"late"}  # looked up, done


def test_failures_are_unknown():
    an = PythonAnalyzer(budget_s=5, isolated=False)  # patched in this process

    def boom(before, after, path):
        raise RuntimeError("jedi crashed")

    an.backend.members = boom  # type: ignore[method-assign]
    assert an.query("members", "y.", "") is None


# --------------------------------------------------------------------------------------------
# safety: no workspace code runs
# --------------------------------------------------------------------------------------------
def test_workspace_python_is_parsed_not_executed(tmp_path):
    marker = tmp_path / "EXECUTED"
    (tmp_path / "evil.py").write_text(f"open({str(marker)!r}, 'w').write('x')\ndef payload():\n    pass\n")
    an = PythonAnalyzer(workspace_root=str(tmp_path), budget_s=30)
    names = members(an, "import evil\nevil.", path=str(tmp_path / "main.py"))
    assert "payload" in names
    assert not marker.exists()


@pytest.mark.skipif(shutil.which("cc") is None, reason="needs a C compiler")
@pytest.mark.filterwarnings("ignore::UserWarning")
def test_workspace_extension_module_is_never_loaded(tmp_path, monkeypatch):
    marker = tmp_path / "LOADED"
    src = tmp_path / "evil_ext.c"
    src.write_text(
        '#include <stdio.h>\n'
        f'__attribute__((constructor)) static void boom(void) {{ FILE *f = fopen("{marker}", "w"); if (f) fclose(f); }}\n'
        'int PyInit_evil_ext(void) { return 0; }\n')
    so = tmp_path / ("evil_ext" + sysconfig.get_config_var("EXT_SUFFIX"))
    subprocess.run(["cc", "-shared", "-fPIC", "-o", str(so), str(src)], check=True)
    # even with the workspace on sys.path (server started from it), jedi must not dlopen it
    monkeypatch.syspath_prepend(str(tmp_path))
    an = PythonAnalyzer(workspace_root=str(tmp_path), budget_s=30)
    an.query("members", "import evil_ext\nevil_ext.", "", path=str(tmp_path / "main.py"))
    an.query("complete", "import evil", "", path=str(tmp_path / "main.py"))
    assert not marker.exists()
    env = an.backend.jedi_objects()[0]
    assert str(tmp_path) not in env.get_sys_path()


def test_sys_path_edits_in_the_document_count_only_inside_the_workspace(tmp_path):
    ws, outside = tmp_path / "ws", tmp_path / "outside"
    (ws / "vendored").mkdir(parents=True)
    outside.mkdir()
    (ws / "vendored" / "inner_mod.py").write_text("def inner_function():\n    pass\n")
    (outside / "outer_mod.py").write_text("def outer_function():\n    pass\n")
    an = PythonAnalyzer(workspace_root=str(ws), budget_s=30)
    head = (f"import sys\nsys.path.insert(0, {str(ws / 'vendored')!r})\n"
            f"sys.path.append({str(outside)!r})\nimport inner_mod, outer_mod\n")
    assert "inner_function" in members(an, head + "inner_mod.", path=str(ws / "main.py"))
    # outside the workspace: unknown module -> no constraint (None) or no member from it
    outer = members(an, head + "outer_mod.", path=str(ws / "main.py"))
    assert not outer or "outer_function" not in outer


def test_the_child_reads_lines_and_runs_idle_work_only_when_no_query_waits():
    """jedi_worker._lines: whole lines however the pipe splits them; on_idle(False) runs
    when no input came for idle_s, never while lines are waiting; on_idle(True) only after
    the further quiet time the first call asked for."""
    import threading

    from draftline.analysis.jedi_worker import _lines

    r, w = os.pipe()
    idle: list[bool] = []
    got: list[bytes] = []

    def on_idle(deep: bool) -> float | None:
        idle.append(deep)
        return None if deep or len(idle) > 1 else 0.3

    def writer():
        os.write(w, b'{"q": 1}\n{"q"')
        time.sleep(0.05)  # shorter than idle_s: no idle work in between
        os.write(w, b': 2}\n')
        time.sleep(0.7)  # idle work, then deep idle work 0.3 s later
        os.write(w, b'{"q": 3}\n')
        time.sleep(0.3)  # idle work (its answer: no deep call)
        os.write(w, b'{"q": 4}\n')
        os.close(w)

    t = threading.Thread(target=writer)
    t.start()
    for line in _lines(r, 0.15, on_idle):
        got.append(line)
    t.join()
    os.close(r)
    assert got == [b'{"q": 1}', b'{"q": 2}', b'{"q": 3}', b'{"q": 4}']
    assert idle == [False, True, False]


def test_the_child_freezes_what_survives_and_collects_cycles_when_idle():
    """The child's collector (in its own interpreter: it changes gc settings): survivors
    of an idle collection leave the collector's sight, full collections wait for idle
    moments, cycles made by queries are freed then, and a deep idle thaws and frees what
    became garbage while frozen."""
    code = """
import gc, weakref
from draftline.analysis.jedi_worker import _Collector
c = _Collector()
assert gc.get_threshold()[2] == c.FULL_EVERY
gc.disable()  # only the collector's own collections may free anything
class Node: pass
def cycle():
    a, b = Node(), Node(); a.b, b.a = b, a
    return a
kept = cycle()
c.ran_query("warm")
frozen = gc.get_freeze_count()
assert frozen > 0
a = cycle(); ref = weakref.ref(a); del a
c.ran_query("members")
assert ref() is not None
assert c.idle() is None
assert ref() is None and gc.get_freeze_count() >= frozen
old = weakref.ref(kept); del kept  # garbage now, but frozen
for _ in range(c.THAW_EVERY):
    c.ran_query("members"); wait = c.idle()
assert old() is not None and wait == c.DEEP_IDLE_S - c.IDLE_S
assert c.idle(deep=True) is None
assert old() is None and c.freezes == 0
print("ok")
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
