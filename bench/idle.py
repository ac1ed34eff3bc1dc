"""Idle time after a short-window answer: how long until the cache is the full window, exact.

A cold or far-moved cursor is answered from a short window (`completion.window`); idle time
then brings the whole window in.  Two ways, side by side on the same file and cursor, each
from the same cold answer:
  rebuild  what `Engine.prepare` does: the whole window encoded anew, apart, then put in place
  grow     the way it was done before: PIE's splice of the missing front (its tokens attend
           only to each other, the cached ones behind them move and turn stale), then the
           exact refresh of the stale tokens (`DocCache.refresh`)
and compared by the time until the cache is exact, and how far the grown cache's next-token
distribution at the cursor is from the exact one before its refresh (what a request that
comes meanwhile reads).  Third-party packages' files (and the standard library's), cursor at
a line start in the second half.

    python bench/idle.py [--files 8] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from replay import SPLITS, package_dir


def cases(n: int) -> list[tuple[str, str, int]]:
    """(name, text, cursor): files of 12-40k characters, round-robin over the dev split's packages."""
    per = []
    for pkg in SPLITS["dev"]:
        fs = [f for f in sorted(package_dir(pkg).rglob("*.py")) if 12_000 <= f.stat().st_size <= 40_000]
        per.append([(f"{pkg}/{f.name}", f.read_text(encoding="utf-8")) for f in fs[:: max(1, len(fs) // 4)]])
    out = []
    while len(out) < n and any(per):
        for fs in per:
            if fs and len(out) < n:
                name, text = fs.pop(0)
                cur = text.index("\n", int(len(text) * 0.6)) + 1
                out.append((name, text, cur))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--files", type=int, default=8)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    from draftline.completion.engine import Engine, EngineConfig
    from draftline.completion.model import load

    lm = load(None)
    rows = []
    for name, text, cur in cases(args.files):
        r = {"file": name}
        for way in ("rebuild", "grow"):
            eng = Engine(lm, EngineConfig(monitors=False, ahead=False))
            eng.warm_up()
            first = eng.complete(name, text, cur, max_tokens=1)
            assert first.short_window, name
            t0 = time.perf_counter()
            if way == "rebuild":
                while eng.prepare(name, text, cur).more:
                    pass
            else:
                full = eng.prompt_for(name, text, cur, header="")
                eng.cache_of(name).sync(full.tokens[:-1], cancel_front=threading.Event())
                r["grow_stale"] = eng.cache_of(name).stale
                r["grown_ms"] = (time.perf_counter() - t0) * 1000
                z = eng.net.forward(torch.tensor(full.tokens[-1:]), torch.tensor([len(full.tokens) - 1]),
                                    eng.cache_of(name).k, eng.cache_of(name).v, len(full.tokens) - 1)[0]
                eng.refresh(name)
            r[f"{way}_ms"] = (time.perf_counter() - t0) * 1000
            c = eng.cache_of(name)
            assert c.stale == 0
            n = len(c.tokens)
            last = eng.prompt_for(name, text, cur, header="").tokens[-1]
            r[f"{way}_logits"] = eng.net.forward(torch.tensor([last]), torch.tensor([n]), c.k, c.v, n)[0]
            if way == "grow":
                exact = torch.log_softmax(r["rebuild_logits"].float(), -1)
                stale = torch.log_softmax(z.float(), -1)
                r["grown_kl"] = float((exact.exp() * (exact - stale)).sum())
                r["grown_top1_same"] = int(exact.argmax() == stale.argmax())
                # both caches are exact: they differ only by float rounding (other chunk sizes)
                r["exact_top1_same"] = int(r["rebuild_logits"].argmax() == r["grow_logits"].argmax())
                r["exact_max_diff"] = float((r["rebuild_logits"] - r["grow_logits"]).abs().max())
            r["tokens"] = n
        del r["rebuild_logits"], r["grow_logits"]
        rows.append(r)
        print(f"{name:40s} {r['tokens']:5d} tokens  rebuild {r['rebuild_ms']:6.0f} ms  grow {r['grown_ms']:5.0f}"
              f" + refresh {r['grow_ms'] - r['grown_ms']:5.0f} = {r['grow_ms']:6.0f} ms  "
              f"({r['grow_ms'] / r['rebuild_ms']:.2f}x)  stale {r['grow_stale']}, KL {r['grown_kl']:.3f}", flush=True)
    reb = statistics.median(r["rebuild_ms"] for r in rows)
    grow = statistics.median(r["grow_ms"] for r in rows)
    summary = {"files": len(rows), "rebuild_ms_p50": round(reb), "grow_then_refresh_ms_p50": round(grow),
               "ratio_p50": round(statistics.median(r["grow_ms"] / r["rebuild_ms"] for r in rows), 2),
               "grown_top1_same": sum(r["grown_top1_same"] for r in rows),
               "grown_kl_mean": round(statistics.mean(r["grown_kl"] for r in rows), 3),
               "exact_top1_same": sum(r["exact_top1_same"] for r in rows),
               "exact_max_logit_diff": round(max(r["exact_max_diff"] for r in rows), 3)}
    print(f"until the cache is exact, p50: rebuild {reb:.0f} ms vs grow + refresh {grow:.0f} ms "
          f"({summary['ratio_p50']}x); the grown cache before its refresh: top-1 as exact at the cursor "
          f"{summary['grown_top1_same']}/{len(rows)}, KL {summary['grown_kl_mean']}; both exact: top-1 the same "
          f"{summary['exact_top1_same']}/{len(rows)}, logits within {summary['exact_max_logit_diff']}")
    if args.json:
        print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
