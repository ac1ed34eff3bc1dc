"""Guessed tokens (completion/lookup.py: the kept drafts, prompt lookup) vs none, side by side.

For each case (a file of a real third-party package, the replay's cursors: line start with
the rest of the file after it, after the indentation, mid-line) the document's cache is
synced once, then the same request runs with `speculate` 0 and N in random order, the
cache untouched between them (guesses live in scratch slots):

  first line  budget 1 ms: the drafts end at their first line (what a request past its
              deadline decodes): the decode's ms and forwards
  default     the default 300 ms budget: the decode's ms (a first line done early leaves
              time for more lines, so this moves less)

and whether the first drafts agree (they must, up to ties: a forward of several rows
rounds differently).

    python bench/speculate.py [--files 12] [--split dev|test] [--width 6] [--json]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from replay import SPLITS, indent_of, make_case, mid_cut, pct, pick_files  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, default=12)
    ap.add_argument("--split", default="dev", choices=sorted(SPLITS))
    ap.add_argument("--width", type=int, default=6)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()

    from draftline.completion.build import build_engine
    from draftline.completion.engine import DocContext
    from draftline.lsp.config import Settings

    eng = build_engine(Settings())
    rng = random.Random(7)
    cases = []
    for f in pick_files(SPLITS[a.split], a.files * 3, 7):
        c = make_case(f, rng)
        if c:
            cases.append(c)
        if len(cases) >= a.files:
            break
    ctx = DocContext(language="python")
    widths = (0, a.width)
    rec: dict[str, dict[int, dict[str, list[float]]]] = {
        m: {w: {"ms": [], "forwards": [], "guessed": []} for w in widths} for m in ("first_line", "default")}
    agree = total = 0
    t0 = time.time()
    for c in cases:
        lines = c["text"].split("\n")
        uri = Path(c["path"]).as_uri()
        for kind, ln in (("line_start", c["lb_start"]), ("after_indent", c["lb_indent"]), ("mid_line", c["lb_mid"])):
            full = lines[ln]
            col = 0 if kind == "line_start" else len(indent_of(full)) if kind == "after_indent" else mid_cut(full)
            ls = list(lines)
            ls[ln] = full[:col]
            text = "\n".join(ls)
            cur = sum(len(x) + 1 for x in ls[:ln]) + col
            eng.config.latency_budget_ms, eng.config.speculate = 0, 0
            eng.complete(uri, text, cur, context=ctx, max_tokens=1)  # the whole window synced
            firsts = {}
            for mode, budget in (("first_line", 1), ("default", 300)):
                for w in (widths if rng.random() < 0.5 else widths[::-1]):
                    eng.config.latency_budget_ms, eng.config.speculate = budget, w
                    eng.ahead.drop(uri)  # no kept answer: prompt lookup only
                    r = eng.complete(uri, text, cur, context=ctx)
                    rec[mode][w]["ms"].append(r.timings["decode"])
                    rec[mode][w]["forwards"].append(r.tokens["steps"])
                    rec[mode][w]["guessed"].append(r.tokens.get("guessed", 0))
                    if mode == "first_line":
                        firsts[w] = r.drafts[0].text.split("\n")[0] if r.drafts else ""
            total += 1
            agree += firsts[0] == firsts[a.width]
            print(f"  {c['name'][:30]:30s} {kind:12s} first line "
                  + "  ".join(f"{w}: {rec['first_line'][w]['ms'][-1]:5.0f} ms/{rec['first_line'][w]['forwards'][-1]:2.0f}"
                              for w in widths), flush=True)
        eng.close(uri)
    summary = {}
    for mode in rec:
        s = {}
        for w in widths:
            r = rec[mode][w]
            s[w] = {"p50": round(pct(r["ms"], 0.5), 1), "p90": round(pct(r["ms"], 0.9), 1), "mean": round(statistics.mean(r["ms"]), 1),
                    "forwards": round(statistics.mean(r["forwards"]), 2), "guessed": round(statistics.mean(r["guessed"]), 2)}
        s["ratio_mean"] = round(s[0]["mean"] / max(1e-9, s[a.width]["mean"]), 2)
        s["ratio_p90"] = round(s[0]["p90"] / max(1e-9, s[a.width]["p90"]), 2)
        summary[mode] = s
    print(f"\n{total} requests, {len(cases)} files ({a.split}: {', '.join(SPLITS[a.split])}), "
          f"{time.strftime('%Y-%m-%d %H:%M')}, {time.time() - t0:.0f} s")
    for mode, s in summary.items():
        print(f"{mode:10s} decode ms  none: p50 {s[0]['p50']} p90 {s[0]['p90']} mean {s[0]['mean']} "
              f"({s[0]['forwards']} forwards) | guessing {a.width}: p50 {s[a.width]['p50']} p90 {s[a.width]['p90']} "
              f"mean {s[a.width]['mean']} ({s[a.width]['forwards']} forwards, {s[a.width]['guessed']} steps guessed) "
              f"| mean {s['ratio_mean']}x, p90 {s['ratio_p90']}x")
    print(f"first lines identical: {agree} of {total}")
    if a.json:
        print(json.dumps({"requests": total, "split": a.split, "width": a.width, "agree": agree, "summary": summary}))


if __name__ == "__main__":
    main()
