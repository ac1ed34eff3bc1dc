"""JSON-RPC / LSP protocol behaviour that pygls 2.1.1 gets wrong on its own (see
../shared/RELIABILITY.md): kept here, apart from the feature handlers."""

from __future__ import annotations

from lsprotocol import types as T
from pygls.protocol import LanguageServerProtocol, lsp_method


class DraftlineProtocol(LanguageServerProtocol):
    """pygls' protocol minus its own text-document store: pygls would read unopened files
    from disk, split lines on U+2028, and raise KeyError popups for unknown URIs. Our
    handlers keep the documents (lsp/documents.py)."""

    @lsp_method(T.TEXT_DOCUMENT_DID_OPEN)
    def lsp_text_document__did_open(self, params: T.DidOpenTextDocumentParams):
        if (h := self.fm.features.get(T.TEXT_DOCUMENT_DID_OPEN)) is not None:
            yield h, (params,), None

    @lsp_method(T.TEXT_DOCUMENT_DID_CHANGE)
    def lsp_text_document__did_change(self, params: T.DidChangeTextDocumentParams):
        if (h := self.fm.features.get(T.TEXT_DOCUMENT_DID_CHANGE)) is not None:
            yield h, (params,), None

    @lsp_method(T.TEXT_DOCUMENT_DID_CLOSE)
    def lsp_text_document__did_close(self, params: T.DidCloseTextDocumentParams):
        if (h := self.fm.features.get(T.TEXT_DOCUMENT_DID_CLOSE)) is not None:
            yield h, (params,), None
