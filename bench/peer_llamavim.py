r"""Peer: llama.cpp's server (wheel xllamacpp==2026.10.11549, in a child process) asked the way llama.vim asks.

Reproduced from ggml-org/llama.vim a1c8e6e40cb45df59b78add5b65d575386832465, autoload/llama.vim: the
defaults 65-96 (n_prefix 256, n_suffix 64, n_predict 128, stop_strings []); s:fim_ctx_local 607-679
(input_prefix = up to 256 lines above the cursor line + "\n"; prompt = the line before the cursor;
input_suffix = the rest of the line + "\n" + up to 64 lines below + "\n"; n_indent = the line's
leading whitespace; a blank line sends prompt "" and n_indent 0); llama#fim's body 796-825 (id_slot 0,
input_extra = ring chunks {text, filename} as in 511-523, top_k 40, top_p 0.90, samplers [top_k, top_p,
infill], stream false, cache_prompt true, t_max_prompt_ms 500, t_max_predict_ms 250 for a first request
741-745, response_fields; POST /infill); s:fim_render 1041-1153 (`render`); accept 1251-1295 (one_line
= <S-Tab>, the first line). Not modelled: its hash cache 747-772, the speculative follow-up 1012-1015,
the ring's background requests 527-598, the auto-trigger gate 737.
Non-FIM model: SmolLM2 has no FIM tokens; /infill answers HTTP 501 "Infill is not supported by this
model: prefix token is missing. ...". So /completion gets the same body minus input_*, with prompt =
the token ids /infill would build (llama.cpp format_infill) minus the FIM tokens and the suffix, which a
left-to-right model cannot use: the extra chunks ("\n\n--- snippet ---\n\n" + text, their last
n_ctx - n_batch + 2 tokens), the prefix's last 3*(n_batch/4) = 768 tokens, the prompt line. n_indent and
t_max_predict_ms hold on /completion too (the server's process_token); t_max_prompt_ms is ignored by
the server for both. response_fields adds timings/cache_n and stop_type (answer filtering only).
Server (llama.vim doc/llama.txt:69-73, llama.cpp's --fim-qwen-*-default): n_ctx 8192 (= --ctx-size 0
for SmolLM2), -b 1024 -ub 1024, --cache-reuse 256, prompt cache on, -fa on, 1 slot, 2 + 2 threads, seed
0 (llama.vim sends none; fixed so replays repeat); -ngl 99 and -dt 0.1 do not apply on this CPU build.
"""

from __future__ import annotations

import json
import os
import re
import select
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

# llama.vim defaults (autoload/llama.vim:65-96) and its FIM request constants (796-825)
N_PREFIX = 256
N_SUFFIX = 64
T_MAX_PROMPT_MS = 500
T_MAX_PREDICT_MS_FIRST = 250  # 741-745: the first request is quick; speculative ones get 1000
RESPONSE_FIELDS = [
    "content",
    "timings/prompt_n", "timings/prompt_ms", "timings/prompt_per_token_ms", "timings/prompt_per_second",
    "timings/predicted_n", "timings/predicted_ms", "timings/predicted_per_token_ms",
    "timings/predicted_per_second", "truncated", "tokens_cached",
]
EXTRA_FIELDS = ["timings/cache_n", "stop_type"]  # ours: filtering of the answer only
# llama.cpp server settings (doc/llama.txt:69-73, --fim-qwen-*-default)
N_BATCH = 1024
N_UBATCH = 1024
CACHE_REUSE = 256
SNIPPET_SEP = "\n\n--- snippet ---\n\n"  # format_infill's chunk prefix when the vocab has no FIM_SEP
SERVER_N_PREDICT = -1  # the server's own n_predict (not set here), which format_infill uses

_WS = re.compile(r"[ \t]*")  # Vim's \s is space or tab
_HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # localhost: never via a proxy


def _blank(s: str) -> bool:
    return _WS.fullmatch(s) is not None


def _lead(s: str) -> int:
    return _WS.match(s).end()


def _vim_upto(s: str, end: int) -> str:
    """Vim's s[:end] (end inclusive, negative from the end)."""
    if end < 0:
        end += len(s)
    return s[: end + 1] if end >= 0 else ""


def buffer_lines(text: str, cursor: int) -> tuple[list[str], int, int]:
    """The document as Vim's buffer lines, and the cursor's (pos_y 1-based, pos_x 0-based)."""
    lines = text.split("\n")
    if text.endswith("\n") and cursor < len(text):
        lines.pop()  # Vim: a final newline is no extra empty line
    pos_y = text.count("\n", 0, cursor) + 1
    pos_x = cursor - (text.rfind("\n", 0, cursor) + 1)
    return lines, pos_y, pos_x


def fim_ctx_local(lines: list[str], pos_y: int, pos_x: int,
                  n_prefix: int = N_PREFIX, n_suffix: int = N_SUFFIX) -> dict:
    """s:fim_ctx_local (autoload/llama.vim:607-679) with prev = []."""
    max_y = len(lines)
    line_cur = lines[pos_y - 1]
    cur_prefix, cur_suffix = line_cur[:pos_x], line_cur[pos_x:]
    lines_prefix = lines[max(1, pos_y - n_prefix) - 1: pos_y - 1]
    lines_suffix = lines[pos_y: min(max_y, pos_y + n_suffix)]
    if _blank(line_cur):
        indent, cur_prefix, cur_suffix = 0, "", ""
    else:
        indent = _lead(line_cur)
    return {
        "prefix": "\n".join(lines_prefix) + "\n",
        "middle": cur_prefix,
        "suffix": cur_suffix + "\n" + "\n".join(lines_suffix) + "\n",
        "indent": indent,
        "line_cur": line_cur,
        "line_cur_prefix": cur_prefix,
        "line_cur_suffix": cur_suffix,
    }


def render(content: str, lines: list[str], pos_y: int, pos_x: int) -> tuple[list[str], bool]:
    """s:fim_render's post-processing (autoload/llama.vim:1041-1153): the suggestion's lines as
    llama.vim shows them from the cursor (without the line's old suffix, which it re-appends to
    the last line for display and which accepting keeps), and whether it can be accepted."""
    def getline(y: int) -> str:
        return lines[y - 1] if 1 <= y <= len(lines) else ""

    def getlines(a: int, b: int) -> list[str]:
        return lines[max(a, 1) - 1: b] if b >= a else []

    out = content.split("\n")
    while out and out[-1] == "":
        out.pop()
    can_accept = True
    if not out:
        out, can_accept = [""], False

    line_cur = getline(pos_y)
    if _blank(line_cur):  # trim the model's indentation up to the line's
        lead = min(_lead(out[0]), len(line_cur))
        line_cur, out[0] = out[0][:lead], out[0][lead:]
    cur_prefix, cur_suffix = line_cur[:pos_x], line_cur[pos_x:]

    if len(out) == 1 and out[0] == "":
        out = [""]
    if len(out) > 1 and out[0] == "" and out[1:] == getlines(pos_y + 1, pos_y + len(out) - 1):
        out = [""]  # an empty first line and then the lines already below
    if len(out) == 1 and out[0] == cur_suffix:
        out = [""]  # repeats the rest of the line
    cmp_y = pos_y + 1
    while cmp_y < len(lines) and _blank(getline(cmp_y)):
        cmp_y += 1
    if cur_prefix + out[0] == getline(cmp_y):  # repeats the next non-blank line ...
        if len(out) == 1:
            out = [""]
        if len(out) == 2 and out[-1] == _vim_upto(getline(cmp_y + 1), len(out[-1]) - 1):
            out = [""]
        if len(out) > 2 and "\n".join(out[1:]) == "\n".join(getlines(cmp_y + 1, cmp_y + len(out) - 1)):
            out = [""]
    shown = out[:-1] + [out[-1] + cur_suffix]
    if _blank("\n".join(shown)):
        can_accept = False
    return out, can_accept


class LlamaVimPeer:
    """llama.cpp's server (xllamacpp) in a child process, asked the way llama.vim asks it."""

    def __init__(self, gguf: str | None = None, threads: int = 2, ctx: int = 8192, port: int = 0,
                 *, seed: int | None = 0, startup_s: float = 180.0):
        if gguf is None:
            sys.path.insert(0, str(Path(__file__).resolve().parent))
            from peer_llamacpp import default_gguf
            gguf = str(default_gguf())
        self.gguf, self.ctx, self.n_batch = str(gguf), ctx, N_BATCH
        cfg = {"gguf": self.gguf, "threads": threads, "ctx": ctx, "port": port, "seed": seed,
               "n_batch": N_BATCH, "n_ubatch": N_UBATCH, "cache_reuse": CACHE_REUSE}
        fd, self.log_path = tempfile.mkstemp(prefix="draftline-llamavim-", suffix=".log")
        self._log = os.fdopen(fd, "w")
        self._proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--serve", json.dumps(cfg)],
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log)
        try:
            self.base = self._read_address(startup_s)
            self._wait_health(startup_s)
            self.bos = self._post("/tokenize", {"content": "", "add_special": True})["tokens"]  # [] for SmolLM2
            # llama.vim's ring-update request shape (527-566): a FIM model answers, SmolLM2 says 501
            status, body = self._post_raw("/infill", {"id_slot": 0, "input_prefix": "", "input_suffix": "",
                                                      "input_extra": [], "prompt": "", "n_predict": 0,
                                                      "samplers": [], "stream": False, "cache_prompt": True,
                                                      "response_fields": [""]})
            self.infill = status == 200
            self.infill_error = None if self.infill else body
        except BaseException:
            self._keep_log = True
            self.close()
            raise

    # -- child process -------------------------------------------------------------------------
    def _read_address(self, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        out = self._proc.stdout
        while time.monotonic() < deadline:
            r, _, _ = select.select([out], [], [], 0.5)
            if r:
                line = out.readline().decode()
                if not line:
                    break
                if line.startswith("LISTENING "):
                    return line.split(None, 1)[1].strip()
            elif self._proc.poll() is not None:
                break
        raise RuntimeError(f"llama.cpp server did not start (log {self.log_path}):\n{self._log_tail()}")

    def _wait_health(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with _HTTP.open(self.base + "/health", timeout=2) as f:
                    if f.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.1)
        raise RuntimeError(f"llama.cpp server not healthy (log {self.log_path}):\n{self._log_tail()}")

    def _log_tail(self, n: int = 2000) -> str:
        try:
            return Path(self.log_path).read_text(errors="replace")[-n:]
        except OSError:
            return ""

    # -- HTTP (stdlib only) ----------------------------------------------------------------------
    def _post_raw(self, path: str, body: dict) -> tuple[int, str]:
        req = urllib.request.Request(self.base + path, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        try:
            with _HTTP.open(req, timeout=600) as f:
                return f.status, f.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode(errors="replace")

    def _post(self, path: str, body: dict) -> dict:
        status, text = self._post_raw(path, body)
        if status != 200:
            raise RuntimeError(f"POST {path}: HTTP {status}: {text[:500]}")
        return json.loads(text)

    def _tokens(self, text: str, parse_special: bool = False) -> list[int]:
        if not text:
            return []
        return self._post("/tokenize", {"content": text, "add_special": False,
                                        "parse_special": parse_special})["tokens"]

    def _completion_prompt(self, ctx: dict, extra: list[dict]) -> list[int]:
        """What /infill's format_infill builds, without the FIM tokens and without the suffix."""
        extra_tokens: list[int] = []
        for chunk in extra:
            extra_tokens += self._tokens(SNIPPET_SEP) + self._tokens(chunk.get("text", ""))
        # format_infill is given the server's n_predict (-1 unless set), not the request's
        n_extra = min(max(0, self.ctx - self.n_batch - 2 * SERVER_N_PREDICT), len(extra_tokens))
        prefix = self._tokens(ctx["prefix"])
        prefix = prefix[len(prefix) - min(len(prefix), 3 * (self.n_batch // 4)):]
        prompt = self._tokens(ctx["middle"], parse_special=True)  # as /infill tokenizes "prompt"
        return extra_tokens[len(extra_tokens) - n_extra:] + self.bos + prefix + prompt

    # -- the llama#fim request -------------------------------------------------------------------
    def request(self, text: str, cursor: int, *, extra: list[dict] | None = None, n_predict: int = 128,
                one_line: bool = False, stop: list[str] | None = None, greedy: bool = False) -> dict:
        """One llama#fim request for a document `text` with the cursor at character offset `cursor`.
        extra: the ring buffer's chunks [{"text", "filename"}]; stop: g:llama_config.stop_strings.
        Returns {"text": the suggestion after llama.vim's post-processing (what it shows from the
        cursor; one_line: what <S-Tab> accepts, its first line; "" when it cannot be accepted;
        greedy: top_k 1 instead of llama.vim's sampling),
        "ms": wall ms of the HTTP request, "timings": the server's timings (prompt_n, prompt_ms,
        predicted_n, predicted_ms, cache_n, ...), "endpoint": "/infill" or "/completion"} plus
        "raw" (the server's content), "lines", "can_accept", "stop_type", "tokens_cached",
        "truncated", "prompt_tokens" (fallback only), "ms_tokenize" (fallback only, not in ms)."""
        lines, pos_y, pos_x = buffer_lines(text, cursor)
        ctx = fim_ctx_local(lines, pos_y, pos_x)
        extra = [{"text": c.get("text", ""), "filename": c.get("filename", "")} for c in (extra or [])]
        body = {
            "id_slot": 0,
            "input_prefix": ctx["prefix"],
            "input_suffix": ctx["suffix"],
            "input_extra": extra,
            "prompt": ctx["middle"],
            "n_predict": n_predict,
            "stop": list(stop or []),
            "n_indent": ctx["indent"],
            "top_k": 40,
            "top_p": 0.90,
            "samplers": ["top_k", "top_p", "infill"],
            "stream": False,
            "cache_prompt": True,
            "t_max_prompt_ms": T_MAX_PROMPT_MS,
            "t_max_predict_ms": T_MAX_PREDICT_MS_FIRST,
            "response_fields": RESPONSE_FIELDS + EXTRA_FIELDS,
        }
        if greedy:  # the replay's setting (issue 14: "one line, greedy"): top-1, no sampling
            body["top_k"], body["samplers"] = 1, ["top_k"]
        ms_tok, n_prompt = 0.0, None
        if self.infill:
            endpoint = "/infill"
        else:
            endpoint = "/completion"
            t = time.perf_counter()
            tokens = self._completion_prompt(ctx, extra)
            ms_tok = (time.perf_counter() - t) * 1000
            n_prompt = len(tokens)
            for k in ("input_prefix", "input_suffix", "input_extra"):
                del body[k]
            body["prompt"] = tokens
        t = time.perf_counter()
        resp = self._post(endpoint, body)
        ms = (time.perf_counter() - t) * 1000
        raw = resp.get("content", "")
        out, can_accept = render(raw, lines, pos_y, pos_x)
        shown = (out[0] if one_line else "\n".join(out)) if can_accept else ""
        return {
            "text": shown,
            "ms": ms,
            "timings": {k.split("/", 1)[1]: v for k, v in resp.items() if k.startswith("timings/")},
            "endpoint": endpoint,
            "raw": raw,
            "lines": out,
            "can_accept": can_accept,
            "stop_type": resp.get("stop_type"),
            "tokens_cached": resp.get("tokens_cached"),
            "truncated": resp.get("truncated"),
            "prompt_tokens": n_prompt,
            "ms_tokenize": ms_tok,
        }

    def close(self) -> None:
        proc = getattr(self, "_proc", None)
        if proc is not None and proc.poll() is None:
            try:
                proc.stdin.close()  # the child exits when its stdin closes
                proc.wait(timeout=15)
            except (OSError, subprocess.TimeoutExpired):
                proc.kill()
                proc.wait()
        if proc is not None and proc.stdout:
            proc.stdout.close()
        log = getattr(self, "_log", None)
        if log is not None and not log.closed:
            log.close()
            if not getattr(self, "_keep_log", False) and os.environ.get("DRAFTLINE_KEEP_PEER_LOG") is None:
                try:
                    os.unlink(self.log_path)
                except OSError:
                    pass

    def __enter__(self) -> "LlamaVimPeer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass


def _serve(cfg: dict) -> int:
    """Child: start xllamacpp's server, print its address, serve until stdin closes."""
    out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # the server's own stdout output goes to the log, never into our pipe
    import xllamacpp as xlc

    p = xlc.CommonParams()
    p.model.path = cfg["gguf"]
    p.n_ctx = cfg["ctx"]
    p.n_batch = cfg["n_batch"]
    p.n_ubatch = cfg["n_ubatch"]
    p.n_cache_reuse = cfg["cache_reuse"]
    p.cache_prompt = True
    p.n_parallel = 1
    p.flash_attn_type = xlc.llama_flash_attn_type.LLAMA_FLASH_ATTN_TYPE_ENABLED
    p.cpuparams.n_threads = cfg["threads"]
    p.cpuparams_batch.n_threads = cfg["threads"]
    p.hostnames = ["127.0.0.1"]
    p.port = cfg["port"]
    if cfg.get("seed") is not None:
        p.sampling.seed = cfg["seed"]
    server = xlc.Server(p)
    out.write(f"LISTENING {server.listening_address}\n")
    out.flush()
    out.close()
    sys.stdin.buffer.read()  # until the parent closes it (or dies)
    os._exit(0)


def _self_check() -> int:
    import jedi

    path = Path(jedi.__file__).parent / "api" / "__init__.py"
    text = path.read_text(encoding="utf-8")
    lines = text.split("\n")
    y = next(i for i in range(int(len(lines) * 0.75), len(lines)) if lines[i].strip())  # 0-based
    cursor = sum(len(s) + 1 for s in lines[:y])
    print(f"file {path} ({len(lines)} lines), cursor at the start of line {y + 1}: {lines[y]!r}")
    t = time.perf_counter()
    peer = LlamaVimPeer()
    print(f"server {peer.base} up in {time.perf_counter() - t:.1f} s; /infill usable: {peer.infill}"
          + ("" if peer.infill else f" ({peer.infill_error.strip()})"))
    try:
        def show(tag: str, r: dict) -> None:
            tm = r["timings"]
            print(f"{tag}: {r['endpoint']} {r['ms']:.0f} ms (tokenize {r['ms_tokenize']:.0f} ms), "
                  f"prompt tokens {r['prompt_tokens']}, prompt_n {tm.get('prompt_n')} "
                  f"cache_n {tm.get('cache_n')} prompt_ms {tm.get('prompt_ms', 0):.0f} "
                  f"predicted_n {tm.get('predicted_n')} predicted_ms {tm.get('predicted_ms', 0):.0f} "
                  f"stop {r['stop_type']}")
            print(f"    raw {r['raw']!r:.120}\n    shown {r['text']!r:.120}")

        r1 = peer.request(text, cursor)
        show("request 1 (cold)", r1)
        results = [r1]
        for above in (100, 10):  # 100 lines above (the asked edit), then one inside the prefix window
            comment = f"# an edit {above} lines above the cursor"
            lines = lines[: y - above] + [comment] + lines[y - above:]
            y += 1
            text = "\n".join(lines)
            cursor += len(comment) + 1
            r = peer.request(text, cursor)
            show(f"request after inserting a line {above} lines above", r)
            tm = r["timings"]
            n_cache, n_eval = tm.get("cache_n", 0), tm.get("prompt_n", 0)
            first = r["lines"][0] if r["can_accept"] else ""
            print(f"    prompt cache: {n_cache} of {n_cache + n_eval} prompt tokens reused, {n_eval} evaluated;"
                  f" one_line would accept {first!r:.80}")
            results.append(r)
        print(json.dumps({"ms": [round(r["ms"]) for r in results],
                          "prompt_n": [r["timings"].get("prompt_n") for r in results],
                          "cache_n": [r["timings"].get("cache_n") for r in results],
                          "predicted_n": [r["timings"].get("predicted_n") for r in results]}))
    finally:
        peer.close()
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--serve":
        sys.exit(_serve(json.loads(sys.argv[2])))
    sys.exit(_self_check())
