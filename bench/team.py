"""Team engine throughput: 1 replica vs 2, side by side in one run, and a paper projection
of documents per replica for a GPU box.

For each replica count: `draftline engine serve --replicas N` (its own local Ray cluster),
then E simulated editors, each a thread with the edge's engine (`lsp.remote.RemoteEngine`,
exactly what `draftline serve` with `engine` set uses) and its own document (a standard-
library file): a cold first completion, then K keystrokes typed at a cursor, a completion
after each one (typed-ahead answers off, so every keystroke reaches the engine), all
editors at once.  Throughput = keystroke completions per second over the typing phase.

    python bench/team.py [--model DIR] [--editors 8] [--keys 24] [--replicas 1,2] [--threads N] [--json]
Last line with --json: {"throughput": {"1": ..., "2": ...}, "ratio": ..., "p50_ms": {...}, ...}
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

TOKEN = "bench-team-token"
FILES = ["textwrap.py", "shlex.py", "fnmatch.py", "glob.py", "colorsys.py", "bisect.py", "heapq.py", "sched.py",
         "calendar.py", "pprint.py", "difflib.py", "string.py"]
LOCK = Path("/tmp/draftline-bench.lock")


def stdlib() -> Path:
    import json as _j

    return Path(_j.__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_engine(replicas: int, model: str | None, monitors: bool, log, threads: int = 0) -> tuple[subprocess.Popen, str]:
    args = [sys.executable, "-m", "draftline.lsp.cli", "engine", "serve", "--replicas", str(replicas),
            "--port", str(free_port()), "--threads", str(threads)] + (["--model", model] if model else []) + \
        ([] if monitors else ["--no-monitors"])
    p = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=log, env=dict(os.environ, DRAFTLINE_ENGINE_TOKEN=TOKEN))
    t0 = time.monotonic()
    while time.monotonic() - t0 < 300:
        line = p.stdout.readline().decode()
        m = re.search(r"ready at (\S+)", line)
        if m:
            return p, m.group(1)
        if not line and p.poll() is not None:
            break
    stop_engine(p)
    raise SystemExit("engine did not start (see --log)")


def stop_engine(p: subprocess.Popen) -> None:
    if p.poll() is None:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(60)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(10)


def editor_text(i: int) -> tuple[str, int]:
    """A document (~2k tokens of a stdlib file) and a cursor at the end of a line inside it."""
    text = (stdlib() / FILES[i % len(FILES)]).read_text(encoding="utf-8")[:8000]
    cut = text.rfind("\n", 0, int(len(text) * 0.8))
    return text, cut


def run_editors(url: str, editors: int, keys: int) -> dict:
    from draftline.lsp.config import Settings
    from draftline.lsp.remote import RemoteEngine

    typed = "value = self.items[index] + 1"
    lat: list[list[float]] = [[] for _ in range(editors)]
    cold: list[float] = []
    replicas: dict[str, set] = {}
    barrier = threading.Barrier(editors + 1)
    errors: list[str] = []

    def one(i: int) -> None:
        try:
            s = Settings(engine=url, engine_token=TOKEN, engine_user=f"bench{i}", ahead=False)
            s.monitors.enabled = False
            eng = RemoteEngine(s)
            uri = f"file:///bench/{i}/{FILES[i % len(FILES)]}"
            text, cur = editor_text(i)
            t = time.perf_counter()
            eng.complete(uri, text, cur, arrived=t)
            cold.append(time.perf_counter() - t)
            barrier.wait()
            for k in range(keys):
                ch = typed[k % len(typed)]
                text = text[:cur] + ch + text[cur:]
                cur += 1
                t = time.perf_counter()
                eng.complete(uri, text, cur, arrived=t)
                lat[i].append(time.perf_counter() - t)
            replicas[uri] = set(eng.routing.get(uri, {}))
        except BaseException as e:  # noqa: BLE001
            errors.append(f"editor {i}: {type(e).__name__}: {e}")
            try:
                barrier.abort()
            except Exception:
                pass

    threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(editors)]
    for t in threads:
        t.start()
    barrier.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    if errors:
        raise SystemExit("; ".join(errors))
    allv = sorted(x for xs in lat for x in xs)
    return {"throughput": round(len(allv) / wall, 2), "wall_s": round(wall, 1), "requests": len(allv),
            "p50_ms": round(statistics.median(allv) * 1000, 1),
            "p90_ms": round(allv[int(0.9 * (len(allv) - 1))] * 1000, 1),
            "cold_p50_ms": round(statistics.median(cold) * 1000, 1),
            "replicas_per_doc": max(len(v) for v in replicas.values()),
            "docs_per_replica": sorted(sum(1 for v in replicas.values() if r in v)
                                       for r in set().union(*replicas.values()))}


def hello(url: str) -> dict:
    from draftline.lsp.remote import EngineClient

    return EngineClient(url, TOKEN).post({"op": "hello"}, None)[1]


def projection(info: dict, budget_mb: int, gpu_budget_gb: float, window: int) -> dict:
    """Documents a replica keeps cached: the cache budget over one document's KV bytes
    (2 tensors x layers x KV heads x head dim x bytes per value x tokens per window)."""
    m = info.get("model", {})
    per_tok = lambda layers, kv, hd, b: 2 * layers * kv * hd * b  # noqa: E731
    rows = {}
    for name, (layers, kv, hd) in {"this model": (m.get("layers"), m.get("kv_heads"), m.get("head_dim")),
                                   "7B coder (28 layers, 4 KV heads x 128)": (28, 4, 128)}.items():
        if not all(isinstance(x, int) for x in (layers, kv, hd)):
            continue
        for dtype, b in (("fp32", 4), ("bf16", 2)):
            doc = per_tok(layers, kv, hd, b) * window
            rows[f"{name}, {dtype}"] = {"kv_bytes_per_token": per_tok(layers, kv, hd, b),
                                        "mb_per_doc": round(doc / 2**20, 1),
                                        f"docs_at_{budget_mb}MB": int(budget_mb * 2**20 // doc),
                                        f"docs_at_{gpu_budget_gb:g}GB": int(gpu_budget_gb * 2**30 // doc)}
    return rows


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", help="HF dir or .gguf (default: the default model)")
    ap.add_argument("--editors", type=int, default=8)
    ap.add_argument("--keys", type=int, default=24)
    ap.add_argument("--replicas", default="1,2")
    ap.add_argument("--monitors", action="store_true", help="monitors on (jedi per replica: more CPU)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads per replica (default: cores / replicas)")
    ap.add_argument("--gpu-budget-gb", type=float, default=40.0, help="KV budget per replica on the GPU box")
    ap.add_argument("--log", default="/tmp/draftline-bench-team.log")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    while LOCK.exists():  # another benchmark has the CPU
        print(f"waiting for {LOCK} ...", file=sys.stderr)
        time.sleep(30)
    counts = [int(x) for x in a.replicas.split(",")]
    res: dict = {"cores": os.cpu_count(), "editors": a.editors, "keys": a.keys, "runs": {}}
    info: dict = {}
    with open(a.log, "wb") as log:
        for n in counts:
            p, url = start_engine(n, a.model, a.monitors, log, a.threads)
            try:
                info = hello(url)
                r = run_editors(url, a.editors, a.keys)
            finally:
                stop_engine(p)
            res["runs"][str(n)] = r
            print(f"{n} replica(s): {r['throughput']:.2f} completions/s over {r['requests']} keystrokes "
                  f"({r['wall_s']} s), p50 {r['p50_ms']} ms, p90 {r['p90_ms']} ms, cold p50 {r['cold_p50_ms']} ms, "
                  f"documents per replica {r['docs_per_replica']}, replicas per document {r['replicas_per_doc']}")
    tp = {k: v["throughput"] for k, v in res["runs"].items()}
    if "1" in tp and "2" in tp:
        res["ratio"] = round(tp["2"] / tp["1"], 2)
        per = (lambda n: a.threads or max(1, (os.cpu_count() or 1) // n))  # noqa: E731
        print(f"2 replicas / 1 replica: {res['ratio']:.2f}x on {os.cpu_count()} cores "
              f"(torch threads per replica: {per(1)} with 1 replica, {per(2)} with 2)")
    budget = int(info.get("cache_budget_mb", 4096))
    res["projection"] = projection(info, budget, a.gpu_budget_gb, 2048 + 48 * 3 + 1)
    print("paper projection, documents per replica (2k-token window each):")
    for name, row in res["projection"].items():
        print(f"  {name}: {row}")
    res["throughput"] = tp
    res["p50_ms"] = {k: v["p50_ms"] for k, v in res["runs"].items()}
    if a.json:
        print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
