"""Context from the rest of the project (completion.context): what goes in the header, that
it stays put while the user types, and that a header change is a PIE splice, not a
re-encode of the file."""

from __future__ import annotations

import pytest

from conftest import stdlib_source
from draftline.completion.context import Headers, ProjectIndex, identifiers, index_file, render, select

HELPERS = '''import os


def normalize_path(path, base=None):
    """Return path made absolute against base and normalized."""
    if base is not None:
        path = os.path.join(base, path)
    return os.path.normpath(path)


class Registry:
    """Names to handlers."""

    def register(self, name, handler):
        self.handlers[name] = handler
'''

MAIN = '''from helpers import Registry, normalize_path


def load(paths, base):
    registry = Registry()
    out = []
    for p in paths:
        full = normalize_path(p, base)
        out.append(full)
    return '''


class FixedHeaders:
    """Headers the test chooses (`text`), in place of `context.Headers`."""

    def __init__(self, text: str) -> None:
        self.text = text

    def current(self, doc):
        return self.text

    def update(self, doc, text, cursor, others, cancel=None):
        return self.text

    def drop(self, doc):
        pass


class Tok:
    """Counts words as tokens (the selection only needs sizes)."""

    def encode(self, text):
        return text.split()


def test_an_index_holds_chunks_and_signatures_with_their_docstring():
    fi = index_file("/p/helpers.py", "helpers.py", HELPERS)
    assert "normalize_path" in fi.defs and "Registry" in fi.defs
    assert fi.defs["normalize_path"] == ('def normalize_path(path, base=None):\n'
                                         '    """Return path made absolute against base and normalized."""')
    assert fi.chunks and all(c.idents for c in fi.chunks)
    assert "self" not in identifiers("self.handlers[name] = handler")


def test_the_header_holds_what_the_code_at_the_cursor_uses():
    files = [index_file("/p/helpers.py", "helpers.py", HELPERS),
             index_file("/p/other.py", "other.py", "def unrelated_thing():\n    return 42\n" * 3)]
    picked, sigs, score = select(MAIN, frozenset({"load"}), files, Tok(), budget=400)
    assert any("def normalize_path(path, base=None):" in s for s in sigs)
    assert picked and picked[0].path == "helpers.py" and score > 0
    text = render(picked, sigs, "main.py", None)
    assert text.startswith("# ---- helpers.py ----\n") and text.endswith("# ---- main.py ----\n")
    qwen = render(picked, sigs, "main.py", ("<|repo_name|>", "<|file_sep|>"))
    assert qwen.startswith("<|repo_name|>project\n<|file_sep|>helpers.py\n") and qwen.endswith("<|file_sep|>main.py\n")


def test_the_header_stays_while_the_user_types_and_the_file_itself_is_left_out(tmp_path):
    (tmp_path / "helpers.py").write_text(HELPERS)
    (tmp_path / "main.py").write_text(MAIN + "out\n")  # the file on disk: its text never goes in
    index = ProjectIndex()
    index.build([str(tmp_path)]).join()
    h = Headers(index, Tok(), budget=400)
    uri = (tmp_path / "main.py").as_uri()
    first = h.update(uri, MAIN, len(MAIN), {})
    assert "normalize_path" in first and "return out" not in first and "# ---- main.py" not in first.split("\n")[0]
    typed = MAIN + "o"
    assert h.update(uri, typed, len(typed), {}) == first  # a keystroke: the same header


@pytest.mark.parametrize("mode", ["pie"])
def test_a_header_change_is_a_splice_not_a_reencode(tiny, mode):
    """The header goes first: when it changes, the file's tokens behind it move and are
    re-rotated; only the header's changed tokens run through the model."""
    from draftline.completion.engine import Engine, EngineConfig

    eng = Engine(tiny, EngineConfig(k=1, max_tokens=2, latency_budget_ms=0, project_context=True, monitors=False))

    eng.headers = FixedHeaders("# ---- a.py ----\ndef alpha(x):\n    return x + 1\n# ---- main.py ----\n")
    src = stdlib_source("textwrap.py")[:6000]
    ctx_cls = __import__("draftline.completion.engine", fromlist=["DocContext"]).DocContext
    r0 = eng.complete("file:///m.py", src, len(src), context=ctx_cls("python"))
    n = r0.tokens["prompt"]
    assert r0.tokens["computed"] >= n - 2  # cold: everything
    eng.headers.text = "# ---- b.py ----\ndef beta(y, z):\n    \"\"\"Twice y, z times.\"\"\"\n    return y * z * 2\n# ---- main.py ----\n"
    same = eng.complete("file:///m.py", src, len(src), context=ctx_cls("python"))
    assert same.sync.computed == 0  # a request keeps the header its cache holds
    st = eng.prepare("file:///m.py", src, len(src))  # idle time: the new header goes in
    header = len(eng.tok.encode(eng.headers.text))
    assert st.moved > n // 2  # the file's tokens moved behind the new header
    assert st.computed <= header + 4  # only the header (and the tokens at its seam)
    r1 = eng.complete("file:///m.py", src, len(src), context=ctx_cls("python"))
    ids = eng.tok.encode(eng.headers.text)
    assert r1.sync.computed == 0 and eng.cache_of("file:///m.py").tokens[:len(ids)] == ids  # the request found it there


def test_the_header_is_chosen_in_idle_time_not_on_the_request(tiny, tmp_path):
    """A request never runs the selection (200-900 ms over a real workspace): it uses the
    header chosen last; `update_header` (idle time, stopped by a request's cancel) chooses
    it, and the next request's prompt holds it."""
    import threading

    from draftline.completion.context import Headers
    from draftline.completion.engine import DocContext, Engine, EngineConfig
    from draftline.completion.kvcache import Cancelled

    (tmp_path / "helpers.py").write_text(HELPERS)
    index = ProjectIndex()
    index.build([str(tmp_path)]).join()
    eng = Engine(tiny, EngineConfig(k=1, max_tokens=2, latency_budget_ms=0, project_context=True, monitors=False))
    eng.headers = Headers(index, eng.tok, eng.config.header_tokens)
    uri = (tmp_path / "main.py").as_uri()
    ctx = DocContext("python")
    r0 = eng.complete(uri, MAIN, len(MAIN), context=ctx)
    assert eng.headers.current(uri) == ""  # the request chose nothing
    stop = threading.Event()
    stop.set()
    with pytest.raises(Cancelled):
        eng.update_header(uri, MAIN, len(MAIN), ctx, stop)
    assert eng.headers.current(uri) == ""
    assert eng.update_header(uri, MAIN, len(MAIN), ctx) is True
    assert "normalize_path" in eng.headers.current(uri)
    assert eng.update_header(uri, MAIN, len(MAIN), ctx) is False  # the same place: kept
    eng.prepare(uri, MAIN, len(MAIN))  # the policy's idle-time sync after a changed header
    r1 = eng.complete(uri, MAIN, len(MAIN), context=ctx)
    header = len(eng.tok.encode(eng.headers.current(uri)))
    assert r1.tokens["prompt"] >= r0.tokens["prompt"] + header - 2


def test_a_new_header_goes_in_whole_and_keeps_the_file(tiny):
    """A new header is synced in one idle-time step with the file's tokens kept behind it;
    capped like a window step (64 tokens here), it left a header and a sliver of the file,
    and the next request re-encoded a short window."""
    from draftline.completion.engine import DocContext, Engine, EngineConfig

    eng = Engine(tiny, EngineConfig(k=1, max_tokens=2, latency_budget_ms=0, project_context=True, monitors=False))

    eng.headers = FixedHeaders("")
    src = stdlib_source("textwrap.py")[:6000]
    r0 = eng.complete("file:///h.py", src, len(src), context=DocContext("python"))
    n = r0.tokens["prompt"]
    eng.headers.text = "".join(f"# ---- m{i}.py ----\ndef helper_{i}(value, scale={i}):\n    return value * scale\n"
                               for i in range(12)) + "# ---- h.py ----\n"
    header = len(eng.tok.encode(eng.headers.text))
    assert header > 64 + 16
    st = eng.prepare("file:///h.py", src, len(src))
    assert st.computed <= header + 4 and st.moved > n // 2
    r1 = eng.complete("file:///h.py", src, len(src), context=DocContext("python"))
    assert r1.sync.computed == 0 and not r1.short_window
