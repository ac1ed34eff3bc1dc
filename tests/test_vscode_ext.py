"""VS Code extension (editors/vscode): the packaged .vsix manifest, and the extension's client
code (src/session.ts, compiled) driving the real `draftline serve` under plain Node.

The .vsix inside a real VS Code (code-server) is tests/test_vscode_e2e.py. The build (npm ci,
tsc, vsce package) is editors/vscode/build.sh, which CI runs through editors/ci.sh; when its
outputs are missing or older than the sources this module runs it once.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import warnings
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXT = ROOT / "editors" / "vscode"
NPM = shutil.which("npm")
NODE = shutil.which("node")

pytestmark = pytest.mark.skipif(NPM is None or NODE is None,
                                reason="node/npm not on PATH (apt-get install -y nodejs npm, or run editors/ci.sh)")


def _version() -> str:
    return json.loads((EXT / "package.json").read_text())["version"]


def _stale(outputs: list[Path]) -> bool:
    if not all(p.exists() for p in outputs):
        return True
    inputs = [EXT / "package.json", EXT / "package-lock.json", EXT / "tsconfig.json", EXT / ".vscodeignore",
              EXT / "README.md", *sorted((EXT / "src").rglob("*.ts"))]
    newest = max(p.stat().st_mtime for p in inputs if p.exists())
    return any(p.stat().st_mtime < newest for p in outputs)


@pytest.fixture(scope="module")
def built() -> Path:
    vsix = EXT / f"draftline-{_version()}.vsix"
    outputs = [vsix, EXT / "out" / "extension.js", EXT / "out" / "session.js", EXT / "out" / "test" / "smoke.js"]
    if _stale(outputs):
        r = subprocess.run(["bash", str(EXT / "build.sh")], capture_output=True, text=True, timeout=900)
        assert r.returncode == 0, f"editors/vscode/build.sh failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    assert not _stale(outputs), "build.sh did not produce fresh outputs"
    return vsix


def test_vsix_manifest(built: Path):
    with zipfile.ZipFile(built) as z:
        names = set(z.namelist())
        pkg = json.loads(z.read("extension/package.json"))
    assert "extension/out/extension.js" in names and "extension/out/session.js" in names
    assert "extension/LICENSE.txt" in names or "extension/LICENSE" in names
    assert not any(n.startswith("extension/src/") or n.startswith("extension/out/test/") for n in names)
    assert not any(n.startswith("extension/e2e/") for n in names)  # code-server and playwright stay out
    assert any(n.startswith("extension/node_modules/vscode-languageclient/") for n in names)
    assert not any(n.startswith("extension/node_modules/typescript/") for n in names)

    assert pkg["main"] == "./out/extension.js"
    assert pkg["license"] and pkg["repository"]
    major = int(pkg["dependencies"]["vscode-languageclient"].lstrip("^~").split(".")[0])
    assert major >= 9
    cap = pkg["capabilities"]["untrustedWorkspaces"]
    assert cap["supported"] == "limited"
    assert set(cap["restrictedConfigurations"]) == {"draftline.model", "draftline.serverPath"}
    props = pkg["contributes"]["configuration"]["properties"]
    for key in ("draftline.serverPath", "draftline.model", "draftline.drafts", "draftline.maxTokens",
                "draftline.debounceMs", "draftline.monitors.enabled"):
        assert key in props, key
    # what gets run comes from user-level settings only
    assert props["draftline.model"]["scope"] in ("machine", "application")
    assert props["draftline.serverPath"]["scope"] in ("machine", "application")
    assert props["draftline.serverPath"]["default"] == "draftline"
    assert props["draftline.drafts"]["type"] == "integer"
    assert props["draftline.monitors.enabled"]["type"] == "boolean"
    commands = {c["command"] for c in pkg["contributes"]["commands"]}
    assert {"draftline.showStatus", "draftline.restart"} <= commands


STUB_VSCODE = """
function mk(name) {
  const f = function () {};
  return new Proxy(f, {
    get(t, p) { return p === 'prototype' ? f.prototype : mk(name + '.' + String(p)); },
    construct() { return {}; },
    apply() { return mk(name + '()'); },
  });
}
module.exports = mk('vscode');
"""


#: The stub above, with a `draftline` configuration read from DRAFTLINE_STUB_SETTINGS:
#: {key: {globalValue?, workspaceValue?}}; `get` answers as VS Code does (the workspace value
#: wins), `inspect` gives both values.
STUB_VSCODE_SETTINGS = STUB_VSCODE + """
const settings = JSON.parse(process.env.DRAFTLINE_STUB_SETTINGS || '{}');
const sections = [];
function getConfiguration(section) {
  sections.push(section);
  const own = section === 'draftline' ? settings : {};
  return {
    get(key, dflt) {
      const s = own[key];
      if (!s) return dflt;
      return s.workspaceValue !== undefined ? s.workspaceValue : s.globalValue !== undefined ? s.globalValue : dflt;
    },
    inspect(key) { return own[key] ? Object.assign({ key: section + '.' + key }, own[key]) : undefined; },
    has(key) { return key in own; },
    update() { return Promise.resolve(); },
  };
}
const base = module.exports;
const workspace = new Proxy(base.workspace, {
  get(w, p) { return p === 'getConfiguration' ? getConfiguration : w[p]; },
});
module.exports = new Proxy(base, {
  get(t, p) { return p === 'workspace' ? workspace : p === 'stubSections' ? sections : t[p]; },
});
"""


def _unpacked(vsix: Path, where: Path, vscode_stub: str | None = None) -> Path:
    """The .vsix extracted under ``where``: its extension folder; with ``vscode_stub``, that
    source as the `vscode` module it requires (VS Code itself is not available here)."""
    with zipfile.ZipFile(vsix) as z:
        z.extractall(where)
    ext = where / "extension"
    if vscode_stub is not None:
        stub = ext / "node_modules" / "vscode"
        stub.mkdir(parents=True)
        (stub / "index.js").write_text(vscode_stub)
    return ext


def _node(script: str, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if k != "NODE_PATH"}  # modules come from cwd only
    return subprocess.run([NODE, "-e", script], cwd=cwd, env=dict(base, **env), capture_output=True, text=True,
                          timeout=60)


def test_packaged_extension_loads(built: Path, tmp_path: Path):
    """The .vsix holds every module extension.js needs at run time (VS Code itself is not
    available here: a stub stands in for the `vscode` module)."""
    ext = _unpacked(built, tmp_path, vscode_stub=STUB_VSCODE)
    r = _node("const e = require('./out/extension.js'); console.log(typeof e.activate, typeof e.deactivate)", ext)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["function", "function"]


def test_extension_reads_model_from_user_settings_only(built: Path, tmp_path: Path):
    """A workspace must not choose what runs: the model the extension passes to the server is
    the user (global) setting, never the workspace's, even though `get` would return the latter."""
    ext = _unpacked(built, tmp_path, vscode_stub=STUB_VSCODE_SETTINGS)
    script = ("const e = require('./out/extension.js'); const vscode = require('vscode'); "
              "console.log(JSON.stringify({settings: e.readSettings(), sections: vscode.stubSections}));")

    def read(settings: dict) -> dict:
        r = _node(script, ext, DRAFTLINE_STUB_SETTINGS=json.dumps(settings))
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout.strip().splitlines()[-1])

    both = read({"model": {"globalValue": "/user/model.gguf", "workspaceValue": "/evil/model.gguf"},
                 "drafts": {"globalValue": 2, "workspaceValue": 5}})
    assert "draftline" in both["sections"]
    assert both["settings"]["model"] == "/user/model.gguf"
    assert both["settings"]["drafts"] == 5  # other settings do follow the workspace (the stub is read)
    only_workspace = read({"model": {"workspaceValue": "/evil/model.gguf"}})
    assert only_workspace["settings"].get("model") is None


def test_every_server_setting_the_extension_offers_reaches_the_server_by_its_name(built: Path, tmp_path: Path):
    """Each `draftline.*` setting the manifest offers for the server goes into
    initializationOptions under a name the server's Settings takes (none ignored)."""
    from draftline.lsp.config import Settings

    ext = _unpacked(built, tmp_path, vscode_stub=STUB_VSCODE_SETTINGS)
    with zipfile.ZipFile(built) as z:
        props = json.loads(z.read("extension/package.json"))["contributes"]["configuration"]["properties"]
    client_side = {"draftline.serverPath", "draftline.languages"}
    chosen = {}
    for key, spec in props.items():
        if key in client_side:
            continue
        d = spec.get("default")
        chosen[key[len("draftline."):]] = {"globalValue": ("/user/m.gguf" if key == "draftline.model" else
                                                           (not d) if isinstance(d, bool) else
                                                           (d or 1) + 1 if isinstance(d, int) else d)}
    r = _node("const e = require('./out/extension.js'); const s = require('./out/session.js'); "
              "console.log(JSON.stringify(s.initializationOptions(e.readSettings())));", ext,
              DRAFTLINE_STUB_SETTINGS=json.dumps(chosen))
    assert r.returncode == 0, r.stderr
    opts = json.loads(r.stdout.strip().splitlines()[-1])
    flat = {k: v for k, v in opts.items() if not isinstance(v, dict)}
    flat.update({"monitors." + k: v for k, v in opts.get("monitors", {}).items()})
    assert set(flat) == set(chosen), set(chosen) ^ set(flat)  # every offered setting is passed on
    settings = Settings()
    assert settings.update(opts, trusted=True) == []
    assert settings.latency_budget_ms == chosen["latencyBudgetMs"]["globalValue"]
    assert settings.request_cap == chosen["requestCap"]["globalValue"]
    assert settings.ahead is False and settings.monitors.enabled is False


def test_session_module_runs_without_vscode(built: Path, tmp_path: Path):
    """The client code in session.js (what the smoke test drives under plain Node) needs no
    `vscode` module: it loads where none can be found."""
    ext = _unpacked(built, tmp_path)
    r = _node("let found = true; try { require.resolve('vscode'); } catch (e) { found = false; } "
              "if (found) { console.log('vscode resolvable'); process.exit(3); } "
              "const s = require('./out/session.js'); "
              "console.log(typeof s.initializationOptions, typeof s.configurationChange);", ext)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.split() == ["function", "function"]


@pytest.mark.real_model
def test_smoke_session_against_real_server(built: Path, default_model_dir):
    cmd = [NODE, str(EXT / "out" / "test" / "smoke.js"), sys.executable, "-m", "draftline.lsp.cli", "serve"]
    env = dict(os.environ, DRAFTLINE_LOG="WARNING")
    proc = subprocess.Popen(cmd, cwd=EXT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        out = ""
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # node and the server it spawned
        except ProcessLookupError:
            pass
        proc.wait(10)
    line = next((l for l in out.splitlines() if l.startswith("SMOKE ")), None)
    assert line, f"no SMOKE line (rc={proc.returncode}):\n{out[-3000:]}"
    r = json.loads(line[len("SMOKE "):])
    assert not r.get("error"), f"{r['error']}\n--- server log:\n{r.get('serverLog', '')}"
    assert proc.returncode == 0
    assert r["items"] and r["items"][0].strip()
    assert r["completionLabels"]
    assert r["exitCode"] == 0
    if r["progress"]:  # work-done progress while the model loaded, ended before the answer
        assert r["progress"][0] == "begin" and "end" in r["progress"], r["progress"]
    if not r["advertisesInlineCompletion"]:
        warnings.warn("draftline serve answers textDocument/inlineCompletion but does not advertise "
                      "inlineCompletionProvider: vscode-languageclient would not wire it (the extension "
                      "registers its own provider then)")
    print(f"vscode smoke: inline {r['inlineMs']} ms, total {r['totalMs']} ms, items={r['items']!r}, "
          f"status={r['status']}, accept command advertised={r['acceptCommand']}")
