"""A minimal JSON-RPC/LSP client over a subprocess's stdio, for benchmarks.

Deliberately tiny and synchronous: one request in flight, notifications from the server
(logs, progress) are skipped while waiting for a response.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import Any


class LspProcess:
    def __init__(self, args: list[str] | None = None, init_options: dict | None = None, env: dict | None = None,
                 roots: list[str] | None = None):
        cmd = [sys.executable, "-m", "draftline.lsp.cli", "serve"] + (args or [])
        self.p = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=subprocess.DEVNULL if not os.environ.get("BENCH_STDERR") else None,
                                  env=env)
        self.next_id = 0
        from pathlib import Path

        folders = [{"uri": Path(r).as_uri(), "name": Path(r).name} for r in roots or []]
        self.request("initialize", {"processId": os.getpid(), "rootUri": folders[0]["uri"] if folders else None,
                                    "workspaceFolders": folders or None,
                                    "capabilities": {"window": {"workDoneProgress": False}},
                                    "initializationOptions": init_options or {}})
        self.notify("initialized", {})

    def _send(self, msg: dict) -> None:
        body = json.dumps(msg).encode()
        self.p.stdin.write(b"Content-Length: %d\r\n\r\n" % len(body) + body)
        self.p.stdin.flush()

    def _read(self) -> dict:
        headers = {}
        while True:
            line = self.p.stdout.readline()
            if not line:
                raise EOFError("server closed stdout")
            line = line.strip()
            if not line:
                break
            k, _, v = line.decode().partition(":")
            headers[k.lower()] = v.strip()
        return json.loads(self.p.stdout.read(int(headers["content-length"])))

    def notify(self, method: str, params: Any) -> None:
        self._send({"jsonrpc": "2.0", "method": method, "params": params})

    def request(self, method: str, params: Any) -> Any:
        self.next_id += 1
        rid = self.next_id
        self._send({"jsonrpc": "2.0", "id": rid, "method": method, "params": params})
        while True:
            msg = self._read()
            if msg.get("id") == rid and "method" not in msg:
                if "error" in msg:
                    raise RuntimeError(msg["error"])
                return msg.get("result")
            if "method" in msg and "id" in msg:  # a request from the server: answer null
                self._send({"jsonrpc": "2.0", "id": msg["id"], "result": None})

    def open(self, uri: str, text: str, lang: str = "python") -> None:
        self.notify("textDocument/didOpen", {"textDocument": {"uri": uri, "languageId": lang, "version": 1, "text": text}})

    def change(self, uri: str, version: int, line: int, char: int, text: str) -> None:
        rng = {"start": {"line": line, "character": char}, "end": {"line": line, "character": char}}
        self.notify("textDocument/didChange", {"textDocument": {"uri": uri, "version": version},
                                                "contentChanges": [{"range": rng, "text": text}]})

    def inline(self, uri: str, line: int, char: int) -> list[dict]:
        r = self.request("textDocument/inlineCompletion", {
            "textDocument": {"uri": uri}, "position": {"line": line, "character": char},
            "context": {"triggerKind": 1}})
        return r["items"] if isinstance(r, dict) else (r or [])

    def close(self) -> int:
        try:
            self.request("shutdown", None)
            self.notify("exit", None)
            return self.p.wait(timeout=10)
        except Exception:
            self.p.kill()
            return -1


def timed(fn, *a) -> tuple[float, Any]:
    t = time.perf_counter()
    r = fn(*a)
    return (time.perf_counter() - t) * 1000, r
