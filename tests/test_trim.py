"""Draft trimming: the unit being written, balanced, never re-typing the suffix."""

from __future__ import annotations

import pytest

from draftline.analysis.trim import TrimmedDraft, adds_parse_errors, parse_error_count, trim_draft


def T(lang, prefix, draft, suffix="", mid=False):
    return trim_draft(lang, prefix, draft, suffix, mid)


def test_mid_line_completes_the_line_only():
    assert T("python", "x = compute(", "a, b)\nprint(x)\n", "", True) == TrimmedDraft("a, b)", 0)


def test_closer_already_after_cursor_becomes_a_replace_range():
    r = T("python", "x = foo(", "a, b)", ")\n", True)
    assert r == TrimmedDraft("a, b)", 1) and r.insert_only == "a, b"
    # the draft's own closer must stay: foo(x) inside print(...)
    assert T("python", "print(", "foo(x))", ")\n", True) == TrimmedDraft("foo(x))", 1)
    assert T("python", "print(", "foo(x)", ")\n", True) == TrimmedDraft("foo(x)", 0)
    assert T("python", 'print("', 'hello")', '")\n', True) == TrimmedDraft('hello")', 2)
    assert T("python", "if x", " > 0:", ":\n    pass\n", True) == TrimmedDraft(" > 0:", 1)


def test_never_closes_more_than_the_prefix_opened():
    assert T("python", "x = foo(", "a, b))\nprint(1)", ")\n", True) == TrimmedDraft("a, b)", 1)
    assert T("python", "x = 1", ")\ny = 2", "\n", False) is None


def test_python_block_ends_at_dedent_or_blank_line():
    assert T("python", "def f(x):\n", "    y = x + 1\n    return y\n\ndef g():\n    pass\n").text == "    y = x + 1\n    return y"
    assert T("python", "def f(x):", "\n    y = x + 1\n    return y\ndef g():\n    pass\n").text == "\n    y = x + 1\n    return y"
    assert T("python", "def f(x):\n    if x:\n        ", "return 1\n    else:\n        return 2\nprint(3)", "\n").text == "return 1"


def test_python_keeps_else_of_a_statement_it_started():
    got = T("python", "def f(x):\n    ", "if x:\n        return 1\n    else:\n        return 2\nprint(3)", "\n")
    assert got.text == "if x:\n        return 1\n    else:\n        return 2"
    got2 = T("python", "def f(x):\n    if x:", "\n        return 1\n    else:\n        return 2\nprint(3)", "\n")
    assert got2.text.endswith("else:\n        return 2")


def test_python_multiline_literal_closing_the_cursors_bracket():
    assert T("python", "x = [\n    ", "1,\n    2,\n]\nprint(x)\n\nmore", "\n").text == "1,\n    2,\n]"


def test_python_unfinished_brackets_are_cut_back_or_dropped():
    assert T("python", "x = ", "foo(1,\n", "\n") is None
    assert T("python", "x = [", "1, 2, foo(3", "]\n", True) == TrimmedDraft("1, 2,", 0)


def test_python_strings_do_not_confuse_block_rules():
    got = T("python", "s = '''", "abc\n\ndef\n'''\nx = 1\n\ny", "\n")
    assert got.text == "abc\n\ndef\n'''\nx = 1"


def test_drops_lines_that_repeat_the_code_below():
    got = T("python", "def f(x):\n    y = 1\n    ", "z = 2\n    return y\n", "\n    return y\n")
    assert got.text == "z = 2"
    got2 = T("javascript", "function f() {\n  ", "let a = 1;\n  let b = 2;\n  return a + b;", "\n  return a + b;\n}\n")
    assert got2.text == "let a = 1;\n  let b = 2;"


def test_draft_equal_to_existing_text_is_none():
    assert T("python", "x = 1\n", "x = 1", "x = 1\n", True) is None
    assert T("python", "x = ", "   \n\n", "") is None
    assert T("python", "x = ", "", "") is None


def test_strips_trailing_whitespace():
    assert T("python", "    ", "return x   \n\n\n", "\n") == TrimmedDraft("return x", 0)
    assert T("python", "def f():\n    ", "a = 1   \n    b = 2  \n", "\n").text == "a = 1\n    b = 2"


@pytest.mark.parametrize("lang, prefix, draft, suffix, want", [
    ("javascript", "function f() {\n  ", "return 1;\n}\n\nfunction g() {}", "\n}\n", "return 1;"),
    ("javascript", "function f() {\n  ", "return 1;\n}\nfoo();", "", "return 1;\n}"),
    ("javascript", "if (x) {\n  ", "a();\n  b();\n\n  c();", "\n}", "a();\n  b();"),
    ("typescript", "const s = `", "${a} and ${b}`;\nx", "\n", "${a} and ${b}`;\nx"),
    ("go", "func main() {\n\t", "x := 1\n\tfmt.Println(x)\n}\n\nfunc other() {}", "\n}\n", "x := 1\n\tfmt.Println(x)"),
    ("rust", "fn f<'a>(x: &'a str) {\n    ", "let c = '}';\n    println!(\"{}\", c);\n}\n", "\n}\n",
     "let c = '}';\n    println!(\"{}\", c);"),
    ("c", "int main() {\n    ", "/* } */ int x = 0; // }\n    return x;\n}\n", "\n}\n", "/* } */ int x = 0; // }\n    return x;"),
    ("java", "class A {\n  void m() {\n    ", "int x = 1;\n  }\n}\n", "\n  }\n}\n", "int x = 1;"),
])
def test_brace_languages(lang, prefix, draft, suffix, want):
    assert T(lang, prefix, draft, suffix).text == want


def test_brace_mid_line_overlap():
    assert T("javascript", "foo(", "a, b);", ");\n", True) == TrimmedDraft("a, b", 0)


def test_unknown_language_falls_back_to_lines():
    assert T("plaintext", "", "one\ntwo\n\nthree", "") == TrimmedDraft("one\ntwo", 0)
    assert T(None, "", "one\ntwo", "", True) == TrimmedDraft("one", 0)


def test_adds_parse_errors():
    assert not adds_parse_errors("python", "x = foo(", "a, b", ")\n")
    assert adds_parse_errors("python", "x = foo(", "a, b))", ")\n")
    assert adds_parse_errors("python", "def f():\n    ", "return (", "\n\nx = 1\n")
    assert not adds_parse_errors("python", "def f():\n    ", "return 1", "\n\nx = 1\n")
    assert adds_parse_errors("javascript", "function f() {\n  ", "return [1, 2;", "\n}\n")
    assert not adds_parse_errors("cobol", "", "anything", "")
    assert parse_error_count("python", "x = (") > 0 and parse_error_count("python", "x = 1") == 0


def test_an_unfinished_statement_is_cut_back_to_where_it_parses():
    """What the hard deadline or a continuation's token limit leaves (the replay's junk,
    2026-12-05): cut back to the longest prefix that parses once its brackets and strings
    are closed."""
    from draftline.analysis.trim import unfinished_cut

    pre = "def f(name, x):\n    for a in x:\n        "
    suf = "\n        return a\n"
    assert unfinished_cut("python", pre, "x = foo(a, b", suf) == "x = foo(a, b"
    assert unfinished_cut("python", pre, "y = self.get(self.", suf) == "y = self.get(self"
    assert unfinished_cut("python", pre, "return a +", suf) == "return a"
    assert unfinished_cut("python", pre, "if not isinstance(", suf) is None
    # a docstring continued to one quote of its closing three (networkx's harary_graph.py)
    head = "def hkn_harary_graph(k, n, create_using=None):\n    "
    doc = 'r"""Return the Harary graph.\n\n    References\n    ----------\n    .. [1] F. T. Boesch,\n       "'
    got = unfinished_cut("python", head, doc, "")
    assert got is not None and got.endswith("Boesch,") and doc.startswith(got)
