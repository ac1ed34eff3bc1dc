"""The jedi backend: what jedi knows statically at a position, in the process that runs it.

It answers "members of this expression" (`JediBackend.members`), "keyword parameters of this
call" (`kwargs`), "modules/names importable or visible here" (`complete`), and loads the
stubs ahead of the first request (`warm`).  Those four are the whole API a worker may run
(`JediBackend.analyses`, the table the jedi child dispatches on).  It runs in the jedi child
process (`jedi_worker`) or, with ``DRAFTLINE_JEDI=thread``, on a thread of the server
(`jedi_client`); callers never wait on it directly.

Safety: jedi gets a sys.path stripped of the workspace (``InterpreterEnvironment``: no
project interpreter is ever started, and no workspace extension module is ever loaded),
unsafe extension loading off, ``sys.path`` edits in a document counted only inside the
workspace, and no module imported to analyse it (docs/reliability.md, P8).  Open documents'
unsaved texts stand in for their files for one query (`run_with_overlay`).

"Unknown" or dynamic (``__getattr__``, unresolved base classes, ``**kwargs``, a decorator or
metaclass that may rewrite a constructor) is always None, never an empty set: None means
"constrain nothing", an empty set would block every identifier.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass

log = logging.getLogger(__name__)

__all__ = [
    "Analysis",
    "Completions",
    "QUERY_KINDS",
    "JediBackend",
    "run_with_overlay",
]

#: the analyses a client may ask for (the worker's table also has "warm", the warm-up job)
QUERY_KINDS = ("members", "kwargs", "complete")


@dataclass(frozen=True)
class Completions:
    """What jedi listed at a position: ``names`` (all), ``callables`` (functions/methods among them)."""

    names: frozenset[str]
    callables: frozenset[str] = frozenset()


_jedi_configured = False
_overlay = threading.local()


def _configure_jedi() -> None:
    """Process-wide jedi settings and the open-document overlay hook (idempotent)."""
    global _jedi_configured
    if _jedi_configured:
        return
    import jedi
    import jedi.inference.imports as jimports

    jedi.settings.auto_import_modules = []  # never import a module to analyse it
    jedi.settings.allow_unsafe_interpreter_executions = False
    jedi.settings.case_insensitive_completion = False
    jedi.settings.add_bracket_after_function = False
    # Bounded latency: "dynamic" inference searches every call site of a function (or every
    # `.append` of a list) in the module, which took 5-15 s per query on stdlib files; without
    # it those few answers become "unknown" (no constraint), the rest stay under ~200 ms.
    jedi.settings.dynamic_params = False
    jedi.settings.dynamic_params_for_other_modules = False
    jedi.settings.dynamic_array_additions = False
    original = jimports._load_python_module

    def load_python_module(inference_state, file_io, import_names=None, is_package=False):
        docs = getattr(_overlay, "docs", None)
        path = getattr(file_io, "path", None)
        if docs and path is not None:
            code = docs.get(os.path.normcase(os.path.abspath(str(path))))
            if code is not None:
                return _overlay_module(inference_state, file_io, code, import_names, is_package)
        return original(inference_state, file_io, import_names=import_names, is_package=is_package)

    jimports._load_python_module = load_python_module
    jimports.Importer._sys_path_with_modifications = _sys_path_within_project
    _jedi_configured = True


def _sys_path_within_project(self, is_completion):
    """jedi's import path, where the ``sys.path.insert/append(...)`` calls it finds in the
    document count only when they point inside the project root: jedi would otherwise read
    any directory a file names (``sys.path.insert(0, '/home/other')``), outside the workspace
    the editor opened.  Without a workspace root no such call counts."""
    if self._fixed_sys_path is not None:
        return self._fixed_sys_path
    from jedi.inference import sys_path as jsys_path

    base = self._inference_state.get_sys_path(add_init_paths=not is_completion)
    project = getattr(self._inference_state, "project", None)
    root = os.path.normcase(os.path.realpath(str(project.path))) if project is not None else None
    if root is None or root == os.path.abspath(os.sep):
        return base
    extra = []
    for p in jsys_path.check_sys_path_modifications(self._module_context):
        ap = os.path.normcase(os.path.realpath(str(p)))
        if ap == root or ap.startswith(root + os.sep):
            extra.append(str(p))
    return base + extra


def _overlay_module(inference_state, file_io, code, import_names, is_package):
    """An imported module whose text comes from an open (maybe unsaved) document, never cached."""
    from jedi.file_io import KnownContentFileIO
    from jedi.inference.value import ModuleValue
    from parso.utils import split_lines

    from parso.cache import _NodeCacheItem, parser_cache

    fio = KnownContentFileIO(file_io.path, code)
    node = inference_state.parse(file_io=fio, cache=False, diff_cache=False)
    lines = split_lines(code, keepends=True)
    # jedi's name filters look the module up in parso's cache by path: register the overlay
    # there for this query only (the worker restores the previous entry afterwards), with a
    # change time of 0 so a later load of the file on disk never mistakes it for fresh.
    bucket = parser_cache.setdefault(inference_state.grammar._hashed, {})
    restore = getattr(_overlay, "restore", None)
    if restore is not None and (id(bucket), file_io.path) not in restore:
        restore[(id(bucket), file_io.path)] = (bucket, bucket.get(file_io.path))
    bucket[file_io.path] = _NodeCacheItem(node, lines, change_time=0.0)
    return ModuleValue(inference_state, node, file_io=fio, string_names=import_names,
                       code_lines=lines, is_package=is_package)


def _safe_environment(workspace: str | None):
    """``InterpreterEnvironment`` (this process, no subprocess, no discovery) whose sys.path
    excludes the working directory and the workspace: jedi loads compiled extensions only from
    that path, so no workspace ``.so`` is ever imported."""
    import jedi

    import site

    def norm(p: str) -> str:
        return os.path.normcase(os.path.abspath(p))

    def under(p: str, roots: set[str]) -> bool:
        return any(p == r or p.startswith(r + os.sep) for r in roots)

    blocked = {norm(p) for p in ([os.getcwd()] + ([workspace] if workspace else []))}
    # The running interpreter's own installation is trusted (its code already runs here),
    # even when it lives inside the workspace (a project .venv used to run the server).
    trusted = {norm(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix)}
    try:
        trusted |= {norm(p) for p in site.getsitepackages()}
    except AttributeError:  # some virtualenv flavours
        pass

    def allowed(p: str) -> bool:
        if not p:
            return False
        ap = norm(p)
        return under(ap, trusted) or not under(ap, blocked)

    class _SafeEnvironment(jedi.InterpreterEnvironment):
        def get_sys_path(self):
            return [p for p in sys.path if allowed(p)]

    return _SafeEnvironment()


def run_with_overlay(fn: Callable[[], object], docs: Mapping[str, str] | None) -> object:
    """Run one jedi call with the open documents' texts standing in for their files."""
    _overlay.docs = docs
    _overlay.restore = {}
    try:
        return fn()
    finally:
        for (_, path), (bucket, item) in _overlay.restore.items():
            if item is None:
                bucket.pop(path, None)
            else:
                bucket[path] = item
        _overlay.docs = None
        _overlay.restore = None


def _line_col(code: str, offset: int) -> tuple[int, int]:
    """jedi's (line, column) of a str offset, with parso's line splitting (jedi's own)."""
    from parso.utils import split_lines

    lines = split_lines(code[:offset])
    return len(lines), len(lines[-1])


#: an analysis: (text before the anchor, text after the cursor, document path) -> answer
Analysis = Callable[[str, str, "str | None"], "Completions | None"]


class JediBackend:
    """jedi for one configuration: ``workspace_root`` (the jedi project root: its modules
    become importable) and ``added_sys_path`` (extra import roots, from trusted user-level
    settings only).  Keeps jedi's environment and project, and the members of library types
    (``cache_size`` of them, see `members`).  Not thread-safe (jedi is not): one caller at a
    time, which the workers guarantee.
    """

    #: receivers whose members are listed at warm-up: library types (see `members`) cost
    #: 100-400 ms the first time (`[].` 199 ms, a stub function 396 ms, measured in
    #: bench/latency.py's server log) and ~0 after, so the first requests do not pay it
    WARM_RECEIVERS = ("import os\nos.path.", "[].", "{}.", "''.", "b''.", "().", "set().", "0 .", "0.5 .",
                      "None.", "''.join.", "[].append.", "object().", "import re\nre.compile('').",
                      "import re\nre.match('', '').", "import os\nos.")

    def __init__(self, workspace_root: str | None = None, added_sys_path: tuple[str, ...] = (),
                 cache_size: int = 512) -> None:
        self.workspace_root = os.path.abspath(workspace_root) if workspace_root else None
        self.added_sys_path = tuple(added_sys_path)
        self._cache_size = cache_size
        self._lock = threading.Lock()
        self._env = None
        self._project = None
        self._type_members: dict[tuple, Completions | None] = {}  # see members

    def analyses(self) -> dict[str, Analysis]:
        """The analyses a worker may run, by the ``kind`` a query names: one explicit table,
        so a query can reach these and nothing else of this object."""
        return {"members": self.members, "kwargs": self.kwargs, "complete": self.complete, "warm": self.warm}

    # --- plumbing ------------------------------------------------------------------------
    def jedi_objects(self):
        """(environment, project) for this configuration, made on first use."""
        if self._env is None:
            import jedi

            _configure_jedi()
            self._env = _safe_environment(self.workspace_root)
            self._project = jedi.Project(
                self.workspace_root or os.path.abspath(os.sep),
                environment_path=None,
                load_unsafe_extensions=False,
                added_sys_path=self.added_sys_path,
                smart_sys_path=self.workspace_root is not None,
            )
        return self._env, self._project

    def script(self, code: str, path: str | None):
        """A jedi Script of ``code`` (as the document at ``path``) in this configuration."""
        import jedi

        env, project = self.jedi_objects()
        return jedi.Script(code, path=path, environment=env, project=project)

    # --- the analyses ----------------------------------------------------------------------
    def warm(self, before: str = "", after: str = "", path: str | None = None) -> None:
        """Load jedi and the builtins/typeshed stubs, and list the members of common library
        types (`WARM_RECEIVERS`): the first query would otherwise pay for it."""
        for code in self.WARM_RECEIVERS:
            self.members(code, "", None)
        return None

    def members(self, before: str, after: str, path: str | None) -> Completions | None:
        """The members of the expression before the dot ``before`` ends with; None when jedi
        cannot list them all (dynamic or unknown receiver)."""
        code = before + after
        line, col = _line_col(code, len(before))
        script = self.script(code, path)
        # Members of a library type (a stub or compiled value: `[]`, `"".`, `re.`, an
        # attribute holding a list) are the same in every document: listing them is jedi's
        # slow part (~200 ms for a list: it filters the whole builtins stub), so they are
        # listed once per type.  Types from the user's code are always listed afresh.
        tkey = _library_type_key(script, line, col)
        if tkey is not None:
            with self._lock:
                hit = self._type_members.get(tkey, _MISSING)
            if hit is not _MISSING:
                return hit  # type: ignore[return-value]
        got = self.list_members(script, line, col)
        if tkey is not None:
            with self._lock:
                self._type_members[tkey] = got
                if len(self._type_members) > self._cache_size:
                    self._type_members.pop(next(iter(self._type_members)))
        return got

    @staticmethod
    def list_members(script, line: int, col: int) -> Completions | None:
        """jedi's member list at (line, col), the slow part of `members` (uncached)."""
        comps = script.complete(line, col)
        if not comps:
            return None
        names = {c.name for c in comps if not c.name.endswith("=")}
        if "__getattr__" in names or _is_dynamic_receiver(script, line, col):
            return None
        callables = frozenset(c.name for c in comps if c.type == "function")
        return Completions(frozenset(names), callables)

    def kwargs(self, before: str, after: str, path: str | None) -> Completions | None:
        """The keyword parameters of the call whose ``(`` ``before`` ends with (positional-only
        ones excluded); None when a signature takes ``**kwargs`` or may be rewritten."""
        code = before + after
        line, col = _line_col(code, len(before))
        script = self.script(code, path)
        sigs = script.get_signatures(line, col)
        if not sigs:
            return None
        out: set[str] = set()
        for sig in sigs:
            if _signature_is_opaque(sig):
                return None
            for p in sig.params:
                kind = getattr(p.kind, "name", str(p.kind))
                if kind == "VAR_KEYWORD":
                    return None
                if kind in ("POSITIONAL_OR_KEYWORD", "KEYWORD_ONLY"):
                    out.add(p.name)
        if not out:
            return None
        return Completions(frozenset(out))

    def complete(self, before: str, after: str, path: str | None) -> Completions | None:
        """What jedi completes at the end of ``before`` (modules, ``from m import`` names,
        names visible there); None when nothing or a module ``__getattr__``."""
        code = before + after
        line, col = _line_col(code, len(before))
        script = self.script(code, path)
        comps = script.complete(line, col)
        names = {c.name for c in comps if not c.name.endswith("=")}
        if not names or "__getattr__" in names:
            return None
        return Completions(frozenset(names), frozenset(c.name for c in comps if c.type == "function"))


_MISSING = object()


def _receiver_values(script, line: int, col: int):
    """jedi's values for the expression before the dot ending at (line, col), or None."""
    from jedi.inference.helpers import infer_call_of_leaf

    module_context = script._get_module_context()
    leaf = module_context.tree_node.get_leaf_for_position((line, col), include_prefixes=True)
    while leaf is not None and leaf.start_pos >= (line, col):
        leaf = leaf.get_previous_leaf()
    if leaf is None or leaf.value != "." or leaf.end_pos != (line, col):
        return None
    previous = leaf.get_previous_leaf()
    context = module_context.create_context(previous)
    return infer_call_of_leaf(context, previous)


def _library_type_key(script, line: int, col: int) -> tuple | None:
    """A key naming the receiver's type when every value jedi infers for it comes from a
    stub or a compiled module (so its members do not depend on the document); else None.

    Uses jedi internals like `_is_dynamic_receiver`; any failure means "no key" (the
    members are then listed the slow way, never wrongly cached)."""
    try:
        values = _receiver_values(script, line, col)
        if not values:
            return None
        parts = []
        for v in values:
            root = v.get_root_context()
            if not (root.is_stub() or v.is_compiled()):
                return None
            node = getattr(v, "tree_node", None)
            parts.append((str(root.py__file__()), root.py__name__(), v.name.string_name if v.name else "",
                          v.is_instance(), v.is_class(), v.is_module(), v.is_function(),
                          getattr(node, "start_pos", None)))
        return tuple(sorted(parts, key=repr))
    except Exception as e:  # noqa: BLE001
        log.debug("library type key failed: %r", e)
        return None


def _is_dynamic_receiver(script, line: int, col: int) -> bool:
    """Whether the object before the dot at (line, col) can have attributes jedi cannot list:
    a class (or instance of one) with ``__getattr__`` or with a base class jedi cannot resolve.

    Uses jedi internals (the same calls ``Completion._complete_trailer`` makes); any failure
    counts as dynamic, so a jedi upgrade can only weaken masking, never block valid code.
    """
    try:
        values = _receiver_values(script, line, col)
        if not values:
            return True
        for v in values:
            if v.is_module():
                continue
            cls = v
            if v.is_instance():
                if v.get_function_slot_names("__getattr__"):
                    return True
                cls = getattr(v, "class_value", None)
                if cls is None:
                    continue
            if cls.is_class() and _has_unresolved_base(cls):
                return True
        return False
    except Exception as e:  # noqa: BLE001
        log.debug("dynamic-receiver check failed: %r", e)
        return True


def _has_unresolved_base(cls, limit: int = 64) -> bool:
    seen = 0
    stack = [cls]
    visited: set[int] = set()
    while stack and seen < limit:
        c = stack.pop()
        if id(c) in visited:
            continue
        visited.add(id(c))
        seen += 1
        try:
            bases = list(c.py__bases__())
        except Exception:
            return True
        for lazy in bases:
            inferred = lazy.infer()
            if not inferred:
                return True
            for b in inferred:
                if b.is_class():
                    stack.append(b)
                elif not b.is_module():
                    # e.g. a base that is a function call result jedi could not resolve to a class
                    return True
    return False


def _signature_is_opaque(sig) -> bool:
    """Signatures jedi reads from a class whose constructor a decorator or metaclass may rewrite."""
    try:
        if sig.type != "class":
            return False
        tree_name = sig._name.tree_name
        classdef = tree_name.get_definition() if tree_name is not None else None
        if classdef is None or classdef.type != "classdef":
            return False
        for dec in classdef.get_decorators():
            code = dec.get_code(include_prefix=False)
            if "dataclass" not in code:
                return True
        arglist = classdef.get_super_arglist()
        if arglist is not None and "metaclass" in arglist.get_code():
            return True
        return False
    except Exception:  # noqa: BLE001
        return True
