"""Workspace n-gram model (completion/ngram.py): counts, interpolation, edits, scan."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest

from draftline.completion.ngram import LAMBDAS, NGram, _hashes, gram_hash
from draftline.completion.workspace import doc_key, scan_workspace


def _ids(n: int, vocab: int = 12, seed: int = 0) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(vocab) for _ in range(n)]


def test_bulk_and_single_hashes_agree():
    ids = _ids(300, vocab=50_000)
    for m in range(1, 7):
        bulk = _hashes(np.array(ids, dtype=np.int32), m).tolist()
        assert bulk == [gram_hash(ids[i : i + m]) for i in range(len(ids) - m + 1)]


def test_order_probabilities_sum_to_one_and_interpolate():
    ids = _ids(2000)
    ng = NGram()
    ng.set_document("a", ids)
    vocab = list(range(12))
    ctx = ids[:40]  # a context that also occurs away from the document's end
    seen = []
    for m in range(2, 7):
        ps = ng.order_probs(ctx, vocab, m)
        assert ps is not None and sum(ps) == pytest.approx(1.0)
        # the maximum-likelihood estimate, counted by hand
        c = ctx[len(ctx) - (m - 1):]
        follow = [ids[i + m - 1] for i in range(len(ids) - m + 1) if ids[i : i + m - 1] == c]
        assert ps == pytest.approx([follow.count(t) / len(follow) for t in vocab])
        seen.append(ps)
    inter = ng.score([ctx], [vocab])[0]
    assert inter == pytest.approx([sum(l * p[t] for l, p in zip(LAMBDAS, seen)) for t in vocab])
    assert sum(inter) == pytest.approx(sum(LAMBDAS))
    # a context never seen contributes nothing at that order; no support at all -> 0
    assert ng.order_probs([99, 98, 97, 96, 95], vocab, 6) is None
    assert ng.prob([99], 5) == 0.0


def _counts(ng: NGram, ids: list[int]) -> list[list[int]]:
    st = ng.state
    return [ng._count(st, m, [gram_hash(ids[i : i + m]) for i in range(len(ids) - m + 1)]).tolist()
            for m in range(1, 7)]


def test_edits_update_counts_like_a_rebuild():
    rng = random.Random(1)
    ids = _ids(800, seed=2)
    ng = NGram()
    ng.set_document("a", ids)
    ng.set_document("b", _ids(300, seed=3))
    ng.compact()
    for _ in range(30):  # random replace / insert / delete edits
        a = rng.randrange(len(ids))
        b = min(len(ids), a + rng.randrange(0, 6))
        ids = ids[:a] + _ids(rng.randrange(0, 5), seed=rng.randrange(10**6)) + ids[b:]
        ng.set_document("a", ids)
    fresh = NGram()
    fresh.set_document("a", ids)
    fresh.set_document("b", _ids(300, seed=3))
    probe = ids + _ids(200, seed=9)
    assert _counts(ng, probe) == _counts(fresh, probe)
    ng.compact()
    fresh.compact()
    for m in range(6):
        assert np.array_equal(ng.state.keys[m], fresh.state.keys[m])
        assert np.array_equal(ng.state.counts[m], fresh.state.counts[m])


def test_remove_cap_and_delta_compaction():
    ng = NGram(max_tokens=1000, max_delta=500)
    ids = _ids(600)
    assert ng.set_document("a", ids)
    assert not ng.set_document("b", _ids(600, seed=5))  # over the token cap: refused
    assert ng.total_tokens == 600 and "b" not in ng.docs
    assert ng.compactions >= 1  # 6 orders x 600 grams > max_delta
    ng.remove_document("a")
    assert all(c == 0 for row in _counts(ng, ids) for c in row)
    assert ng.total_tokens == 0


class _Tok:
    def encode(self, text: str) -> list[int]:
        return [ord(c) for c in text]


def test_pending_edits_keyed_by_uri_or_path(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("abcabc")
    ng = NGram(_Tok())
    ng.add_files([(doc_key(str(f)), "abcabc")])
    ng.update_text(f.as_uri(), "abcabd")  # the editor's buffer replaces the disk text
    assert ng.flush() == 1
    assert list(ng.docs) == [doc_key(str(f))]
    assert ng.prob([ord("b"), ord("c")], ord("a")) > 0
    assert ng.order_probs([ord("b")], [ord("d")], 2) == [0.5]  # "bc" once, "bd" once
    # a file opened before the scan finished keeps the editor's text
    ng.add_files([(doc_key(str(f)), "zzzz")])
    assert ng.docs[doc_key(str(f))].tolist() == [ord(c) for c in "abcabd"]


def test_scan_respects_gitignore_binary_size_and_cap(tmp_path: Path):
    (tmp_path / ".gitignore").write_text("*.log\nbuild/\n/secret.py\n!keep.log\ndocs/**/*.tmp.py\n")
    files = {
        "a.py": "x = 1\n", "keep.log": "kept\n", "drop.log": "no\n", "secret.py": "no\n",
        "sub/secret.py": "yes: not anchored at sub\n", "build/out.py": "no\n", "sub/b.py": "y = 2\n",
        "sub/gen_x.py": "no (nested ignore)\n", "docs/d/e.tmp.py": "no\n", "docs/d/e.py": "ok\n",
        ".hidden/h.py": "no\n", "node_modules/m.js": "no\n", "notes.xyz": "not source\n",
    }
    for rel, text in files.items():
        p = tmp_path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    (tmp_path / "sub" / ".gitignore").write_text("gen_*.py\n")
    (tmp_path / "bin.py").write_bytes(b"x = 1\0\0\0")
    (tmp_path / "huge.py").write_text("x" * 5000)
    exts = {"py", "log", "js"}
    got = {p.relative_to(tmp_path).as_posix() for p, _ in scan_workspace([tmp_path], max_file_bytes=4000, exts=exts)}
    assert got == {"a.py", "keep.log", "sub/secret.py", "sub/b.py", "docs/d/e.py"}
    # breadth first, capped in total bytes
    capped = scan_workspace([tmp_path], max_total_bytes=12, exts=exts)
    assert [p.name for p, _ in capped] == ["a.py", "keep.log"]
