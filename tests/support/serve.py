"""The server as the tests start it: `draftline serve` plus, when DRAFTLINE_FAKE_ENGINE is
set, the fake engine (support.fake_engine) instead of the model, and a test-only request
(`draftline/documentText`: the server's copy of a document).  The installed command has
neither.

    python tests/support/serve.py [serve options]
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

if __name__ == "__main__":  # `support` importable when run as a script
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def add_test_requests(ls: Any) -> None:
    @ls.feature("draftline/documentText")
    def document_text(ls: Any, params: Any) -> dict | None:
        uri = params.uri if hasattr(params, "uri") else params["uri"]
        d = ls.docs.docs.get(uri)
        return None if d is None else {"text": d.text, "version": d.version}


def main(argv: list[str]) -> int:
    from draftline.lsp import cli

    factory = None
    spec = os.environ.get("DRAFTLINE_FAKE_ENGINE")
    if spec:
        from support.fake_engine import fake_factory

        factory = fake_factory(spec)
    return cli.main(["serve", *argv], engine_factory=factory, extend=add_test_requests)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
