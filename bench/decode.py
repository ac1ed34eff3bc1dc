"""Decode speed at 2k context: transformers' own forward vs draftline's decoder (fp32,
bf16 weights, int8, int4 where exact), side by side in one run, plus the memory floor and, for each reduced
precision, how often its next token agrees with fp32 on real code.

    python bench/decode.py [--context 2000] [--steps 16] [--agree-positions 500] [--lines 40] [--json]

Agreement: next token of fp32 vs each reduced path, one decode step per position, on two
stdlib files; next-line edit similarity of greedy drafts on bench/drafts.py's tasks.  The
default path is what `quantize: "auto"` loads on CPU: "int4" (the projections whose weights
are exactly 4-bit per group, all of the default model's, in int4; int8 elsewhere).

floor_ms_per_token = bytes of weights read per token / measured read bandwidth (a large
tensor summed with the same thread count). Last line `--json`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch


def stdlib() -> Path:
    import json as _j

    return Path(_j.__file__).resolve().parents[1]


def read_bandwidth_gbs(mb: int = 1024) -> float:
    x = torch.ones(mb * 2**20 // 4)
    x.sum()
    ts = []
    for _ in range(5):
        t = time.perf_counter()
        x.sum()
        ts.append(time.perf_counter() - t)
    return x.nbytes / min(ts) / 1e9


def ours_ms(nets: dict, ids: list[int], steps: int, rounds: int = 4) -> dict[str, float]:
    """Median ms per decode step of each net, the nets taking turns (`rounds` turns of
    steps / rounds steps each), so a change of machine speed hits them alike."""
    n = len(ids)
    state = {}
    for name, net in nets.items():
        k, v = net.new_cache(n + steps + 1)
        net.forward(torch.tensor(ids), torch.arange(n), k, v, 0, logits_rows=None)
        state[name] = [k, v, ids[-1], 0]
    ts: dict[str, list[float]] = {name: [] for name in nets}
    per = max(1, steps // rounds)
    for _ in range(rounds):
        for name, net in nets.items():
            k, v, tok, i = state[name]
            for _ in range(per):
                t = time.perf_counter()
                logits = net.forward(torch.tensor([tok]), torch.tensor([n + i]), k, v, n + i)[0]
                tok = int(logits.argmax())
                ts[name].append(time.perf_counter() - t)
                i += 1
            state[name][2:] = [tok, i]
    return {name: statistics.median(v) * 1000 for name, v in ts.items()}


def hf_ms(path: Path, ids: list[int], steps: int) -> float:
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()
    with torch.no_grad():
        out = hf(torch.tensor([ids]), use_cache=True)
        past = out.past_key_values
        tok = out.logits[0, -1].argmax().view(1, 1)
        ts = []
        for _ in range(steps):
            t = time.perf_counter()
            out = hf(tok, past_key_values=past, use_cache=True)
            past = out.past_key_values
            tok = out.logits[0, -1].argmax().view(1, 1)
            ts.append(time.perf_counter() - t)
    return statistics.median(ts) * 1000


def decode_logits(net, ids: list[int], start: int) -> torch.Tensor:
    """Next-token logits at every position >= start, one decode step each (as served)."""
    k, v = net.new_cache(len(ids) + 1)
    net.forward(torch.tensor(ids[:start]), torch.arange(start), k, v, 0, logits_rows=None)
    rows = [net.forward(torch.tensor([ids[i]]), torch.tensor([i]), k, v, i)[0] for i in range(start, len(ids))]
    return torch.stack(rows)


def next_line_es(nets: dict, tok, n_tasks: int) -> dict[str, float]:
    """Mean edit similarity of greedy next-line drafts on bench/drafts.py's tasks, per net."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from drafts import BUDGET, edit_similarity, first_line, make_tasks

    from draftline.completion.decode import decode
    from draftline.completion.drafts import DecodeSpec, HealGuide, PieceIndex
    from draftline.completion.kvcache import DocCache
    from draftline.completion.prompt import build_prompt
    from draftline.completion.stops import StopRule
    from draftline.completion.tokens import TokenizedText

    pieces = PieceIndex(tok)
    es: dict[str, list[float]] = {name: [] for name in nets}
    for t in make_tasks(tok, n_tasks, "bench", 0):
        pr = build_prompt(TokenizedText.full(tok, t["doc"]), t["cursor"], tok, BUDGET, heal=True)
        for name, net in nets.items():
            c = DocCache(net)
            c.sync(pr.tokens[:-1])
            spec = DecodeSpec(k=1, max_tokens=32, stop=StopRule(pr.heal, True, 0),
                              heal=HealGuide(pieces, pr.heal) if pr.heal else None, method="greedy")
            drafts, _ = decode(c, pr.tokens, tok, spec)
            line = first_line(drafts[0], tok, pr.heal) if drafts else None
            es[name].append(edit_similarity(line or "", t["truth"]))
    return {name: statistics.mean(v) for name, v in es.items()}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--context", type=int, default=2000)
    ap.add_argument("--steps", type=int, default=32, help="decode steps per path (taken in 4 interleaved turns)")
    ap.add_argument("--agree-positions", type=int, default=500)
    ap.add_argument("--lines", type=int, default=40, help="next-line tasks for the edit-similarity check")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    from draftline.completion import model as M

    torch.set_num_threads(2)
    base = M.load(None, quantize="none")
    tok = base.tokenizer
    text = "".join((stdlib() / f).read_text(encoding="utf-8") for f in ("textwrap.py", "shlex.py", "json/decoder.py"))
    ids = tok.encode(text)[: a.context]
    variants = {"fp32": base.net, "bf16": M.load(None, quantize="bf16").net, "int8": M.load(None, quantize="int8").net,
                "int4": M.load(None, quantize="int4").net}
    bw = read_bandwidth_gbs()
    rows = {}
    ms = ours_ms(variants, ids, a.steps)
    for name, net in variants.items():
        rows[name] = {"ms_per_token": ms[name], "weight_mb": net.weight_bytes / 1e6,
                      "floor_ms": net.weight_bytes / (bw * 1e9) * 1000}
    hf = hf_ms(base.path, ids, a.steps)
    # agreement with fp32 on real code (other files than the timing text)
    half = a.agree_positions // 2
    codes = [tok.encode((stdlib() / f).read_text(encoding="utf-8"))[:256 + half] for f in ("argparse.py", "difflib.py")]
    refs = [decode_logits(base.net, code, 256).argmax(-1) for code in codes]
    for name in ("bf16", "int8", "int4"):
        same = [decode_logits(variants[name], code, 256).argmax(-1) == ref for code, ref in zip(codes, refs)]
        rows[name]["top1_agree"] = float(torch.cat(same).float().mean())
    rows["fp32"]["top1_agree"] = 1.0
    default = {"int8": "int8", "int4": "int4", "bf16": "bf16"}.get(M.effective_quantize("auto", base.net.dtype), "fp32")
    es = next_line_es(variants, tok, a.lines) if a.lines else {}
    for name, v in es.items():
        rows[name]["es"] = v
    print(f"decode at {len(ids)} tokens of context, SmolLM2-135M, {torch.get_num_threads()} threads; "
          f"read bandwidth {bw:.1f} GB/s")
    print(f"{'path':22} {'ms/token':>9} {'vs HF':>6} {'weights MB':>10} {'floor ms':>9} {'top1 agree':>10} "
          f"{'next-line ES':>12}")
    print(f"{'transformers (fp32)':22} {hf:>9.1f} {1.0:>6.2f}")
    for name, r in rows.items():
        print(f"{'draftline ' + name:22} {r['ms_per_token']:>9.1f} {hf / r['ms_per_token']:>6.2f} "
              f"{r['weight_mb']:>10.0f} {r['floor_ms']:>9.1f} {r['top1_agree']:>10.3f} {r.get('es', float('nan')):>12.3f}")
    print(f"default path (quantize=auto): {default}; agreement bar 0.97, ES within 0.01 of fp32")
    res = {"ms_per_token": round(rows[default]["ms_per_token"], 2), "default": default,
           "hf_ms_per_token": round(hf, 2), "floor_ms_per_token": round(rows[default]["floor_ms"], 2),
           "bandwidth_gbs": round(bw, 2), "context": len(ids),
           **{f"{k}_ms_per_token": round(r["ms_per_token"], 2) for k, r in rows.items()},
           **{f"{k}_top1_agree": round(r["top1_agree"], 4) for k, r in rows.items() if k != "fp32"},
           **{f"{k}_floor_ms": round(r["floor_ms"], 2) for k, r in rows.items()},
           **{f"{k}_next_line_es": round(r["es"], 4) for k, r in rows.items() if "es" in r}, "lines": a.lines}
    if a.json:
        print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
