"""PIE on real code: the paper's three edit tasks on the standard library's own sources.

For each file (cut to about N tokens) and task - insertion (a line of the file's own code
inserted elsewhere), deletion (1-3 lines removed), multi-place (three edits before one
request) - the prompt at a cursor after the edits is made ready three ways:
  full           re-encode the whole edited prompt (exact, the reference)
  pie            sync the cache of the unedited prompt: re-rotate moved keys, encode edits
  conflict-fast  the same splice without re-rotation
and compared by: sync time, top-1 agreement and KL(full || method) of the next-token
distribution, and next-line exact match / edit similarity of greedy decoding.

    python bench/pie.py [--files 30] [--sizes 2048] [--extra-sizes 1024,4096 --extra-files 4] [--json]
"""

from __future__ import annotations

import argparse
import difflib
import json
import random
import statistics
import sys
import time
from pathlib import Path

import torch

STDLIB_FILES = [
    "textwrap.py", "argparse.py", "json/decoder.py", "json/encoder.py", "configparser.py", "shlex.py",
    "difflib.py", "calendar.py", "pprint.py", "smtplib.py", "tarfile.py", "zipfile/__init__.py", "csv.py",
    "fractions.py", "statistics.py", "dataclasses.py", "enum.py", "functools.py", "inspect.py", "ipaddress.py",
    "logging/__init__.py", "logging/handlers.py", "pathlib.py", "pickle.py", "platform.py", "queue.py",
    "random.py", "selectors.py", "shutil.py", "socketserver.py", "string.py", "subprocess.py", "tempfile.py",
    "threading.py", "tokenize.py", "traceback.py", "typing.py", "uuid.py", "weakref.py", "heapq.py",
    "gettext.py", "imaplib.py", "mailbox.py", "optparse.py", "plistlib.py", "sched.py", "gzip.py", "bisect.py",
]


def stdlib() -> Path:
    import json as _j

    return Path(_j.__file__).resolve().parents[1]


def edit_similarity(a: str, b: str) -> float:
    return difflib.SequenceMatcher(None, a, b).ratio() if (a or b) else 1.0


def lines_upto_tokens(text: str, n: int, tok) -> list[str] | None:
    lines = text.split("\n")
    if len(tok.encode(text)) < n:
        return None
    lo, hi = 0, len(lines)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if len(tok.encode("\n".join(lines[:mid]))) <= n:
            lo = mid
        else:
            hi = mid - 1
    return lines[:lo]


def pick_target(lines: list[str], rng: random.Random) -> int | None:
    """An indented code line in the last 10% (the next line to predict)."""
    cands = [i for i in range(int(len(lines) * 0.9), len(lines))
             if lines[i].startswith("    ") and len(lines[i].strip()) > 3 and not lines[i].strip().startswith("#")]
    return rng.choice(cands) if cands else None


def make_edits(lines: list[str], target: int, task: str, rng: random.Random) -> list[str]:
    """Edited lines before the target; the target line keeps its text."""
    body = list(lines[:target])
    code = [l for l in body if l.strip()]

    def insert():
        at = rng.randrange(1, int(len(body) * 0.85))
        body.insert(at, rng.choice(code))

    def delete():
        at = rng.randrange(1, int(len(body) * 0.85))
        del body[at : at + rng.randint(1, 3)]

    if task == "insertion":
        insert()
    elif task == "deletion":
        delete()
    else:
        for _ in range(3):
            rng.choice([insert, delete])()
    return body + lines[target:]


def prompt_for(lines: list[str], target: int, tok, budget: int):
    from draftline.completion.prompt import build_prompt
    from draftline.completion.tokens import TokenizedText

    line = lines[target]
    indent = len(line) - len(line.lstrip())
    text = "\n".join(lines)
    cursor = sum(len(l) + 1 for l in lines[:target]) + indent
    return build_prompt(TokenizedText.full(tok, text), cursor, tok, budget), line.strip()


def next_logits(cache, prompt: list[int]) -> torch.Tensor:
    n = len(prompt)
    cache.reserve(n + 64)
    return cache.net.forward(torch.tensor([prompt[-1]]), torch.tensor([n - 1]), cache.k, cache.v, n - 1)[0]


def greedy_line(cache, pr, tok, pieces) -> str:
    from draftline.completion.decode import decode
    from draftline.completion.drafts import DecodeSpec, HealGuide
    from draftline.completion.stops import StopRule

    spec = DecodeSpec(k=1, max_tokens=40, stop=StopRule(pr.heal, True, 0),
                      heal=HealGuide(pieces, pr.heal) if pr.heal else None, method="greedy")
    drafts, _ = decode(cache, pr.tokens, tok, spec)
    t = drafts[0].final_text(tok) if drafts else ""
    return t[len(pr.heal):].split("\n")[0].strip()


_BASE: dict = {}


def run_case(net, tok, pieces, orig_lines, edited_lines, target_o, target_e, budget, do_decode=True) -> dict:
    from draftline.completion.kvcache import DocCache

    pr_o, _ = prompt_for(orig_lines, target_o, tok, budget)
    pr_e, truth = prompt_for(edited_lines, target_e, tok, budget)
    out: dict = {"tokens": len(pr_e.tokens)}
    key = tuple(pr_o.tokens)
    base = _BASE.get(key)
    if base is None:  # the unedited prompt is the same for a file's three tasks: encode it once
        _BASE.clear()
        base = _BASE[key] = DocCache(net)
        base.sync(pr_o.tokens[:-1], mode="full")
    caches = {}
    t = time.perf_counter()
    full = DocCache(net)
    full.sync(pr_e.tokens[:-1], mode="full")
    out["full_ms"] = (time.perf_counter() - t) * 1000
    caches["full"] = full
    for mode in ("pie", "conflict-fast"):
        c = DocCache(net)
        c.reserve(base.capacity)
        c.k[:, :, : len(base.tokens)] = base.k[:, :, : len(base.tokens)]
        c.v[:, :, : len(base.tokens)] = base.v[:, :, : len(base.tokens)]
        c.tokens, c.exact = list(base.tokens), base.exact
        st = c.sync(pr_e.tokens[:-1], mode=mode)
        out[f"{mode}_ms"] = st.ms
        out[f"{mode}_computed"] = st.computed
        caches[mode] = c
    lf = torch.log_softmax(next_logits(full, pr_e.tokens), -1)
    for mode in ("pie", "conflict-fast"):
        lm = torch.log_softmax(next_logits(caches[mode], pr_e.tokens), -1)
        out[f"kl_{mode}"] = float((lf.exp() * (lf - lm)).sum())
        out[f"top1_{mode}"] = int(lf.argmax() == lm.argmax())
    if do_decode:
        for mode, c in caches.items():
            got = greedy_line(c, pr_e, tok, pieces)
            out[f"em_{mode}"] = int(got == truth)
            out[f"es_{mode}"] = edit_similarity(got, truth)
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, default=30)
    ap.add_argument("--sizes", default="2048", help="sizes with full per-task fidelity + decoding")
    ap.add_argument("--extra-sizes", default="1024,4096", help="sizes for sync timing and fidelity only")
    ap.add_argument("--extra-files", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2, help="torch threads (1 leaves a core to other work)")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    from draftline.completion import model as M
    from draftline.completion.drafts import PieceIndex

    torch.set_num_threads(a.threads)
    lm = M.load(None)
    net, tok = lm.net, lm.tokenizer
    pieces = PieceIndex(tok)
    rng = random.Random(a.seed)
    rows: list[dict] = []
    plan = [(int(s), a.files, True) for s in a.sizes.split(",") if s] + \
           [(int(s), a.extra_files, False) for s in a.extra_sizes.split(",") if s]
    for size, nfiles, dec in plan:
        used = 0
        for f in STDLIB_FILES:
            if used >= nfiles:
                break
            if not (stdlib() / f).exists():  # the list spans Python versions
                continue
            lines = lines_upto_tokens((stdlib() / f).read_text(encoding="utf-8"), size, tok)
            if not lines:
                continue
            tgt = pick_target(lines, rng)
            if tgt is None:
                continue
            used += 1
            for task in ("insertion", "deletion", "multi-place"):
                edited = make_edits(lines, tgt, task, rng)
                tgt_e = tgt + (len(edited) - len(lines))
                r = run_case(net, tok, pieces, lines, edited, tgt, tgt_e, size + 64, dec)
                r.update(file=f, task=task, size=size)
                rows.append(r)
                print(f"{size:5d} {task:11s} {f:24s} full {r['full_ms']:7.0f} ms  pie {r['pie_ms']:6.0f} ms "
                      f"({r['pie_computed']} tok)  kl pie {r['kl_pie']:.4f} cf {r['kl_conflict-fast']:.4f}"
                      + (f"  em {r['em_full']}/{r['em_pie']}/{r['em_conflict-fast']}" if dec else ""),
                      file=sys.stderr, flush=True)

    def mean(key, sel):
        v = [r[key] for r in rows if sel(r) and key in r]
        return statistics.mean(v) if v else float("nan")

    print("\nPIE vs full re-encode vs conflict-fast on stdlib files (SmolLM2-135M, CPU)")
    print(f"{'size':>5} {'task':12} {'n':>3} {'full ms':>8} {'pie ms':>7} {'speedup':>7} {'top1 pie':>8} "
          f"{'top1 cf':>7} {'KL pie':>8} {'KL cf':>7} {'EM f/p/c':>14} {'ES f/p/c':>16}")
    for size in sorted({r["size"] for r in rows}):
        for task in ("insertion", "deletion", "multi-place", "all"):
            sel = (lambda r, s=size, t=task: r["size"] == s and (t == "all" or r["task"] == t))
            n = sum(1 for r in rows if sel(r))
            if not n:
                continue
            full_ms, pie_ms = mean("full_ms", sel), mean("pie_ms", sel)
            em = "/".join(f"{mean('em_' + m, sel):.2f}" for m in ("full", "pie", "conflict-fast"))
            es = "/".join(f"{mean('es_' + m, sel):.3f}" for m in ("full", "pie", "conflict-fast"))
            print(f"{size:>5} {task:12} {n:>3} {full_ms:>8.0f} {pie_ms:>7.0f} {full_ms / pie_ms:>7.1f} "
                  f"{mean('top1_pie', sel):>8.3f} {mean('top1_conflict-fast', sel):>7.3f} "
                  f"{mean('kl_pie', sel):>8.4f} {mean('kl_conflict-fast', sel):>7.4f} {em:>14} {es:>16}")
    main_size = int(a.sizes.split(",")[0])
    sel = lambda r: r["size"] == main_size  # noqa: E731
    res = {
        "sync_speedup": round(mean("full_ms", sel) / mean("pie_ms", sel), 2),
        "full_ms": round(mean("full_ms", sel), 1), "pie_ms": round(mean("pie_ms", sel), 1),
        "em_full": round(mean("em_full", sel), 4), "em_pie": round(mean("em_pie", sel), 4),
        "em_conflict_fast": round(mean("em_conflict-fast", sel), 4),
        "es_full": round(mean("es_full", sel), 4), "es_pie": round(mean("es_pie", sel), 4),
        "es_conflict_fast": round(mean("es_conflict-fast", sel), 4),
        "top1_agree_pie": round(mean("top1_pie", sel), 4),
        "top1_agree_conflict_fast": round(mean("top1_conflict-fast", sel), 4),
        "kl_pie": round(mean("kl_pie", sel), 5), "kl_conflict_fast": round(mean("kl_conflict-fast", sel), 5),
        "n": sum(1 for r in rows if sel(r)), "size": main_size,
        "speedup_by_size": {str(s): round(mean("full_ms", lambda r, s=s: r["size"] == s)
                                          / mean("pie_ms", lambda r, s=s: r["size"] == s), 2)
                            for s in sorted({r["size"] for r in rows})},
    }
    if a.json:
        print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
