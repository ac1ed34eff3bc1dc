"""P8: nothing is read outside the opened documents (pygls would read any file:// URI from
disk), models load from safetensors / GGUF only (never a pickle), never with
trust_remote_code, and a model setting only counts from user scope."""

from __future__ import annotations

import json
import pickle
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path


from support.clients import RawServer

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "draftline.lsp.cli"]


class _Evil:
    """Unpickling this creates the marker file: proof that a pickle was loaded."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def pickle_only_dir(tmp: Path, marker: Path) -> Path:
    d = tmp / "pickled"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"model_type": "llama", "architectures": ["LlamaForCausalLM"],
                                               "vocab_size": 10, "hidden_size": 8}))
    (d / "tokenizer.json").write_text("{}")
    with open(d / "pytorch_model.bin", "wb") as f:
        pickle.dump({"weight": _Evil(marker)}, f)
    return d


def test_unopened_files_are_never_read_even_inside_the_workspace():
    hostname = Path("/etc/hostname").read_text().strip() if Path("/etc/hostname").exists() else socket.gethostname()
    with RawServer("steps:1") as s:
        s.initialize(rootUri="file:///etc", workspaceFolders=[{"uri": "file:///etc", "name": "etc"}])
        for uri in ("file:///etc/hostname", "file:///etc/passwd", "file:///etc/../etc/hostname"):
            for method in ("textDocument/inlineCompletion", "textDocument/completion"):
                params = {"textDocument": {"uri": uri}, "position": {"line": 0, "character": 1}}
                if method.endswith("inlineCompletion"):
                    params["context"] = {"triggerKind": 1}
                r = s.call(method, params)
                assert r["error"]["code"] == -32602 and "not open" in r["error"]["message"]
                assert hostname not in json.dumps(r) and "root:" not in json.dumps(r)
            assert s.document_text(uri) is None
        # an edit for it does not make it exist either
        s.change("file:///etc/hostname", 2, [{"range": {"start": {"line": 0, "character": 0},
                                                         "end": {"line": 0, "character": 0}}, "text": "x"}])
        assert s.document_text("file:///etc/hostname") is None
        assert s.status()["documents"] == 0
        assert s.shutdown_and_exit() == 0


def test_cli_refuses_a_pickle_only_model_dir(tmp_path):
    marker = tmp_path / "UNPICKLED"
    d = pickle_only_dir(tmp_path, marker)
    r = subprocess.run(CLI + ["model", "info", "--model", str(d)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert "pickle" in r.stderr and "safetensors" in r.stderr
    assert not marker.exists()


def test_server_reports_a_pickle_only_model_and_stays_alive(tmp_path):
    marker = tmp_path / "UNPICKLED"
    d = pickle_only_dir(tmp_path, marker)
    with RawServer(fake=None) as s:
        s.initialize(init_options={"model": str(d)})
        s.open("file:///work/a.py", "x = 1\n")
        r = s.wait(s.inline("file:///work/a.py", 0, 5), timeout=120)
        assert r["error"]["code"] == -32603
        shown = s.wait_for(lambda: [m for m in s.messages("window/showMessage") if m["params"]["type"] == 1])
        assert len(shown) == 1 and "pickle" in shown[0]["params"]["message"]
        st = s.status()
        assert "pickle" in st["model_error"] and st["settings"]["model"] == str(d)
        # a workspace-scoped setting cannot choose the model
        s.notify("workspace/didChangeConfiguration", {"settings": {"draftline": {"model": "/tmp/elsewhere",
                                                                                  "drafts": 2}}})
        st = s.status()
        assert st["settings"]["model"] == str(d) and st["settings"]["drafts"] == 2
        assert s.shutdown_and_exit() == 0
    assert not marker.exists()


def test_remote_code_and_pickles_beside_safetensors_are_ignored(tmp_path, tiny_dir):
    """A model dir that also ships custom modeling code (auto_map) and a pickle: the
    safetensors load, the code is never imported, the pickle never opened."""
    d = tmp_path / "hostile"
    shutil.copytree(tiny_dir, d)
    marker = tmp_path / "REMOTE_CODE_RAN"
    cfg = json.loads((d / "config.json").read_text())
    cfg["auto_map"] = {"AutoConfig": "modeling_evil.EvilConfig", "AutoModelForCausalLM": "modeling_evil.EvilModel"}
    (d / "config.json").write_text(json.dumps(cfg))
    tcfg = json.loads((d / "tokenizer_config.json").read_text()) if (d / "tokenizer_config.json").exists() else {}
    tcfg["auto_map"] = {"AutoTokenizer": ["tokenization_evil.EvilTokenizer", None]}
    (d / "tokenizer_config.json").write_text(json.dumps(tcfg))
    for mod in ("modeling_evil.py", "tokenization_evil.py", "configuration_evil.py"):
        (d / mod).write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    with open(d / "pytorch_model.bin", "wb") as f:
        pickle.dump(_Evil(tmp_path / "UNPICKLED"), f)
    r = subprocess.run(CLI + ["model", "info", "--model", str(d), "--json"], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads(r.stdout.strip().splitlines()[-1])["architecture"] == "llama"
    assert not marker.exists() and not (tmp_path / "UNPICKLED").exists()


def test_source_never_enables_remote_code_or_pickle_loading():
    bad = re.compile(r"trust_remote_code\s*=\s*True|torch\.load\(|pickle\.loads?\(|weights_only\s*=\s*False|"
                     r"allow_unsafe_interpreter_executions\s*=\s*True|load_unsafe_extensions\s*=\s*True")
    hits = []
    for sub in ("lsp", "completion", "analysis"):
        for p in (ROOT / sub).rglob("*.py"):
            if p.name == "testing.py":
                continue
            for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
                if bad.search(line) and not line.lstrip().startswith("#"):
                    hits.append(f"{p.relative_to(ROOT)}:{i}: {line.strip()}")
    assert hits == []


def test_float_setting_parsed_and_bounded():
    from draftline.lsp.config import Settings

    s = Settings()
    assert s.update({"ngramWeight": 0.25}, trusted=False) == [] and s.ngram_weight == 0.25
    assert s.update({"ngramWeight": 3}, trusted=False) == ["ngramWeight"] and s.ngram_weight == 0.25
    assert s.update({"ngramWeight": "x"}, trusted=False) == ["ngramWeight"]


def test_request_cap_is_kept_between_its_bounds():
    """`requestCap` 0 would answer from an empty window; a huge one is no cap at all."""
    from draftline.lsp.config import Settings

    s = Settings()
    assert s.update({"requestCap": 0}, trusted=False) == [] and s.request_cap == 64
    assert s.update({"requestCap": 10**9}, trusted=False) == [] and s.request_cap == 4096
    assert s.update({"requestCap": 1536}, trusted=False) == [] and s.request_cap == 1536
    # the short window's header: 0 = off, at most 1024 tokens
    assert s.update({"farTokens": 0}, trusted=False) == [] and s.far_tokens == 0
    assert s.update({"farTokens": 10**9}, trusted=False) == [] and s.far_tokens == 1024
    assert s.update({"farTokens": -1}, trusted=False) == ["farTokens"] and s.far_tokens == 1024
