"""Names bound in the scopes enclosing a position, from a tree-sitter tree (any supported language).

Why: a model invents plausible names (``reslt``, ``userList``); the names that can legally
appear at a load position are those bound in an enclosing scope (anywhere in it: a function
may call a helper defined further down), the file, builtins, and what imports bring in.

The rules are tables of grammar node types per language.  They err on the permissive
side: a name bound anywhere in an enclosing block counts, destructuring defaults count, a
class body's names count inside its methods.  A missing name would block a correct
continuation; an extra one only weakens the mask.

Whether those names may be used to *mask* is a separate question (``world_is_closed``):
in most languages the visible set is open (C headers, JS/browser globals, Go package
siblings, Rust crates, Java's same-package classes), and then the monitors do not mask.
"""

from __future__ import annotations

import builtins
import keyword
import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from tree_sitter import Node, Tree

from .syntax import get_language, new_parser, language_for

log = logging.getLogger(__name__)

__all__ = [
    "ScopeRules",
    "RULES",
    "KEYWORDS",
    "bindings_in",
    "visible_names",
    "names_at",
    "file_names",
    "open_document_names",
    "builtin_names",
    "world_is_closed",
]


@dataclass(frozen=True)
class ScopeRules:
    """How one grammar binds names.

    scopes: node types that open a scope.
    outer_fields: scope type -> fields that bind in the *enclosing* scope (a def's name).
    binding_fields: node type -> fields whose identifiers bind in the current scope.
    binding_nodes: node types all of whose identifiers bind (parameter lists, patterns).
    idents: identifier node types.
    skip_fields: fields under a pattern that hold loads (default values, types).
    prune: node types a pattern walk does not enter (``a.b = 1`` binds nothing).
    """

    scopes: frozenset[str]
    outer_fields: Mapping[str, tuple[str, ...]]
    binding_fields: Mapping[str, tuple[str, ...]]
    binding_nodes: frozenset[str]
    idents: frozenset[str]
    skip_fields: frozenset[str] = frozenset({"value", "type", "default", "right", "body", "return_type"})
    prune: frozenset[str] = frozenset()
    brace_scoped: bool = True  # False for Python: scope extent follows indentation


_PY = ScopeRules(
    scopes=frozenset({"module", "function_definition", "class_definition", "lambda", "list_comprehension",
                      "set_comprehension", "dictionary_comprehension", "generator_expression"}),
    outer_fields={"function_definition": ("name",), "class_definition": ("name",)},
    binding_fields={
        "assignment": ("left",), "augmented_assignment": ("left",), "for_statement": ("left",),
        "for_in_clause": ("left",), "named_expression": ("name",), "type_alias_statement": ("left",),
    },
    binding_nodes=frozenset({"parameters", "lambda_parameters", "as_pattern_target", "global_statement",
                             "nonlocal_statement", "case_pattern", "type_parameter"}),
    idents=frozenset({"identifier"}),
    skip_fields=frozenset({"value", "type", "default", "right", "body", "return_type"}),
    prune=frozenset({"attribute", "subscript", "call", "keyword_pattern_key"}),
    brace_scoped=False,
)

_JS_SCOPES = {"program", "function_declaration", "function_expression", "function", "arrow_function",
              "method_definition", "class_declaration", "class", "statement_block", "for_statement",
              "for_in_statement", "catch_clause", "generator_function_declaration", "generator_function",
              "internal_module", "module", "abstract_class_declaration"}
_JS_OUTER = {"function_declaration": ("name",), "class_declaration": ("name",),
             "generator_function_declaration": ("name",), "abstract_class_declaration": ("name",),
             "internal_module": ("name",), "module": ("name",)}
_JS_BINDING_FIELDS = {
    "variable_declarator": ("name",), "for_in_statement": ("left",), "catch_clause": ("parameter",),
    "arrow_function": ("parameter",), "function_expression": ("name",), "function": ("name",),
    "class": ("name",), "interface_declaration": ("name",), "type_alias_declaration": ("name",),
    "enum_declaration": ("name",), "type_parameter": ("name",),
}
_JS = ScopeRules(
    scopes=frozenset(_JS_SCOPES), outer_fields=_JS_OUTER, binding_fields=_JS_BINDING_FIELDS,
    binding_nodes=frozenset({"formal_parameters", "import_clause"}),
    idents=frozenset({"identifier", "shorthand_property_identifier_pattern", "type_identifier"}),
    skip_fields=frozenset({"right", "type", "default", "body", "return_type"}),
    prune=frozenset({"member_expression", "subscript_expression", "call_expression", "property_identifier"}),
)

_GO = ScopeRules(
    scopes=frozenset({"source_file", "function_declaration", "method_declaration", "func_literal", "block",
                      "for_statement", "if_statement", "expression_switch_statement", "type_switch_statement",
                      "select_statement"}),
    outer_fields={"function_declaration": ("name",)},
    binding_fields={"type_spec": ("name",), "const_spec": ("name",), "var_spec": ("name",),
                    "short_var_declaration": ("left",), "range_clause": ("left",), "import_spec": ("name",),
                    "type_alias": ("name",), "labeled_statement": ()},
    binding_nodes=frozenset({"parameter_list", "type_parameter_list"}),
    idents=frozenset({"identifier", "type_identifier", "package_identifier"}),
    prune=frozenset({"selector_expression", "index_expression"}),
)

_RUST = ScopeRules(
    scopes=frozenset({"source_file", "function_item", "closure_expression", "block", "impl_item", "trait_item",
                      "mod_item", "match_arm", "for_expression", "if_expression", "while_expression"}),
    outer_fields={"function_item": ("name",), "trait_item": ("name",), "mod_item": ("name",)},
    binding_fields={"struct_item": ("name",), "enum_item": ("name",), "type_item": ("name",), "const_item": ("name",),
                    "static_item": ("name",), "macro_definition": ("name",), "union_item": ("name",),
                    "let_declaration": ("pattern",), "for_expression": ("pattern",), "let_condition": ("pattern",),
                    "function_signature_item": ("name",)},
    binding_nodes=frozenset({"parameters", "closure_parameters", "match_pattern", "type_parameters"}),
    idents=frozenset({"identifier", "type_identifier"}),
    prune=frozenset({"field_expression", "scoped_identifier"}),
)

_JAVA = ScopeRules(
    scopes=frozenset({"program", "class_declaration", "interface_declaration", "enum_declaration", "record_declaration",
                      "method_declaration", "constructor_declaration", "lambda_expression", "block", "for_statement",
                      "enhanced_for_statement", "catch_clause", "try_with_resources_statement", "class_body"}),
    outer_fields={"class_declaration": ("name",), "interface_declaration": ("name",), "enum_declaration": ("name",),
                  "record_declaration": ("name",), "method_declaration": ("name",)},
    binding_fields={"variable_declarator": ("name",), "formal_parameter": ("name",), "catch_formal_parameter": ("name",),
                    "enhanced_for_statement": ("name",), "enum_constant": ("name",), "resource": ("name",),
                    "lambda_expression": ("parameters",), "type_parameter": ()},
    binding_nodes=frozenset({"inferred_parameters", "type_parameters"}),
    idents=frozenset({"identifier", "type_identifier"}),
    prune=frozenset({"field_access", "method_invocation", "scoped_identifier"}),
)

_C_BINDING_FIELDS = {
    "declaration": ("declarator",), "init_declarator": ("declarator",), "parameter_declaration": ("declarator",),
    "field_declaration": ("declarator",), "type_definition": ("declarator",), "struct_specifier": ("name",),
    "union_specifier": ("name",), "enum_specifier": ("name",), "enumerator": ("name",), "preproc_def": ("name",),
    "preproc_function_def": ("name",), "class_specifier": ("name",), "namespace_definition": ("name",),
    "for_range_loop": ("declarator",), "alias_declaration": ("name",), "type_parameter_declaration": (),
    "optional_parameter_declaration": ("declarator",), "namespace_alias_definition": ("name",),
}
_C = ScopeRules(
    scopes=frozenset({"translation_unit", "function_definition", "compound_statement", "for_statement",
                      "for_range_loop", "lambda_expression", "namespace_definition", "class_specifier",
                      "struct_specifier", "template_declaration"}),
    outer_fields={"function_definition": ("declarator",), "namespace_definition": ("name",),
                  "class_specifier": ("name",), "struct_specifier": ("name",)},
    binding_fields=_C_BINDING_FIELDS,
    binding_nodes=frozenset({"parameter_list", "template_parameter_list", "using_declaration"}),
    idents=frozenset({"identifier", "type_identifier", "field_identifier", "namespace_identifier"}),
    skip_fields=frozenset({"value", "type", "default", "right", "body", "size", "default_value"}),
    prune=frozenset({"parameter_list", "field_expression", "subscript_expression", "call_expression",
                     "qualified_identifier"}),
)

RULES: dict[str, ScopeRules] = {
    "python": _PY, "javascript": _JS, "typescript": _JS, "tsx": _JS, "go": _GO, "rust": _RUST,
    "java": _JAVA, "c": _C, "cpp": _C,
}

KEYWORDS: dict[str, frozenset[str]] = {
    "python": frozenset(keyword.kwlist) | frozenset(keyword.softkwlist),
    "c": frozenset("auto break case char const continue default do double else enum extern float for goto if inline "
                   "int long register restrict return short signed sizeof static struct switch typedef union unsigned "
                   "void volatile while _Bool _Complex _Imaginary _Alignas _Alignof _Atomic _Generic _Noreturn "
                   "_Static_assert _Thread_local bool true false nullptr alignas alignof static_assert thread_local "
                   "typeof constexpr".split()),
}
KEYWORDS["cpp"] = KEYWORDS["c"] | frozenset(
    "alignas and and_eq asm bitand bitor catch char8_t char16_t char32_t class co_await co_return co_yield compl "
    "concept const_cast consteval constinit decltype delete dynamic_cast explicit export friend mutable namespace "
    "new noexcept not not_eq operator or or_eq private protected public reinterpret_cast requires static_cast "
    "template this throw try typeid typename using virtual wchar_t xor xor_eq override final".split())


def builtin_names(language: str) -> frozenset[str]:
    """Names always visible in ``language`` without a binding in the file (keywords included)."""
    if language == "python":
        dunders = {"__name__", "__file__", "__doc__", "__spec__", "__loader__", "__package__", "__builtins__",
                   "__path__", "__annotations__", "__dict__", "__debug__", "__class__", "__qualname__", "__module__",
                   "__all__", "__version__", "__cached__"}
        return frozenset(dir(builtins)) | KEYWORDS["python"] | dunders
    return KEYWORDS.get(language, frozenset())


# --- pattern walks --------------------------------------------------------------------------------
def _pattern_idents(node: Node | None, rules: ScopeRules, out: set[str], *, prune_root: bool = True) -> None:
    """Add the identifiers of a binding pattern, skipping load-only fields and pruned node types."""
    if node is None:
        return
    if node.type in rules.idents:
        if node.text is not None:
            out.add(node.text.decode("utf-8", "replace"))
        return
    if prune_root and node.type in rules.prune:
        return
    cursor = node.walk()
    if not cursor.goto_first_child():
        return
    depth = 1
    while depth > 0:
        n = cursor.node
        fname = cursor.field_name
        enter = False
        if fname in rules.skip_fields or n.type in rules.prune:
            pass
        elif n.type in rules.idents:
            if n.text is not None:
                out.add(n.text.decode("utf-8", "replace"))
        else:
            enter = True
        if enter and cursor.goto_first_child():
            depth += 1
            continue
        while not cursor.goto_next_sibling():
            cursor.goto_parent()
            depth -= 1
            if depth == 0:
                break


def _import_names(node: Node, language: str, out: set[str]) -> bool:
    """Names an import statement binds; True when ``node`` was an import (handled)."""
    t = node.type
    if language == "python":
        if t == "import_statement":
            for child in node.children_by_field_name("name"):
                if child.type == "aliased_import":
                    _pattern_idents(child.child_by_field_name("alias"), _PY, out)
                elif child.type == "dotted_name" and child.named_child_count:
                    first = child.named_children[0]
                    if first.text:
                        out.add(first.text.decode())
            return True
        if t == "import_from_statement":
            for child in node.children_by_field_name("name"):
                if child.type == "aliased_import":
                    _pattern_idents(child.child_by_field_name("alias"), _PY, out)
                elif child.type == "dotted_name" and child.named_child_count:
                    last = child.named_children[-1]
                    if last.text:
                        out.add(last.text.decode())
            return True
        return False
    if language == "go" and t == "import_spec":
        name = node.child_by_field_name("name")
        if name is not None and name.text:
            out.add(name.text.decode())
        else:
            path = node.child_by_field_name("path")
            if path is not None and path.text:
                out.add(path.text.decode().strip('"`').rsplit("/", 1)[-1])
        return True
    if language == "rust" and t == "use_declaration":
        for n in _walk_plain(node):
            if n.type == "use_as_clause":
                alias = n.child_by_field_name("alias")
                if alias is not None and alias.text:
                    out.add(alias.text.decode())
            elif n.type == "scoped_identifier" and n.parent is not None and n.parent.type != "use_as_clause":
                name = n.child_by_field_name("name")
                if name is not None and name.text:
                    out.add(name.text.decode())
            elif n.type == "identifier" and n.parent is not None and n.parent.type in ("use_declaration", "use_list"):
                out.add(n.text.decode())
            elif n.type == "scoped_use_list":
                path = n.child_by_field_name("path")
                if path is not None and path.text:
                    out.add(path.text.decode().rsplit("::", 1)[-1])
        return True
    if language == "java" and t == "import_declaration":
        ids = [n for n in node.named_children if n.type in ("identifier", "scoped_identifier")]
        if ids and ids[-1].text:
            out.add(ids[-1].text.decode().rsplit(".", 1)[-1])
        return True
    return False


def _walk_plain(node: Node):
    from .syntax import walk
    return walk(node)


def bindings_in(scope: Node, language: str) -> frozenset[str]:
    """Names bound directly in ``scope`` (not in nested scopes; nested defs contribute their own name)."""
    rules = RULES.get(language)
    if rules is None:
        return frozenset()
    out: set[str] = set()
    own_outer = set(rules.outer_fields.get(scope.type, ()))
    stack: list[Node] = []
    for i in range(scope.child_count - 1, -1, -1):
        child = scope.child(i)
        if child is None:
            continue
        if own_outer and scope.field_name_for_child(i) in own_outer:
            # The name binds outside, but parameter lists nested in it (C declarators) bind here.
            for n in _walk_plain(child):
                if n.type in rules.binding_nodes:
                    _pattern_idents(n, rules, out, prune_root=False)
            continue
        stack.append(child)
    while stack:
        n = stack.pop()
        t = n.type
        if t in rules.scopes:
            for f in rules.outer_fields.get(t, ()):
                for c in n.children_by_field_name(f):
                    _pattern_idents(c, rules, out)
            continue
        if _import_names(n, language, out):
            continue
        if t in rules.binding_nodes:
            _pattern_idents(n, rules, out, prune_root=False)
            continue
        fields = rules.binding_fields.get(t)
        if fields:
            for f in fields:
                for c in n.children_by_field_name(f):
                    _pattern_idents(c, rules, out)
        for i in range(n.child_count - 1, -1, -1):
            c = n.child(i)
            if c is not None and c.is_named:
                stack.append(c)
    return frozenset(out)


def _indent_of_line(source: bytes, byte: int) -> int:
    start = source.rfind(b"\n", 0, byte) + 1
    i = start
    while i < byte and source[i : i + 1] in (b" ", b"\t"):
        i += 1
    return i - start


def _enclosing_scopes(tree: Tree, source: bytes, byte: int, rules: ScopeRules) -> list[Node]:
    root = tree.root_node
    byte = max(0, min(byte, len(source)))
    if rules.brace_scoped:
        node = root.descendant_for_byte_range(byte, byte)
    else:
        # Python: a def's node ends at its last statement, so a cursor on a fresh indented line
        # after it lies outside; anchor at the last non-blank character and filter by indentation.
        j = byte - 1
        while j >= 0 and source[j : j + 1] in (b" ", b"\t", b"\r", b"\n"):
            j -= 1
        node = root.descendant_for_byte_range(max(j, 0), max(j, 0) + 1) if j >= 0 else root
    scopes: list[Node] = []
    indent = _indent_of_line(source, byte)
    line_start = source.rfind(b"\n", 0, byte) + 1
    while node is not None:
        if node.type in rules.scopes:
            if rules.brace_scoped or node.parent is None:
                scopes.append(node)
            elif node.type in ("function_definition", "class_definition"):
                # Its body is every deeper-indented line after the header; the header line
                # itself (defaults, annotations) is included too, which is only permissive.
                def_line_start = source.rfind(b"\n", 0, node.start_byte) + 1
                if indent > _indent_of_line(source, node.start_byte) or def_line_start == line_start:
                    scopes.append(node)
            elif node.start_byte <= byte <= node.end_byte:  # lambda, comprehension: by span
                scopes.append(node)
        node = node.parent
    if not scopes or scopes[-1] != root:
        scopes.append(root)
    return scopes


def visible_names(tree: Tree, source: bytes, byte: int, language: str) -> frozenset[str]:
    """Names bound in every scope enclosing ``byte`` (innermost to file level), no builtins."""
    rules = RULES.get(language)
    if rules is None:
        return frozenset()
    out: set[str] = set()
    for scope in _enclosing_scopes(tree, source, byte, rules):
        out |= bindings_in(scope, language)
    if language == "python":
        out |= _python_globals_declared(source)
    return frozenset(out)


_GLOBAL_RE = re.compile(rb"^[ \t]*(?:global|nonlocal)[ \t]+([\w \t,]+)", re.M)
_WALRUS_RE = re.compile(rb"([^\W\d]\w*)[ \t]*:=")


def _python_globals_declared(source: bytes) -> set[str]:
    """Names declared ``global`` in any function bind at module level, and walrus targets leak
    out of comprehensions: both are cheap to find textually and never worth a missed name."""
    out: set[str] = set()
    for m in _GLOBAL_RE.finditer(source):
        out.update(x.strip() for x in m.group(1).decode("utf-8", "replace").split(",") if x.strip())
    out.update(m.group(1).decode("utf-8", "replace") for m in _WALRUS_RE.finditer(source))
    return out


def names_at(text: str, language: str | None, offset: int) -> frozenset[str] | None:
    """Names visible at str index ``offset`` of ``text`` (parses it; None when not parseable)."""
    lang = language_for(language) or language
    parser = new_parser(lang)
    if parser is None:
        return None
    source = text.encode("utf-8", "surrogatepass")
    tree = parser.parse(source)
    byte = len(text[:offset].encode("utf-8", "surrogatepass"))
    return visible_names(tree, source, byte, lang)


def file_names(text: str, language: str | None) -> frozenset[str]:
    """File-level names of a document (what another file could import or see as globals)."""
    lang = language_for(language) or language
    parser = new_parser(lang)
    if parser is None or get_language(lang) is None:
        return frozenset()
    tree = parser.parse(text.encode("utf-8", "surrogatepass"))
    return bindings_in(tree.root_node, lang)


def open_document_names(documents: Iterable[tuple[str, str | None]]) -> frozenset[str]:
    """Union of file-level names of other open documents, given as (text, language) pairs."""
    out: set[str] = set()
    for text, lang in documents:
        out |= file_names(text, lang)
    return frozenset(out)


_INCLUDE_RE = re.compile(r"^[ \t]*#[ \t]*(include|import)\b|^[ \t]*(import|using)\b", re.M)


def world_is_closed(text: str, language: str) -> bool:
    """Whether every name usable in this file is bound in it or built in, so masking is safe.

    Python is handled by the Python monitors (star imports, ``globals()``); of the others only a
    C/C++ file with no includes qualifies: JS/TS have host globals, Go package siblings, Rust
    crates and preludes, Java same-package classes, C the contents of its headers.
    """
    if language in ("c", "cpp"):
        return _INCLUDE_RE.search(text) is None
    return False
