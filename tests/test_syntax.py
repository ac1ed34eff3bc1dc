"""tree-sitter parsers, incremental reparse, parse budget, cursor walks."""

from __future__ import annotations

import random

import pytest

from draftline.analysis.syntax import (
    LANGUAGES,
    SyntaxDocument,
    get_language,
    has_errors,
    language_for,
    new_parser,
    walk,
)

SAMPLES = {
    "python": "def f(x):\n    return [i * 2 for i in x]\n",
    "javascript": "function f(x) { return x.map(i => i * 2); }\n",
    "typescript": "function f(x: number[]): number[] { return x.map(i => i * 2); }\n",
    "tsx": "const A = (p: {n: number}) => <div>{p.n}</div>;\n",
    "go": "package main\nfunc f(x []int) int { return len(x) }\n",
    "rust": "fn f(x: &[i32]) -> usize { x.len() }\n",
    "java": "class A { int f(int[] x) { return x.length; } }\n",
    "c": "int f(int *x, int n) { return n > 0 ? x[0] : 0; }\n",
    "cpp": "#include <vector>\nint f(std::vector<int>& x) { return x.size(); }\n",
}


def test_language_ids_and_extensions():
    assert language_for("typescriptreact") == "tsx"
    assert language_for("javascriptreact") == "javascript"
    assert language_for(None, "/a/b.rs") == "rust"
    assert language_for(None, "x.HPP") == "cpp"
    assert language_for("plaintext", "notes.txt") is None
    assert language_for("cobol") is None


@pytest.mark.parametrize("lang", LANGUAGES)
def test_every_language_parses_cleanly(lang):
    assert get_language(lang) is not None
    doc = SyntaxDocument(SAMPLES[lang], lang)
    assert doc.tree is not None
    assert doc.error_count() == 0, str(doc.tree.root_node)


def test_unknown_language_has_no_tree():
    doc = SyntaxDocument("whatever", "cobol")
    assert doc.tree is None and doc.has_errors_in(0, 5) is None and new_parser("cobol") is None


def test_parse_budget():
    text = "x = 1\n" * 100
    doc = SyntaxDocument(text, "python", max_bytes=100)
    assert doc.over_budget and doc.tree is None
    doc.update("x = 1\n", 6, len(text), 6)  # shrinks under the budget: parsed again
    assert doc.tree is not None and doc.error_count() == 0


def _sexp(doc: SyntaxDocument) -> str:
    return str(doc.tree.root_node)


@pytest.mark.parametrize("lang", ["python", "javascript", "rust"])
def test_incremental_update_matches_full_parse(lang):
    rng = random.Random(7)
    text = SAMPLES[lang] * 3 + "# é😀\n" if lang == "python" else SAMPLES[lang] * 3 + "// é😀\n"
    doc = SyntaxDocument(text, lang)
    pieces = ["x", "(", ")", "\n", "é", "😀", " ", "{", "}", "1", "def ", "\r\n"]
    for _ in range(60):
        a = rng.randrange(len(doc.text) + 1)
        b = min(len(doc.text), a + rng.randrange(4))
        ins = rng.choice(pieces) if rng.random() < 0.8 else ""
        new = doc.text[:a] + ins + doc.text[b:]
        doc.update(new, a, b, a + len(ins))
        fresh = SyntaxDocument(new, lang)
        assert _sexp(doc) == _sexp(fresh)
        assert doc.tree.root_node.end_byte == len(new.encode("utf-8"))


def test_update_rejects_inconsistent_offsets():
    doc = SyntaxDocument("abc", "python")
    with pytest.raises(ValueError):
        doc.update("abc", 2, 1, 2)


def test_has_errors_in_range():
    text = "x = 1\ny = (\nz = 3\n"
    doc = SyntaxDocument(text, "python")
    first = len("x = 1\n".encode())
    assert doc.has_errors_in(0, first - 1) is False
    assert doc.has_errors_in(first, len(text)) is True
    assert doc.error_count() >= 1


def test_walk_handles_deep_nesting_without_recursion():
    depth = 3000
    text = "x = " + "[" * depth + "]" * depth + "\n"
    doc = SyntaxDocument(text, "python")
    n = sum(1 for _ in walk(doc.tree.root_node))
    assert n > depth
    assert not has_errors(doc.tree.root_node)


def test_walk_can_skip_subtrees():
    doc = SyntaxDocument("def f():\n    return 1\nx = 2\n", "python")
    root = doc.tree.root_node
    names = [n.type for n in walk(root, lambda n: n.type != "function_definition")]
    assert "function_definition" in names and "return_statement" not in names and "assignment" in names
