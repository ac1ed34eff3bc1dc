"""Soak test: thousands of editor-like operations over 50 documents against the real
server process (stdio), with the fake engine by default or the real model (`--real`).

Operations: typing and deleting at random places (single- and multi-change edits,
non-ASCII and CRLF included), completion requests (inline and classic; some followed at
once by an edit or a $/cancelRequest, as an editor does while the user keeps typing),
closing and reopening documents. Every `--check-every` operations the server's copy of
every document (`draftline/documentText`) is compared with the client's, and RSS sampled.

Reports completion latency p50/p99 (request sent -> response read), RSS over time,
crashes (unexpected exits; the server is restarted and the documents reopened), lost or
diverged documents, requests without exactly one response, and non-protocol bytes on
stdout. The last line with `--json` holds all of it.

    python bench/soak.py                      # fake engine, 5000 operations
    python bench/soak.py --real --ops 400     # the real default model
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the tests' clients and fake engine
from support.clients import RawServer, exactly_once  # noqa: E402

SNIPPETS = ["x", "e", " ", "(", ")", ".", "_", "self.", "return ", "\n", "\n    ", "é", "😀", "\r\n", "# todo\n",
            "for i in range(n):\n        ", "import os\n"]


def sources(n: int, kb: int) -> list[str]:
    import json as _json

    lib = Path(_json.__file__).resolve().parents[1]
    files = sorted(p for p in lib.glob("*.py") if p.stat().st_size > kb * 1024)[: n * 2]
    out = []
    for p in files:
        try:
            out.append(p.read_text(encoding="utf-8")[: kb * 1024])
        except (UnicodeDecodeError, OSError):
            continue
        if len(out) == n:
            break
    while len(out) < n:
        out.append(out[len(out) % max(1, len(out))] if out else "x = 1\n" * 200)
    return out


LINE_BREAK = re.compile(r"\r\n|\r|\n")


def utf16_pos(text: str, offset: int) -> tuple[int, int]:
    """LSP position of a str offset (never inside \r\n: callers avoid that)."""
    line, start = 0, 0
    for m in LINE_BREAK.finditer(text, 0, offset):
        line, start = line + 1, m.end()
    return line, len(text[start:offset].encode("utf-16-le")) // 2


def pct(xs: list[float], q: float) -> float:
    if not xs:
        return 0.0
    s = sorted(xs)
    return s[min(len(s) - 1, int(round(q / 100 * (len(s) - 1))))]


class Soak:
    def __init__(self, a: argparse.Namespace):
        self.a = a
        self.rng = random.Random(a.seed)
        self.uris = [f"file:///soak/doc{i:02d}.py" for i in range(a.docs)]
        self.base = dict(zip(self.uris, sources(a.docs, a.doc_kb)))
        self.docs: dict[str, tuple[str, int]] = {}
        self.latency: list[float] = []
        self.counts = {"edits": 0, "completions": 0, "answered_with_items": 0, "empty": 0, "cancelled": 0,
                       "errors": 0, "timeouts": 0, "closes": 0, "checks": 0}
        self.rss: list[tuple[int, float]] = []
        self.crashes = 0
        self.lost = 0
        self.problems: list[str] = []
        self.violations = 0
        self.srv: RawServer | None = None

    def start(self) -> None:
        fake = None if self.a.real else self.a.fake
        self.srv = RawServer(fake, stderr_path=self.a.stderr)
        self.srv.initialize(init_options={"drafts": self.a.k, "maxTokens": self.a.max_tokens})
        for u in list(self.docs):
            self.srv.open(u, self.docs[u][0], self.docs[u][1])

    def open(self, u: str) -> None:
        t = self.base[u]
        self.docs[u] = (t, 1)
        self.srv.open(u, t, 1)

    def edit(self, u: str | None = None) -> None:
        u = u or self.rng.choice(list(self.docs))
        text, v = self.docs[u]
        n = self.rng.choice([1, 1, 1, 2])
        changes = []
        for _ in range(n):
            a = self.rng.randrange(len(text) + 1)
            while 0 < a < len(text) and (text[a - 1] == "\r" and text[a] == "\n" or "\udc00" <= text[a] <= "\udfff"):
                a -= 1
            b = a
            if self.rng.random() < 0.3:
                b = min(len(text), a + self.rng.randrange(1, 8))
                while b < len(text) and (text[b - 1] == "\r" and text[b] == "\n" or "\udc00" <= text[b] <= "\udfff"):
                    b += 1
            ins = self.rng.choice(SNIPPETS) if self.rng.random() < 0.8 else ""
            (l1, c1), (l2, c2) = utf16_pos(text, a), utf16_pos(text, b)
            changes.append({"range": {"start": {"line": l1, "character": c1}, "end": {"line": l2, "character": c2}},
                            "text": ins})
            text = text[:a] + ins + text[b:]
        self.docs[u] = (text, v + 1)
        self.srv.change(u, v + 1, changes)
        self.counts["edits"] += 1

    def complete(self) -> None:
        u = self.rng.choice(list(self.docs))
        text, _ = self.docs[u]
        line, ch = utf16_pos(text, self.rng.randrange(len(text) + 1))
        inline = self.rng.random() < 0.7
        params = {"textDocument": {"uri": u}, "position": {"line": line, "character": ch}}
        if inline:
            params["context"] = {"triggerKind": 2}
        t0 = time.perf_counter()
        mid = self.srv.request("textDocument/inlineCompletion" if inline else "textDocument/completion", params)
        r = self.rng.random()
        if r < 0.1:
            self.srv.notify("$/cancelRequest", {"id": mid})
        elif r < 0.2:
            self.edit(u)  # the user keeps typing: the answer must be empty, never stale
        self.counts["completions"] += 1
        try:
            resp = self.srv.wait(mid, timeout=self.a.timeout)
        except TimeoutError:
            self.counts["timeouts"] += 1
            return
        self.latency.append((time.perf_counter() - t0) * 1000)
        if "error" in resp:
            self.counts["cancelled" if resp["error"]["code"] == -32800 else "errors"] += 1
        elif resp["result"]["items"]:
            self.counts["answered_with_items"] += 1
        else:
            self.counts["empty"] += 1

    def check(self, op: int) -> None:
        self.counts["checks"] += 1
        for u, (text, v) in self.docs.items():
            got = self.srv.document_text(u)
            if got != {"text": text, "version": v}:
                self.lost += 1
                self.problems.append(f"op {op}: {u} " + ("missing" if got is None else "diverged"))
                self.srv.notify("textDocument/didClose", {"textDocument": {"uri": u}})
                self.open(u)
        self.rss.append((op, round(self.srv.rss() / 2**20, 1)))

    def run(self) -> dict:
        t_start = time.perf_counter()
        self.start()
        for u in self.uris:
            self.open(u)
        self.check(0)
        for op in range(1, self.a.ops + 1):
            if not self.srv.alive():
                self.crashes += 1
                self.problems.append(f"op {op}: server exited with {self.srv.proc.poll()}")
                self.violations += len(self.srv.violations)
                self.srv.close()
                self.start()
            r = self.rng.random()
            try:
                if r < self.a.complete_ratio:
                    self.complete()
                elif r < self.a.complete_ratio + 0.01 and len(self.docs) > 1:
                    u = self.rng.choice(list(self.docs))
                    self.srv.notify("textDocument/didClose", {"textDocument": {"uri": u}})
                    del self.docs[u]
                    self.counts["closes"] += 1
                    self.open(u)
                else:
                    self.edit()
                if op % self.a.check_every == 0:
                    self.check(op)
            except (BrokenPipeError, OSError) as e:
                self.problems.append(f"op {op}: {type(e).__name__}")
            if op % max(1, self.a.ops // 20) == 0:
                print(f"  {op:6d} ops  p50 {pct(self.latency, 50):7.1f} ms  p99 {pct(self.latency, 99):7.1f} ms  "
                      f"rss {self.rss[-1][1] if self.rss else 0:6.1f} MB", file=sys.stderr)
        self.check(self.a.ops)
        self.srv.drain(120)
        once = exactly_once(self.srv.sent_ids, self.srv.responses)
        self.violations += len(self.srv.violations)
        st = self.srv.status()
        code = self.srv.shutdown_and_exit()
        self.srv.close()
        return {
            "engine": "real" if self.a.real else f"fake({self.a.fake})",
            "ops": self.a.ops, "documents": self.a.docs, "wall_s": round(time.perf_counter() - t_start, 1),
            "p50_ms": round(pct(self.latency, 50), 1), "p99_ms": round(pct(self.latency, 99), 1),
            "max_ms": round(max(self.latency, default=0), 1),
            **self.counts,
            "rss_mb": self.rss, "rss_start_mb": self.rss[0][1] if self.rss else None,
            "rss_end_mb": self.rss[-1][1] if self.rss else None,
            "crashes": self.crashes, "lost_documents": self.lost, "not_exactly_once": len(once),
            "stdout_violations": self.violations, "exit_code": code,
            "server_counters": st.get("counters"), "problems": self.problems[:20],
        }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ops", type=int, default=5000)
    p.add_argument("--docs", type=int, default=50)
    p.add_argument("--doc-kb", type=int, default=16)
    p.add_argument("--real", action="store_true", help="the real default model instead of the fake engine")
    p.add_argument("--fake", default="steps:8,delay_ms:2", help="DRAFTLINE_FAKE_ENGINE spec (lsp/testing.py)")
    p.add_argument("--complete-ratio", type=float, default=0.25)
    p.add_argument("-k", type=int, default=3)
    p.add_argument("--max-tokens", type=int, default=24)
    p.add_argument("--check-every", type=int, default=500)
    p.add_argument("--timeout", type=float, default=120.0)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--stderr", default=None, help="file for the server's log")
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)
    res = Soak(a).run()
    if not a.json:
        for k, v in res.items():
            if k != "rss_mb":
                print(f"{k:22s} {v}")
        print("rss_mb                 " + " ".join(f"{o}:{m}" for o, m in res["rss_mb"]))
    print(json.dumps(res))
    ok = res["crashes"] == 0 and res["lost_documents"] == 0 and res["not_exactly_once"] == 0 \
        and res["stdout_violations"] == 0 and res["exit_code"] == 0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
