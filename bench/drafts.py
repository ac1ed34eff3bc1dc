"""k drafts per request: greedy vs superposed vs batched vs beam vs sequential sampling.

Real next-line tasks from the installed standard library's packages: the cursor sits after
the indentation of a code line inside a function body (the line's rest removed from the
document, as after Enter + auto-indent); the true line is that rest. The prompt is the
~513-640 tokens before the cursor (token healing on, as in the engine), drafts stop at the
end of the line. For each method: wall time of `decode()` per request (the prompt cache is
synced before, identically for all), best-of-k exact match (any draft's first line, stripped,
equals the true line) and best-of-k edit similarity (difflib ratio), plus the top-ranked
draft's EM. Methods run back to back on each task, so machine load hits them alike.

The n-gram model for superposed decoding is the workspace's: all source files of the task
file's package directory (the scanner of completion/ngram.py), with the task file itself
replaced by the task document (the target line's rest removed).

    python bench/drafts.py [--tasks 30] [--ks 1,3,5] [--threads 1] [--json]
Last line with --json: {"method": <recommended default>, "cost_vs_greedy", "em_greedy",
"em_any_k", "es_any_k", ..., "methods": {label: {...}}}
"""

from __future__ import annotations

import argparse
import ast
import difflib
import json
import random
import statistics
import sys
import time
from pathlib import Path

import torch

PACKAGES = ["asyncio", "email", "json", "logging", "unittest", "concurrent/futures", "importlib", "http",
            "xml/etree", "xml/dom", "multiprocessing", "urllib", "wsgiref", "tomllib", "ctypes", "html",
            "collections", "re", "zoneinfo", "lib2to3", "distutils", "idlelib", "sqlite3", "dbm", "curses"]
BUDGET = 640  # prompt tokens (the window moves in steps of 128: prompts of 513-640 tokens)
MIN_PREFIX = 520
MAX_TOKENS = 32
DEFAULT_ALPHA = 0.0  # = EngineConfig.ngram_weight (the server default); `superposed~0.25` weighs the n-gram in


def stdlib() -> Path:
    import json as _j

    return Path(_j.__file__).resolve().parents[1]


def edit_similarity(a: str, b: str) -> float:
    return difflib.SequenceMatcher(None, a, b).ratio() if (a or b) else 1.0


def target_lines(text: str) -> list[int]:
    """0-based lines that start a statement inside a function body (not docstrings)."""
    try:
        tree = ast.parse(text)
    except SyntaxError:
        return []
    lines = text.split("\n")
    out = set()
    for fn in ast.walk(tree):
        if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        for node in ast.walk(fn):
            if node is fn or not isinstance(node, ast.stmt):
                continue
            if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
                continue
            i = node.lineno - 1
            line = lines[i]
            s = line.strip()
            if not line.startswith(" ") or len(s) < 4 or len(s) > 100 or s.startswith(("#", "@")):
                continue
            if line[: len(line) - len(line.lstrip())].strip():
                continue
            out.add(i)
    return sorted(out)


def make_tasks(tok, n: int, split: str, seed: int) -> list[dict]:
    """One task per file, files alternating between the 'bench' and 'dev' splits, drawn
    round-robin over the packages."""
    rng = random.Random(seed)
    root = stdlib()
    per_pkg: list[list[dict]] = []
    for pkg in PACKAGES:
        d = root / pkg
        if not d.is_dir():
            continue
        files = sorted(p for p in d.glob("*.py"))
        files = [f for i, f in enumerate(files) if (i % 2 == 0) == (split == "bench")]
        tasks = []
        for f in files:
            try:
                text = f.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError):
                continue
            lines = text.split("\n")
            cands = target_lines(text)
            rng.shuffle(cands)
            for i in cands[:12]:
                start = sum(len(x) + 1 for x in lines[:i])
                indent = len(lines[i]) - len(lines[i].lstrip())
                cursor = start + indent
                if len(tok.encode(text[:cursor])) < MIN_PREFIX:
                    continue
                doc = text[:cursor] + text[start + len(lines[i]):]
                tasks.append(dict(pkg=pkg, file=str(f), line=i + 1, cursor=cursor, doc=doc, full=text,
                                  truth=lines[i].strip()))
                break
        rng.shuffle(tasks)
        if tasks:
            per_pkg.append(tasks)
    out: list[dict] = []
    while len(out) < n and any(per_pkg):
        for tl in per_pkg:
            if tl and len(out) < n:
                out.append(tl.pop())
    return out


def first_line(d, tok, heal: str) -> str | None:
    full = d.final_text(tok)
    if not full.startswith(heal):
        return None
    return full[len(heal):].split("\n", 1)[0].strip()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tasks", type=int, default=30)
    ap.add_argument("--ks", default="1,3,5", help="k values (1 = greedy only)")
    ap.add_argument("--k5-methods", default="superposed,batched",
                    help="methods also run at k=5 (sequential at k=5 costs 5 greedy passes)")
    ap.add_argument("--methods", default="superposed,superposed~0.25,superposed-noverify,batched,beam,sequential")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--split", default="bench", choices=["bench", "dev"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sp", default="", help="superposed module constants, e.g. EXIT_SLACK=0.15,NGRAM_FLOOR=1e-6")
    ap.add_argument("--alpha", type=float, default=DEFAULT_ALPHA)
    ap.add_argument("--verbose", action="store_true")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    from draftline.completion import model as M
    from draftline.completion import superposed as SP
    from draftline.completion.decode import decode
    from draftline.completion.drafts import DecodeSpec, HealGuide, PieceIndex
    from draftline.completion.kvcache import DocCache
    from draftline.completion.ngram import NGram
    from draftline.completion.workspace import doc_key, scan_workspace
    from draftline.completion.prompt import build_prompt
    from draftline.completion.stops import StopRule
    from draftline.completion.tokens import TokenizedText
    from draftline.analysis.trim import adds_parse_errors

    for kv in filter(None, args.sp.split(",")):
        name, val = kv.split("=")
        setattr(SP, name, float(val))
    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    lm = M.load(None)
    net, tok = lm.net, lm.tokenizer
    pieces = PieceIndex(tok)
    tasks = make_tasks(tok, args.tasks, args.split, args.seed)
    ks = [int(x) for x in args.ks.split(",")]
    methods = [m for m in args.methods.split(",") if m]
    k5 = set(args.k5_methods.split(","))
    configs = [("greedy", "greedy", 1, {})]  # the baseline, always
    for k in [k for k in ks if k > 1]:
        for m in methods:
            if k != 3 and m not in k5:
                continue
            base = m.split("~")[0].replace("-no-ngram", "").replace("-noverify", "")
            extra = {}
            if "~" in m:  # superposed~0.2: another alpha (tuning runs)
                extra["alpha"] = float(m.split("~")[1])
            if "-noverify" in m:  # superposed without the exact verification of the alternatives
                extra["verify"] = False
            if m.endswith("-no-ngram"):
                extra["no_ngram"] = True
            configs.append((f"{m}@{k}", base, k, extra))
    ngrams: dict[str, NGram] = {}
    res: dict[str, list[dict]] = {c[0]: [] for c in configs}
    build_ms = []
    print(f"{len(tasks)} tasks from {len({t['pkg'] for t in tasks})} packages; model {lm.info['architecture']} "
          f"{lm.info['weights']}, torch threads {torch.get_num_threads()}", file=sys.stderr)
    for ti, t in enumerate(tasks):
        pkg = t["pkg"]
        if pkg not in ngrams:
            t0 = time.perf_counter()
            ng = NGram(tok)
            files = scan_workspace([stdlib() / pkg])
            ng.add_files([(doc_key(str(p)), txt) for p, txt in files])
            build_ms.append((time.perf_counter() - t0) * 1000)
            ngrams[pkg] = ng
        ng = ngrams[pkg]
        key = doc_key(t["file"])
        ng.set_text(key, t["doc"])  # the workspace sees the task document, not the file
        tt = TokenizedText.full(tok, t["doc"])
        pr = build_prompt(tt, t["cursor"], tok, BUDGET, heal=True)
        cache = DocCache(net)
        cache.sync(pr.tokens[:-1])
        for label, method, k, extra in configs:
            spec = DecodeSpec(k=k, max_tokens=MAX_TOKENS, stop=StopRule(pr.heal, True, 0),
                              heal=HealGuide(pieces, pr.heal) if pr.heal else None, method=method,
                              ngram=None if extra.get("no_ngram") else ng, alpha=extra.get("alpha", args.alpha),
                              verify=extra.get("verify", True))
            torch.manual_seed(1000 + ti)
            drafts, st = decode(cache, pr.tokens, tok, spec)
            lines = [first_line(d, tok, pr.heal) for d in drafts]
            lines = [x for x in lines if x is not None]
            top = max(drafts, key=lambda d: d.logprob) if drafts else None
            top_line = first_line(top, tok, pr.heal) if top is not None else None
            truth = t["truth"]
            before, after = t["doc"][: t["cursor"]], t["doc"][t["cursor"]:]
            broken = [adds_parse_errors("python", before, x, after) for x in lines if x]
            res[label].append(dict(ms=st.ms, steps=st.steps, em=any(x == truth for x in lines),
                                   es=max([edit_similarity(x, truth) for x in lines], default=0.0),
                                   top_em=top_line == truth, distinct=len({x for x in lines if x}),
                                   broken=statistics.mean(broken) if broken else 0.0))
            if args.verbose:
                print(f"  {label:24s} {st.ms:7.0f} ms {st.steps:3d} steps  em={res[label][-1]['em']!s:5s} "
                      f"{lines}", file=sys.stderr)
        ng.set_text(key, t["full"])
        g = res["greedy"][-1]
        print(f"[{ti + 1}/{len(tasks)}] {pkg}/{Path(t['file']).name}:{t['line']} {t['truth']!r} "
              f"greedy {g['ms']:.0f} ms  ({time.perf_counter() - t_start:.0f} s)", file=sys.stderr)

    def summary(rows: list[dict]) -> dict:
        return dict(ms_mean=statistics.mean(r["ms"] for r in rows), ms_p50=statistics.median(r["ms"] for r in rows),
                    steps=statistics.mean(r["steps"] for r in rows), em_any=statistics.mean(r["em"] for r in rows),
                    es_any=statistics.mean(r["es"] for r in rows), em_top=statistics.mean(r["top_em"] for r in rows),
                    distinct=statistics.mean(r["distinct"] for r in rows),
                    broken=statistics.mean(r["broken"] for r in rows))

    S = {label: summary(rows) for label, rows in res.items() if rows}
    g = S["greedy"]
    for s in S.values():
        s["cost_vs_greedy"] = s["ms_mean"] / g["ms_mean"]
        s["em_per_s"] = s["em_any"] / (s["ms_mean"] / 1000)
    hdr = f"{'method':26s} {'ms/req':>8s} {'p50':>7s} {'x greedy':>8s} {'steps':>6s} {'EM any':>7s} {'ES any':>7s} {'EM top':>7s} {'distinct':>8s} {'broken':>7s}"
    print(hdr)
    for label, s in S.items():
        print(f"{label:26s} {s['ms_mean']:8.0f} {s['ms_p50']:7.0f} {s['cost_vs_greedy']:8.2f} {s['steps']:6.1f} "
              f"{s['em_any']:7.3f} {s['es_any']:7.3f} {s['em_top']:7.3f} {s['distinct']:8.2f} {s['broken']:7.3f}")
    # the default: the k=3 method (its default settings; variants are ablations) that finds
    # the true line most often per second of decoding
    k3 = {l: s for l, s in S.items() if l in ("superposed@3", "batched@3", "beam@3", "sequential@3")}
    best = max(k3, key=lambda l: k3[l]["em_per_s"]) if k3 else "greedy"
    b = S[best]
    print(f"recommended default: {best} (EM-any per second of decoding: "
          + ", ".join(f"{l.split('@')[0]} {s['em_per_s']:.3f}" for l, s in k3.items()) + ")")
    print(f"done-when (k=3): cost {b['cost_vs_greedy']:.2f}x greedy (<= 1.3: {b['cost_vs_greedy'] <= 1.3}), "
          f"EM any {b['em_any']:.3f} vs greedy {g['em_any']:.3f} (more: {b['em_any'] > g['em_any']})")
    print(f"tasks {len(tasks)}, n-gram builds {statistics.mean(build_ms):.0f} ms mean, "
          f"wall {time.perf_counter() - t_start:.0f} s")
    if args.json:
        out = dict(method=best.split("@")[0], k=3, cost_vs_greedy=round(b["cost_vs_greedy"], 3),
                   em_greedy=round(g["em_any"], 4), es_greedy=round(g["es_any"], 4),
                   em_any_k=round(b["em_any"], 4), es_any_k=round(b["es_any"], 4), tasks=len(tasks),
                   threads=torch.get_num_threads(), max_tokens=MAX_TOKENS,
                   methods={l: {k: round(v, 4) for k, v in s.items()} for l, s in S.items()})
        print(json.dumps(out))


if __name__ == "__main__":
    main()
