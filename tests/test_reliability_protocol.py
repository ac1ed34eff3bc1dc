"""P1 (exactly one response per request), P2 (bad input never kills or wedges), P9 (stdout
carries only frames), P10 (lifecycle and exit codes): the real server process over stdio,
spoken to in raw bytes (lsp/testing.RawServer), with the fake engine."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from support.clients import RawServer, exactly_once, frame

URI = "file:///work/p.py"


def pos(line, ch):
    return {"line": line, "character": ch}


def completion_params(uri=URI, line=0, ch=0):
    return {"textDocument": {"uri": uri}, "position": pos(line, ch)}


def err(msg):
    assert "error" in msg, msg
    return msg["error"]["code"]


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    """One initialized server shared by the bad-input tests of this module; the last
    test shuts it down and checks the exit code."""
    s = RawServer("steps:2,delay_ms:1", stderr_path=str(tmp_path_factory.mktemp("srv") / "stderr.txt"))
    s.initialize()
    s.open(URI, "import os\nx = os.path.join('a', 'b')\n")
    yield s
    s.close()


def still_serving(s: RawServer) -> None:
    assert s.alive()
    st = s.status(timeout=30)
    assert st["version"]
    assert not s.violations, s.violations


# -- P1 ---------------------------------------------------------------------------------------
def test_exactly_once_check_can_fail():
    """The harness check itself: a missing, a duplicate and an unsolicited response."""
    assert exactly_once([1, 2], {1: [{}], 2: [{}]}) == []
    assert exactly_once([1, 2], {1: [{}]}) == ["id 2: 0 responses"]
    assert exactly_once([1], {1: [{}, {}]}) == ["id 1: 2 responses"]
    assert exactly_once([1], {1: [{}], 7: [{}]}) == ["response to unknown id 7"]


def test_requests_before_initialize_get_32002_and_notifications_are_dropped():
    with RawServer() as s:
        assert err(s.call("textDocument/completion", completion_params())) == -32002
        assert err(s.call("draftline/status", {})) == -32002
        s.open(URI, "dropped before initialize")
        s.initialize()
        assert s.document_text(URI) is None  # the early didOpen was dropped, as the spec says
        assert err(s.call("initialize", {"processId": None, "rootUri": None, "capabilities": {}})) == -32600
        assert s.missing_or_duplicate() == []
        assert s.shutdown_and_exit() == 0


def test_requests_after_shutdown_get_32600_then_exit_0():
    with RawServer() as s:
        s.initialize()
        s.open(URI, "x = 1\n")
        assert s.result("shutdown") is None
        assert err(s.call("textDocument/completion", completion_params())) == -32600
        assert err(s.call("draftline/status", {})) == -32600
        assert err(s.call("shutdown")) == -32600
        s.notify("exit")
        assert s.proc.wait(20) == 0
        assert s.missing_or_duplicate() == []
        assert not s.violations


@pytest.mark.parametrize("params", [
    completion_params(line=-1),
    completion_params(ch=-5),
    {"textDocument": {"uri": URI}, "position": {"line": "abc", "character": 0}},
    {"textDocument": {"uri": URI}, "position": None},
    {"textDocument": {"uri": URI}},
    {"textDocument": "not an object", "position": pos(0, 0)},
    {"textDocument": {"uri": URI}, "position": pos(2**40, 0)},
    "a string",
    [1, 2, 3],
])
def test_invalid_params_get_32602(srv, params):
    r = srv.call("textDocument/completion", params)
    assert err(r) == -32602, r
    r = srv.call("textDocument/inlineCompletion", params)
    assert err(r) == -32602, r


def test_malformed_requests_are_answered(srv):
    assert err(srv.call("no/such/method", {})) == -32601
    srv.notify("no/such/notification", {})
    # an id that is not a string or number: answered with a null id (JSON-RPC)
    before = len(srv.responses.get(None, []))
    srv.send({"jsonrpc": "2.0", "id": {"x": 1}, "method": "draftline/status", "params": {}})
    srv.wait_for(lambda: len(srv.responses.get(None, [])) > before)
    assert srv.responses[None][-1]["error"]["code"] == -32600
    # wrong protocol version: answered with its id
    srv.sent_ids.append("v1")
    srv.send({"jsonrpc": "1.0", "id": "v1", "method": "draftline/status"})
    assert err(srv.wait("v1")) == -32600
    # a batch (not part of LSP) and a bare value
    for body in ([{"jsonrpc": "2.0", "id": 5000, "method": "draftline/status"}], 42, "x", None):
        n = len(srv.responses.get(None, []))
        srv.send(body)
        srv.wait_for(lambda: len(srv.responses.get(None, [])) > n)
    still_serving(srv)


def test_unserializable_result_becomes_an_error():
    with RawServer("steps:1,fail:bad,fail_first:1") as s:
        s.initialize()
        s.open(URI, "x = 1\n")
        r = s.wait(s.inline(URI, 0, 5))
        assert err(r) == -32603 and "serialized" in r["error"]["message"]
        r = s.wait(s.inline(URI, 0, 5))  # the next one is fine
        assert r["result"]["items"]
        assert s.missing_or_duplicate() == []
        assert s.shutdown_and_exit() == 0


def test_cancel_request_gets_32800_exactly_once():
    with RawServer("steps:2000,delay_ms:5") as s:
        s.initialize()
        s.open(URI, "x = 1\n")
        mid = s.inline(URI, 0, 5)
        s.until(lambda: s.engine_info().get("calls", 0) >= 1)  # decoding has started
        s.notify("$/cancelRequest", {"id": mid})
        r = s.wait(mid, timeout=20)
        assert err(r) == -32800
        # cancelling again, or an unknown id, adds nothing
        s.notify("$/cancelRequest", {"id": mid})
        s.notify("$/cancelRequest", {"id": 99999})
        info = s.until(lambda: (i := s.engine_info()) and i["active"] == 0 and i)  # the worker let go
        assert info["cancelled"] == 1 and info["max_steps_after_cancel"] <= 1
        assert s.missing_or_duplicate() == []
        assert s.shutdown_and_exit() == 0


def test_pending_requests_answered_at_shutdown():
    """A request still running when shutdown arrives is answered (cancelled), once."""
    with RawServer("steps:5000,delay_ms:5") as s:
        s.initialize()
        s.open(URI, "x = 1\n")
        mid = s.inline(URI, 0, 5)
        s.until(lambda: s.engine_info().get("calls", 0) >= 1)
        assert s.result("shutdown") is None
        assert err(s.wait(mid)) == -32800
        s.notify("exit")
        assert s.proc.wait(20) == 0
        assert s.missing_or_duplicate() == []


# -- P2 ---------------------------------------------------------------------------------------
def test_malformed_json_invalid_utf8_and_nul_bytes(srv):
    n0 = len(srv.responses.get(None, []))
    srv.send_raw(frame(b"{not json"))
    srv.send_raw(frame(b""))
    # a request whose body is broken: answered with its id when it can be found
    for mid, body in [(9001, b'{"jsonrpc":"2.0","id":9001,"method":"draftline/status","params":{"a":"\xff\xfe"}}'),
                      (9002, b'{"jsonrpc":"2.0","id":9002,"method":"draftline/status","params":{"a":"x\x00y"}}'),
                      (9003, b'{"jsonrpc":"2.0","id":9003,"method":"draftline/status","params":{"a":1,,}}'),
                      ("s-4", b'{"jsonrpc":"2.0","id":"s-4","method":"draftline/status","params":\x00}')]:
        srv.sent_ids.append(mid)
        srv.send_raw(frame(body))
        assert err(srv.wait(mid)) == -32700
    srv.wait_for(lambda: len(srv.responses.get(None, [])) >= n0 + 2)
    # NUL characters inside document text are data: stored exactly, never completed
    text = "a\x00b\nc\u0000d\n"
    srv.open("file:///work/nul.py", text)
    assert srv.document_text("file:///work/nul.py")["text"] == text
    r = srv.wait(srv.inline("file:///work/nul.py", 0, 1))
    assert r["result"]["items"] == []
    still_serving(srv)


def test_lying_content_length_does_not_wedge(srv):
    # declared far beyond the limit, then a short body and a normal frame right after
    srv.sent_ids.append(9100)
    srv.send_raw(b"Content-Length: 999999999999\r\n\r\n" + b'{"jsonrpc":"2.0","id":9100,"method":"draftline/status"}')
    mid = srv.request("draftline/status", {})
    assert "result" in srv.wait(mid, timeout=20)
    assert err(srv.wait(9100)) == -32600
    # declared longer than the body (within the limit): resynchronized on the next header
    srv.sent_ids.append(9101)
    srv.send_raw(b"Content-Length: 5000\r\n\r\n" + b'{"jsonrpc":"2.0","id":9101,"method":"draftline/status"}')
    mid = srv.request("draftline/status", {})
    assert "result" in srv.wait(mid, timeout=20)
    assert err(srv.wait(9101)) == -32700
    # declared shorter than the body: the rest is garbage before the next header
    srv.send_raw(b"Content-Length: 10\r\n\r\n" + b'{"jsonrpc":"2.0","id":9102,"method":"draftline/status"}')
    mid = srv.request("draftline/status", {})
    assert "result" in srv.wait(mid, timeout=20)
    # garbage, an overlong header line, a header block without Content-Length, bad numbers
    srv.send_raw(b"hello\r\n" + b"X" * 200_000 + b"\r\n\r\n")
    srv.send_raw(b"Content-Type: application/json\r\n\r\n{}")
    srv.send_raw(b"Content-Length: -5\r\n\r\n")
    srv.send_raw(b"Content-Length: 99999999999999999999999999\r\n\r\n{}")
    still_serving(srv)


def test_oversized_message_is_skipped_with_an_error(srv):
    """A truthful 65 MiB request (over the 64 MiB limit) is discarded in chunks, answered
    with an error carrying its id, and the next message is read normally."""
    pad = "x" * (65 * 2**20)
    body = b'{"jsonrpc":"2.0","id":9200,"method":"draftline/status","params":{"pad":"' + pad.encode() + b'"}}'
    srv.sent_ids.append(9200)
    srv.send_raw(frame(body))
    del body, pad
    assert err(srv.wait(9200, timeout=60)) == -32600
    still_serving(srv)


def test_ten_megabyte_document(srv):
    uri = "file:///work/big.py"
    line = "value = compute(alpha, beta, gamma)  # ééé 😀\n"
    text = line * (10 * 2**20 // len(line.encode()))
    srv.open(uri, text)
    srv.change(uri, 2, [{"range": {"start": pos(5, 0), "end": pos(5, 5)}, "text": "VALUE"}])
    expect = text.split("\n")
    expect[5] = "VALUE" + expect[5][5:]
    expect = "\n".join(expect)
    got = srv.document_text(uri, timeout=60)
    assert got["version"] == 2 and got["text"] == expect
    r = srv.wait(srv.inline(uri, 5, 5), timeout=60)
    assert r["result"]["items"] == []  # over the model's document limit: no drafts, no error
    srv.notify("textDocument/didClose", {"textDocument": {"uri": uri}})
    still_serving(srv)


def test_deep_nesting(srv):
    deep = b"[" * 200_000 + b"]" * 200_000
    srv.sent_ids.append(9300)
    srv.send_raw(frame(b'{"jsonrpc":"2.0","id":9300,"method":"draftline/status","params":{"a":' + deep + b"}}"))
    assert err(srv.wait(9300)) == -32700
    nested: object = 1
    for _ in range(400):
        nested = {"a": [nested]}
    r = srv.call("draftline/status", {"deep": nested})  # deep but parseable: an answer
    assert "result" in r or err(r) in (-32602, -32603)
    srv.notify("workspace/didChangeConfiguration", {"settings": {"draftline": nested}})
    still_serving(srv)


def test_out_of_range_positions_and_unknown_uris(srv):
    uri = "file:///work/range.py"
    srv.open(uri, "ab\ncd\n")
    assert err(srv.call("textDocument/completion", completion_params(uri, 10**6, 0))) == -32602
    r = srv.wait(srv.inline(uri, 0, 10**6))  # past the line end: the line end (LSP rule)
    assert "result" in r
    srv.change(uri, 2, [{"range": {"start": pos(50, 0), "end": pos(50, 1)}, "text": "zz"}])
    srv.change(uri, 3, [{"range": {"start": pos(1, 1), "end": pos(0, 0)}, "text": "zz"}])  # end before start
    srv.change("file:///work/never-opened.py", 2, [{"text": "boom"}])
    srv.notify("textDocument/didClose", {"textDocument": {"uri": "file:///work/never-opened.py"}})
    assert srv.document_text(uri) == {"text": "ab\ncd\n", "version": 1}
    assert err(srv.call("textDocument/inlineCompletion", {
        "textDocument": {"uri": "file:///work/never-opened.py"}, "position": pos(0, 0),
        "context": {"triggerKind": 1}})) == -32602
    still_serving(srv)


def test_zz_shared_server_still_shuts_down_cleanly(srv):
    """After everything above: every request answered exactly once, no stray bytes on
    stdout, and shutdown + exit gives exit code 0."""
    srv.drain()
    assert srv.missing_or_duplicate() == []
    assert not srv.violations
    assert srv.shutdown_and_exit() == 0


# -- P9 ---------------------------------------------------------------------------------------
def test_prints_to_stdout_and_fd1_do_not_reach_the_protocol_stream(tmp_path):
    err_path = str(tmp_path / "stderr.txt")
    with RawServer("steps:2,print:1", stderr_path=err_path) as s:
        s.initialize()
        s.open(URI, "x = 1\n")
        for _ in range(3):
            r = s.wait(s.inline(URI, 0, 5))
            assert r["result"]["items"]
        assert s.shutdown_and_exit() == 0
        assert not s.violations, s.violations
        assert s.missing_or_duplicate() == []
    text = open(err_path, encoding="utf-8", errors="replace").read()
    assert "print() to sys.stdout" in text and "raw write to fd 1" in text  # it went to stderr


# -- P10 --------------------------------------------------------------------------------------
def test_exit_without_shutdown_is_1():
    with RawServer() as s:
        s.initialize()
        s.notify("exit")
        assert s.proc.wait(20) == 1


def test_exit_before_initialize_is_1():
    with RawServer() as s:
        s.notify("exit")
        assert s.proc.wait(20) == 1


def test_stdin_eof_exits_1_even_after_shutdown():
    for do_shutdown in (False, True):
        with RawServer() as s:
            s.initialize()
            if do_shutdown:
                assert s.result("shutdown") is None
            s.proc.stdin.close()
            assert s.proc.wait(20) == 1


def test_exits_when_the_editor_process_dies():
    parent = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        with RawServer() as s:
            s.initialize(process_id=parent.pid)
            s.open(URI, "x = 1\n")
            assert s.status()["documents"] == 1
            os.kill(parent.pid, signal.SIGKILL)  # not reaped yet: a zombie counts as gone
            assert s.proc.wait(60) == 1  # (the watcher looks every second)
    finally:
        parent.kill()
        parent.wait()


@pytest.mark.parametrize("extra", [("--stdio",), ("--log-level", "DEBUG", "--stdio")])
def test_starts_with_the_flags_vscode_languageclient_appends(extra):
    """vscode-languageclient starts `serverPath serve` + `--stdio` (stdio transport); its
    debug run adds `--log-level DEBUG` after `serve`.  The server exited at once on them
    ("unrecognized arguments: --stdio"): a VS Code user got no suggestion at all."""
    with RawServer(args=extra) as s:
        r = s.initialize()
        assert r["capabilities"]["inlineCompletionProvider"] is not None
        assert s.shutdown_and_exit() == 0


def test_client_process_id_flag_is_watched_before_initialize():
    parent = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        with RawServer(args=("--stdio", f"--clientProcessId={parent.pid}")) as s:
            assert s.alive()
            os.kill(parent.pid, signal.SIGKILL)
            assert s.proc.wait(15) == 1  # no initialize was needed to know the editor's pid
    finally:
        parent.kill()
        parent.wait()


# -- logging hygiene ---------------------------------------------------------------------------
def test_no_document_text_on_stderr_at_default_level(tmp_path):
    err_path = str(tmp_path / "stderr.txt")
    secret = "SECRET_TOKEN_4242"
    with RawServer("steps:2", stderr_path=err_path, log_level="INFO") as s:
        s.initialize()
        s.open(URI, f"key = '{secret}'\n")
        s.change(URI, 2, [{"range": {"start": pos(0, 0), "end": pos(0, 0)}, "text": f"# {secret}\n"}])
        s.change(URI, 3, [{"range": {"start": pos(99, 0), "end": pos(99, 0)}, "text": secret}])  # rejected edit
        s.wait(s.inline(URI, 1, 3))
        s.call("textDocument/completion", {"textDocument": {"uri": URI}, "position": {"line": secret, "character": 0}})
        s.sent_ids.append(77)
        s.send_raw(frame(b'{"jsonrpc":"2.0","id":77,"method":"x","params":{"t":"' + secret.encode() + b'",}}'))
        s.wait(77)
        s.open("file:///work/binary.py", f"\x00{secret}")
        assert s.shutdown_and_exit() == 0
    text = open(err_path, encoding="utf-8", errors="replace").read()
    assert "model ready" in text  # the log is there, at INFO
    assert secret not in text


def test_tcp_transport_has_the_same_bounded_framing(tmp_path):
    """`serve --tcp` reads with the stdio server's framing: a lying Content-Length is
    answered with an error, the next frame is served, and shutdown + exit gives code 0."""
    import json
    import socket

    from support.clients import SERVE

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = dict(os.environ, DRAFTLINE_FAKE_ENGINE="steps:2,delay_ms:1")
    proc = subprocess.Popen(SERVE + ["--tcp", f"127.0.0.1:{port}"], env=env,
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=open(tmp_path / "stderr.txt", "wb"))
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                conn = socket.create_connection(("127.0.0.1", port), timeout=30)
                break
            except OSError:
                assert time.monotonic() < deadline and proc.poll() is None, "server did not listen"
                time.sleep(0.2)
        rfile = conn.makefile("rb")

        def send(obj_or_bytes):
            data = obj_or_bytes if isinstance(obj_or_bytes, bytes) else frame(json.dumps(obj_or_bytes).encode())
            conn.sendall(data)

        seen: dict = {}

        def response(mid):
            while mid not in seen:
                n = None
                while True:
                    line = rfile.readline()
                    assert line, "connection closed"
                    if line == b"\r\n":
                        break
                    if line.lower().startswith(b"content-length:"):
                        n = int(line.split(b":")[1])
                msg = json.loads(rfile.read(n))
                if "method" not in msg:
                    seen[msg.get("id")] = msg
            return seen[mid]

        send({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"capabilities": {}}})
        assert "result" in response(1)
        send({"jsonrpc": "2.0", "method": "initialized", "params": {}})
        send(b"Content-Length: 999999999999\r\n\r\n" + b'{"jsonrpc":"2.0","id":2,"method":"draftline/status"}')
        send({"jsonrpc": "2.0", "id": 3, "method": "draftline/status", "params": {}})
        assert "result" in response(3)
        assert err(response(2)) == -32600
        send({"jsonrpc": "2.0", "id": 4, "method": "shutdown"})
        assert "result" in response(4)
        send({"jsonrpc": "2.0", "method": "exit"})
        assert proc.wait(timeout=30) == 0
        conn.close()
    finally:
        if proc.poll() is None:
            proc.kill()
