"""Monitor-guided decoding on real code: the next identifier after `obj.`, with and without monitors.

Sites: `obj.member` accesses in installed standard-library modules (not in import lines) where
jedi, given the file cut right after the dot, lists `member` among the members of `obj`.
Object kinds are mixed (`self.`/`cls.`, other names, calls, subscripts, string literals); bare
modules (the easy case, `--module-share`) and `self.` (the most common one, `--self-share`)
are capped per file.  Sites are picked in a
child process, so the jedi the monitors use in this process starts as cold as a fresh
server's (only `warm_up()` has run).

Per site: the document is the file cut just after the dot (prompt = the last `--ctx`
tokens, token healing as in the server), the prompt is encoded once, then the identifier is
decoded greedily twice, without and with the monitor guide (built, as the server should,
before the prompt is encoded, so its jedi query runs meanwhile), stopping at the first
non-identifier character.

Reported: next-identifier exact match (EM), the share of generated identifiers that are not
members by jedi's full list (an empty identifier, e.g. `*p`, counts as invalid).  A new
attribute bound by assignment (`self.new = ...`) where the analysis says binding is legal
(`__init__`-like methods; the monitor admits exactly that) is valid code, not a hallucinated
member: it is counted apart (`new_attribute_*`), and `invalid_rate_*_strict` counts it as
invalid too, whether the monitor's masks allow the tokens of the
ground truth (heal + member + next character, as the tokenizer splits them), and the
guide's time per generated token:
`overhead_ms_per_token` = all time in `guide.allowed()` (analysis + masking + jedi waits) /
tokens; `mask_ms_per_token` = the same without the jedi queries; `jedi_wait_ms_per_site`.

    python bench/monitors.py [--sites 220] [--ctx 1024] [--seed 0] [--json]
Last line with --json: {"em_with", "em_without", "invalid_rate_with", "invalid_rate_without",
"overhead_ms_per_token", "n", ...}
"""

from __future__ import annotations

import argparse
import io
import json
import multiprocessing as mp
import os
import random
import re
import statistics
import sys
import time
import tokenize

FILES = [
    "textwrap.py", "shlex.py", "argparse.py", "json/decoder.py", "json/encoder.py", "configparser.py",
    "difflib.py", "calendar.py", "pprint.py", "smtplib.py", "tarfile.py", "csv.py", "gettext.py",
    "string.py", "queue.py", "sched.py", "fractions.py", "statistics.py", "ipaddress.py", "cmd.py",
    "logging/__init__.py", "logging/handlers.py", "email/message.py", "http/cookiejar.py", "urllib/parse.py",
    "zipfile.py", "mailbox.py", "optparse.py", "threading.py", "subprocess.py", "dataclasses.py",
    "selectors.py", "asyncio/locks.py", "asyncio/queues.py", "wave.py", "netrc.py", "ftplib.py",
]
_IDENT = re.compile(r"\w*")


def stdlib_root() -> str:
    import json as _j

    return os.path.dirname(os.path.dirname(_j.__file__))


# ------------------------------------------------------------------------------------------
# site selection (child process)
# ------------------------------------------------------------------------------------------
def _candidates(src: str) -> list[tuple[int, int, str, str]]:
    """(offset of the dot, offset after the member, member, object token kind) per `x.member`."""
    toks = list(tokenize.generate_tokens(io.StringIO(src).readline))
    offs = [0]
    for line in io.StringIO(src).readlines():  # the line splitting tokenize uses
        offs.append(offs[-1] + len(line))
    out = []
    for i in range(1, len(toks) - 1):
        t, prev, nxt = toks[i], toks[i - 1], toks[i + 1]
        if t.string != "." or nxt.type != tokenize.NAME or prev.end != t.start or t.end != nxt.start:
            continue
        if prev.type == tokenize.NAME:
            kind = "self" if prev.string in ("self", "cls") else "name"
        elif prev.type == tokenize.OP and prev.string in (")", "]"):
            kind = "call" if prev.string == ")" else "subscript"
        elif prev.type == tokenize.STRING:
            kind = "string"
        else:
            continue
        if t.line.lstrip().startswith(("import ", "from ")):
            continue
        dot = offs[t.start[0] - 1] + t.start[1]
        end = offs[nxt.end[0] - 1] + nxt.end[1]
        out.append((dot, end, nxt.string, kind))
    return out


def _is_module(script, src: str, dot: int) -> bool:
    from parso.utils import split_lines

    lines = split_lines(src[:dot])
    try:
        defs = script.infer(len(lines), len(lines[-1]))
    except Exception:
        return False
    return bool(defs) and all(d.type == "module" for d in defs)


def select_file(job: tuple) -> list[dict]:
    """Up to ``quota`` sites of one file where jedi (the monitors' own question: the file cut
    after the dot, nothing after it) lists the member.  Taken in file order from a random
    start, so one file's cursors are near each other (its prompt cache is reused)."""
    rel, quota, max_modules, max_self, seed = job
    import jedi

    an = _selector()
    path = os.path.join(stdlib_root(), rel)
    src = open(path, encoding="utf-8").read()
    cands = _candidates(src)
    if not cands:
        return []
    rng = random.Random(f"{seed}:{rel}")
    k = rng.randrange(len(cands))
    cands = cands[k:] + cands[:k]
    env, project = an.backend.jedi_objects()
    script = jedi.Script(src, path=path, environment=env, project=project)
    sites: list[dict] = []
    n_mod = n_self = 0
    last_end = -1
    for dot, end, member, kind in cands[: 6 * quota]:
        if len(sites) >= quota:
            break
        if sites and last_end <= dot < last_end + 200:
            continue  # not two sites in one line: spread them a little
        if kind == "self" and n_self >= max_self:
            continue
        module = kind == "name" and _is_module(script, src, dot)
        if module and n_mod >= max_modules:
            continue
        try:
            res = an.backend.members(src[: dot + 1], "", path)
        except Exception:
            continue
        if res is None or member not in res.names:
            continue
        n_mod += module
        n_self += kind == "self"
        last_end = end
        sites.append({"path": path, "rel": rel, "dot": dot, "end": end, "member": member,
                      "kind": "module" if module else kind, "members": sorted(res.names)})
    return sorted(sites, key=lambda x: x["dot"])


_SEL = None


def _selector():
    global _SEL
    if _SEL is None:
        from draftline.analysis.jedi_client import PythonAnalyzer

        _SEL = PythonAnalyzer()
    return _SEL


# ------------------------------------------------------------------------------------------
# decoding
# ------------------------------------------------------------------------------------------
def ident_stop(heal: str):
    def stop(text: str) -> int | None:
        if len(text) <= len(heal):
            return None
        m = _IDENT.match(text, len(heal))
        return m.end() if m.end() < len(text) else None
    return stop


def identifier_of(text: str, heal: str) -> str:
    if not text.startswith(heal):
        return ""
    m = _IDENT.match(text, len(heal))
    ident = m.group()
    return ident if ident[:1].isidentifier() else ""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sites", type=int, default=220)
    ap.add_argument("--ctx", type=int, default=1024, help="prompt tokens (the file's last ones before the cursor)")
    ap.add_argument("--max-tokens", type=int, default=12)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--module-share", type=float, default=0.25, help="at most this share of bare-module objects")
    ap.add_argument("--self-share", type=float, default=0.5, help="at most this share of `self.`/`cls.` objects")
    ap.add_argument("--per-file", type=int, default=9)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (1: on a shared, oversubscribed 2-core machine 1 thread runs faster)")
    ap.add_argument("--files", help="comma-separated stdlib files (default: a fixed list of 37)")
    ap.add_argument("--dump", help="write the per-site rows to this JSON file")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("-v", "--verbose", action="store_true")
    a = ap.parse_args()

    t_start = time.perf_counter()
    import torch

    if a.threads:
        torch.set_num_threads(a.threads)
    from draftline.completion import model as M
    from draftline.completion.decode import decode
    from draftline.completion.drafts import DecodeSpec, HealGuide
    from draftline.completion.engine import Engine, EngineConfig
    from draftline.completion.guides import monitor_guides, warm_up

    rng = random.Random(a.seed)
    files = [f for f in (a.files.split(",") if a.files else FILES) if os.path.exists(os.path.join(stdlib_root(), f))]
    rng.shuffle(files)
    quota = a.per_file
    jobs = [(rel, quota, max(1, int(quota * a.module_share)), max(1, int(quota * a.self_share)), a.seed)
            for rel in files]
    ctx = mp.get_context("spawn")
    pool = ctx.Pool(1)  # sites are picked in a child process, a file ahead of the decoding
    results = pool.imap(select_file, jobs)
    lm = M.load(None)
    eng = Engine(lm, EngineConfig(k=1, max_tokens=a.max_tokens, context_tokens=a.ctx, method="greedy"))
    warm_up(wait=60)  # what the server does at start

    class Settings:  # the LSP's monitor settings, all on
        enabled = members = names = kwargs = modules = scopes = True

    rows = []
    for file_sites in results:
        if len(rows) >= a.sites:
            break
        for s in file_sites[: a.sites - len(rows)]:
            src = open(s["path"], encoding="utf-8").read()
            text = src[: s["dot"] + 1]
            doc = "bench://" + s["rel"]
            pr = eng.prompt_for(doc, text, len(text))
            # the guide is made first: its jedi query runs while the prompt is encoded
            guides = monitor_guides(eng, "python", s["path"], pr, {}, Settings())
            t0 = time.perf_counter()
            eng._sync(doc, pr, None)
            sync_ms = (time.perf_counter() - t0) * 1000
            cache = eng.caches.get(doc)
            out = {}
            for label, gs in (("with", guides), ("without", [])):  # with first: jedi overlaps the sync only
                spec = DecodeSpec(k=1, max_tokens=a.max_tokens, stop=ident_stop(pr.heal), guides=list(gs),
                                  heal=HealGuide(eng.pieces, pr.heal) if pr.heal else None, method="greedy")
                drafts, ds = decode(cache, pr.tokens, eng.tok, spec)
                d = drafts[0] if drafts else None
                full = d.final_text(eng.tok) if d is not None else ""
                ident = identifier_of(full, pr.heal)
                whole = eng.tok.decode(d.tokens) if d is not None else ""  # with the token that ended it
                follow = whole[len(pr.heal) + len(ident):][:3] if whole.startswith(pr.heal) else ""
                out[label] = (ident, len(d.tokens) if d else 0, ds.ms, follow)
            g = guides[0]
            sess = g.session
            c1 = sess.at(pr.heal)
            # ground truth through the masks: the tokens of heal + member + the next character,
            # as the tokenizer writes them, must each be allowed at their step
            nxt = src[s["end"]: s["end"] + 1]
            gt_ok, draft = True, ""
            for t in eng.tok.encode(pr.heal + s["member"] + nxt):
                if len(draft) >= len(pr.heal) + len(s["member"]):
                    break
                c = sess.at(draft)
                if c is not None and not eng._masker.mask_array(c)[t]:
                    gt_ok = False
                    break
                draft += eng.tok.pieces[t]
            members = set(s["members"])
            may_bind = c1 is not None and bool(c1.followers)  # the analysis: `self.new = ...` is legal here

            def binds_new(ident: str, follow: str) -> bool:
                """A new attribute bound by assignment (`self.new = ...`, `self.new: T`) where
                binding is legal: valid code, not a hallucinated member."""
                f = follow.lstrip(" ")
                return bool(ident) and may_bind and ident not in members and (
                    (f[:1] == "=" and f[:2] != "==") or (f[:1] == ":" and f[:2] != ":="))

            new_w = binds_new(out["with"][0], out["with"][3])
            new_o = binds_new(out["without"][0], out["without"][3])
            row = {
                "site": f"{s['rel']}:{src.count(chr(10), 0, s['dot']) + 1}", "kind": s["kind"], "member": s["member"],
                "without": out["without"][0], "with": out["with"][0],
                "follow_without": out["without"][3], "follow_with": out["with"][3],
                "em_without": out["without"][0] == s["member"], "em_with": out["with"][0] == s["member"],
                "invalid_without": out["without"][0] not in members and not new_o,
                "invalid_with": out["with"][0] not in members and not new_w,
                "new_attribute_without": new_o, "new_attribute_with": new_w,
                "tokens_with": out["with"][1], "tokens_without": out["without"][1],
                "decode_ms_without": out["without"][2], "decode_ms_with": out["with"][2],
                "guide_ms": g.time_s * 1000, "jedi_ms": g.query_s * 1000, "guide_calls": g.steps,
                "analysis_ms": g.analysis_s * 1000,
                "constrained": c1 is not None and c1.candidates is not None, "gt_allowed": gt_ok,
                "sync_ms": sync_ms, "prompt_tokens": len(pr.tokens), "heal": pr.heal,
            }
            rows.append(row)
            i = len(rows)
            if a.verbose or i % 20 == 0:
                em_w = sum(r["em_with"] for r in rows) / i
                em_o = sum(r["em_without"] for r in rows) / i
                print(f"[{i}/{a.sites}] {time.perf_counter() - t_start:.0f} s  EM with {em_w:.3f} without {em_o:.3f}"
                      + (f"  | {row['site']} {row['kind']} {row['member']!r}: {row['without']!r} / {row['with']!r}"
                         f"  sync {sync_ms:.0f} ms guide {row['guide_ms']:.1f} ms (analysis {row['analysis_ms']:.1f},"
                         f" jedi {row['jedi_ms']:.1f}) {row['tokens_with']} tokens"
                         if a.verbose else ""), file=sys.stderr, flush=True)
        if file_sites:
            eng.close("bench://" + file_sites[0]["rel"])
    pool.terminate()

    n = len(rows)

    def rate(key: str, sub=None) -> float:
        rs = rows if sub is None else [r for r in rows if sub(r)]
        return sum(r[key] for r in rs) / max(1, len(rs))

    tok_with = sum(r["tokens_with"] for r in rows)
    guide_ms = sum(r["guide_ms"] for r in rows)
    jedi_ms = sum(r["jedi_ms"] for r in rows)
    step_ms_without = sum(r["decode_ms_without"] for r in rows) / max(1, sum(r["tokens_without"] for r in rows))
    step_ms_with = sum(r["decode_ms_with"] for r in rows) / max(1, tok_with)
    per_site_guide = sorted(r["guide_ms"] for r in rows)
    summary = {
        "n": n,
        "em_with": round(rate("em_with"), 4),
        "em_without": round(rate("em_without"), 4),
        "invalid_rate_with": round(rate("invalid_with"), 4),
        "invalid_rate_without": round(rate("invalid_without"), 4),
        # strict: a new attribute bound by assignment counts as invalid too
        "invalid_rate_with_strict": round(sum(r["invalid_with"] or r["new_attribute_with"] for r in rows) / max(1, n), 4),
        "invalid_rate_without_strict": round(sum(r["invalid_without"] or r["new_attribute_without"] for r in rows)
                                             / max(1, n), 4),
        "overhead_ms_per_token": round(guide_ms / max(1, tok_with), 3),
        "mask_ms_per_token": round((guide_ms - jedi_ms) / max(1, tok_with), 3),
        "jedi_wait_ms_per_site": round(jedi_ms / max(1, n), 2),
        "guide_ms_per_site_p50": round(statistics.median(per_site_guide), 2) if n else 0,
        "guide_ms_per_site_p90": round(per_site_guide[int(0.9 * (n - 1))], 2) if n else 0,
        "decode_ms_per_token_without": round(step_ms_without, 1),
        "decode_ms_per_token_with": round(step_ms_with, 1),
        "tokens_with": tok_with,
        "gt_allowed_rate": round(rate("gt_allowed"), 4),
        "new_attribute_with": sum(r["new_attribute_with"] for r in rows),
        "new_attribute_without": sum(r["new_attribute_without"] for r in rows),
        "constrained_rate": round(rate("constrained"), 4),
        "ctx_tokens": a.ctx,
        "files": len({r["site"].split(":")[0] for r in rows}),
        "wall_s": round(time.perf_counter() - t_start, 1),
    }

    kinds = sorted({r["kind"] for r in rows})
    print(f"\nnext identifier after `obj.` on {n} stdlib sites ({summary['files']} files, prompt <= {a.ctx} tokens, "
          f"greedy, SmolLM2-135M)")
    print(f"{'objects':<12}{'n':>5}{'EM without':>12}{'EM with':>10}{'invalid without':>17}{'invalid with':>14}")
    for k in kinds + ["all"]:
        sub = (lambda r, k=k: r["kind"] == k) if k != "all" else None
        m = n if sub is None else sum(1 for r in rows if sub(r))
        print(f"{k:<12}{m:>5}{rate('em_without', sub):>12.3f}{rate('em_with', sub):>10.3f}"
              f"{rate('invalid_without', sub):>17.3f}{rate('invalid_with', sub):>14.3f}")
    print(f"ground truth allowed by the monitor at the cursor: {summary['gt_allowed_rate']:.3f}; "
          f"member list known (constrained): {summary['constrained_rate']:.3f}")
    print(f"guide time per generated token: {summary['overhead_ms_per_token']:.3f} ms "
          f"(masking + analysis without jedi: {summary['mask_ms_per_token']:.3f} ms; jedi waits "
          f"{summary['jedi_wait_ms_per_site']:.1f} ms per site; guide per site p50 {summary['guide_ms_per_site_p50']:.1f}"
          f" / p90 {summary['guide_ms_per_site_p90']:.1f} ms)")
    print(f"decode per token: {summary['decode_ms_per_token_without']:.1f} ms without, "
          f"{summary['decode_ms_per_token_with']:.1f} ms with monitors; wall {summary['wall_s']:.0f} s")
    fixed = [r for r in rows if r["em_with"] and not r["em_without"]]
    broke = [r for r in rows if r["em_without"] and not r["em_with"]]
    print(f"monitors fixed {len(fixed)} sites, broke {len(broke)}; examples fixed: "
          + ", ".join(f"{r['without']!r}->{r['with']!r}" for r in fixed[:6]))
    if broke:
        print("broke: " + ", ".join(f"{r['site']} {r['member']!r}->{r['with']!r}" for r in broke[:6]))
    bad = [r for r in rows if r["invalid_with"]]
    if bad:
        print("invalid with monitors: " + ", ".join(f"{r['site']} {r['member']!r}->{r['with'] + r['follow_with']!r}"
                                                   for r in bad[:8]))
    new_attr = [r for r in rows if r["new_attribute_with"]]
    print(f"new attributes bound by assignment where the analysis allows it (valid code, not counted as invalid;"
          f" counted in *_strict): with {len(new_attr)}, without {summary['new_attribute_without']}"
          + (": " + ", ".join(f"{r['site']} {r['member']!r}->{r['with'] + r['follow_with']!r}" for r in new_attr[:8])
             if new_attr else ""))
    print(f"invalid rate strict (new attributes counted): with {summary['invalid_rate_with_strict']:.3f},"
          f" without {summary['invalid_rate_without_strict']:.3f}")
    if a.dump:
        with open(a.dump, "w") as f:
            json.dump(rows, f, indent=1)
    if a.json:
        print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
