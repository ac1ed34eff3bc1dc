"""`draftline demo`: what the cache does, shown on code nobody here wrote, in one run.

On a module of jedi (installed with draftline), the document ending at the start of a line
in its second half, as while writing it:
  1. the first answer in the newly opened file (the tokens nearest the cursor first),
  2. the whole window encoded in idle time (as the server does between keystrokes),
  3. an edit ~60 lines above the cursor, answered from the patched cache (PIE) at the same
     cursor, beside a re-encode of the very same prompt, both timed here,
  4. three characters typed along the first draft: answered from the drafts, no model run.
Every draft shown passes the junk rules (completion.junk, parse check) or the line says so.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path


def demo_file() -> tuple[str, str]:
    import jedi

    path = Path(jedi.__file__).parent / "api" / "completion.py"
    return str(path), path.read_text(encoding="utf-8")


def pick_cursor(text: str) -> int:
    """A line start in the second half: an indented statement of 12+ characters."""
    lines = text.split("\n")
    for i in range(int(len(lines) * 0.6), len(lines)):
        s = lines[i].strip()
        if lines[i].startswith("        ") and len(s) >= 12 and not s.startswith(("#", '"', "'", ")")):
            return i
    return len(lines) // 2


def run(model: str | None = None, out=sys.stdout) -> int:
    from draftline.analysis.trim import adds_parse_errors
    from draftline.completion import model as M
    from draftline.completion.engine import Engine, EngineConfig
    from draftline.completion.junk import junk_reason

    from draftline.completion.guides import make_trim

    def say(msg: str = "") -> None:
        print(msg, file=out, flush=True)

    path, src = demo_file()
    lines = src.split("\n")
    ln = pick_cursor(src)
    text = "\n".join(lines[:ln]) + "\n"  # the document ends where the user is writing
    cursor = len(text)
    say(f"draftline demo: {path}, cursor at the start of line {ln + 1} (the document ends there)")
    lm = M.load(model, progress=lambda m, p: print(f"  [{p:3d}%] {m}", file=sys.stderr))
    say(f"model {lm.info['architecture']}, {lm.info['layers']} layers, loaded in {lm.load_ms:.0f} ms")
    eng = Engine(lm, EngineConfig(k=3, monitors=False))
    eng.warm_up()  # as the server does after loading
    trim = make_trim("python")
    doc = "demo://completion.py"

    def show(label: str, r, prefix: str, suffix: str = "") -> None:
        t = r.timings
        say(f"\n{label}: {t.get('total', 0):.0f} ms (sync {t.get('sync', 0):.0f}, decode {t.get('decode', 0):.0f}; "
            f"prompt {r.tokens.get('prompt', '-')} tokens, {r.tokens.get('computed', 0)} computed, "
            f"window {r.tokens.get('window', '-')}"
            + (", the answer kept for this place re-verified in one forward" if r.tokens.get("reused") else "") + ")")
        say(f"  the file says: {lines[ln].strip()}")
        shown = [d.text for d in r.drafts]
        for i, d in enumerate(shown):
            junk = junk_reason(d, shown[:i]) or ("parse" if adds_parse_errors("python", prefix, d, suffix, open_ok=True) else None)
            first = d.split("\n", 1)[0]
            say(f"  draft {i + 1}: {first}" + (f"   [{d.count(chr(10))} more lines]" if "\n" in d else "")
                + (f"   [JUNK: {junk}]" if junk else ""))
        if not shown:
            say("  (no draft)")

    # 1. a newly opened file
    r = eng.complete(doc, text, cursor, trim=trim)
    show("1. first answer in the newly opened file", r, text)
    # 2. what the server does in idle time: the whole window encoded anew, exactly
    t0 = time.perf_counter()
    while eng.prepare(doc, text, cursor).more:
        pass
    whole = time.perf_counter() - t0
    t0 = time.perf_counter()
    again = eng.reanswer(doc, text, cursor)  # the place answered again from the whole window
    again_ms = (time.perf_counter() - t0) * 1000
    say(f"\n2. idle time: the whole window ({len(eng.cache_of(doc).tokens)} tokens) encoded exactly in "
        f"{whole * 1000:.0f} ms, the place answered again from it "
        + (f"in {again_ms:.0f} ms" if again is not None else "(not needed)"))
    # 3. an edit far above the cursor, then the same cursor again
    at = max(0, ln - 60)
    ins = "    # a line the user just added, far above the cursor\n"
    off = sum(len(x) + 1 for x in lines[:at])
    text2 = text[:off] + ins + text[off:]
    c2 = cursor + len(ins)
    r2 = eng.complete(doc, text2, c2, trim=trim)
    show(f"3. after an edit {ln - at} lines above, from the patched cache", r2, text2[:c2])
    # the re-encode of the very same prompt, for comparison (what a prompt cache keyed on
    # the prefix pays: everything after the edit)
    ref = Engine(lm, EngineConfig(k=3, monitors=False, pie=False, latency_budget_ms=0, ahead=False))
    while ref.prepare(doc, text, cursor).more:
        pass
    r3 = ref.complete(doc, text2, c2, trim=trim)
    s2, s3 = r2.timings["sync"], r3.timings["sync"]
    say(f"   the same prompt re-encoded from the edit on: sync {s3:.0f} ms ({r3.tokens['computed']} tokens) "
        f"vs {s2:.0f} ms patched ({r2.tokens['computed']} tokens): {s3 / max(s2, 0.1):.0f}x")
    # 4. typing along the first draft
    first = r2.drafts[0].text if r2.drafts else ""
    ind = len(first) - len(first.lstrip())
    if len(first) > ind + 3:  # the editor's auto-indent, then three characters of the draft
        typed = first[: ind + 3]
        text3 = text2[:c2] + typed + text2[c2:]
        t0 = time.perf_counter()
        hit = eng.ahead.lookup(doc, text3, c2 + len(typed))
        ms = (time.perf_counter() - t0) * 1000
        say(f"\n4. typed {typed.strip()!r}: " + (f"answered from the drafts in {ms:.2f} ms: ...{hit[0][0].split(chr(10))[0]}"
                                          if hit else "no draft predicted it"))
    return 0
