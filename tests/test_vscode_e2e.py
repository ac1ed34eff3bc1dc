"""VS Code end to end: the packaged extension (editors/vscode/*.vsix) inside a real VS Code.

code-server 4.100.3 (VS Code 1.100 in the browser, installed by editors/ci.sh into
editors/vscode/e2e/node_modules) gets the .vsix through `--install-extension`; headless
chromium, driven by playwright-core, opens a Python file and types; the extension starts the
real `draftline serve` (the venv's executable, through the `draftline.serverPath` user
setting) with the real default model. editors/vscode/e2e/e2e.js does the clicking and the
checks (ghost text in the editor DOM, Alt+] / Tab / Ctrl+Right, typing over a draft, the
settings editor, "draftline: Show Status" / "draftline: Restart Server", the output channel's
log) and prints one `E2E {json}` line, which is asserted on here.

Skipped when node (>= 20), code-server or chromium are missing (editors/ci.sh installs them);
when they are there, a failure is a failure.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXT = ROOT / "editors" / "vscode"
E2E = EXT / "e2e"
NODE = shutil.which("node")
CHROMIUM = os.environ.get("DRAFTLINE_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
CODE_SERVER = E2E / "node_modules" / "code-server"
HOW = "run editors/ci.sh (apt chromium libkrb5-dev ripgrep, npm ci in editors/vscode/e2e)"


def _node_major() -> int:
    if NODE is None:
        return 0
    r = subprocess.run([NODE, "-p", "process.versions.node.split('.')[0]"], capture_output=True, text=True)
    return int(r.stdout.strip() or 0) if r.returncode == 0 else 0


def _missing() -> str | None:
    if NODE is None:
        return f"node not on PATH ({HOW})"
    if _node_major() != 20:
        return f"code-server 4.100 needs node 20, this is node {_node_major()}"
    if not (CODE_SERVER / "out" / "node" / "entry.js").exists():
        return f"code-server not installed in editors/vscode/e2e ({HOW})"
    if not (E2E / "node_modules" / ".draftline-e2e-stamp").exists():  # written by ci.sh when all went through
        return f"code-server's install in editors/vscode/e2e is not complete ({HOW})"
    if not (E2E / "node_modules" / "playwright-core").is_dir():
        return f"playwright-core not installed in editors/vscode/e2e ({HOW})"
    if CHROMIUM is None:
        return f"chromium not on PATH ({HOW})"
    return None


pytestmark = [
    pytest.mark.real_model,
    pytest.mark.slow,
    pytest.mark.skipif(_missing() is not None, reason=_missing() or ""),
]


def _server_path() -> Path | None:
    """The venv's `draftline`, as a user's `draftline.serverPath` names it."""
    for cand in (Path(sys.executable).parent / "draftline", ROOT / ".venv" / "bin" / "draftline"):
        if cand.exists() and os.access(cand, os.X_OK):
            return cand
    return None


def _vsix() -> Path:
    """The packaged extension, built by editors/vscode/build.sh when missing or older than
    its sources."""
    version = json.loads((EXT / "package.json").read_text())["version"]
    vsix = EXT / f"draftline-{version}.vsix"
    inputs = [EXT / "package.json", EXT / "package-lock.json", EXT / "tsconfig.json", EXT / ".vscodeignore",
              *sorted((EXT / "src").rglob("*.ts"))]
    newest = max(p.stat().st_mtime for p in inputs if p.exists())
    if not vsix.exists() or vsix.stat().st_mtime < newest:
        r = subprocess.run(["bash", str(EXT / "build.sh")], capture_output=True, text=True, timeout=900)
        assert r.returncode == 0, f"editors/vscode/build.sh failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    assert vsix.exists()
    return vsix


def test_extension_in_code_server(tmp_path: Path, default_model_dir):
    server = _server_path()
    if server is None:
        pytest.skip(f"no draftline executable beside {sys.executable} or in .venv/bin (pip install -e .)")
    vsix = _vsix()
    out = tmp_path / "out"
    cmd = [NODE, str(E2E / "e2e.js"), "--server-path", str(server), "--vsix", str(vsix), "--out", str(out),
           "--chromium", CHROMIUM, "--timeout", "270"]
    if os.environ.get("DRAFTLINE_E2E_SCREENSHOT"):  # e.g. editors/vscode-ghost-text.png for the README
        cmd += ["--screenshot", os.environ["DRAFTLINE_E2E_SCREENSHOT"]]
    env = {k: v for k, v in os.environ.items() if k != "DRAFTLINE_LOG"}  # the server's default log level
    proc = subprocess.Popen(cmd, cwd=E2E, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        stdout, _ = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        # SIGTERM first: e2e.js then ends code-server's own process group (the extension host
        # and the draftline server in it)
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            stdout, _ = proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            stdout = ""
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # whatever is left of node and chromium
        except ProcessLookupError:
            pass
        proc.wait(10)
    print(stdout[-6000:])
    line = next((l for l in reversed(stdout.splitlines()) if l.startswith("E2E ")), None)
    assert line, f"no E2E line (rc={proc.returncode}):\n{stdout[-4000:]}"
    r = json.loads(line[len("E2E "):])
    logs = ""
    for name in ("draftline-channel.log", "code-server.log"):
        p = out / name
        if p.exists():
            logs += f"\n--- {name} (last lines):\n" + "\n".join(p.read_text(errors="replace").splitlines()[-40:])
    assert r["ok"], f"{r.get('error')}\nsteps done: {r.get('steps')}\npage: {r.get('failureState')}\n" \
                    f"server: {r.get('failureStatus')}\nfiles: {out}{logs}"
    assert proc.returncode == 0

    # what the user saw, as e2e.js recorded it
    assert r["steps"][-1] == "logs"
    assert r["ghost1"]["text"].strip()
    if r["cycle"]:  # Alt+] moved to another draft (None: the server offered one draft each time)
        assert r["cycle"]["after"] != r["cycle"]["before"] and int(r["cycle"]["counter"].split("/")[1]) >= 2
    assert r["accepted"].startswith("    return (p[0]")
    assert r["acceptWord"]["word"] and r["acceptWord"]["ghost"].startswith(r["acceptWord"]["word"])
    assert r["status1"]["settings"]["drafts"] == 2
    c = r["status1"]["counters"]
    # Ctrl+Right reports a partial accept, or a full one when the word was the whole draft
    assert c["accepted"] >= 1 and (c["partially_accepted"] >= 1 if r["acceptWord"]["rest"] else c["accepted"] >= 2)
    assert r["typeOver"]["before"] and r["typeOver"]["after"] != r["typeOver"]["before"]
    assert r["status2"]["pid"] != r["status1"]["pid"] and r["status2"]["settings"]["drafts"] == 2
    assert "codicon-sparkle" in r["statusSeen"]
    for note in r["notes"]:  # what the server's answers left untested this time (one draft, an empty answer)
        warnings.warn(f"vscode e2e: {note}")
    print(f"vscode e2e: {r['seconds']} s; steps at {r['timings']}; notes {r['notes']}")
