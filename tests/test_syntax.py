"""tree-sitter parsers, grammars per language, cursor walks."""

from __future__ import annotations

import pytest

from draftline.analysis.syntax import (
    LANGUAGES,
    get_language,
    language_for,
    new_parser,
    walk,
)


def parse(text: str, lang: str):
    return new_parser(lang).parse(text.encode("utf-8"))


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
    tree = parse(SAMPLES[lang], lang)
    assert not tree.root_node.has_error, str(tree.root_node)


def test_unknown_language_has_no_parser():
    assert get_language("cobol") is None and new_parser("cobol") is None


def test_walk_handles_deep_nesting_without_recursion():
    depth = 3000
    text = "x = " + "[" * depth + "]" * depth + "\n"
    tree = parse(text, "python")
    n = sum(1 for _ in walk(tree.root_node))
    assert n > depth
    assert not tree.root_node.has_error


def test_walk_can_skip_subtrees():
    root = parse("def f():\n    return 1\nx = 2\n", "python").root_node
    names = [n.type for n in walk(root, lambda n: n.type != "function_definition")]
    assert "function_definition" in names and "return_statement" not in names and "assignment" in names
