"""Edit -> drafts latency over real LSP (stdio), on the standard library's own sources.

For files cut to about 512 / 1k / 2k tokens: open the file, complete once (cold), then
repeat: insert a line in the middle of the file (didChange) and immediately request an
inline completion at a one-line cursor near the end; time didChange -> response.
Side by side in one run: draftline (PIE cache) and the naive path (`pie: false`,
re-encode from the first changed token), same server, same requests.

    python bench/latency.py [--sizes 512,1024,2048] [--files 3] [--edits 3] [--json]
Last line with --json: {"p50_ms": {...}, "naive_p50_ms": {...}, "speedup_2k": ..., ...}
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from lspclient import LspProcess, timed  # noqa: E402

STDLIB_FILES = ["textwrap.py", "argparse.py", "json/decoder.py", "configparser.py", "shlex.py",
                "difflib.py", "calendar.py", "pprint.py", "smtplib.py", "tarfile.py"]
ASSIGN = re.compile(r"^(\s+)([A-Za-z_][A-Za-z_0-9.]*) = \S")


def stdlib() -> Path:
    import json as _j

    return Path(_j.__file__).resolve().parents[1]


def cut_to_tokens(text: str, n: int, tok) -> str | None:
    """The longest prefix of whole lines with at most n tokens (None if the file is short)."""
    lines = text.split("\n")
    lo, hi = 0, len(lines)
    if len(tok.encode(text)) < n:
        return None
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if len(tok.encode("\n".join(lines[:mid]))) <= n:
            lo = mid
        else:
            hi = mid - 1
    return "\n".join(lines[:lo]) + "\n"


def cursor_line(text: str) -> tuple[int, int] | None:
    """A `<indent>name = value` line in the last fifth; the cursor after `= `."""
    lines = text.split("\n")
    for i in range(len(lines) - 2, int(len(lines) * 0.8), -1):
        m = ASSIGN.match(lines[i])
        if m:
            return i, m.end() - 1
    return None


def run_mode(pie: bool, cases: list[tuple[str, int, str]], edits: int, k: int, monitors: bool = True) -> dict:
    srv = LspProcess(init_options={"pie": pie, "drafts": k, "maxTokens": 32, "debounceMs": 50,
                                   "idleRefreshMs": 600000, "monitors": {"enabled": monitors}})
    out: dict[int, list[float]] = {}
    cold: dict[int, list[float]] = {}
    nonempty = 0
    total = 0
    try:
        for name, size, text in cases:
            uri = f"file:///bench/{size}/{name}"
            pos = cursor_line(text)
            if pos is None:
                continue
            line, ch = pos
            srv.open(uri, text)
            ms, items = timed(srv.inline, uri, line, ch)
            cold.setdefault(size, []).append(ms)
            mid = len(text.split("\n")) // 2
            for e in range(edits):
                srv.change(uri, 2 + e, mid + e, 0, f"# edit {e}: a line the user typed\n")
                line += 1
                ms, items = timed(srv.inline, uri, line, ch)
                out.setdefault(size, []).append(ms)
                total += 1
                nonempty += bool(items)
    finally:
        srv.close()
    return {"p50": {s: statistics.median(v) for s, v in out.items()},
            "cold": {s: statistics.median(v) for s, v in cold.items()},
            "all": out, "nonempty": nonempty, "total": total}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="512,1024,2048")
    ap.add_argument("--files", type=int, default=3)
    ap.add_argument("--edits", type=int, default=3)
    ap.add_argument("-k", type=int, default=3)
    ap.add_argument("--no-monitors", action="store_true", help="monitors off (to attribute their cost)")
    ap.add_argument("--no-naive", action="store_true", help="skip the naive re-encode path (quick runs)")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    from draftline.completion import model as M
    from draftline.completion.tokens import Tokenizer

    tok = Tokenizer.from_dir(M.resolve(None))
    sizes = [int(s) for s in a.sizes.split(",")]
    cases = []
    for size in sizes:
        got = 0
        for f in STDLIB_FILES:
            if got >= a.files:
                break
            text = cut_to_tokens((stdlib() / f).read_text(encoding="utf-8"), size, tok)
            if text and cursor_line(text):
                cases.append((f.replace("/", "_"), size, text))
                got += 1
    pie = run_mode(True, cases, a.edits, a.k, not a.no_monitors)
    naive = None if a.no_naive else run_mode(False, cases, a.edits, a.k, not a.no_monitors)
    print(f"edit -> {a.k} drafts over LSP stdio, median ms ({a.files} files x {a.edits} edits per size)")
    print(f"{'tokens':>8} {'draftline':>10} {'naive':>10} {'speedup':>8} {'cold open':>10}")
    for s in sizes:
        if s in pie["p50"]:
            nv = f"{naive['p50'][s]:>10.0f} {naive['p50'][s] / pie['p50'][s]:>8.2f}" if naive else f"{'-':>10} {'-':>8}"
            print(f"{s:>8} {pie['p50'][s]:>10.0f} {nv} {pie['cold'][s]:>10.0f}")
    big = max(pie["p50"])
    res = {
        "p50_ms": {str(s): round(v, 1) for s, v in pie["p50"].items()},
        "naive_p50_ms": {str(s): round(v, 1) for s, v in naive["p50"].items()} if naive else None,
        "cold_ms": {str(s): round(v, 1) for s, v in pie["cold"].items()},
        "all_ms": {str(s): [round(x) for x in v] for s, v in pie["all"].items()},
        "speedup_largest": round(naive["p50"][big] / pie["p50"][big], 2) if naive else None,
        "largest_tokens": big,
        "nonempty_rate": round(pie["nonempty"] / max(1, pie["total"]), 3),
        "n": pie["total"],
    }
    if a.json:
        print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
