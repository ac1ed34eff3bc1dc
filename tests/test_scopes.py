"""Names visible at a position, from tree-sitter scopes."""

from __future__ import annotations

from draftline.analysis.scopes import (
    builtin_names,
    file_names,
    names_at,
    open_document_names,
    world_is_closed,
)

PY = '''\
import os, a.b as c
from x import y as z, w
G = 1

def f(a, b=1, *args, c2: int = 2, **kw):
    g = lambda q, r=1: q
    [i for i in range(3)]
    for k, v in d:
        pass
    with open(p) as fh:
        pass
    if (t := 1):
        pass
    def inner(zz):
        global GG
        return zz
    self.attr = 3
    MARK
    later_local = 5

class C(B):
    attr_in_class = 1
    def m(self):
        MARK2

LATER = 2
'''


def at(text: str, marker: str, lang: str = "python") -> frozenset[str]:
    names = names_at(text, lang, text.index(marker))
    assert names is not None
    return names


def test_python_function_scope():
    names = at(PY, "MARK\n")
    assert {"os", "c", "z", "w", "G", "f", "C", "LATER"} <= names  # file level, incl. later defs
    assert {"a", "b", "args", "c2", "kw", "g", "k", "v", "fh", "t", "inner", "later_local"} <= names
    assert "GG" in names  # declared global in a nested function: a module name
    assert not {"q", "r", "i", "zz", "attr", "attr_in_class", "y", "self"} & names


def test_python_nested_scopes_and_class_bodies():
    inner = at(PY, "return zz")
    assert {"zz", "a", "g", "G"} <= inner
    method = at(PY, "MARK2")
    assert {"self", "attr_in_class", "m", "C", "f", "G"} <= method
    assert "later_local" not in method


def test_python_cursor_on_fresh_indented_line_after_last_statement():
    text = "def f(x):\n    y = x + 1\n    "
    assert {"x", "y", "f"} <= names_at(text, "python", len(text))
    text2 = "def f(x):\n    y = x + 1\n"
    assert "y" not in names_at(text2, "python", len(text2))  # column 0: back at module level


def test_python_type_parameters():
    text = "def first[T](xs: list[T]) -> T:\n    y: MARK = xs[0]\n"
    assert {"T", "xs", "first"} <= at(text, "MARK")


def test_javascript():
    js = "import a, {b as c2, d} from 'x';\nconst {e, f: g, ...h} = o;\nfunction fn(p, {q}, r = 1, ...s) { var t = 1; \n  return MARK }\nclass K {}\n"
    names = at(js, "MARK", "javascript")
    assert {"a", "c2", "d", "e", "g", "h", "fn", "p", "q", "r", "s", "t", "K"} <= names
    assert "f" not in names and "o" not in names


def test_go_rust_java_c():
    go = 'package main\nimport (\n  "fmt"\n  al "os"\n)\ntype T struct { F int }\nfunc (r *T) M(a int, b string) (res int) { x := 1; for i, v := range s { _ = i; _ = v }; return MARK }\n'
    assert {"T", "al", "fmt", "r", "a", "b", "res", "x"} <= at(go, "MARK", "go")
    assert "i" not in at(go, "MARK", "go")  # loop variable: its own scope
    rs = "use std::io::{self, Read as R};\nuse a::b;\nfn f(a: i32, (b2, c): (i32, i32)) -> i32 { let x = 1; let (y, mut z) = t; MARK }\nconst K: i32 = 1;\n"
    assert {"io", "R", "b", "f", "a", "b2", "c", "x", "y", "z", "K"} <= at(rs, "MARK", "rust")
    java = "import java.util.List;\nclass A { int f; void m(int p, String q) { int x = 1; MARK } }\n"
    assert {"List", "A", "f", "m", "p", "q", "x"} <= at(java, "MARK", "java")
    c = "#define M 1\ntypedef int T;\nstruct S { int f; };\nint g = 1, *h;\nint fn(int a, char *b) { int x = 1; MARK; }\n"
    assert {"M", "T", "S", "g", "h", "fn", "a", "b", "x"} <= at(c, "MARK", "c")


def test_unknown_language():
    assert names_at("x = 1", "cobol", 0) is None
    assert file_names("x = 1", None) == frozenset()


def test_other_open_documents():
    names = open_document_names([("def helper():\n    local = 1\nCONST = 2\n", "python"),
                                 ("export function jsThing() {}\n", "javascript")])
    assert {"helper", "CONST", "jsThing"} <= names and "local" not in names


def test_builtins_and_closed_world():
    assert {"print", "len", "None", "match", "__name__"} <= builtin_names("python")
    assert world_is_closed("int main() { return 0; }", "c")
    assert not world_is_closed("#include <stdio.h>\nint main() { return 0; }", "c")
    assert not world_is_closed("const x = 1;", "javascript")
