"""`draftline serve | complete | model fetch | model info`.

Nothing heavy is imported at module level: `serve` must move fd 1 away from the protocol
stream before torch or transformers load (native code can print to fd 1).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys


def _protect_stdout():
    """Duplicate fd 1 for the protocol, then point fd 1 (and sys.stdout) at stderr."""
    proto = os.fdopen(os.dup(1), "wb", buffering=0)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return proto


def _logging(level: str) -> None:
    logging.basicConfig(stream=sys.stderr, level=getattr(logging, level.upper(), logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # pygls logs every message body (code included) at INFO: keep it at WARNING
    logging.getLogger("pygls").setLevel(logging.WARNING)


def cmd_serve(a: argparse.Namespace, engine_factory=None, extend=None) -> int:
    """`draftline serve`; `engine_factory` / `extend(server)`: for a test's own entry point
    (tests/support/serve.py), never reachable from the command line."""
    proto_out = None if a.tcp else _protect_stdout()
    _logging(a.log_level)
    from .config import Settings
    from .server import build_server

    s = Settings()
    if a.model:
        s.model = a.model
    if getattr(a, "engine", None):
        s.engine = a.engine  # its token: `engineToken` or DRAFTLINE_ENGINE_TOKEN (never argv: `ps` shows it)
    ls = build_server(s, engine_factory)
    if extend is not None:
        extend(ls)
    if a.client_process_id:
        ls.process_id = a.client_process_id  # watched until initialize names one
    if a.tcp:
        from .lifecycle import run_tcp

        host, _, port = a.tcp.rpartition(":")
        if not port.isdigit():
            raise SystemExit("--tcp needs HOST:PORT (PORT a number)")
        return run_tcp(ls, host or "127.0.0.1", int(port))
    from .lifecycle import run_stdio

    return run_stdio(ls, proto_out)


def _parse_target(t: str) -> tuple[str, int, int]:
    path, line, col = t, None, None
    parts = t.rsplit(":", 2)
    if len(parts) == 3 and parts[1].isdigit() and parts[2].isdigit():
        path, line, col = parts[0], int(parts[1]), int(parts[2])
    elif len(parts) >= 2 and parts[-1].isdigit():
        path, line, col = t.rsplit(":", 1)[0], int(parts[-1]), None
    if line is None:
        raise SystemExit("target must be FILE:LINE[:COL] (1-based)")
    return path, line, col if col is not None else 0


def cmd_complete(a: argparse.Namespace) -> int:
    _logging(a.log_level)
    path, line, col = _parse_target(a.target)
    from draftline.analysis.positions import lsp_offset
    from draftline.completion import model as M
    from draftline.completion.engine import Engine, EngineConfig

    try:
        with open(path, "rb") as f:
            raw = f.read()
        text = raw.decode("utf-8")
    except (OSError, UnicodeDecodeError) as e:
        print(f"draftline: cannot read {path}: {e}", file=sys.stderr)
        return 2
    try:
        cursor = lsp_offset(text, line - 1, max(0, col - 1) if col else 10**9, "utf-32")
    except ValueError as e:
        print(f"draftline: {path}:{line}:{col}: {e}", file=sys.stderr)
        return 2
    try:
        lm = M.load(a.model, quantize=a.quantize)
    except M.ModelError as e:
        print(f"draftline: {e}", file=sys.stderr)
        return 2
    # one headless answer: no request budget (a whole window, drafts to their natural end)
    cfg = EngineConfig(k=a.k, max_tokens=a.max_tokens, method=a.method, latency_budget_ms=0)
    eng = Engine(lm, cfg)
    from draftline.completion.guides import make_trim, monitor_guides, warm_up

    from .config import MonitorSettings

    if not a.no_monitors:
        warm_up(wait=30)

    lang = _language_of(path)
    pr = eng.prompt_for(path, text, cursor)
    guides = monitor_guides(eng, lang, path, pr, {}, MonitorSettings(enabled=not a.no_monitors))
    res = eng.complete(path, text, cursor, guides=guides, trim=make_trim(lang))
    out = res.to_json()
    out["model_load_ms"] = round(lm.load_ms, 1)
    if a.json:
        print(json.dumps(out))
    else:
        print(f"# {path}:{line}:{col}  load {lm.load_ms:.0f} ms, sync {res.timings['sync']:.0f} ms, "
              f"decode {res.timings['decode']:.0f} ms, prompt {res.tokens['prompt']} tokens")
        for i, d in enumerate(res.drafts):
            print(f"--- draft {i + 1} (logprob {d.logprob:.2f})")
            print(d.text)
    return 0


def cmd_engine(a: argparse.Namespace) -> int:
    """`draftline engine serve`: the model side for a team, as a Ray Serve application
    (completion/engine_app.py, docs/team.md).  The token comes from DRAFTLINE_ENGINE_TOKEN
    or --token-file (a fresh one is made and printed when neither is set)."""
    _logging(a.log_level)
    import dataclasses
    import secrets

    from .config import Settings

    token = os.environ.get("DRAFTLINE_ENGINE_TOKEN", "")
    if a.token_file:
        try:
            with open(a.token_file, encoding="utf-8") as f:
                token = f.read().strip()
        except OSError as e:
            print(f"draftline engine: cannot read {a.token_file}: {e}", file=sys.stderr)
            return 2
    if not token:
        token = secrets.token_urlsafe(24)
        print(f"draftline engine: no DRAFTLINE_ENGINE_TOKEN: this run's token is {token}", file=sys.stderr)
    if a.replicas < 1:
        print("draftline engine: --replicas must be at least 1", file=sys.stderr)
        return 2
    s = Settings()
    if a.model:
        s.model = a.model
    if a.cache_budget_mb:
        s.cache_budget_mb = a.cache_budget_mb
    if a.no_monitors:
        s.monitors.enabled = False
    settings = dataclasses.asdict(s)
    for k in ("engine", "engine_token", "engine_user", "log_level"):
        settings.pop(k, None)
    try:
        from draftline.completion.engine_app import serve_forever
    except ImportError as e:
        print(f"draftline engine: Ray Serve is not installed ({e}): pip install 'draftline[team]'",
              file=sys.stderr)
        return 2
    return serve_forever(settings, a.replicas, token, host=a.host, port=a.port, threads=a.threads,
                         address=a.address)


def cmd_demo(a: argparse.Namespace) -> int:
    """A headless tour on code nobody here wrote (lsp/demo.py)."""
    _logging(a.log_level)
    from .demo import run

    return run(a.model)


def _language_of(path: str) -> str:
    ext = os.path.splitext(path)[1].lower()
    return {".py": "python", ".js": "javascript", ".mjs": "javascript", ".ts": "typescript",
            ".tsx": "typescriptreact", ".go": "go", ".rs": "rust", ".java": "java", ".c": "c",
            ".h": "c", ".cc": "cpp", ".cpp": "cpp", ".hpp": "cpp"}.get(ext, "")


def cmd_model(a: argparse.Namespace) -> int:
    _logging(a.log_level)
    from draftline.completion import model as M

    def progress(msg: str, pct: int) -> None:
        print(f"[{pct:3d}%] {msg}", file=sys.stderr)

    try:
        if a.action == "fetch":
            path = M.fetch_default(progress, force=a.force) if not a.model else M.resolve(a.model, progress)
            print(path)
            return 0
        lm = M.load(a.model, progress=progress, quantize=a.quantize, allow_fetch=True)
    except M.ModelError as e:
        print(f"draftline: {e}", file=sys.stderr)
        return 2
    info = dict(lm.info)
    info["load_ms"] = round(lm.load_ms, 1)
    if a.json:
        print(json.dumps(info))
    else:
        for k, v in info.items():
            print(f"{k:20s} {v}")
    return 0


def parser() -> argparse.ArgumentParser:
    # --log-level is accepted before and after the subcommand: editors append their flags
    # to `draftline serve` (VS Code's debug run adds `--log-level DEBUG` after it)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--log-level", default=argparse.SUPPRESS)
    p = argparse.ArgumentParser(prog="draftline", description="LSP inline code completion from a local model",
                                parents=[common])
    sub = p.add_subparsers(dest="cmd", required=True)

    s = sub.add_parser("serve", help="run the language server (stdio by default)", parents=[common])
    s.add_argument("--tcp", metavar="HOST:PORT")
    # what language clients append on their own: vscode-languageclient adds `--stdio` for
    # the stdio transport (without it the server exited at start inside a real VS Code);
    # `--clientProcessId=N` is its way of naming the editor's pid (exit when it is gone)
    s.add_argument("--stdio", action="store_true", help="talk LSP over stdin/stdout (the default)")
    s.add_argument("--clientProcessId", "--client-process-id", dest="client_process_id", type=int,
                   metavar="PID", help="exit when this process (the editor) is gone")
    s.add_argument("--model", help="HF model directory or .gguf file (default: SmolLM2-135M)")
    s.add_argument("--engine", metavar="URL", help="a team engine (`draftline engine serve`) instead of a "
                   "model in this process; token in DRAFTLINE_ENGINE_TOKEN")
    s.set_defaults(fn=cmd_serve)

    e = sub.add_parser("engine", help="the model side for a team (Ray Serve)", parents=[common])
    e.add_argument("action", choices=["serve"])
    e.add_argument("--replicas", type=int, default=2)
    e.add_argument("--host", default="127.0.0.1", help="0.0.0.0 to let other machines' editors in")
    e.add_argument("--port", type=int, default=8000)
    e.add_argument("--model", help="HF model directory or .gguf file (default: SmolLM2-135M)")
    e.add_argument("--threads", type=int, default=0, help="torch threads per replica (default: cores / replicas)")
    e.add_argument("--cache-budget-mb", type=int, default=0, help="KV cache budget per replica (default 4096)")
    e.add_argument("--no-monitors", action="store_true")
    e.add_argument("--address", help="join this Ray cluster instead of starting one here")
    e.add_argument("--token-file", help="read the token from this file (else DRAFTLINE_ENGINE_TOKEN)")
    e.set_defaults(fn=cmd_engine)

    c = sub.add_parser("complete", help="print drafts for FILE:LINE:COL (1-based), headless", parents=[common])
    c.add_argument("target")
    c.add_argument("-k", type=int, default=3)
    c.add_argument("--max-tokens", type=int, default=48)
    c.add_argument("--method", default="batched")
    c.add_argument("--model")
    c.add_argument("--quantize", default="auto", choices=["auto", "none", "int8", "int4", "bf16"])
    c.add_argument("--no-monitors", action="store_true")
    c.add_argument("--json", action="store_true")
    c.set_defaults(fn=cmd_complete)

    m = sub.add_parser("model", help="fetch the default model or show what loads", parents=[common])
    m.add_argument("action", choices=["fetch", "info"])
    m.add_argument("--model")
    m.add_argument("--force", action="store_true")
    m.add_argument("--quantize", default="auto", choices=["auto", "none", "int8", "int4", "bf16"])
    m.add_argument("--json", action="store_true")
    m.set_defaults(fn=cmd_model)

    d = sub.add_parser("demo", help="complete a few cursors of a standard-library file, headless", parents=[common])
    d.add_argument("--model")
    d.set_defaults(fn=cmd_demo)

    return p


def main(argv: list[str] | None = None, engine_factory=None, extend=None) -> int:
    """The command line.  `engine_factory` / `extend`: see `cmd_serve` (tests only)."""
    a = parser().parse_args(argv)
    if not hasattr(a, "log_level"):
        a.log_level = os.environ.get("DRAFTLINE_LOG", "INFO")
    # torch's OpenMP workers spin ~300,000 pause loops (~10 ms) after each parallel region
    # before sleeping: after every forward they kept one core busy while the decoder waited
    # for jedi (its process, at a lower priority, got a quarter of that core).  10,000 spins
    # keep a decode step's back-to-back regions as fast (16.5-18.2 vs 16.9-17.1 ms at 2k, two
    # runs each) and hand the core back within ~0.3 ms.  Measured over LSP at 2k: the decode's
    # jedi waits fell on each of the five requests that had them (e.g. 124 -> 97, 77 -> 50
    # ms); the p50 itself moved less than this machine's run-to-run noise (A/B of four full
    # runs).  Read when libgomp loads: set before torch.
    os.environ.setdefault("GOMP_SPINCOUNT", "10000")
    if a.fn is cmd_serve:
        return cmd_serve(a, engine_factory, extend)
    return a.fn(a)


if __name__ == "__main__":
    sys.exit(main())
