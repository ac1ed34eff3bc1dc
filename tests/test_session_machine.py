"""P2 (and P1, P3, P6 on the way): random editing sessions against the real server
process over stdio (fake engine). Several documents are opened, edited with random
ranges (surrogate pairs, CRLF, lone CR, U+2028, out-of-range and mid-character
positions), closed and reopened, while completion requests and $/cancelRequest are
interleaved. Invariants:

* the server's text and version of every open document (`draftline/documentText`) equal
  the client's model, whose edit rules are written here independently of the server
  (positions via str.encode("utf-16-le"), LSP line breaks only, a past-the-end character
  clamps to the line end, an edit naming a missing line or splitting a character is
  rejected whole);
* every request is answered exactly once; drafts, when there are any, were computed on
  the text the request was made for;
* nothing but protocol frames on stdout; the process stays alive.
"""

from __future__ import annotations

import json
import re
import uuid

import pytest
from hypothesis import HealthCheck, settings, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from support.clients import RawServer, exactly_once
from support.fake_engine import fingerprint

LINE_BREAK = re.compile(r"\r\n|\r|\n")
PIECES = ["a", "bc", "é", "€", "😀", "𝔘", "\r\n", "\n", "\r", "\u2028", "\x0c", "\t", " ", "x = 1", "\ud83d",
          "\ude00", "\x00", "\u202e"]
TEXTS = st.lists(st.sampled_from(PIECES), max_size=12).map("".join)


class Reject(Exception):
    pass


def json_roundtrip(s: str) -> str:
    """What the server receives for a client string (JSON joins escaped surrogate pairs)."""
    return json.loads(json.dumps(s))


def ref_offset(text: str, line: int, ch: int) -> int:
    """The client's own UTF-16 position rule (independent of analysis/positions.py)."""
    starts = [0] + [m.end() for m in LINE_BREAK.finditer(text)]
    if line >= len(starts):
        raise Reject("no such line")
    s = starts[line]
    m = LINE_BREAK.search(text, s)
    e = m.start() if m else len(text)
    units = 0
    for i, c in enumerate(text[s:e]):
        if units == ch:
            return s + i
        units += len(c.encode("utf-16-le", "surrogatepass")) // 2
        if units > ch:
            raise Reject("inside a character")
    return e  # at or past the end of the line: the line end


def ref_apply(text: str, changes: list[dict]) -> str:
    for c in changes:
        if "range" not in c:
            text = c["text"]
            continue
        r = c["range"]
        a = ref_offset(text, r["start"]["line"], r["start"]["character"])
        b = ref_offset(text, r["end"]["line"], r["end"]["character"])
        if b < a:
            raise Reject("end before start")
        text = text[:a] + c["text"] + text[b:]
    return text


def line_count(text: str) -> int:
    return 1 + len(LINE_BREAK.findall(text))


_SERVER: RawServer | None = None


def server() -> RawServer:
    global _SERVER
    if _SERVER is None or not _SERVER.alive():
        _SERVER = RawServer("steps:3,delay_ms:2")
        _SERVER.initialize()
    return _SERVER


@pytest.fixture(scope="module", autouse=True)
def _shared_server():
    yield
    global _SERVER
    if _SERVER is not None:
        s, _SERVER = _SERVER, None
        try:
            assert s.shutdown_and_exit() == 0
            assert not s.violations, s.violations
        finally:
            s.close()


def position(data, text: str):
    n = line_count(text)
    line = data.draw(st.one_of(st.integers(0, n - 1), st.integers(n, n + 2)), label="line")
    ch = data.draw(st.integers(0, 14), label="character")
    return {"line": line, "character": ch}


class Session(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.s = server()
        self.ns = uuid.uuid4().hex[:8]
        self.docs: dict[str, tuple[str, int]] = {}  # uri -> (text, version)
        self.ids: list = []
        self.expect: dict = {}  # request id -> fingerprint of the text it was made for (or None)
        self.cancelled: set = set()

    def uri(self, i: int) -> str:
        return f"file:///work/{self.ns}/doc{i}.py"

    @initialize(text=TEXTS)
    def first_document(self, text):
        self.open_doc(0, text)

    def open_doc(self, i: int, text: str) -> None:
        uri = self.uri(i)
        self.s.open(uri, text, version=1)
        self.docs[uri] = (json_roundtrip(text), 1)  # the server's str, code point for code point

    @rule(i=st.integers(0, 3), text=TEXTS)
    def open(self, i, text):
        if self.uri(i) not in self.docs:
            self.open_doc(i, text)

    @precondition(lambda self: self.docs)
    @rule(data=st.data())
    def change(self, data):
        uri = data.draw(st.sampled_from(sorted(self.docs)), label="uri")
        text, version = self.docs[uri]
        sent, applied = [], []
        cur = text
        for _ in range(data.draw(st.integers(1, 3), label="n")):
            t = data.draw(TEXTS, label="text")
            if data.draw(st.integers(0, 9), label="full") == 0:
                c = {"text": t}
            else:
                c = {"range": {"start": position(data, cur), "end": position(data, cur)}, "text": t}
            sent.append(c)
            applied.append(dict(c, text=json_roundtrip(t)))  # what the server receives
            try:
                cur = ref_apply(cur, applied[-1:])
            except Reject:
                pass
        self.s.change(uri, version + 1, sent)
        try:
            new = ref_apply(text, applied)
        except Reject:
            return  # the server must ignore the whole notification
        self.docs[uri] = (new, version + 1)

    @precondition(lambda self: self.docs)
    @rule(data=st.data())
    def close(self, data):
        uri = data.draw(st.sampled_from(sorted(self.docs)), label="uri")
        self.s.notify("textDocument/didClose", {"textDocument": {"uri": uri}})
        del self.docs[uri]

    @rule(data=st.data(), inline=st.booleans())
    def complete(self, data, inline):
        i = data.draw(st.integers(0, 4), label="doc")
        uri = self.uri(i)
        text = self.docs.get(uri, ("", 0))[0]
        p = position(data, text)
        method = "textDocument/inlineCompletion" if inline else "textDocument/completion"
        params = {"textDocument": {"uri": uri}, "position": p}
        if inline:
            params["context"] = {"triggerKind": 1}
        mid = self.s.request(method, params)
        self.ids.append(mid)
        self.expect[mid] = fingerprint(text) if uri in self.docs else None

    @precondition(lambda self: self.ids)
    @rule(data=st.data())
    def cancel(self, data):
        mid = data.draw(st.sampled_from(self.ids), label="id")
        self.cancelled.add(mid)
        self.s.notify("$/cancelRequest", {"id": mid})

    @precondition(lambda self: self.docs)
    @rule(data=st.data())
    def check_text(self, data):
        uri = data.draw(st.sampled_from(sorted(self.docs)), label="uri")
        got = self.s.document_text(uri)
        text, version = self.docs[uri]
        assert got is not None, f"{uri} lost"
        assert got["text"] == json_roundtrip(text)
        assert got["version"] == version

    @invariant()
    def alive(self):
        assert self.s.alive(), "server died"
        assert not self.s.violations, self.s.violations

    def teardown(self):
        s = self.s
        try:
            if not s.alive():
                return
            for uri, (text, version) in self.docs.items():
                got = s.document_text(uri)
                assert got == {"text": json_roundtrip(text), "version": version}, uri
            s.wait_for(lambda: all(s.responses.get(i) for i in self.ids), 60)
            assert exactly_once(self.ids, s.responses, strict=False) == []
            for mid in self.ids:
                r = s.responses[mid][0]
                if "error" in r:
                    code = r["error"]["code"]
                    assert code in (-32602, -32800), r
                    if code == -32800:
                        assert mid in self.cancelled
                    continue
                res = r["result"]
                its = res["items"]
                for it in its:
                    label = it.get("insertText") or it["textEdit"]["newText"]
                    assert self.expect[mid] and self.expect[mid] in label, (mid, label, self.expect[mid])
                    assert "command" not in it
        finally:
            for uri in self.docs:
                s.notify("textDocument/didClose", {"textDocument": {"uri": uri}})


Session.TestCase.settings = settings(max_examples=50, stateful_step_count=20, deadline=None, derandomize=True,
                                     database=None, suppress_health_check=list(HealthCheck))
test_random_sessions = Session.TestCase
