"""The replay: what a user feels, on code nobody here wrote, over a real LSP client (stdio).

Cases come from the sources of third-party packages installed in the venv (default: two
splits of five packages each, `--split dev|test|all`; the standard library with
`--packages stdlib`).  Per file (4-20k characters), in one server session per document:

  A (the document ends at the start of a line in its second half, as while writing it)
    open        didOpen, then the first request at that line start (cold)
    edit_far    insert 1-4 lines ~40-60 lines above the cursor, request at once
    edit_near   insert a line 3-6 lines above, request at once
    indent      the editor's auto-indent inserts the line's indentation, request
    typing      the line typed one character at a time, a request per keystroke
  B (the whole file, rest of the file after the cursor)
    open_suffix didOpen with line L emptied, first request at its start (cold)
    line_start  another line emptied, request at its start (suffix after it)
    after_indent  another line cut after its indentation, request there
    mid_line    another line cut in its middle (after `(`, `=`, `.` or a word), request
  huge (--huge): a ~3 MB file made of one package's modules: open + request, edit 5 lines above
  + request; then a jump to a second and a third place + request, edit + request at each

Each request waits for its answer before the next edit; between two actions that are not
keystrokes of one line (after a first answer, before an edit elsewhere) the user thinks for
`--think` seconds (default 1.0: moving the cursor ~50 lines up to edit takes at least that);
keystrokes follow each answer at once (a fast typist's worst case).  The
expected text is what the file really has there: the line (from the cursor to its end).
Reported per kind: p50/p90/p99 of the wall time from the request to its answer, the
server's stage breakdown (median ms per stage, `draftline/status {"recent": N}`), exact
match and edit similarity of the first draft's first line and of the best draft, the share
of junk drafts (`completion.junk` rules, plus drafts that add parse errors where they go,
an opener at the end completed with a body first).

`--peer`: the same cases, same run, against llama.cpp's server driven as llama.vim drives it
(`peer_llamavim.py`; same GGUF, 2 threads, prompt cache on, greedy, one line); kinds A and
B except typing; ratios peer / draftline from medians of the same run.

    python bench/replay.py [--files 12] [--split dev|test|all] [--peer] [--huge] [--kinds a,b]
                           [--init '{"latencyBudgetMs": 400}'] [--json]
The last line with --json is one JSON object (per kind: p50/p90/p99, quality, junk; the peer).
"""

from __future__ import annotations

import argparse
import json
import random
import re
import statistics
import sys
import time
import tokenize
from io import StringIO
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from lspclient import LspProcess  # noqa: E402

SPLITS = {"dev": ["jedi", "click", "networkx", "attr", "pygments"],
          "test": ["hypothesis", "jinja2", "huggingface_hub", "anyio", "packaging"]}
KINDS_A = ["open", "edit_far", "edit_near", "indent", "typing"]
KINDS_B = ["open_suffix", "line_start", "after_indent", "mid_line"]
EDIT_SNIPPETS = ["# NOTE: checked by the caller", "_unused = None", "log = None  # set up below",
                 "# TODO: handle the empty case\n# (see the issue tracker)",
                 "def _helper(value):\n    return value\n"]


# -- cases -----------------------------------------------------------------------------------------
def package_dir(name: str) -> Path:
    if name == "stdlib":
        import json as _j

        return Path(_j.__file__).resolve().parents[1]
    import importlib.util

    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"package {name!r} is not installed in this venv")
    return Path(list(spec.submodule_search_locations)[0])


def statement_lines(text: str) -> set[int]:
    """0-based lines where a logical line (statement) starts, outside strings."""
    out: set[int] = set()
    try:
        prev_end = None
        for t in tokenize.generate_tokens(StringIO(text).readline):
            if t.type in (tokenize.NL, tokenize.COMMENT, tokenize.INDENT, tokenize.DEDENT, tokenize.ENCODING):
                continue
            if t.type == tokenize.NEWLINE:
                prev_end = None
                continue
            if prev_end is None:
                out.add(t.start[0] - 1)
                prev_end = t.end
    except (tokenize.TokenError, IndentationError, SyntaxError):
        return set()
    return out


def good_line(line: str) -> bool:
    s = line.strip()
    return 10 <= len(s) <= 100 and not s.startswith(("#", '"', "'", "@", ")", "]", "}")) and "\t" not in line


def pick_files(packages: list[str], n: int, seed: int) -> list[Path]:
    rng = random.Random(seed)
    per = {}
    for p in packages:
        fs = sorted(f for f in package_dir(p).rglob("*.py")
                    if 4000 <= f.stat().st_size <= 20000 and "__pycache__" not in f.parts)
        rng.shuffle(fs)
        per[p] = fs
    out: list[Path] = []
    while len(out) < n and any(per.values()):
        for p in packages:
            if per[p] and len(out) < n:
                out.append(per[p].pop())
    return out


def make_case(path: Path, rng: random.Random) -> dict | None:
    text = path.read_text(encoding="utf-8", errors="replace").replace("\r\n", "\n")
    if len(text) < 4000 or len(text) > 20000:
        return None
    lines = text.split("\n")
    starts = statement_lines(text)
    half = len(lines) // 2
    cands = [i for i in sorted(starts) if i >= half and i < len(lines) - 2 and good_line(lines[i])
             and i >= 70]
    indented = [i for i in cands if lines[i].startswith("    ")]
    if len(cands) < 5 or len(indented) < 3:
        return None
    la = rng.choice(indented)
    rest = [i for i in cands if abs(i - la) > 3]
    rng.shuffle(rest)
    lb = [i for i in rest if lines[i].startswith("    ")][:2] + [i for i in rest if not lines[i].startswith("    ")][:0]
    pool = [i for i in rest if i not in lb]
    mids = [i for i in pool if mid_cut(lines[i]) is not None]
    if len(lb) < 2 or not pool or not mids:
        return None
    lmid = mids[0]
    lstart = next((i for i in pool if i != lmid), None)
    if lstart is None:
        return None
    return {"path": str(path), "name": f"{path.parent.name}/{path.name}", "text": text, "la": la,
            "lb_indent": lb[0], "lb_suffix": lb[1], "lb_start": lstart, "lb_mid": lmid,
            "far": max(1, la - rng.randint(40, 60)), "near": la - rng.randint(3, 6),
            "snippet_far": rng.choice(EDIT_SNIPPETS), "snippet_near": rng.choice(EDIT_SNIPPETS[:3])}


_MID = re.compile(r"(\(|= |\.|\[|, )")


def mid_cut(line: str) -> int | None:
    """A mid-line cursor: after the first `(`, `= `, `.`, `[` or `, ` past the indentation
    with at least 4 characters of the line left."""
    ind = len(line) - len(line.lstrip())
    for m in _MID.finditer(line, ind + 3):
        if len(line) - m.end() >= 4:
            return m.end()
    return None


def indent_of(line: str) -> str:
    return line[: len(line) - len(line.lstrip())]


# -- metrics ---------------------------------------------------------------------------------------
def edit_similarity(a: str, b: str) -> float:
    if not a and not b:
        return 1.0
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return 1 - prev[-1] / max(len(a), len(b))


def first_line(s: str) -> str:
    return s.split("\n", 1)[0].rstrip()


def quality(drafts: list[str], expected: str) -> dict:
    exp = expected.rstrip()
    fl = [first_line(d) for d in drafts]
    es = [edit_similarity(f, exp) for f in fl]
    return {"em_first": bool(fl) and fl[0] == exp, "em_any": exp in fl,
            "es_first": es[0] if es else 0.0, "es_best": max(es) if es else 0.0, "n": len(drafts)}


def junk_of(drafts: list[str], prefix: str, suffix: str) -> list[str | None]:
    from draftline.analysis.trim import adds_parse_errors
    from draftline.completion.junk import junk_reason

    out = []
    for i, d in enumerate(drafts):
        r = junk_reason(d, drafts[:i])
        if r is None:
            if adds_parse_errors("python", prefix, d, suffix, open_ok=True):  # (a long statement's first lines)
                r = "parse"
        out.append(r)
    return out


# -- the two clients -------------------------------------------------------------------------------
class Draftline:
    def __init__(self, init: dict, name: str = "draftline", roots: list[str] | None = None):
        self.name = name
        self.srv = LspProcess(init_options=init, roots=roots)
        self.version: dict[str, int] = {}
        t = time.perf_counter()
        while not self.srv.request("draftline/status", {}).get("model"):  # loaded (and warmed up)
            if time.perf_counter() - t > 300:
                raise RuntimeError("the model did not load in 300 s")
            time.sleep(0.2)

    def open(self, uri: str, text: str) -> None:
        self.version[uri] = 1
        self.srv.open(uri, text)

    def edit(self, uri: str, line: int, col: int, end_line: int, end_col: int, new: str) -> None:
        self.version[uri] += 1
        rng = {"start": {"line": line, "character": col}, "end": {"line": end_line, "character": end_col}}
        self.srv.notify("textDocument/didChange", {"textDocument": {"uri": uri, "version": self.version[uri]},
                                                    "contentChanges": [{"range": rng, "text": new}]})

    def ask(self, uri: str, text: str, line: int, col: int) -> tuple[float, list[str], dict]:
        t = time.perf_counter()
        items = self.srv.inline(uri, line, col)
        ms = (time.perf_counter() - t) * 1000
        st = self.srv.request("draftline/status", {"recent": 1})
        rec = (st.get("recent") or [{}])[-1]
        return ms, [it["insertText"] if isinstance(it["insertText"], str) else it["insertText"]["value"]
                    for it in items], rec

    def close(self, uri: str) -> None:
        self.srv.notify("textDocument/didClose", {"textDocument": {"uri": uri}})

    def shutdown(self) -> None:
        self.srv.close()


class Peer:
    """The same calls against llama.cpp's server as llama.vim asks it (greedy, one line)."""

    name = "llama.vim"

    def __init__(self):
        from peer_llamavim import LlamaVimPeer

        self.p = LlamaVimPeer()
        self.docs: dict[str, str] = {}

    def open(self, uri: str, text: str) -> None:
        self.docs[uri] = text

    def edit(self, uri, line, col, end_line, end_col, new) -> None:
        t = self.docs[uri]
        a, b = offset(t, line, col), offset(t, end_line, end_col)
        self.docs[uri] = t[:a] + new + t[b:]

    def ask(self, uri: str, text: str, line: int, col: int) -> tuple[float, list[str], dict]:
        assert self.docs[uri] == text
        r = self.p.request(text, offset(text, line, col), one_line=True, greedy=True)
        return r["ms"], [r["text"]] if r["text"] else [], {"timings": r["timings"]}

    def close(self, uri: str) -> None:
        self.docs.pop(uri, None)

    def shutdown(self) -> None:
        self.p.close()


def offset(text: str, line: int, col: int) -> int:
    off = 0
    for _ in range(line):
        off = text.index("\n", off) + 1
    return off + col


# -- the replay ------------------------------------------------------------------------------------
THINK_S = 1.0


def run_case(cl, case: dict, kinds: set[str], rec: list[dict], tag: str) -> None:
    lines = case["text"].split("\n")

    def think() -> None:
        time.sleep(THINK_S)

    def ask(uri: str, doc: str, line: int, col: int, kind: str, expected: str) -> None:
        ms, drafts, server = cl.ask(uri, doc, line, col)
        off = offset(doc, line, col)
        r = {"tool": cl.name, "kind": kind, "case": case["name"], "ms": ms, "drafts": drafts,
             "expected": expected, "server": server, **quality(drafts, expected)}
        if kind != "typing" or not rec or rec[-1]["kind"] != "typing":
            r["junk"] = junk_of(drafts, doc[:off], doc[off:])
        rec.append(r)

    la = case["la"]
    if kinds & set(KINDS_A):
        uri = Path(case["path"]).as_uri()  # the real path: the project context leaves the file itself out
        doc = "\n".join(lines[:la]) + "\n"
        cl.open(uri, doc)
        ask(uri, doc, la, 0, "open", lines[la])
        cur = la
        for kind, at, snip in (("edit_far", case["far"], case["snippet_far"]),
                               ("edit_near", case["near"], case["snippet_near"])):
            if kind not in kinds:
                continue
            think()
            ind = indent_of(lines[at])
            new = "".join(ind + s + "\n" if s else "\n" for s in snip.rstrip("\n").split("\n"))
            line_no = at + (cur - la)
            cl.edit(uri, line_no, 0, line_no, 0, new)
            doc = doc_after(doc, line_no, new)
            cur += new.count("\n")
            ask(uri, doc, cur, 0, kind, lines[la])
        ind = indent_of(lines[la])
        if ind and ("indent" in kinds or "typing" in kinds):
            think()
            cl.edit(uri, cur, 0, cur, 0, ind)
            doc = doc_after(doc, cur, ind)
            if "indent" in kinds:
                ask(uri, doc, cur, len(ind), "indent", lines[la][len(ind):])
        if "typing" in kinds and cl.name.startswith("draftline"):
            col = len(ind)
            for ch in lines[la][len(ind):].rstrip():
                cl.edit(uri, cur, col, cur, col, ch)
                a = offset(doc, cur, col)
                doc = doc[:a] + ch + doc[a:]
                col += 1
                ask(uri, doc, cur, col, "typing", lines[la][col:])
        cl.close(uri)
    if kinds & set(KINDS_B):
        uri = Path(case["path"]).as_uri()
        ls = list(lines)
        lo = case["lb_suffix"]
        exp_open = ls[lo]
        ls[lo] = ""
        doc = "\n".join(ls)
        cl.open(uri, doc)
        if "open_suffix" in kinds:
            ask(uri, doc, lo, 0, "open_suffix", exp_open)
        for kind, ln in (("line_start", case["lb_start"]), ("after_indent", case["lb_indent"]),
                         ("mid_line", case["lb_mid"])):
            if kind not in kinds:
                continue
            think()
            full = lines[ln]
            col = 0 if kind == "line_start" else len(indent_of(full)) if kind == "after_indent" else mid_cut(full)
            cl.edit(uri, ln, col, ln, len(ls[ln]), "")
            ls[ln] = full[:col]
            doc = "\n".join(ls)
            ask(uri, doc, ln, col, kind, full[col:])
        cl.close(uri)


def doc_after(doc: str, line: int, new: str) -> str:
    a = offset(doc, line, 0)
    return doc[:a] + new + doc[a:]


def run_huge(cl, rec: list[dict], package: str = "networkx", places: int = 3) -> None:
    """A ~3 MB file of one package's modules: opened with the cursor at a line start half way
    down (huge_open), an edit 5 lines above the cursor (huge_edit); then the same at places
    2/3 and 5/6 down, each reached by a jump (huge_jump) from the last."""
    parts, size = [], 0
    for f in sorted(package_dir(package).rglob("*.py")):
        t = f.read_text(encoding="utf-8", errors="replace").replace("\r\n", "\n")
        parts.append(t if t.endswith("\n") else t + "\n")
        size += len(parts[-1])
        if size >= 3_000_000:
            break
    text = "".join(parts)
    lines = text.split("\n")
    starts = statement_lines(text) or set(range(len(lines)))
    picks: list[int] = []
    for frac in (1 / 2, 2 / 3, 5 / 6)[:places]:
        picks.append(next(i for i in range(int(len(lines) * frac), len(lines)) if i in starts
                          and good_line(lines[i]) and lines[i].startswith("    ") and i not in picks))
    ls = list(lines)
    expected = {la: ls[la] for la in picks}
    for la in picks:
        ls[la] = ""
    doc = "\n".join(ls)
    uri = "file:///replay/huge/big.py"
    name = f"{package} x{len(parts)} ({len(text)} chars)"
    cl.open(uri, doc)
    shift = 0  # lines the edits so far inserted above the places still to come
    asked = []  # (record, document, offset): the junk check parses the 3 MB file, after the run
    for n, la0 in enumerate(picks):
        la = la0 + shift
        for kind in ("huge_open" if n == 0 else "huge_jump", "huge_edit"):
            if n or kind == "huge_edit":
                time.sleep(THINK_S)
            if kind == "huge_edit":
                cl.edit(uri, la - 5, 0, la - 5, 0, "# edited\n")
                doc = doc_after(doc, la - 5, "# edited\n")
                la += 1
                shift += 1
            ms, drafts, server = cl.ask(uri, doc, la, 0)
            r = {"tool": cl.name, "kind": kind, "case": f"{name} line {la0}", "ms": ms, "drafts": drafts,
                 "expected": expected[la0], "server": server, **quality(drafts, expected[la0])}
            rec.append(r)
            asked.append((r, doc, offset(doc, la, 0)))
    cl.close(uri)
    for r, d, off in asked:
        r["junk"] = junk_of(r["drafts"], d[:off], d[off:])


# -- report ----------------------------------------------------------------------------------------
def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    if not xs:
        return float("nan")
    i = min(len(xs) - 1, max(0, round(q * (len(xs) - 1))))
    return xs[i]


def summarize(rec: list[dict]) -> dict:
    out: dict = {}
    for tool in sorted({r["tool"] for r in rec}):
        for kind in dict.fromkeys(r["kind"] for r in rec):
            rs = [r for r in rec if r["tool"] == tool and r["kind"] == kind]
            if not rs:
                continue
            ms = [r["ms"] for r in rs]
            s = {"n": len(rs), "p50": pct(ms, .5), "p90": pct(ms, .9), "p99": pct(ms, .99),
                 "em_first": statistics.mean(r["em_first"] for r in rs),
                 "em_any": statistics.mean(r["em_any"] for r in rs),
                 "es_first": statistics.mean(r["es_first"] for r in rs),
                 "es_best": statistics.mean(r["es_best"] for r in rs),
                 "nonempty": statistics.mean(r["n"] > 0 for r in rs)}
            js = [j for r in rs for j in r.get("junk", [])]
            s["junk"] = sum(j is not None for j in js) / len(js) if js else 0.0
            s["junk_kinds"] = {k: js.count(k) for k in set(js) if k}
            stages: dict[str, list[float]] = {}
            for r in rs:
                for k, v in ((r.get("server") or {}).get("timings") or {}).items():
                    if isinstance(v, (int, float)):
                        stages.setdefault(k, []).append(v)
                src = (r.get("server") or {}).get("source")
                if src:
                    s.setdefault("sources", {}).setdefault(src, 0)
                    s["sources"][src] += 1
            s["stages_p50"] = {k: round(statistics.median(v), 1) for k, v in stages.items()}
            out.setdefault(tool, {})[kind] = {k: (round(v, 3) if isinstance(v, float) else v) for k, v in s.items()}
    return out


def print_table(summ: dict) -> None:
    peer = summ.get("llama.vim", {})
    for tool, dl in summ.items():
        if tool == "llama.vim":
            continue
        print(f"\n{tool}\n{'kind':13s} {'n':>4s} {'p50':>7s} {'p90':>7s} {'p99':>7s} | {'EM1':>5s} {'EMany':>5s} "
              f"{'ES1':>5s} {'ESbest':>6s} {'junk':>5s}" + (" | peer p50    p90  EM1  ES1  ratio" if peer else ""))
        for kind, s in dl.items():
            line = (f"{kind:13s} {s['n']:4d} {s['p50']:7.0f} {s['p90']:7.0f} {s['p99']:7.0f} | {s['em_first']:5.2f} "
                    f"{s['em_any']:5.2f} {s['es_first']:5.2f} {s['es_best']:6.2f} {s['junk']:5.2f}")
            p = peer.get(kind)
            if p:
                line += (f" | {p['p50']:8.0f} {p['p90']:6.0f} {p['em_first']:4.2f} {p['es_first']:4.2f} "
                         f"{p['p50'] / s['p50']:6.1f}x")
            print(line)
        for kind, s in dl.items():
            print(f"  {kind:13s} stages p50 (ms): {s['stages_p50']}  sources {s.get('sources')}  junk {s['junk_kinds']}")


def main() -> int:
    global THINK_S
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, default=12)
    ap.add_argument("--split", default="dev", choices=["dev", "test", "all"])
    ap.add_argument("--packages", help="comma-separated (overrides --split); 'stdlib' for the standard library")
    ap.add_argument("--kinds", default="a,b", help="a, b, or comma-separated kind names")
    ap.add_argument("--peer", action="store_true")
    ap.add_argument("--no-draftline", action="store_true")
    ap.add_argument("--huge", action="store_true")
    ap.add_argument("--init", default="{}", help="initializationOptions (JSON) for draftline")
    ap.add_argument("--init2", help="a second draftline server with these options, taking turns with the first")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--think", type=float, default=1.0, help="seconds between actions that are not keystrokes")
    ap.add_argument("--dump", help="write every request's record (JSON lines) here")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    THINK_S = a.think
    packages = a.packages.split(",") if a.packages else (SPLITS["dev"] + SPLITS["test"] if a.split == "all"
                                                        else SPLITS[a.split])
    kinds: set[str] = set()
    for k in a.kinds.split(","):
        kinds |= set(KINDS_A) if k == "a" else set(KINDS_B) if k == "b" else {k}
    rng = random.Random(a.seed)
    cases = []
    for f in pick_files(packages, a.files * 4, a.seed):
        c = make_case(f, rng)
        if c is not None:
            cases.append(c)
        if len(cases) >= a.files:
            break
    print(f"replay: {len(cases)} cases from {', '.join(packages)}; kinds {sorted(kinds)}", flush=True)
    init = {"debounceMs": 50, **json.loads(a.init)}
    roots = [str(package_dir(p)) for p in packages]  # the workspace folders (project context, n-gram)
    tools = ([] if a.no_draftline else [Draftline(init, roots=roots)]) + ([Peer()] if a.peer else [])
    if a.init2:
        init2 = {"debounceMs": 50, **json.loads(a.init2)}
        tools.append(Draftline(init2, name=f"draftline {json.dumps(json.loads(a.init2), separators=(',', ':'))}",
                               roots=roots))
    rec: list[dict] = []
    t0 = time.time()
    try:
        for i, c in enumerate(cases):  # the tools take turns case by case: speed drift hits both
            for cl in tools:
                run_case(cl, c, kinds, rec, f"{i}")
            last = [r for r in rec if r["case"] == c["name"]]
            print(f"  [{i + 1}/{len(cases)}] {c['name']}: " + ", ".join(
                f"{r['tool'][:4]}{'2' if r['tool'].startswith('draftline ') else ''}:{r['kind']} {r['ms']:.0f}" for r in last if r["kind"] != "typing"), flush=True)
        if a.huge:
            for cl in tools:
                run_huge(cl, rec)
    finally:
        for cl in tools:
            cl.shutdown()
    if a.dump:
        with open(a.dump, "w") as f:
            for r in rec:
                f.write(json.dumps(r) + "\n")
    summ = summarize(rec)
    print(f"\nreplay done in {time.time() - t0:.0f} s, {time.strftime('%Y-%m-%d %H:%M')}, think {THINK_S} s, init {init}"
          + (f", second server {a.init2}" if a.init2 else ""))
    print_table(summ)
    if a.json:
        print(json.dumps({"cases": len(cases), "packages": packages, "init": init, "think_s": THINK_S, "summary": summ}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
